"""Parameter files: `params/<stage>.yaml`, one top-level key per file, loaded into frozen dataclasses.

    data      synthesis of the embedded default, sharding, tokenizer, loaders
    model     architecture preset and per-task query counts
    train     optimisation, DeepSpeed, checkpoints, knowledge distillation
    decode    beam search and decoding batch
    score     metric options
    pipeline  which tasks, splits, model kinds and decoders the workflow runs, and where files go

Every value lives in exactly one place: the YAML file (the dataclasses below have no defaults; the architecture
presets are the one exception, defined here and selected by name). A file that misses a key, names a key the
dataclass does not have, gives a key twice, gives a value of the wrong type or a non-finite number, or misspells a
task in a per-task mapping (`steps: {captoin: 5}`) fails with an error naming the file and the dotted key.
Code that needs variants (tests, benchmarks) loads the files and uses `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from narvl.errors import NarvlError
from narvl.tasks import NAMES as TASKS  # the tasks' names (narvl/tasks/)

# the key type of per-task mappings (a misspelt task is an error): the names of narvl.tasks
Task = Literal[TASKS]
Kind = Literal["ar", "nar"]


# --------------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SynthParams:
    """The embedded default dataset (`narvl synth`; docs/data-default.md)."""

    seed: int
    image_size: int  # rendered scenes are square, in pixels
    supersample: int  # drawn at this multiple of image_size, then downsampled (anti-aliasing)
    min_objects: int
    max_objects: int
    # object radius range [lo, hi] per size, as a fraction of image_size (a shape's box spans 1.7-2 radii)
    small_radius: list[float]
    large_radius: list[float]
    # images per Karpathy split: train in train2014/, restval, val and test in val2014/ (VQA train2014 / val2014).
    # RefCOCO uses the train2014 images: the last val_images of them + test_images (half testA, half testB) are its
    # evaluation splits, the rest its train split.
    train_images: int
    restval_images: int
    val_images: int
    test_images: int
    captions_per_image: int
    max_caption_words: int  # words + punctuation marks; keep under the caption target length (NAR queries)
    questions_per_image: int
    question_kinds: list[str]  # VQA question kinds drawn from (colour, shape, count, yesno, relation)
    question_phrases: str  # how colour/shape questions name their object: "all" descriptions or "attributes" only
    refs_per_image: int
    sentences_per_ref: int
    answer_noise: float  # chance that one of the 10 human answers deviates (synonym or mistake; at most 4 do)
    # SNLI-VE: images (own Flickr30k-style ids) per split, one hypothesis per label each
    ve_train_images: int
    ve_dev_images: int
    ve_test_images: int
    jpeg_quality: int


@dataclass(frozen=True)
class ShardParams:
    """`narvl shard`: image resizing and shard size."""

    # longest image side after resizing, per task (the paper: 480 caption/VQA, 512 grounding)
    image_size: dict[Task, int]
    samples_per_shard: int
    jpeg_quality: int
    workers: int  # processes that decode and resize images (0: none besides the main one); output is identical


@dataclass(frozen=True)
class TokenizerParams:
    vocab_size: int  # BPE merges stop at this size (special and location tokens not counted)
    num_bins: int  # location tokens <bin_0>..<bin_{B-1}>; the paper uses 1000
    lowercase: bool
    # OFA's utils/BPE folder (encoder.json, vocab.bpe): use OFA's GPT-2 BPE instead of training one (vocab_size and
    # lowercase then do not apply); needed when train.init is an OFA checkpoint
    gpt2_bpe_dir: str | None


@dataclass(frozen=True)
class LoaderParams:
    num_workers: int
    shuffle_buffer: int
    max_source_len: int  # text tokens fed to the encoder, <bos> and <eos> included
    # the target-length budget's one home: target tokens per task without EOS. Training truncates targets to it, AR
    # decoding generates at most max_target_len + 1 tokens (EOS included: `ar_max_len`), NAR needs
    # model.num_queries >= it, and the architecture's max_target_len (decoder positions) bounds it
    max_target_len: dict[Task, int]
    bench_micro_batch: int  # `narvl bench data`: batch size and timed batches per worker count
    bench_batches: int


@dataclass(frozen=True)
class DataParams:
    synth: SynthParams
    shard: ShardParams
    tokenizer: TokenizerParams
    loader: LoaderParams


# -------------------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ArchParams:
    """One OFA architecture (docs/model.md). The presets below are OFA's released sizes (fairseq args in
    tests/fixtures/ofa/real_ofa_fairseq_keys.json) and a small CPU default of the same architecture."""

    d_model: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    ffn_dim: int
    dropout: float  # after the embeddings, each attention block and each FFN (OFA's --dropout)
    resnet_layers: list[int]  # Bottleneck blocks in stages 1-3 (OFA cuts the ResNet after stage 3)
    resnet_width: int  # channels after the stem; OFA's is 64 (stage widths 64/128/256, 1024 output channels)
    image_bucket_size: int  # rows/columns of the image position grid (OFA's 42: images up to 672 px a side)
    token_bucket_size: int  # text relative-position buckets (OFA's 256)
    attn_scale_factor: float  # queries scaled by (head_dim * attn_scale_factor)^-1/2 (OFA's 2)
    max_source_len: int  # text positions of the encoder (OFA's max_source_positions; the table has 2 more rows)
    max_target_len: int  # decoder positions (OFA's max_target_positions)


def _ofa(d: int, heads: int, enc: int, dec: int, blocks: list[int]) -> ArchParams:
    return ArchParams(d_model=d, heads=heads, encoder_layers=enc, decoder_layers=dec, ffn_dim=4 * d, dropout=0.1,
                      resnet_layers=blocks, resnet_width=64, image_bucket_size=42, token_bucket_size=256,
                      attn_scale_factor=2.0, max_source_len=1024, max_target_len=1024)


RESNET50, RESNET101, RESNET152 = [3, 4, 6], [3, 4, 23], [3, 8, 36]
PRESETS: dict[str, ArchParams] = {
    "cpu": ArchParams(d_model=64, heads=4, encoder_layers=2, decoder_layers=2, ffn_dim=256, dropout=0.1,
                      resnet_layers=[1, 1, 1], resnet_width=8, image_bucket_size=42, token_bucket_size=256,
                      attn_scale_factor=2.0, max_source_len=128, max_target_len=32),
    "tiny": _ofa(256, 4, 4, 4, RESNET50),
    "medium": _ofa(512, 8, 4, 4, RESNET101),
    "base": _ofa(768, 12, 6, 6, RESNET101),
    "large": _ofa(1024, 16, 12, 12, RESNET152),
    "huge": _ofa(1280, 16, 24, 12, RESNET152),
}


@dataclass(frozen=True)
class ModelParams:
    preset: Literal["cpu", "tiny", "medium", "base", "large", "huge"]
    # fields of ArchParams to change on top of the preset, e.g. {dropout: 0.0}
    overrides: dict[str, Any]
    # N learnable query slots of the NAR decoder per task (the paper: 20 caption, 6 VQA, 5 grounding, 3 entailment)
    num_queries: dict[Task, int]

    def arch(self) -> ArchParams:
        known = {f.name for f in dataclasses.fields(ArchParams)}
        for key in self.overrides:
            if key not in known:
                raise NarvlError(f"model.overrides.{key}: unknown architecture field{_suggest(key, known)}")
        merged = {**dataclasses.asdict(PRESETS[self.preset]), **self.overrides}
        return _build(ArchParams, merged, "model.overrides", "model params")


# -------------------------------------------------------------------------------------------------------- train
@dataclass(frozen=True)
class ResnetPretrainParams:
    """`narvl pretrain-resnet`: ImageNet in miniature for the embedded default (the ResNet names the shape, colour
    and size of the object in each cell of its output grid; narvl/train/pretrain_resnet.py)."""

    scenes: int  # training scenes (rendered as data.synth draws them)
    test_scenes: int  # held-out scenes for the reported accuracies
    steps: int
    batch: int
    lr: float  # AdamW, constant


@dataclass(frozen=True)
class PretrainParams:
    """The multi-task AR stage (`narvl train --task pretrain`, pipeline.pretrain): OFA's pretraining in miniature, one
    AR model on every task's training split; each AR and NAR fine-tune starts from it through train.init."""

    steps: int
    # the share of the training batches each task gets (relative weights; a task left out or at 0 is not used)
    weights: dict[Task, float]
    # the share (same scale) of region batches: OFA's grounded captioning, "what does the region describe? region:
    # <bin> x4" -> the object's category, made from the grounding shards (needs grounding weighted, and categories)
    region: float = 0.0


