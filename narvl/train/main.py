"""Train the NAR model (Q-CTC over N query slots) or the AR baseline (teacher-forced cross-entropy) with DeepSpeed.

Reads   --params DIR       train.yaml, model.yaml, data.yaml (train.init: the weights to start from, narvl/train/init.py)
        --shards DIR       sizes.json and <task>-<split>-NNNNNN.tar (the train split and train.val_split[task])
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from narvl import params as P
from narvl.errors import NarvlError
from narvl.io import file_sha256, restricted_torch_loads, write_json
from narvl.train import checkpoint as ck
from narvl.train import launch
from narvl.train.config import WarmupCosine, check_train_params

log = logging.getLogger("narvl.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help="parameter folder (train.yaml, model.yaml, data.yaml)")
    parser.add_argument("--task", required=True, choices=P.TASKS)
    parser.add_argument("--kind", required=True, choices=("ar", "nar"), help="nar: Q-CTC model; ar: baseline")
    parser.add_argument("--shards", required=True, help="shard folder with sizes.json (data/shards/TASK)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json")
    parser.add_argument("--out", required=True, help="run folder (runs/TASK-KIND)")
    parser.add_argument("--seed", type=int, help="train.seed for this run (pipeline.seeds: one run per seed)")


def narvl_argv(args: argparse.Namespace) -> list[str]:
    """The command line that re-runs this command (for torchrun)."""
    argv = ["-v"] if getattr(args, "verbose", False) else []
    seed = [] if getattr(args, "seed", None) is None else ["--seed", str(args.seed)]
    return argv + ["train", "--params", args.params, "--task", args.task, "--kind", args.kind,
                   "--shards", args.shards, "--tokenizer", args.tokenizer, "--out", args.out] + seed


# ---------------------------------------------------------------------------------------------------- checks
@dataclass
class Setup:
    """Everything a rank needs, checked before any work."""

    task: str
    kind: str
    train: P.TrainParams
    model: P.ModelParams
    data: P.DataParams
    arch: P.ArchParams
    shards: Path
    tokenizer_path: Path
    tokenizer: Any
    special_ids: dict[str, int]
    num_queries: int
    out: Path
    run_info: dict[str, Any]
    params_hash: str

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def total_steps(self) -> int:
        return self.train.steps[self.task]


def load_params(params_dir: str | Path) -> tuple[P.TrainParams, P.ModelParams, P.DataParams]:
    d = Path(params_dir)
    if not d.is_dir():
        raise NarvlError(f"{d}: no such parameter folder (expected train.yaml, model.yaml, data.yaml in it)")
    return P.load(d / "train.yaml", "train"), P.load(d / "model.yaml", "model"), P.load(d / "data.yaml", "data")


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


def prepare(args: argparse.Namespace, world_size: int, cuda: bool) -> Setup:
    train, model_params, data = load_params(args.params)
    where = f"{Path(args.params) / 'train.yaml'}"
    train = train.for_task(args.task, where)
    if getattr(args, "seed", None) is not None:
        train = dataclasses.replace(train, seed=args.seed)
    check_train_params(train, args.task, world_size, cuda, where)
    init = None
    if train.init is not None:
        init_path = Path(train.init)
        if not init_path.is_file():
            raise NarvlError(f"{where}: train.init: {init_path}: no such file (a narvl model file or an OFA "
                             f"checkpoint)")
        init = {"path": str(init_path), "sha256": file_sha256(init_path)}
    arch = model_params.arch()
    if args.task not in model_params.num_queries:
        raise NarvlError(f"{Path(args.params) / 'model.yaml'}: model.num_queries has no entry for '{args.task}'")
    num_queries = model_params.num_queries[args.task]
    max_tgt = data.loader.max_target_len.get(args.task)
    if max_tgt is None:
        raise NarvlError(f"{Path(args.params) / 'data.yaml'}: data.loader.max_target_len has no entry for "
                         f"'{args.task}'")
    if args.kind == "nar" and num_queries > arch.max_target_len:
        raise NarvlError(f"model.num_queries.{args.task} = {num_queries} exceeds the architecture's max_target_len "
                         f"{arch.max_target_len}")
    if args.kind == "nar" and args.task == "grounding" and train.grounding_slot_targets and max_tgt + 1 > num_queries:
        raise NarvlError(f"train.grounding_slot_targets needs a slot per box token and one for EOS: "
                         f"model.num_queries.grounding = {num_queries} < data.loader.max_target_len.grounding + 1 = "
                         f"{max_tgt + 1}")
    if args.kind == "ar" and max_tgt + 1 > arch.max_target_len:
        raise NarvlError(f"data.loader.max_target_len.{args.task} = {max_tgt} (+1 for EOS) exceeds the "
                         f"architecture's max_target_len {arch.max_target_len}")
    if data.loader.max_source_len > arch.max_source_len:
        raise NarvlError(f"data.loader.max_source_len = {data.loader.max_source_len} exceeds the architecture's "
                         f"max_source_len {arch.max_source_len}")
    shards = Path(args.shards)
    check_shards(shards, args.task, ["train", train.val_split[args.task]])

    from narvl.data.tokenizer import Tokenizer

    tok_path = Path(args.tokenizer)
    tokenizer = Tokenizer.load(tok_path)
    special_ids = {"pad": tokenizer.pad_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id,
                   "unk": tokenizer.unk_id, "blank": tokenizer.blank_id}
    tok_sha = file_sha256(tok_path)
    identity = {"kind": args.kind, "task": args.task, "arch": dataclasses.asdict(arch),
                "vocab_size": tokenizer.vocab_size, "num_queries": num_queries, "special_ids": special_ids,
                "tokenizer_sha256": tok_sha, "init": init}
    run_info = {"format": "narvl-run-v1", "identity": identity, "identity_hash": ck.identity_hash(identity),
                "zero_stage": train.zero_stage, "world_size": world_size, "precision": train.precision,
                "tokenizer": {"path": str(tok_path), "sha256": tok_sha}}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NarvlError(f"{out}: exists and is not a folder")
    ck.check_compatible(out / "checkpoints", run_info)
    blob = json.dumps({"train": P.to_dict(train), "model": P.to_dict(model_params), "data": P.to_dict(data),
                       "task": args.task, "kind": args.kind}, sort_keys=True).encode()
    return Setup(task=args.task, kind=args.kind, train=train, model=model_params, data=data, arch=arch,
                 shards=shards, tokenizer_path=tok_path, tokenizer=tokenizer, special_ids=special_ids,
                 num_queries=num_queries, out=out, run_info=run_info,
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
    train, _, _ = load_params(args.params)
    world = where.world_size if where.mode != "plain" else train.nproc
    setup = prepare(args, world, cuda)  # every check, before any work
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
    ~/.cache/torch_extensions/narvl-<accelerator>-<hash of the Python prefix>.
    """
    if accelerator == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    env_id = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                          str(Path.home() / ".cache" / "torch_extensions" / f"narvl-{accelerator}-{env_id}"))


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
def objective(kind: str, task: str, special_ids: dict[str, int], tokenizer, train: P.TrainParams):
    """The training objective of a (kind, task) from the train params: VQA score weights, and for grounding the
    distance-aware location targets and (NAR) per-slot targets."""
    from narvl.loss.location import LocationTargets
    from narvl.train.engine import Objective

    loc = None
    if task == "grounding" and (train.loc_sigma > 0 or train.loc_l1_weight > 0):
        loc = LocationTargets(tokenizer.bin_offset, tokenizer.num_bins, train.loc_sigma, train.loc_l1_weight)
    return Objective(kind=kind, special_ids=special_ids, label_smoothing=train.label_smoothing,
                     use_weights=task == "vqa" and train.vqa_score_weights, loc=loc,
                     slot_targets=kind == "nar" and task == "grounding" and train.grounding_slot_targets)


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


