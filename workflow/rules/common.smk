# Shared by the workflow's .smk files: the parameter folder, paths, wildcard constraints, resources, and two helpers that
# decide when a job reruns (`sources`: the narvl files a command runs; `values`: the parameter values it reads).
#
# Rerun behaviour (docs/workflow.md, "What reruns"): a rule lists its params files as `ancient()` inputs (so editing
# a comment or another task's value does not rerun it) and the values it actually reads as `params.values`
# (Snakemake's `params` rerun trigger reruns exactly the jobs whose values changed, and everything downstream).
# Source files are plain inputs: editing narvl/decode/ reruns the decodes and what follows, not the training.

import ast
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)  # the checkout's narvl, also when it is not installed

import narvl.params  # noqa: E402
import narvl.tasks  # noqa: E402

ROOT = os.path.relpath(workflow.basedir)  # "." when Snakemake runs from the checkout, as it normally does

# `python` in the shell commands is the interpreter running Snakemake (the .venv of the README install, also when it
# is not activated); inside the container the image's own environment comes first (containers/narvl.def).
envvars:
    "PATH",


os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

# ----------------------------------------------------------------------------------------------- parameters
# `--config params_dir=DIR` picks the parameter folder (default: params/; the real-data preset: params/real/).
PARAMS_DIR = str(config.get("params_dir", "params"))
STAGE_FILES = {stage: os.path.join(PARAMS_DIR, f"{stage}.yaml") for stage in narvl.params.STAGES}
PARAMS = narvl.params.load_all(PARAMS_DIR)
PIPELINE = PARAMS["pipeline"]
TRAIN = PARAMS["train"]


container: PIPELINE.container  # used with `--sdm apptainer` (containers/narvl.def), ignored otherwise


if "params_dir" not in config and config.get("pipeline") != narvl.params.to_dict(PIPELINE):
    raise WorkflowError(
        "the 'pipeline' config given on the command line differs from params/pipeline.yaml; the workflow reads "
        "every stage's parameters from one folder: copy the params folder, edit it, and pass "
        "--config params_dir=DIR"
    )
validate({"pipeline": narvl.params.to_dict(PIPELINE)}, "../schemas/pipeline.schema.yaml")


def ancient_params(*stages):
    """The params files of `stages`, as inputs whose modification time is ignored (their values decide)."""
    return [ancient(STAGE_FILES[stage]) for stage in stages]


def _narrow(value, task):
    """Keep only `task`'s entry of every mapping keyed by task names (steps, num_queries, max_target_len, ...)."""
    if isinstance(value, dict):
        if task is not None and value and set(value) <= set(narvl.params.TASKS):
            return _narrow(value.get(task), task)
        return {k: _narrow(v, task) for k, v in value.items()}
    if isinstance(value, list):
        return [_narrow(v, task) for v in value]
    return value