@dataclass(frozen=True)
class TrainParams:
    seed: int
    # start from these weights (null: from scratch): a narvl model file (`narvl import-ofa`, `narvl export`) or an
    # OFA fairseq checkpoint (ofa_*.pt; its vocabulary rows are reordered into the run's tokenizer via init_bpe_dir)
    init: str | None
    init_bpe_dir: str | None  # OFA's utils/BPE folder (encoder.json, dict.txt): needed when init is an OFA checkpoint
    # OFA's resnet_model_path: a ResNet state dict (torchvision's names, e.g. ImageNet weights; layer4 and fc ignored,
    # or `narvl pretrain-resnet`'s file) loaded into the encoder's ResNet before train.init; null: none
    init_resnet: str | None
    # what of the encoder's ResNet stays fixed while training: none; batchnorm (OFA's --freeze-resnet: BatchNorm
    # statistics and affine weights); all (every ResNet weight and statistic, e.g. a pretrained feature extractor)
    freeze_resnet: Literal["none", "batchnorm", "all"]
    # with freeze_resnet: all on the CPU, each process keeps the features of the images it has seen (by content) up to
    # this many MiB and skips the ResNet for them (0: off); results stay bit-identical from run to run and on resume
    frozen_feature_cache_mb: int
    resnet_pretrain: ResnetPretrainParams  # `narvl pretrain-resnet` (pipeline.pretrain_resnet)
    pretrain: PretrainParams  # `narvl train --task pretrain` (pipeline.pretrain)
    # per task, train.* fields that differ from the values below (e.g. NARVL's per-task lr and batch)
    task_overrides: dict[str, dict[str, Any]]
    nproc: int  # data-parallel processes on one node (CPU: gloo; GPU: nccl, one per GPU)
    steps: dict[Task, int]
    global_batch: int  # must equal micro_batch * grad_accum * world size
    micro_batch: int
    grad_accum: int
    lr: float
    adam_betas: list[float]
    adam_eps: float
    warmup_steps: int
    min_lr_ratio: float  # cosine decay to lr * min_lr_ratio
    weight_decay: float
    grad_clip: float
    zero_stage: int
    precision: Literal["fp32", "bf16", "fp16"]
    label_smoothing: float
    # VQA: multiply each target's log-likelihood by its soft VQA score (the paper's choice)
    vqa_score_weights: bool
    # location tokens (grounding): Gaussian target of this width in bins over the neighbouring <bin>s (0: one-hot),
    # and the weight of an L1 term on the expected bin (narvl/loss/location.py); AR, and NAR with slot targets
    loc_sigma: float
    loc_l1_weight: float
    # NAR grounding: one target per slot (4 box tokens + EOS on the N slots, the identity alignment) instead of Q-CTC
    grounding_slot_targets: bool
    checkpoint_every: int
    keep_checkpoints: int  # complete checkpoints kept on disk (older ones are deleted after each save)
    # on resume, replay up to this many batches per rank to restore the exact data position; further in, the data
    # stream is reseeded from the step instead (replaying decodes every skipped image)
    resume_replay_batches: int
    log_every: int
    val_every: int  # validation loss/metric every K steps (0: only at the end)
    val_batches: int  # validation batches (of micro_batch samples) per evaluation
    val_split: dict[Task, str]  # per task: the split validated on during training
    # knowledge distillation: NAR students trained on AR-teacher outputs for these tasks
    distill_tasks: list[Task]
    # `narvl bench train`: steps per measurement and the process counts compared (micro_batch per process fixed)
    bench_steps: int
    bench_nprocs: list[int]

    def for_task(self, task: str, where: str = "train params", kind: str | None = None) -> "TrainParams":
        """These parameters with train.task_overrides[task] applied, then train.task_overrides["<task>-<kind>"] (one
        kind's runs of the task; a KD student is a `nar` run), each checked like the file's own values. A mapping
        field (steps, val_split) is updated key by key, so `vqa-nar: {steps: {vqa: 3000}}` changes one entry."""
        check_override_keys(self.task_overrides, where)
        known = {f.name for f in dataclasses.fields(TrainParams)} - {"task_overrides", "init", "init_bpe_dir",
                                                                       "init_resnet", "resnet_pretrain",
                                                                       "pretrain"}
        names = self.override_names(task, kind)
        merged = {**dataclasses.asdict(self), "task_overrides": {}}
        for name in names:
            for key, value in self.task_overrides[name].items():
                if key not in known:
                    raise NarvlError(f"{where}: train.task_overrides.{name}.{key}: not a per-task train field"
                                     f"{_suggest(key, known)}")
                nested = isinstance(merged[key], dict) and isinstance(value, dict)
                merged[key] = {**merged[key], **value} if nested else value
        label = " + ".join(f"train.task_overrides.{n}" for n in names) or f"train.task_overrides.{task}"
        return _build(TrainParams, merged, label, where)

    def override_names(self, task: str, kind: str | None = None) -> list[str]:
        """The train.task_overrides entries that for_task(task, kind) applies, in order."""
        return [n for n in (task, f"{task}-{kind}" if kind else None) if n in self.task_overrides]


