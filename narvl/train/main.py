"""Train the NAR model (Q-CTC over N query slots) or the AR baseline (teacher-forced cross-entropy) with DeepSpeed.

Reads   --params DIR       train.yaml, model.yaml, data.yaml (train.init: the weights to start from, narvl/train/init.py)
        --init FILE        train.init for this run (the workflow's multi-task AR model, pipeline.pretrain)
        --init-resnet FILE train.init_resnet for this run (OFA's resnet_model_path: the ResNet's starting weights)
        --shards DIR       sizes.json and <task>-<split>-NNNNNN.tar (the train split and train.val_split[task]);
                           --task pretrain: the folder holding one such folder per task of train.pretrain.weights
        --tokenizer FILE   tokenizer.json
Writes  --out DIR          checkpoints/ (resumable DeepSpeed checkpoints, run.json), ds_config.json (the resolved
                           DeepSpeed config), tb/ (tensorboard scalars), summary.json (written at the end)

Processes: under torchrun, the deepspeed launcher or a multi-task srun step this process is one data-parallel rank
(Slurm variables are mapped to RANK/WORLD_SIZE/MASTER_ADDR/...). Started plainly with train.nproc > 1 it
re-executes itself under `torchrun --standalone --nproc_per_node train.nproc`. CPU ranks talk over gloo, GPU ranks
over nccl (one GPU per rank).

Resume: re-running the same command continues from the newest COMPLETE checkpoint in --out/checkpoints (a run
killed while saving leaves an unmarked folder, which is ignored), restoring weights, optimizer, LR schedule, RNG
states and the data position. Checkpoints written for another model configuration are refused.

--task pretrain (AR only) is OFA's pretraining in miniature: one AR model trained train.pretrain.steps steps on
every task of train.pretrain.weights. Each batch comes from one task, drawn with probability proportional to its
weight by a generator every rank seeds alike (narvl.data.loader.mixed_batches), and is trained with that task's
objective; the end-of-run validation reports each task's val split. Fine-tunes start from its exported model
through train.init (an AR file starts a NAR run with new query vectors, as NARVL's decoder starts from OFA's).

Everything is checked before any work: batch arithmetic (micro_batch x grad_accum x world size = global_batch),
shards, sizes.json, tokenizer, the checkpoint's model configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from narvl import params as P, tasks
from narvl.errors import NarvlError
from narvl.io import file_sha256, restricted_torch_loads, write_json
from narvl.tasks.grounding import REGION, REGION_SOURCE, region_sample
from narvl.train import checkpoint as ck
from narvl.train import launch
from narvl.train.config import PRETRAIN, check_train_params

log = logging.getLogger("narvl.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help="parameter folder (train.yaml, model.yaml, data.yaml)")
    parser.add_argument("--task", required=True, choices=(*P.TASKS, PRETRAIN),
                        help=f"the task; {PRETRAIN}: the multi-task AR stage on train.pretrain.weights' tasks")
    parser.add_argument("--kind", required=True, choices=("ar", "nar"), help="nar: Q-CTC model; ar: baseline")
    parser.add_argument("--shards", required=True, help="shard folder with sizes.json (data/shards/TASK); "
                        f"--task {PRETRAIN}: the folder of the tasks' shard folders (data/shards)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json")
    parser.add_argument("--out", required=True, help="run folder (runs/TASK-KIND)")
    parser.add_argument("--seed", type=int, help="train.seed for this run (pipeline.seeds: one run per seed)")
    parser.add_argument("--tasks", help=f"--task {PRETRAIN}: mix only these of train.pretrain.weights' tasks "
                        "(comma-separated; the workflow passes pipeline.tasks)")
    parser.add_argument("--init", help="train.init for this run: the weights it starts from (a narvl model file "
                        "or an OFA checkpoint; pipeline.pretrain gives the multi-task AR model)")
    parser.add_argument("--init-resnet", help="train.init_resnet for this run: the ResNet's starting weights (a "
                        "`narvl pretrain-resnet` file or a torchvision-layout state dict; pipeline.pretrain_resnet)")


def narvl_argv(args: argparse.Namespace) -> list[str]:
    """The command line that re-runs this command (for torchrun)."""
    argv = ["-v"] if getattr(args, "verbose", False) else []
    seed = [] if getattr(args, "seed", None) is None else ["--seed", str(args.seed)]
    init = [] if getattr(args, "init", None) is None else ["--init", args.init]
    mix = [] if getattr(args, "tasks", None) is None else ["--tasks", args.tasks]
    resnet = [] if getattr(args, "init_resnet", None) is None else ["--init-resnet", args.init_resnet]
    return argv + ["train", "--params", args.params, "--task", args.task, "--kind", args.kind,
                   "--shards", args.shards, "--tokenizer", args.tokenizer, "--out", args.out] + seed + mix + init \
        + resnet


# ---------------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Source:
    """One stream of training batches: a task's shard folder read as that task, or rewritten into other samples on
    the same images (`rewrite`: the pretraining's region samples, `narvl.tasks.grounding.region_sample`)."""

    task: str  # the task whose shards it reads (canvas, target length, val split)
    folder: Path
    rewrite: Callable[[dict], dict] | None = None


@dataclass
class Setup:
    """Everything a rank needs, checked before any work."""

    task: str  # a task, or PRETRAIN
    kind: str
    train: P.TrainParams  # train.task_overrides[task] and --seed applied
    data: P.DataParams
    identity: Any  # narvl.model.ModelIdentity: what the model is (kind, task, arch, vocabulary, slots, special ids)
    shards: Path  # --shards
    sources: dict[str, Source]  # the batch streams: each task trained on (one task, or train.pretrain's) [+ region]
    weights: dict[str, float]  # each stream's share of the batches
    steps: int  # train.steps[task], or train.pretrain.steps
    tokenizer: Any
    out: Path
    run_info: dict[str, Any]  # run.json: the model identity, world size, tokenizer
    params_hash: str

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def total_steps(self) -> int:
        return self.steps

    @property
    def multitask(self) -> bool:
        """--task pretrain: batches of several tasks, validated and summarised per task."""
        return self.task not in self.sources

    @property
    def world_size(self) -> int:
        """The world size the train params were checked for."""
        return self.run_info["world_size"]


def load_params(params_dir: str | Path) -> tuple[P.TrainParams, P.ModelParams, P.DataParams]:
    return (P.load_stage(params_dir, "train"), P.load_stage(params_dir, "model"),
            P.load_stage(params_dir, "data"))


def check_shards(shards: Path, task: str, splits: list[str]) -> dict[str, Any]:
    """sizes.json exists, lists every split with samples, and the listed shards exist and belong to `task`."""
    if not shards.is_dir():
        raise NarvlError(f"{shards}: no such shard folder (made by `narvl shard` or `narvl distill`)")
    from narvl.data.shard_folder import read_sizes

    sizes_path = shards / "sizes.json"
    sizes = read_sizes(shards, task)  # every listed name is one of this task's shard names, inside the folder
    for split in splits:
        entry = sizes.get(split)
        if not isinstance(entry, dict) or "shards" not in entry or "samples" not in entry:
            raise NarvlError(f"{sizes_path}: no split '{split}' with shards and samples "
                             f"(has: {', '.join(sorted(sizes)) or 'nothing'})")
        if int(entry["samples"]) < 1 or not entry["shards"]:
            raise NarvlError(f"{sizes_path}: split '{split}' has no samples")
        for name in entry["shards"]:
            if not (shards / name).is_file():
                raise NarvlError(f"{sizes_path}: split '{split}': shard {shards / name} is missing")
    return sizes


def _check_categories(folder: Path, where: str) -> None:
    """train.pretrain.region: the grounding shards' training samples name their object's category (the first one
    is read: `narvl shard` writes it for every sample of a refer file with categories, or for none)."""
    from narvl.data.shard_folder import ShardFolder

    first = next(iter(ShardFolder(folder).metas("train")), {})
    if "category" not in first:
        raise NarvlError(f"{where}: train.pretrain.region = region samples, but {folder}'s training samples name no "
                         f"category (shards made from OFA's TSV files, or before narvl wrote categories: run `narvl "
                         f"shard` again, or set train.pretrain.region: 0)")


def _start_file(value: str | None, key: str, what: str, where: str) -> dict[str, str] | None:
    """{path, sha256} of a train.init / train.init_resnet file for the run identity (None when unset)."""
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise NarvlError(f"{where}: train.{key}: {path}: no such file ({what})")
    return {"path": str(path), "sha256": file_sha256(path)}


def prepare(args: argparse.Namespace, world_size: int, cuda: bool,
            params: tuple[P.TrainParams, P.ModelParams, P.DataParams] | None = None) -> Setup:
    """Every check of a run with `world_size` ranks; `params`: load_params(args.params) when already loaded."""
    train, model_params, data = params or load_params(args.params)
    where = f"{Path(args.params) / 'train.yaml'}"
    pretrain = args.task not in P.TASKS  # --task pretrain (argparse allows nothing else)
    if getattr(args, "tasks", None) is not None and not pretrain:
        raise NarvlError(f"--tasks is for --task {PRETRAIN} only (this run trains {args.task} alone)")
    applied = train.override_names(args.task, args.kind)
    train = train.for_task(args.task, where, args.kind)
    if applied:  # the values checked below may come from these (e.g. the pretraining's nproc and micro_batch)
        where += " (with " + " + ".join(f"train.task_overrides.{n}" for n in applied) + ")"
    if getattr(args, "seed", None) is not None:
        train = dataclasses.replace(train, seed=args.seed)
    if getattr(args, "init", None) is not None:
        train = dataclasses.replace(train, init=args.init)
    if getattr(args, "init_resnet", None) is not None:
        train = dataclasses.replace(train, init_resnet=args.init_resnet)
    check_train_params(train, None if pretrain else args.task, world_size, cuda, where)
    if pretrain and args.kind != "ar":
        raise NarvlError(f"--task {PRETRAIN} trains an AR model (OFA's pretraining); NAR models start from it "
                         f"through train.init")
    init = _start_file(train.init, "init", "a narvl model file or an OFA checkpoint", where)
    init_resnet = _start_file(train.init_resnet, "init_resnet", "a ResNet state dict or a `narvl pretrain-resnet` "
                              "file", where)
    arch = model_params.arch()
    shards = Path(args.shards)
    weights = ({t: float(w) for t, w in train.pretrain.weights.items() if w > 0} if pretrain else {args.task: 1.0})
    if pretrain and getattr(args, "tasks", None):
        chosen = [t for t in args.tasks.split(",") if t]
        unknown = [t for t in chosen if t not in weights]
        if unknown or not chosen:
            raise NarvlError(f"--tasks {args.tasks}: {', '.join(unknown) or 'nothing'} not among the tasks of "
                             f"train.pretrain.weights with a positive weight ({', '.join(weights)})")
        weights = {t: w for t, w in weights.items() if t in chosen}
    sources = {t: Source(t, shards / t) for t in weights} if pretrain else {args.task: Source(args.task, shards)}
    if pretrain and train.pretrain.region > 0 and REGION_SOURCE in sources:
        weights[REGION] = float(train.pretrain.region)
        sources[REGION] = Source(REGION_SOURCE, shards / REGION_SOURCE, region_sample)
    for task, folder in dict.fromkeys((src.task, src.folder) for src in sources.values()):
        if task not in model_params.num_queries:
            raise NarvlError(f"{Path(args.params) / 'model.yaml'}: model.num_queries has no entry for '{task}'")
        num_queries = model_params.num_queries[task]
        max_tgt = data.loader.max_target_len.get(task)
        if max_tgt is None:
            raise NarvlError(f"{Path(args.params) / 'data.yaml'}: data.loader.max_target_len has no entry for "
                             f"'{task}'")
        if args.kind == "nar" and num_queries > arch.max_target_len:
            raise NarvlError(f"model.num_queries.{task} = {num_queries} exceeds the architecture's max_target_len "
                             f"{arch.max_target_len}")
        tasks.get(task).check_train(args.kind, num_queries, max_tgt, train, str(args.params))
        if args.kind == "ar" and max_tgt + 1 > arch.max_target_len:
            raise NarvlError(f"data.loader.max_target_len.{task} = {max_tgt} (+1 for EOS) exceeds the "
                             f"architecture's max_target_len {arch.max_target_len}")
        check_shards(folder, task, ["train", train.val_split[task]])
    if REGION in sources:
        _check_categories(sources[REGION].folder, where)
    if data.loader.max_source_len > arch.max_source_len:
        raise NarvlError(f"data.loader.max_source_len = {data.loader.max_source_len} exceeds the architecture's "
                         f"max_source_len {arch.max_source_len}")
    # an AR model has no query slots; the multi-task model records the largest (a NAR fine-tune makes its own)
    num_queries = max(model_params.num_queries[src.task] for src in sources.values())

    from narvl.data.tokenizer import Tokenizer
    from narvl.model import ModelIdentity

    tok_path = Path(args.tokenizer)
    tokenizer = Tokenizer.load(tok_path)
    special_ids = {"pad": tokenizer.pad_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id,
                   "unk": tokenizer.unk_id, "blank": tokenizer.blank_id}
    tok_sha = file_sha256(tok_path)
    model_identity = ModelIdentity(args.kind, args.task, arch, tokenizer.vocab_size, num_queries, special_ids)
    # run.json's identity: the model's, and what it was trained from (a checkpoint resumes only the same run)
    identity = {**model_identity.to_dict(), "tokenizer_sha256": tok_sha, "init": init}
    if init_resnet is not None:  # (absent otherwise: runs without it keep their identity)
        identity["init_resnet"] = init_resnet
    if train.freeze_resnet != "none":  # a frozen ResNet has other optimizer groups: its checkpoints are another run's
        identity["freeze_resnet"] = train.freeze_resnet
    run_info = {"format": "narvl-run-v1", "identity": identity, "identity_hash": ck.identity_hash(identity),
                "zero_stage": train.zero_stage, "world_size": world_size, "precision": train.precision,
                "tokenizer": {"path": str(tok_path), "sha256": tok_sha}}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NarvlError(f"{out}: exists and is not a folder")
    ck.check_compatible(out / "checkpoints", run_info)
    blob = json.dumps({"train": P.to_dict(train), "model": P.to_dict(model_params), "data": P.to_dict(data),
                       "task": args.task, "kind": args.kind}, sort_keys=True).encode()
    return Setup(task=args.task, kind=args.kind, train=train, data=data, identity=model_identity, shards=shards,
                 sources=sources, weights=weights,
                 steps=train.pretrain.steps if pretrain else train.steps[args.task],
                 tokenizer=tokenizer, out=out, run_info=run_info,
                 params_hash=hashlib.sha256(blob).hexdigest()[:12])


# ------------------------------------------------------------------------------------------------ entry point
def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch (seconds) on machines with no NVIDIA device."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    import torch

    return torch.cuda.is_available()


def main(args: argparse.Namespace) -> int:
    cuda = cuda_available()
    where = launch.placement()
    params = load_params(args.params)
    train = params[0].for_task(args.task, f"{Path(args.params) / 'train.yaml'}", args.kind)  # its own nproc counts
    world = where.world_size if where.mode != "plain" else train.nproc
    setup = prepare(args, world, cuda, params)  # every check, before any work
    if where.mode == "plain" and train.nproc > 1:
        if cuda:
            import torch

            if torch.cuda.device_count() < train.nproc:
                raise NarvlError(f"train.nproc = {train.nproc} but only {torch.cuda.device_count()} GPU(s) "
                                 "are visible")
        log.info("starting %d ranks under torchrun", train.nproc)
        launch.exec_torchrun(train.nproc, narvl_argv(args))  # does not return
    return run(setup)


def use_private_extensions_dir(accelerator: str) -> None:
    """Select DeepSpeed's accelerator and give this Python environment its own cache of compiled DeepSpeed ops.

    DeepSpeed compiles its shared-memory op at first start into TORCH_EXTENSIONS_DIR. Processes of another
    environment (another venv: other include paths) or accelerator setting build it with other flags; sharing one
    folder, they rebuild it in turn and make each other wait minutes. Unless TORCH_EXTENSIONS_DIR is set, narvl uses
    ~/.cache/torch_extensions/narvl-<accelerator>-<hash of the Python prefix>. The build runs this environment's
    ninja (the pinned one beside the interpreter, as in the workflow's jobs) ahead of any other on PATH: ninja 1.11
    (Debian's) and 1.13 (pinned) keep build logs of different versions and hash commands differently, so each
    rebuilds what the other built (seen: a plain `python -m narvl train` recompiled the op a Snakemake job had just
    built).
    """
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.isfile(os.path.join(bindir, "ninja")) and path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + (os.pathsep + path if path else "")
    if accelerator == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    env_id = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                          str(Path.home() / ".cache" / "torch_extensions" / f"narvl-{accelerator}-{env_id}"))