def values(*selectors, task=None, drop=()):
    """The parameter values a job reads, as compact JSON for `params:` (Snakemake reruns the job when it changes).

    A selector is a stage ("train") or a dotted part of one ("data.synth"); `drop` names dotted keys the job does
    not read; mappings keyed by task names are narrowed to `task`.
    """
    out = {}
    for selector in selectors:
        stage, *path = selector.split(".")
        node, target = narvl.params.to_dict(PARAMS[stage]), out.setdefault(stage, {})
        for part in path[:-1]:
            node, target = node[part], target.setdefault(part, {})
        if path:
            target[path[-1]] = node[path[-1]]
        else:
            target.update(node)
    for dotted in drop:  # a key the parameter files do not have (any more) is simply not there to drop
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return json.dumps(_narrow(out, task), sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------- source files
def _module_file(modname):
    base = Path(ROOT, *modname.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path, modname):
    """narvl modules imported anywhere in a file (lazy imports inside functions included), except in the task
    modules (narvl/tasks/): there only their module-level imports count. A task's methods serve different stages
    and import that stage's code inside the method (the scorer, the box decoding); each rule names the stage code
    it reaches through its task (`task_sources`, the score rules), so that editing the grounding scorer does not
    rerun the grounding shards and, through the tokenizer, every training."""
    found = set()
    package = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes = tree.body if modname.startswith("narvl.tasks.") else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            found.add(parent)
            found.update(f"{parent}.{alias.name}" for alias in node.names)  # `from narvl.x import module`
    return {name for name in found if name == "narvl" or name.startswith("narvl.")}


def sources(*modules):
    """The narvl source files a subcommand runs: its modules, every narvl module they import (transitively), and
    the packages' __init__ files. The CLI dispatch (narvl/cli.py, narvl/__main__.py) is left out: it runs nothing
    of its own. Modules that do not exist (yet) are skipped, so a dry run works on a partial checkout."""
    seen, files, todo = set(), set(), list(modules)
    while todo:
        modname = todo.pop()
        if modname in seen:
            continue
        seen.add(modname)
        parts = modname.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages' __init__
        path = _module_file(modname)
        if path is None:
            continue
        files.add(os.path.normpath(path))
        todo.extend(_imports(path, modname))
    return sorted(files)


TASK_MODULES = [f"narvl.tasks.{task}" for task in narvl.tasks.NAMES]


def task_sources(*modules):
    """sources() of a job with a {task} wildcard: the modules and that task's own module, which
    `narvl.tasks.get` imports by name (so editing one task reruns that task's jobs only). `modules` name the stage
    code the job reaches through its task's methods, too (see _imports)."""
    return lambda wildcards: sources(*modules, f"narvl.tasks.{wildcards.task}")


# ----------------------------------------------------------------------------------------------------- paths
RAW = PIPELINE.raw_dir
SHARDS = PIPELINE.shards_dir
KD_SHARDS = PIPELINE.kd_shards_dir
RUNS = PIPELINE.runs_dir
RESULTS = PIPELINE.results_dir
LOGS = PIPELINE.logs_dir
TOKENIZER = f"{SHARDS}/tokenizer.json"

wildcard_constraints:
    task="|".join(narvl.tasks.NAMES),
    split="[A-Za-z0-9]+",
    kind="ar|nar",
    model="(?:ar|nar|nar-kd)(?:-seed[0-9]+)?|baseline-blind",
    decoder="greedy|beam|trie|allcand|bins",


for _task, _decoders in PIPELINE.ar_decoders.items():
    _known = narvl.tasks.get(_task).ar_decoders if _task in narvl.tasks.NAMES else ()
    if not set(_decoders) <= set(_known):
        raise WorkflowError(f"{STAGE_FILES['pipeline']}: pipeline.ar_decoders.{_task}: {sorted(set(_decoders) - set(_known))} "
                            f"not among the task's constrained decoders ({', '.join(_known) or 'none'})")


def models(task):
    """The models trained for `task`: pipeline.kinds, plus the KD student for train.distill_tasks."""
    kd = ["nar-kd"] if task in TRAIN.distill_tasks and "nar" in PIPELINE.kinds and "ar" in PIPELINE.kinds else []
    return list(PIPELINE.kinds) + kd


if PIPELINE.seeds[0] != TRAIN.seed:
    raise WorkflowError(f"{STAGE_FILES['pipeline']}: pipeline.seeds starts with {PIPELINE.seeds[0]}, but the ordinary "
                        f"runs (runs/<task>-<kind>) train with train.seed = {TRAIN.seed}: list train.seed first")


# pipeline.pretrain_resnet: ImageNet in miniature (`narvl pretrain-resnet`), the ResNet every training starts from
RESNET = f"{RUNS}/resnet-pretrain/resnet.pt" if PIPELINE.pretrain_resnet else None
if RESNET and TRAIN.init_resnet:
    raise WorkflowError(f"{STAGE_FILES['pipeline']}: pipeline.pretrain_resnet makes the ResNet every training starts "
                        f"from, but train.init_resnet names one too ({TRAIN.init_resnet}): set one of them")


def resnet_input():
    """The train jobs' ResNet file: the pretrain_resnet rule's output, or train.init_resnet (none: [])."""
    return [path for path in (RESNET or TRAIN.init_resnet,) if path]


def resnet_argument(wildcards, input):
    """`--init-resnet FILE` for the rule's own ResNet (pipeline.pretrain_resnet; train.init_resnet is read from the
    params), as separate words for `{params.init_resnet:q}`."""
    return ["--init-resnet", input.resnet[0]] if RESNET else []


# pipeline.pretrain: OFA's pretraining in miniature (`narvl train --task pretrain`), one multi-task AR model per seed
# that every AR and NAR training of that seed starts from (train.init)
# (on the tasks of train.pretrain.weights that pipeline.tasks has: the others have no shards in this workflow)
PRETRAIN_TASKS = [task for task, weight in TRAIN.pretrain.weights.items() if weight > 0 and task in PIPELINE.tasks]
if PIPELINE.pretrain:
    if TRAIN.init:
        raise WorkflowError(f"{STAGE_FILES['pipeline']}: pipeline.pretrain makes the model every training starts from, "
                            f"but train.init names one too ({TRAIN.init}): set one of them")
    if not PRETRAIN_TASKS:
        raise WorkflowError(f"{STAGE_FILES['pipeline']}: pipeline.pretrain: no task of pipeline.tasks has a positive "
                            f"weight in train.pretrain.weights")


def pretrain_run(seed):
    """The multi-task AR run of train seed `seed`: runs/pretrain-ar, runs/pretrain-ar-seed<N> for later seeds."""
    return f"{RUNS}/pretrain-ar" + ("" if seed == PIPELINE.seeds[0] else f"-seed{seed}")


def init_input(wildcards):
    """A train job's starting weights: the multi-task AR model of its seed (pipeline.pretrain), or train.init and
    train.init_bpe_dir (none: [])."""
    if PIPELINE.pretrain:
        run = getattr(wildcards, "run", "")
        seed = int(run.split("-seed")[1]) if "-seed" in run else PIPELINE.seeds[0]
        return [f"{pretrain_run(seed)}/model.pt"]
    return [path for path in (TRAIN.init, TRAIN.init_bpe_dir) if path]


def init_argument(wildcards, input):
    """`--init FILE` for the multi-task AR model (pipeline.pretrain; train.init is read from the params), as
    separate words for `{params.init:q}`."""
    return ["--init", input.init[0]] if PIPELINE.pretrain else []


def seeded(task):
    """The AR/NAR models of the seeds after the first (pipeline.seeds): <kind>-seed<N>; no KD students for them."""
    return [f"{kind}-seed{seed}" for seed in PIPELINE.seeds[1:] for kind in PIPELINE.kinds]


def decoders(task, model):
    """pipeline.decoders for every model, and for an AR model also its task's pipeline.ar_decoders."""
    extra = PIPELINE.ar_decoders.get(task, []) if model.split("-seed")[0] == "ar" else []
    return list(PIPELINE.decoders) + [d for d in extra if d not in PIPELINE.decoders]


def cells():
    """Every (task, split, model, decoder) cell of the results table."""
    return [(task, split, model, decoder)
            for task in PIPELINE.tasks
            for split in PIPELINE.eval_splits[task]
            for model in models(task) + seeded(task)
            for decoder in decoders(task, model)]


def model_file(task, model):
    return f"{RUNS}/{task}-{model}/model.pt"


# Job order under `--cores N` (Snakemake's `priority`, higher first; the results are the same in any order): the
# exports that unblock decoding, then the decoding benchmark (one job per task), then the pretrainings and every
# training of the KD tasks (the teachers, distillation, the students, the plain NAR models), then the other tasks'
# trainings, then decoding and scoring. On 2 cores a training takes both, so the trainings run back to back, the KD
# tasks' first, and each task's benchmark and decodes run beside each other as soon as its models exist, while the
# next training waits (docs/workflow.md).
PRIORITY = {"export": 40, "bench": 30, "kd": 20, "train": 10}


def train_priority(wildcards):
    kd_task = wildcards.task in TRAIN.distill_tasks and "nar" in PIPELINE.kinds and "ar" in PIPELINE.kinds
    return PRIORITY["kd"] if kd_task else PRIORITY["train"]


def task_model_files(task):
    """The model files of `task` that the decoding benchmark times (the first seed's, KD students included)."""
    return [model_file(task, model) for model in models(task)]


MODEL_FILES = [path for task in PIPELINE.tasks for path in task_model_files(task)]
ALL_MODEL_FILES = MODEL_FILES + [model_file(task, model) for task in PIPELINE.tasks for model in seeded(task)]
def baseline_cells():
    """The trivial baselines' cells (pipeline.baselines): the constant caption; the majority answer per question
    type and the AR model fed blank images; a random object and the largest object."""
    if not PIPELINE.baselines:
        return []
    return [(task, split, model, decoder) for task in PIPELINE.tasks for split in PIPELINE.eval_splits[task]
            for model, decoder in narvl.tasks.get(task).baselines
            if model != "baseline-blind" or "ar" in PIPELINE.kinds]  # the blind baseline is the AR model's


METRICS_FILES = [f"{RESULTS}/metrics/{t}-{s}-{m}-{d}.json" for t, s, m, d in cells() + baseline_cells()]
PREDICTION_FILES = [f"{RESULTS}/predictions/{t}-{s}-{m}-{d}.json" for t, s, m, d in cells()]
BENCH = f"{RESULTS}/bench/decode.json"
# The published reference (`narvl report --publish`) the reproduction rule compares with; none for a new preset.
PUBLISHED = PIPELINE.published_dir
PUBLISHED_FILES = sorted(str(p) for sub in ("metrics", "bench") for p in Path(PUBLISHED, sub).glob("*.json"))


def print_reproduction():
    """The reproduction rule's one-line verdict, printed again as the last line of a run (onsuccess)."""
    path = Path(RESULTS, "tables", "reproduction.md")
    if path.is_file():
        line = path.read_text(encoding="utf-8").splitlines()[2:3]
        if line:
            print(f"{path}: {line[0]}")


# ----------------------------------------------------------------------------------------------------- inputs
# The raw data of each task: the embedded default under raw_dir, or the real-data paths of pipeline.real, in one
# layout so that both sources share every shard and score rule. A rule names what it reads as dotted specs
# ("annotations", "references.{split}", "score.{split}.questions"): `raw_path` gives the path(s) for the command
# line, `raw_inputs` what the job depends on. For the default that is the raw_dir folder itself: `narvl synth`
# writes it as a whole (one directory output), and Snakemake cannot depend on single files inside a directory
# output. For real data it is the files and folders themselves, so a missing one is reported before anything runs.
def _default_inputs():
    return {
        "caption": {
            "format": "karpathy",
            "images": f"{RAW}/images",
            "annotations": f"{RAW}/captions/dataset_coco.json",
            "references": {split: f"{RAW}/captions/captions_karpathy_{split}.json" for split in ("val", "test")},
        },
        "vqa": {
            "format": "vqav2",
            "images": f"{RAW}/images",
            "questions": [f"{RAW}/vqa/v2_OpenEnded_mscoco_{s}2014_questions.json" for s in ("train", "val")],
            "annotations": [f"{RAW}/vqa/v2_mscoco_{s}2014_annotations.json" for s in ("train", "val")],
            "train_annotations": f"{RAW}/vqa/v2_mscoco_train2014_annotations.json",  # the majority baseline
            "score": {"val": {"questions": f"{RAW}/vqa/v2_OpenEnded_mscoco_val2014_questions.json",
                              "annotations": f"{RAW}/vqa/v2_mscoco_val2014_annotations.json"}},
        },
        "grounding": {
            "format": "refer",
            "images": f"{RAW}/images",
            "refs": f"{RAW}/refcoco/refs(unc).p",
            "instances": f"{RAW}/refcoco/instances.json",
        },
        "entailment": {
            "format": "snli-ve",
            "images": f"{RAW}/images/flickr30k",
            "annotations": [f"{RAW}/snli_ve/snli_ve_{s}.jsonl" for s in ("train", "dev", "test")],
            "references": {split: f"{RAW}/snli_ve/snli_ve_{split}.jsonl" for split in ("dev", "test")},
        },
    }


INPUTS = _default_inputs() if PIPELINE.source == "default" else PIPELINE.real


def tasks_in_format(fmt):
    """Regex for the tasks whose raw data has format `fmt` (a never-matching one when there are none)."""
    names = [task for task in PIPELINE.tasks if INPUTS[task]["format"] == fmt]
    return "|".join(names) if names else "(?!x)x"


def _lookup(spec, wildcards, task):
    node = INPUTS[task or wildcards.task]
    for part in spec.split("."):
        key = part.format(**dict(wildcards.items()))
        if not isinstance(node, dict) or key not in node:
            where = f"pipeline.real.{task or wildcards.task}" if PIPELINE.source == "real" else "the default layout"
            raise WorkflowError(f"{STAGE_FILES['pipeline']}: {where} has no '{spec.format(**dict(wildcards.items()))}'")
        node = node[key]
    return node


def raw_path(spec, task=None):
    """A params function: the raw path (or list of paths) `spec` of the job's task, for the command line."""
    return lambda wildcards: _lookup(spec, wildcards, task)


def raw_inputs(*specs, task=None):
    """An input function: what a job reading the raw data `specs` depends on (see above)."""

    def inputs(wildcards):
        if PIPELINE.source == "default":
            return [RAW]
        paths = []
        for spec in specs:
            found = _lookup(spec, wildcards, task)
            paths += found if isinstance(found, list) else [found]
        return paths

    return inputs


def entailment_references(wildcards):
    """The split's SNLI-VE jsonl (its gold labels), or, for OFA TSV data without one, the entailment shards."""
    refs = INPUTS["entailment"].get("references", {})
    return refs[wildcards.split] if wildcards.split in refs else f"{SHARDS}/entailment"



# -------------------------------------------------------------------------------------------------- resources
RES = PIPELINE.resources


def logfile(name):
    """The log of one job: logs_dir/<name>.log."""
    return f"{LOGS}/{name}.log"


def decode_drop(wildcards):
    """Greedy decoding reads no beam options; the benchmark's options are read by `narvl bench decode` only."""
    drop = ["decode.bench_batch_sizes", "decode.bench_repeats", "decode.bench_samples", "data.loader.bench_micro_batch",
            "data.loader.bench_batches"]
    if wildcards.decoder in ("greedy", "bins", "allcand"):
        drop += ["decode.beam_size", "decode.length_penalty"]
    if wildcards.decoder not in ("trie", "allcand"):
        drop += ["decode.answer_candidates"]
    return drop


def folder_of(name, levels=1):
    """A params function: the folder `levels` up from the first file of input `name` (the shell gets a folder)."""

    def find(wildcards, input):
        path = input[name] if isinstance(input[name], str) else input[name][0]
        for _ in range(levels):
            path = os.path.dirname(path)
        return path

    return find