def check_override_keys(overrides: dict[str, Any], where: str) -> None:
    """train.task_overrides keys: a task, `pretrain`, or `<task>-<kind>` (kind ar | nar)."""
    allowed = [*TASKS, "pretrain", *(f"{t}-{k}" for t in TASKS for k in typing.get_args(Kind))]
    for name in overrides:
        if name not in allowed:
            raise NarvlError(f"{where}: train.task_overrides.{name}: not a task, 'pretrain' or '<task>-<kind>' "
                             f"(kind ar or nar){_suggest(str(name), allowed)}")


def ar_max_len(data: "DataParams", task: str, positions: int | None = None) -> int:
    """AR generation limit of `task` in tokens, EOS included: data.loader.max_target_len[task] + 1; with
    `positions` (a model's arch.max_target_len), refused when the model has fewer decoder positions."""
    if task not in data.loader.max_target_len:
        raise NarvlError(f"data.loader.max_target_len has no entry for task '{task}'")
    n = data.loader.max_target_len[task] + 1
    if positions is not None and n > positions:
        raise NarvlError(f"data.loader.max_target_len.{task} = {n - 1} (+1 for EOS) exceeds the model's "
                         f"{positions} decoder positions (arch.max_target_len): the data params are not the ones "
                         "it was trained with?")
    return n