def build_deepspeed_ops() -> None:
    """Compile DeepSpeed's shared-memory op into this environment's extension cache now (install.sh runs this), so
    that the first training on a machine does not spend its first minute compiling it (about 40 s on 2 cores).
    `deepspeed.comm` builds the op whenever it starts, and a cached build is loaded in a second. It is built only
    where DeepSpeed would build it (a Linux CPU accelerator; a CUDA accelerator has no such op)."""
    import torch

    use_private_extensions_dir("cuda" if torch.cuda.is_available() else "cpu")
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def run(setup: Setup) -> int:
    if os.environ.get(launch.SELF_LAUNCHED):
        launch.die_with_parent()
    launch.become_rank()
    import torch

    cuda = torch.cuda.is_available()
    use_private_extensions_dir("cuda" if cuda else "cpu")
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    rank = dist.get_rank()
    if rank != 0:
        logging.getLogger("narvl").setLevel(logging.WARNING)
    code = Trainer(setup, rank, dist.get_world_size(), cuda).fit()
    dist.barrier()
    dist.destroy_process_group()
    return code


# ---------------------------------------------------------------------------------------------------- training
def objective(kind: str, task: str | None, special_ids: dict[str, int], tokenizer, train: P.TrainParams):
    """The training objective of a (kind, task) from the train params and the task's options
    (`Task.objective_options`: VQA score weights; grounding's distance-aware location and per-slot targets)."""
    from narvl.train.engine import Objective

    options = tasks.get(task).objective_options(kind, tokenizer, train) if task is not None else {}
    return Objective(kind=kind, special_ids=special_ids, label_smoothing=train.label_smoothing, **options)