class Trainer:
    def __init__(self, setup: Setup, rank: int, world: int, cuda: bool):
        self.s, self.rank, self.world, self.cuda = setup, rank, world, cuda

    def fit(self) -> int:  # noqa: C901 - the training loop reads best top to bottom
        import numpy as np
        import torch
        import torch.distributed as dist
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        from narvl.data.loader import eval_loader, train_loader
        from narvl.model import build_model, count_parameters
        from narvl.train.engine import StatWindow, build_engine, forward_loss, to_device, validate

        s, train, rank, world = self.s, self.s.train, self.rank, self.world
        t_start = time.perf_counter()
        total = s.total_steps
        check_train_params(train, s.task, world, self.cuda, f"{s.out}: world size {world}")

        # the same initial weights on every rank
        random.seed(train.seed)
        np.random.seed(train.seed)
        torch.manual_seed(train.seed)
        model = build_model(s.kind, s.arch, s.tokenizer.vocab_size, s.num_queries, s.special_ids)
        if train.init is not None:  # before the engine partitions anything; a resumed run then loads its checkpoint
            from narvl.train.init import load_init

            log.info("initial weights from %s", load_init(train.init, model, s.tokenizer, train.init_bpe_dir))
        engine, _, scheduler, group_names, ds_config = build_engine(model, train, total)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[train.precision]
        obj = objective(s.kind, s.task, s.special_ids, s.tokenizer, train)

        # ---- resume or start afresh
        ckpt_dir = s.ckpt_dir
        if rank == 0:
            for stale in ck.checkpoints(ckpt_dir)[1]:
                log.warning("ignoring incomplete checkpoint %s (no %s: the run stopped while saving); removing it",
                            stale, ck.MARKER)
                shutil.rmtree(stale, ignore_errors=True)
        dist.barrier()
        allow = ck.deepspeed_allow()
        latest, broken = ck.latest_readable(ckpt_dir, allow)  # every rank checks: all agree, none waits on rank 0
        dist.barrier()
        if rank == 0:
            for tag_dir, why in broken:
                log.warning("ignoring checkpoint %s: %s; falling back to the previous complete checkpoint and "
                            "removing it", tag_dir, why)
                (tag_dir / ck.MARKER).unlink(missing_ok=True)  # unmark first, as ck.prune does
                shutil.rmtree(tag_dir, ignore_errors=True)
        history = {"wall_s": 0.0, "infeasible_total": 0.0, "samples_seen": 0}
        if latest is None:
            start, seed, skip = 0, train.seed, 0
            torch.manual_seed(train.seed + 1 + rank)  # dropout differs across ranks
            if rank == 0:
                info = dict(s.run_info, param_groups=group_names, world_size=world)
                ck.write_run_info(ckpt_dir, info)
        else:
            step, tag_dir = latest
            with restricted_torch_loads(allow):  # DeepSpeed's own torch.load calls pass weights_only=False
                load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag_dir.name)
            if load_path is None:
                raise NarvlError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
            if engine.global_steps != step:
                raise NarvlError(f"{tag_dir}: holds global step {engine.global_steps}, its name says {step}")
            # the schedule follows the current parameters (e.g. more steps), not the ones saved with it
            scheduler.lr_lambdas[0].__dict__.update(vars(WarmupCosine(train.warmup_steps, total,
                                                                      train.min_lr_ratio)))
            mark = ck.marker(tag_dir)
            history = {k: mark.get(k, v) for k, v in history.items()}
            state = ck.load_rank_state(tag_dir, rank) if mark.get("world_size") == world else None
            start = step
            if state is not None:
                ck.restore_rng(state["rng"])
                if state["consumed"] <= train.resume_replay_batches:
                    seed, skip = state["seed"], state["consumed"]
                    position = f"data position restored ({skip} batches replayed per rank)"
                else:
                    seed, skip = train.seed + step, 0
                    position = (f"data stream reseeded at step {step} ({state['consumed']} batches per rank "
                                f"exceed train.resume_replay_batches = {train.resume_replay_batches})")
            else:
                seed, skip = train.seed + step, 0
                torch.manual_seed(train.seed + step + 1 + rank)
                position = (f"data stream reseeded at step {step} (the checkpoint has {mark.get('world_size')} "
                            f"ranks, this run {world})")
            log.info("resuming from checkpoint %s at step %d of %d; %s", tag_dir, step, total, position)
        if rank == 0:
            write_json(s.out / "ds_config.json", dict(ds_config, world_size=world))

        make = lambda sd: train_loader(s.shards, "train", s.tokenizer, s.data, s.task, train.micro_batch,  # noqa: E731
                                       rank, world, sd)
        stream = BatchStream(make, seed, skip, show=rank == 0) if start < total else None
        split_val = train.zero_stage < 3  # ZeRO-3 needs every rank in every forward: validate the same batches
        val_split = train.val_split[s.task]

        def run_validation(step: int) -> dict[str, float]:
            batches = eval_loader(s.shards, val_split, s.tokenizer, s.data, s.task, train.micro_batch,
                                  rank if split_val else 0, world if split_val else 1)
            result = validate(engine, batches, obj, train.val_batches, dtype, reduce_over_ranks=split_val)
            if writer is not None:
                for k in ("loss", "exact_match", "infeasible"):
                    writer.add_scalar(f"val/{k}", result[k], step)
                writer.flush()
            log.info("validation on %s at step %d: loss %.4f, exact match %.3f (%d samples)", val_split, step,
                     result["loss"], result["exact_match"], result["samples"])
            return result

        def save(step: int) -> None:
            tag = ck.tag_for(step)
            engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"narvl_step": step})
            ck.save_rank_state(ckpt_dir / tag, rank, dict(stream.state(), rng=ck.capture_rng()))
            dist.barrier()
            if rank == 0:
                ck.mark_complete(ckpt_dir / tag, {
                    "step": step, "world_size": world, "zero_stage": train.zero_stage,
                    "identity_hash": s.run_info["identity_hash"], "precision": train.precision,
                    "wall_s": history["wall_s"] + (time.perf_counter() - t_start),
                    "infeasible_total": history["infeasible_total"] + infeasible_total,
                    "samples_seen": history["samples_seen"] + (step - start) * train.global_batch,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                })
                ck.prune(ckpt_dir, train.keep_checkpoints)
            dist.barrier()

        # DeepSpeed reports the gradient norm only through its ZeRO / mixed-precision optimizer wrappers
        plain_fp32 = train.zero_stage == 0 and train.precision == "fp32"
        writer = None
        if rank == 0:
            writer = SummaryWriter(str(s.out / "tb"), purge_step=start if start else None)
        window = StatWindow()
        last_terms: dict[str, float] = {}
        infeasible_total = 0.0
        compute_s = 0.0  # time in forward/backward/step only (not validation, logging or checkpoints)
        window_compute_s, window_steps = 0.0, 0
        step = start
        bar = tqdm(total=total, initial=start, desc=f"train {s.task}-{s.kind}", unit="step", disable=rank != 0,
                   dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
        while step < total:
            t0 = time.perf_counter()
            logging_step = (step + 1) % train.log_every == 0 or step + 1 == total
            own_norm = None
            for micro in range(train.grad_accum):
                batch = to_device(next(stream), engine.device, dtype)
                loss, stats = forward_loss(engine, batch, obj)
                engine.backward(loss)
                if logging_step and micro == train.grad_accum - 1 and plain_fp32:
                    own_norm = grad_norm_of(engine.module)  # gradients are all-reduced by now, not yet clipped
                engine.step()
                window.add(stats)
            if self.cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            compute_s += dt
            window_compute_s += dt
            window_steps += 1
            step = engine.global_steps
            bar.update(1)
            if step % train.log_every == 0 or step == total:
                terms = window.reduce(dist)
                infeasible_total += terms.get("infeasible", 0.0)
                samples_per_s = window_steps * train.global_batch / max(window_compute_s, 1e-9)
                grad_norm = own_norm if plain_fp32 else engine.get_global_grad_norm()
                lr = scheduler.get_last_lr()[0]
                last_terms = dict(terms, lr=lr, samples_per_s=samples_per_s)
                if writer is not None:
                    for k, v in terms.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/samples_per_s", samples_per_s, step)
                    if grad_norm is not None and math.isfinite(float(grad_norm)):
                        writer.add_scalar("train/grad_norm", float(grad_norm), step)
                    writer.flush()
                bar.set_postfix(loss=f"{terms.get('loss', math.nan):.4f}", lr=f"{lr:.2e}",
                                sps=f"{samples_per_s:.1f}", refresh=False)
                window_compute_s, window_steps = 0.0, 0
            if train.val_every and step % train.val_every == 0 and step < total:
                run_validation(step)
            if step % train.checkpoint_every == 0 or step == total:
                save(step)
        bar.close()

        val = run_validation(step)
        trained = step - start
        summary = {
            "task": s.task, "kind": s.kind, "steps": step, "start_step": start, "resumed": start > 0,
            "world_size": world, "device": "cuda" if self.cuda else "cpu", "precision": train.precision,
            "zero_stage": train.zero_stage, "global_batch": train.global_batch, "micro_batch": train.micro_batch,
            "grad_accum": train.grad_accum, "final": last_terms, "val": dict(val, split=val_split),
            "samples_per_s": trained * train.global_batch / compute_s if compute_s > 0 else None,
            "wall_s": time.perf_counter() - t_start,
            "wall_s_total": history["wall_s"] + (time.perf_counter() - t_start),
            "infeasible_total": history["infeasible_total"] + infeasible_total,
            "params_hash": s.params_hash, "identity_hash": s.run_info["identity_hash"],
            "num_parameters": count_parameters(model), "tokenizer": s.run_info["tokenizer"],
            "shards": str(s.shards),
        }
        if rank == 0:
            write_json(s.out / "summary.json", summary)
            writer.close()
            log.info("trained %s-%s to step %d (%d this run) in %.1f s; summary in %s", s.task, s.kind, step,
                     trained, summary["wall_s"], s.out / "summary.json")
        return 0