# ------------------------------------------------------------------------------------------------------- decode
@dataclass(frozen=True)
class DecodeParams:
    batch_size: int
    beam_size: int
    length_penalty: float
    bench_batch_sizes: list[int]
    bench_repeats: int
    bench_samples: int  # `narvl bench decode --models`: the first samples of the evaluation split it times
    fold_batchnorm: bool  # fold the ResNet's BatchNorm into its convolutions for inference (narvl.model.inference)
    channels_last: bool  # the ResNet in channels_last memory layout for inference
    answer_candidates: int  # VQA trie/allcand decoders: the most frequent training answers (OFA: 3129)


# -------------------------------------------------------------------------------------------------------- score
@dataclass(frozen=True)
class ReproductionParams:
    quality_tolerance: float  # largest |reproduced - published| of a metric value still counted as reproduced
    speedup_tolerance: float  # largest |reproduced / published - 1| of a speed-up still counted as within


@dataclass(frozen=True)
class ScoreParams:
    meteor: bool  # needs Java
    spice: bool  # needs Java and Stanford CoreNLP models (downloaded at first use): reported unavailable
    iou_threshold: float
    # reference items without a prediction: "error" stops, "wrong" scores them as wrong and lists them
    missing_predictions: Literal["error", "wrong"]
    vqa_decimals: int  # VQA accuracies are rounded as the official vqaEval.py (n=2)
    reproduction: ReproductionParams  # `narvl report --published`: how close a run must come to the published one


# ----------------------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class PipelineParams:
    """The workflow (Snakefile, dvc.yaml): what runs, where files go, and each rule group's resources.

    `resources` and `real` are checked in detail by workflow/schemas/pipeline.schema.yaml (the workflow is their one
    reader); docs/workflow.md explains every key.
    """

    source: Literal["default", "real"]  # default: `narvl synth` makes raw_dir; real: the files named in `real`
    tasks: list[Task]
    kinds: list[str]
    decoders: list[str]
    ar_decoders: dict[Task, list[str]]  # the AR model's extra, constrained decoders per task (trie, allcand, bins)
    baselines: bool  # the trivial baselines as table rows (workflow/rules/baselines.smk)
    seeds: list[int]  # train.seed of each AR/NAR run: the first gives runs/<task>-<kind>, the others <kind>-seed<N>
    # `narvl pretrain-resnet` once (runs/resnet-pretrain/resnet.pt), and every training starts its ResNet from it
    pretrain_resnet: bool
    # `narvl train --task pretrain` once per seed (runs/pretrain-ar[-seed<N>]), and every AR and NAR training of that
    # seed starts from its model (train.init)
    pretrain: bool
    eval_splits: dict[Task, list[str]]
    raw_dir: str
    shards_dir: str
    kd_shards_dir: str  # AR-teacher outputs for sequence-level KD (tasks in train.distill_tasks)
    runs_dir: str
    results_dir: str
    logs_dir: str
    readme: str  # the file whose results block `narvl report --publish` rewrites
    published_dir: str  # the published reference run (`narvl report --publish`) every run is compared with
    container: str  # Apptainer image the rules run in with `snakemake --sdm apptainer`
    # per rule group (data, train, distill, decode, score, bench, report): threads, mem_mb, runtime (minutes), gpu
    resources: dict[str, dict[str, int | str]]
    # source: real -> per task: the raw files to shard and the files to score against (paths on disk)
    real: dict[Task, dict[str, Any]]