class BatchStream:
    """The endless training stream of one rank, with its position (seed, batches consumed) for checkpoints."""

    def __init__(self, make, seed: int, skip: int, show: bool):
        self.make, self.seed, self.consumed = make, seed, 0
        self._it = iter(make(seed))
        if skip:
            from tqdm import tqdm

            for _ in tqdm(range(skip), desc="restoring the data position", unit="batch", disable=not show,
                          leave=False):
                self._next()

    def _next(self):
        try:
            batch = next(self._it)
        except StopIteration:
            raise NarvlError("the training loader ended; it should be endless") from None
        self.consumed += 1
        return batch

    def __next__(self):
        return self._next()

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "consumed": self.consumed}


def grad_norm_of(module) -> float:
    """L2 norm of all gradients (before clipping)."""
    import torch

    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


@dataclass
class Start:
    """Where this run starts: afresh, or at the step of the checkpoint it resumes."""

    step: int
    seed: int  # the training stream's seed
    skip: int  # batches each rank replays to reach the checkpoint's exact data position
    history: dict[str, float]  # wall_s, infeasible_total, samples_seen of the runs before (the checkpoint's marker)


@dataclass
class Progress:
    """This run's running totals, for the logs, the checkpoint markers and summary.json."""

    infeasible_total: float = 0.0
    compute_s: float = 0.0  # time in forward/backward/step only (not validation, logging or checkpoints)
    window_compute_s: float = 0.0  # the same since the last log step
    window_steps: int = 0
    last_terms: dict[str, float] = field(default_factory=dict)  # the last logged train terms, lr, samples/s