STAGES: dict[str, type] = {
    "data": DataParams,
    "model": ModelParams,
    "train": TrainParams,
    "decode": DecodeParams,
    "score": ScoreParams,
    "pipeline": PipelineParams,
}

T = TypeVar("T")


def _suggest(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, where: str, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting nested dicts into dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise NarvlError(f"{path}: {where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where, path)
    if origin is Literal:
        if value not in args:
            hint = _suggest(value, map(str, args)) if isinstance(value, str) else ""
            raise NarvlError(f"{path}: {where}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            if option is type(None) and value is None:
                return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where, path)
            except NarvlError:
                continue
        raise NarvlError(f"{path}: {where}: {value!r} is not of type {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise NarvlError(f"{path}: {where}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]", path) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise NarvlError(f"{path}: {where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_convert(args[0], k, f"{where}.{k} (key)", path): _convert(args[1], v, f"{where}.{k}", path)
                for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NarvlError(f"{path}: {where}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise NarvlError(f"{path}: {where}: {value!r} is not a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise NarvlError(f"{path}: {where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise NarvlError(f"{path}: {where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported parameter annotation {tp!r} at {where}")


def _build(cls: type[T], values: dict[str, Any], where: str, path: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise NarvlError(f"{path}: {where}.{key}: unknown key{_suggest(str(key), fields)}")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}", path)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise NarvlError(f"{path}: {where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return cls(**kwargs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (line {line}; first given on line {seen[key]})",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load(path: str | Path, stage: str | None = None) -> Any:
    """Load `params/<stage>.yaml` into its dataclass. `stage` defaults to the file's stem."""
    path = Path(path)
    stage = stage or path.stem
    if stage not in STAGES:
        raise NarvlError(f"{path}: unknown parameter stage '{stage}'{_suggest(stage, STAGES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such parameter file") from e
    except IsADirectoryError as e:
        raise NarvlError(f"{path}: is a folder; this option takes the parameter file, e.g. "
                         f"{path / f'{stage}.yaml'}") from e
    except NotADirectoryError as e:  # a file given where the parameter folder belongs
        raise NarvlError(_not_a_folder(path.parent)) from e
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise NarvlError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or set(doc) != {stage}:
        found = ", ".join(map(str, doc)) if isinstance(doc, dict) else type(doc).__name__
        raise NarvlError(f"{path}: expected exactly one top-level key '{stage}', found: {found or 'nothing'}")
    return _build(STAGES[stage], doc[stage] or {}, stage, str(path))


def _not_a_folder(path: Path) -> str:
    return f"{path}: --params takes the parameter folder (e.g. {path.parent}/), not a file"


def load_stage(params_dir: str | Path, stage: str) -> Any:
    """`stage`'s parameters from the parameter folder a `--params DIR` names: DIR/<stage>.yaml.

    Every subcommand takes the folder and reads the stage files it needs from it; a file is refused by name."""
    params_dir = Path(params_dir)
    if params_dir.exists() and not params_dir.is_dir():
        raise NarvlError(_not_a_folder(params_dir))
    if not params_dir.exists():
        raise NarvlError(f"{params_dir}: no such parameter folder")
    return load(params_dir / f"{stage}.yaml", stage)


def load_all(params_dir: str | Path = "params") -> dict[str, Any]:
    """Every stage's parameters from a folder of `<stage>.yaml` files."""
    return {stage: load(Path(params_dir) / f"{stage}.yaml", stage) for stage in STAGES}


def to_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def digest(params: Any) -> str:
    """A short hash of the resolved parameters, for provenance in outputs."""
    blob = json.dumps(to_dict(params), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