class Trainer:
    """One rank's training run. fit() = _build (model, engine, objective), _resume (newest readable complete
    checkpoint, or a fresh start), _open (ds_config.json, the data stream, tensorboard, progress bar), then _step and
    _log_and_save until train.steps, then _finish (final validation, summary.json)."""

    def __init__(self, setup: Setup, rank: int, world: int, cuda: bool):
        self.s, self.train, self.rank, self.world, self.cuda = setup, setup.train, rank, world, cuda

    def fit(self) -> int:
        self.t_start = time.perf_counter()
        if self.world != self.s.world_size:  # prepare() checked the train params for this world size
            raise NarvlError(f"{self.s.out}: this run has {self.world} ranks, but its parameters were checked for "
                             f"{self.s.world_size}")
        self._build()
        self.start = self._resume()
        self._open()
        step = self.start.step
        while step < self.s.total_steps:
            step, own_norm = self._step(step)
            self._log_and_save(step, own_norm)
        self.bar.close()
        self._finish(step)
        return 0

    def _is_log_step(self, step: int) -> bool:
        return step % self.train.log_every == 0 or step == self.s.total_steps

    # ------------------------------------------------------------------------------------------ build, resume
    def _build(self) -> None:
        """The model (the same initial weights on every rank; train.init loaded before the engine partitions
        anything), the DeepSpeed engine and the objective."""
        import numpy as np
        import torch

        from narvl.train.engine import build_engine

        s, train = self.s, self.train
        random.seed(train.seed)
        np.random.seed(train.seed)
        torch.manual_seed(train.seed)
        self.model = s.identity.build()
        if train.init_resnet is not None:  # OFA's resnet_model_path; train.init, when given, loads over it
            from narvl.train.init import load_resnet

            log.info("ResNet weights from %s", load_resnet(train.init_resnet, self.model.encoder.embed_images))
        if train.init is not None:  # a resumed run then loads its checkpoint over these weights
            from narvl.train.init import load_init

            log.info("initial weights from %s", load_init(train.init, self.model, s.tokenizer, train.init_bpe_dir))
        if train.freeze_resnet != "none":  # after the starting weights: what stays fixed is what was loaded
            self.model.encoder.embed_images.freeze(train.freeze_resnet)
            log.info("ResNet frozen (train.freeze_resnet: %s)", train.freeze_resnet)
            # on the CPU only: on a GPU the ResNet costs less than copying each image to the host to hash it
            if train.freeze_resnet == "all" and train.frozen_feature_cache_mb and not self.cuda:
                self.model.encoder.embed_images.cache_features(train.frozen_feature_cache_mb * 2 ** 20)
                log.info("frozen ResNet features cached per image, up to %d MiB (train.frozen_feature_cache_mb)",
                         train.frozen_feature_cache_mb)
        self.engine, _, _, self.group_names, self.ds_config = build_engine(self.model, train, s.total_steps)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[train.precision]
        # region samples have text targets: the plain AR objective, none of grounding's box options
        self.objs = {name: objective(s.kind, None if src.rewrite else src.task, s.identity.special_ids, s.tokenizer,
                                     train) for name, src in s.sources.items()}
        # DeepSpeed reports the gradient norm only through its ZeRO / mixed-precision optimizer wrappers
        self.plain_fp32 = train.zero_stage == 0 and train.precision == "fp32"

    def _latest_checkpoint(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint whose files all load; incomplete and unreadable ones are removed."""
        import torch.distributed as dist

        ckpt_dir = self.s.ckpt_dir
        if self.rank == 0:
            for stale in ck.checkpoints(ckpt_dir)[1]:
                log.warning("ignoring incomplete checkpoint %s (no %s: the run stopped while saving); removing it",
                            stale, ck.MARKER)
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()
        latest, broken = ck.latest_readable(ckpt_dir, ck.deepspeed_allow())  # every rank checks: all agree
        dist.barrier()
        if self.rank == 0:
            for tag_dir, why in broken:
                log.warning("ignoring checkpoint %s: %s; falling back to the previous complete checkpoint and "
                            "removing it", tag_dir, why)
                (tag_dir / ck.MARKER).unlink(missing_ok=True)  # unmark first, as ck.prune does
                shutil.rmtree(tag_dir, ignore_errors=True)
        return latest

    def _resume(self) -> Start:
        """Continue from the newest usable checkpoint (weights, optimizer, RNG states, data position; the LR
        schedule rebuilt from the current params, e.g. more steps), or start afresh and write run.json."""
        import torch

        from narvl.train.engine import resume_lr_scheduler

        s, train, rank, world = self.s, self.train, self.rank, self.world
        latest = self._latest_checkpoint()
        history = {"wall_s": 0.0, "infeasible_total": 0.0, "samples_seen": 0}
        if latest is None:
            torch.manual_seed(train.seed + 1 + rank)  # dropout differs across ranks
            if rank == 0:
                ck.write_run_info(s.ckpt_dir, dict(s.run_info, param_groups=self.group_names, world_size=world))
            return Start(step=0, seed=train.seed, skip=0, history=history)
        step, tag_dir = latest
        with restricted_torch_loads(ck.deepspeed_allow()):  # DeepSpeed's own torch.load calls: weights_only=False
            load_path, _ = self.engine.load_checkpoint(str(s.ckpt_dir), tag=tag_dir.name)
        if load_path is None:
            raise NarvlError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
        if self.engine.global_steps != step:
            raise NarvlError(f"{tag_dir}: holds global step {self.engine.global_steps}, its name says {step}")
        # the schedule follows the current parameters (e.g. more steps), not the ones saved with it
        resume_lr_scheduler(self.engine, train, s.total_steps)
        mark = ck.marker(tag_dir)
        history = {k: mark.get(k, v) for k, v in history.items()}
        state = ck.load_rank_state(tag_dir, rank) if mark.get("world_size") == world else None
        if state is None:
            seed, skip = train.seed + step, 0
            torch.manual_seed(train.seed + step + 1 + rank)
            position = (f"data stream reseeded at step {step} (the checkpoint has {mark.get('world_size')} "
                        f"ranks, this run {world})")
        else:
            ck.restore_rng(state["rng"])
            if state["consumed"] <= train.resume_replay_batches:
                seed, skip = state["seed"], state["consumed"]
                position = f"data position restored ({skip} batches replayed per rank)"
            else:
                seed, skip = train.seed + step, 0
                position = (f"data stream reseeded at step {step} ({state['consumed']} batches per rank "
                            f"exceed train.resume_replay_batches = {train.resume_replay_batches})")
        log.info("resuming from checkpoint %s at step %d of %d; %s", tag_dir, step, s.total_steps, position)
        return Start(step=step, seed=seed, skip=skip, history=history)

    def _open(self) -> None:
        """ds_config.json, the training stream at its position, tensorboard and the progress bar."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        from narvl.data.loader import mixed_batches, train_loader
        from narvl.train.engine import StatWindow

        s, train, rank, world, start = self.s, self.train, self.rank, self.world, self.start.step
        if rank == 0:
            write_json(s.out / "ds_config.json", dict(self.ds_config, world_size=world))

        def make(seed: int):
            loaders = {name: train_loader(src.folder, "train", s.tokenizer, s.data, src.task, train.micro_batch, rank,
                                          world, seed, src.rewrite) for name, src in s.sources.items()}
            return mixed_batches(loaders, s.weights, seed)

        self.stream = BatchStream(make, self.start.seed, self.start.skip, show=rank == 0) \
            if start < s.total_steps else None
        self.writer = SummaryWriter(str(s.out / "tb"), purge_step=start if start else None) if rank == 0 else None
        self.window = StatWindow()
        self.progress = Progress()
        self.bar = tqdm(total=s.total_steps, initial=start, desc=f"train {s.task}-{s.kind}", unit="step",
                        disable=rank != 0, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)

    # --------------------------------------------------------------------------------------- step, log, save
    def _step(self, step: int) -> tuple[int, float | None]:
        """One optimizer step (train.grad_accum micro-batches) -> (the engine's global step, the gradient norm
        measured here before clipping: on a log step of a plain fp32 run, else None)."""
        import torch

        from narvl.train.engine import forward_loss, to_device

        train, engine = self.train, self.engine
        t0 = time.perf_counter()
        logging_step = self._is_log_step(step + 1)
        own_norm = None
        for micro in range(train.grad_accum):
            batch = to_device(next(self.stream), engine.device, self.dtype)
            loss, stats = forward_loss(engine, batch, self.objs[batch["task"]])
            engine.backward(loss)
            if logging_step and micro == train.grad_accum - 1 and self.plain_fp32:
                own_norm = grad_norm_of(engine.module)  # gradients are all-reduced by now, not yet clipped
            engine.step()
            self.window.add(stats)
        if self.cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        p = self.progress
        p.compute_s += dt
        p.window_compute_s += dt
        p.window_steps += 1
        self.bar.update(1)
        return engine.global_steps, own_norm

    def _log_and_save(self, step: int, own_norm: float | None) -> None:
        """After optimizer step `step`: train scalars every train.log_every steps, validation every
        train.val_every, a checkpoint every train.checkpoint_every (and the last step's)."""
        train, total = self.train, self.s.total_steps
        if self._is_log_step(step):
            self._log(step, own_norm)
        if train.val_every and step % train.val_every == 0 and step < total:
            self._validate(step)
        if step % train.checkpoint_every == 0 or step == total:
            self._save(step)

    def _log(self, step: int, own_norm: float | None) -> None:
        import torch.distributed as dist

        train, p, writer = self.train, self.progress, self.writer
        terms = self.window.reduce(dist)
        p.infeasible_total += terms.get("infeasible", 0.0)
        samples_per_s = p.window_steps * train.global_batch / max(p.window_compute_s, 1e-9)
        grad_norm = own_norm if self.plain_fp32 else self.engine.get_global_grad_norm()
        lr = self.engine.lr_scheduler.get_last_lr()[0]
        p.last_terms = dict(terms, lr=lr, samples_per_s=samples_per_s)
        if writer is not None:
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", v, step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/samples_per_s", samples_per_s, step)
            if grad_norm is not None and math.isfinite(float(grad_norm)):
                writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.flush()
        self.bar.set_postfix(loss=f"{terms.get('loss', math.nan):.4f}", lr=f"{lr:.2e}",
                             sps=f"{samples_per_s:.1f}", refresh=False)
        p.window_compute_s, p.window_steps = 0.0, 0

    def _validate(self, step: int) -> dict[str, Any]:
        """Loss and exact match on train.val_split (each rank its part, or all the same batches under ZeRO-3,
        which needs every rank in every forward); a multi-task run validates each task's split, logged per task."""
        from narvl.data.loader import eval_loader
        from narvl.train.engine import validate

        s, train, writer = self.s, self.train, self.writer
        split_val = train.zero_stage < 3
        results = {}
        for task, src in s.sources.items():
            val_split = train.val_split[src.task]
            batches = eval_loader(src.folder, val_split, s.tokenizer, s.data, src.task, train.micro_batch,
                                  self.rank if split_val else 0, self.world if split_val else 1, src.rewrite)
            result = validate(self.engine, batches, self.objs[task], train.val_batches, self.dtype,
                              reduce_over_ranks=split_val)
            prefix = f"val/{task}" if s.multitask else "val"
            if writer is not None:
                for k in ("loss", "exact_match", "infeasible"):
                    writer.add_scalar(f"{prefix}/{k}", result[k], step)
                writer.flush()
            log.info("validation on %s%s at step %d: loss %.4f, exact match %.3f (%d samples)", val_split,
                     f" of {task}" if s.multitask else "", step, result["loss"], result["exact_match"],
                     result["samples"])
            results[task] = dict(result, split=val_split)
        return results if s.multitask else results[s.task]

    def _totals(self, step: int) -> dict[str, float]:
        """wall_s, infeasible_total and samples_seen over this run and the runs it resumed."""
        history, train = self.start.history, self.train
        return {"wall_s": history["wall_s"] + (time.perf_counter() - self.t_start),
                "infeasible_total": history["infeasible_total"] + self.progress.infeasible_total,
                "samples_seen": history["samples_seen"] + (step - self.start.step) * train.global_batch}

    def _save(self, step: int) -> None:
        """A DeepSpeed checkpoint, each rank's data position and RNG states, then (rank 0) the COMPLETE marker."""
        import torch.distributed as dist

        s, train, rank, ckpt_dir = self.s, self.train, self.rank, self.s.ckpt_dir
        tag = ck.tag_for(step)
        self.engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"narvl_step": step})
        ck.save_rank_state(ckpt_dir / tag, rank, dict(self.stream.state(), rng=ck.capture_rng()))
        dist.barrier()
        if rank == 0:
            ck.mark_complete(ckpt_dir / tag, {
                "step": step, "world_size": self.world, "zero_stage": train.zero_stage,
                "identity_hash": s.run_info["identity_hash"], "precision": train.precision, **self._totals(step),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
            ck.prune(ckpt_dir, train.keep_checkpoints)
        dist.barrier()

    def _finish(self, step: int) -> None:
        """The final validation and (rank 0) summary.json."""
        from narvl.model import count_parameters

        s, train, p = self.s, self.train, self.progress
        val = self._validate(step)
        trained = step - self.start.step
        totals = self._totals(step)
        summary = {
            "task": s.task, "kind": s.kind, "steps": step, "start_step": self.start.step,
            "resumed": self.start.step > 0, "world_size": self.world, "device": "cuda" if self.cuda else "cpu",
            "precision": train.precision, "zero_stage": train.zero_stage, "global_batch": train.global_batch,
            "micro_batch": train.micro_batch, "grad_accum": train.grad_accum, "final": p.last_terms,
            "val": val,  # a multi-task run: per task
            "samples_per_s": trained * train.global_batch / p.compute_s if p.compute_s > 0 else None,
            "wall_s": time.perf_counter() - self.t_start,
            "wall_s_total": totals["wall_s"], "infeasible_total": totals["infeasible_total"],
            "params_hash": s.params_hash, "identity_hash": s.run_info["identity_hash"],
            "num_parameters": count_parameters(self.model), "tokenizer": s.run_info["tokenizer"],
            "shards": str(s.shards),
            **({"tasks": s.weights} if s.multitask else {}),
        }
        if self.rank == 0:
            write_json(s.out / "summary.json", summary)
            self.writer.close()
            log.info("trained %s-%s to step %d (%d this run) in %.1f s; summary in %s", s.task, s.kind, step,
                     trained, summary["wall_s"], s.out / "summary.json")
