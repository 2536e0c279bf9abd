"""The workflow's definition: `snakemake --lint`, dry runs of the default and of the real-data preset, DVC and
Snakemake agreeing about every stage's outputs and inputs, and the Apptainer definition installing exactly the
README's pinned requirements. Nothing here trains: tests/test_workflow_e2e.py runs the whole DAG on tiny data."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ("data", "model", "train", "decode", "score", "pipeline")


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def dry_run_jobs(*args: str, cwd: Path = ROOT) -> list[dict]:
    """The jobs of a forced dry run: rule, input and output paths, wildcards and priority (0 when Snakemake prints
    none), as Snakemake prints them."""
    proc = snakemake("-n", "--forceall", "--nocolor", *args, cwd=cwd)
    jobs, job = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            job = {"rule": m.group(1), "input": [], "output": [], "shell": "", "wildcards": {}, "priority": 0}
            jobs.append(job)
            continue
        m = re.match(r"^    (input|output): (.*)$", line)
        if job is not None and m:
            job[m.group(1)] = [p for p in m.group(2).split(", ") if p]
        m = re.match(r"^    wildcards: (.*)$", line)
        if job is not None and m:
            job["wildcards"] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
        m = re.match(r"^    priority: (-?\d+)$", line)
        if job is not None and m:
            job["priority"] = int(m.group(1))
    # `-n` prints each job once; a job printed twice (stdout and stderr both carry the log) is one job
    unique = {}
    for job in jobs:
        unique[(job["rule"], tuple(job["output"]), tuple(job["input"]))] = job
    return list(unique.values())


# ------------------------------------------------------------------------------------------------------- lint
def test_snakemake_lint_is_clean():
    proc = snakemake("--lint", "--nocolor", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Congratulations, your workflow is in a good condition!" in out, out


# ----------------------------------------------------------------------------------------------- default DAG
def test_default_dry_run_has_the_whole_pipeline():
    jobs = dry_run_jobs()
    count: dict[str, int] = {}
    for job in jobs:
        count[job["rule"]] = count.get(job["rule"], 0) + 1
    pipeline = yaml.safe_load((ROOT / "params/pipeline.yaml").read_text())["pipeline"]
    train = yaml.safe_load((ROOT / "params/train.yaml").read_text())["train"]
    tasks, splits = pipeline["tasks"], pipeline["eval_splits"]
    kd = [t for t in tasks if t in train["distill_tasks"]]
    models = {t: len(pipeline["kinds"]) + (t in kd) for t in tasks}
    ar_extra = pipeline["ar_decoders"]
    cells = sum(len(splits[t]) * (models[t] * len(pipeline["decoders"]) + len(ar_extra.get(t, []))) for t in tasks)
    # 30 cells of greedy/beam (a KD student for captions only), trie + allcand on VQA val and on the 2 entailment
    # splits, bins on 3 grounding splits
    assert cells == 39
    assert count["synth"] == 1 and count["tokenizer"] == 1
    assert count["shard_karpathy"] + count["shard_vqav2"] + count["shard_refer"] + count["shard_snli_ve"] == len(tasks)
    assert count["train"] == len(tasks) * len(pipeline["kinds"])
    assert count["distill"] == count["train_kd"] == len(kd)
    assert count["export"] == sum(models.values())
    assert count["decode"] == cells
    # the baselines (pipeline.baselines): the blind AR is decoded and scored like a model; the others score at once
    # (VQA's question alone, entailment's hypothesis alone)
    assert pipeline["baselines"] and count["decode_blind"] == len(splits["vqa"]) + len(splits["entailment"])
    assert sum(count[f"score_{t}"] for t in tasks) == cells + count["decode_blind"]
    baselines = (count["baseline_vqa_majority"] + count["baseline_grounding"] + count["baseline_caption_constant"]
                 + count["decode_blind"])
    assert count["baseline_grounding"] == 2 * len(splits["grounding"]) and baselines == 1 + 6 + 1 + 1 + 2
    assert count["bench_decode"] == count["report"] == count["all"] == 1
    # the benchmark: one job per task on that task's models (it starts when they exist), merged into one file
    assert count["bench_decode_task"] == len(tasks)
    benches = {j["wildcards"]["task"]: j for j in jobs if j["rule"] == "bench_decode_task"}
    for task, job in benches.items():
        assert sorted(p for p in job["input"] if p.startswith("runs/")) == \
            sorted(f"runs/{task}-{m}/model.pt" for m in pipeline["kinds"] + ["nar-kd"] * (task in kd)), job["input"]
        assert job["output"] == [f"results/bench/decode-{task}.json"]
    merge = next(j for j in jobs if j["rule"] == "bench_decode")
    assert sorted(p for p in merge["input"] if p.startswith("results/")) == \
        sorted(f"results/bench/decode-{t}.json" for t in tasks)
    # the report reads every metrics cell; every cell is scored from its own predictions
    report = next(j for j in jobs if j["rule"] == "report")
    metrics = [p for p in report["input"] if p.startswith("results/metrics/")]
    assert len(metrics) == cells + baselines
    assert "results/metrics/caption-test-nar-kd-beam.json" in metrics
    assert "results/metrics/grounding-testB-ar-greedy.json" in metrics
    assert "results/metrics/vqa-val-ar-trie.json" in metrics and "results/metrics/grounding-val-ar-bins.json" in metrics
    assert "results/metrics/vqa-val-baseline-blind-greedy.json" in metrics
    assert "results/metrics/entailment-test-baseline-blind-greedy.json" in metrics
    assert "results/metrics/entailment-dev-ar-allcand.json" in metrics
    assert "results/metrics/grounding-testA-baseline-largest-object-none.json" in metrics
    # every rule declares the narvl sources it runs and its params files (export, report and the benchmark's merge
    # read none) as inputs
    for job in jobs:
        if job["rule"] in ("all", "data_all", "train_all", "evaluate_all"):
            continue
        assert any(p.startswith("narvl/") for p in job["input"]), job
        if job["rule"] not in ("export", "report", "bench_decode"):
            assert any(p.startswith("params/") for p in job["input"]), job
    by_rule = {j["rule"]: j for j in jobs}
    assert {"narvl/synth/generate.py", "narvl/params.py", "params/data.yaml"} <= set(by_rule["synth"]["input"])
    assert "narvl/report/main.py" in by_rule["report"]["input"]
    assert "narvl/train/main.py" not in by_rule["synth"]["input"]


def test_job_priorities_put_the_kd_tasks_first_and_benchmark_each_task_when_its_models_exist():
    """`--cores N` order (Snakemake's `priority`): exports first (they unblock decoding and distillation), then each
    task's decoding benchmark as soon as its models exist, then the pretrainings and every training of the KD tasks
    (train.distill_tasks: teachers, distillation, students and plain NAR models), then the other tasks' trainings,
    then decoding and scoring: on 2 cores the trainings, which take both, run back to back, the KD tasks' first, and
    a finished task's benchmark and decodes run beside each other (docs/workflow.md)."""
    jobs = dry_run_jobs()
    train = yaml.safe_load((ROOT / "params/train.yaml").read_text())["train"]
    by_rule: dict[str, set[int]] = {}
    for job in jobs:
        if job["rule"] != "train":
            by_rule.setdefault(job["rule"], set()).add(job["priority"])
    trains = {(j["wildcards"]["task"], j["wildcards"]["run"]): j["priority"] for j in jobs if j["rule"] == "train"}
    kd_tasks = {p for (task, run), p in trains.items() if task in train["distill_tasks"]}
    others = {p for (task, run), p in trains.items() if task not in train["distill_tasks"]}
    assert len(trains) == 8 and len(kd_tasks) == len(others) == 1
    assert by_rule["export"] == {40} and by_rule["bench_decode_task"] == by_rule["bench_decode"] == {30}
    assert by_rule["pretrain"] == by_rule["pretrain_resnet"] == by_rule["distill"] == by_rule["train_kd"] == kd_tasks
    assert kd_tasks == {20} and others == {10}
    for rule in ("synth", "tokenizer", "decode", "decode_blind", "score_vqa", "score_caption", "report"):
        assert by_rule[rule] == {0}, rule


def test_several_seeds_train_each_model_again_and_decode_it(tmp_path):
    """pipeline.seeds [0, 1]: every AR and NAR model is trained once more with `--seed 1` into
    runs/<task>-<kind>-seed1, exported, decoded with its decoders and scored; the report reads those cells (the
    tables merge them: tests/test_report.py); the KD students and the benchmark stay on the first seed."""
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params, ignore=shutil.ignore_patterns("real"))
    doc = yaml.safe_load((params / "pipeline.yaml").read_text())
    doc["pipeline"]["seeds"] = [0, 1]
    (params / "pipeline.yaml").write_text(yaml.safe_dump(doc))
    jobs = dry_run_jobs("--config", f"params_dir={params}")
    pipeline = doc["pipeline"]
    seeded = [j for j in jobs if j["rule"] == "train" and "-seed" in j["output"][0]]
    assert len(seeded) == len(pipeline["tasks"]) * len(pipeline["kinds"])
    assert {"runs/vqa-ar-seed1/summary.json", "runs/caption-nar-seed1/summary.json"} <= {j["output"][0] for j in seeded}
    report = next(j for j in jobs if j["rule"] == "report")
    metrics = {p for p in report["input"] if p.startswith("results/metrics/")}
    assert {"results/metrics/vqa-val-ar-seed1-trie.json", "results/metrics/grounding-testB-nar-seed1-beam.json",
            "results/metrics/caption-test-ar-seed1-greedy.json"} <= metrics
    assert not any("nar-kd-seed" in p for p in metrics)
    benches = [j for j in jobs if j["rule"] == "bench_decode_task"]
    assert len(benches) == len(pipeline["tasks"])
    assert not any(p.startswith("runs/") and "-seed" in p for j in benches for p in j["input"])
    proc = snakemake("-n", "--forceall", "-p", "--nocolor", "--config", f"params_dir={params}")
    shown = proc.stdout + proc.stderr
    # every run starts from its seed's multi-task AR model (pipeline.pretrain), whose ResNet starts from the one
    # pretrained ResNet (pipeline.pretrain_resnet)
    assert "--kind ar --shards data/shards/vqa --tokenizer data/shards/tokenizer.json --out runs/vqa-ar-seed1 --seed 1" \
        " --init runs/pretrain-ar-seed1/model.pt --init-resnet runs/resnet-pretrain/resnet.pt" in shown
    assert "--out runs/vqa-ar  --init runs/pretrain-ar/model.pt --init-resnet runs/resnet-pretrain/resnet.pt >" \
        in shown  # train.seed, no --seed
    assert "--task pretrain --kind ar --shards data/shards --tasks caption,vqa,grounding,entailment --tokenizer " \
        "data/shards/tokenizer.json --out runs/pretrain-ar-seed1 --seed 1 --init-resnet runs/resnet-pretrain/resnet.pt" \
        in shown
    pretrain = sorted(j["output"][0] for j in jobs if j["rule"] == "pretrain")
    assert pretrain == ["runs/pretrain-ar-seed1/summary.json", "runs/pretrain-ar/summary.json"]
    kd = next(j for j in jobs if j["rule"] == "train_kd")
    assert "runs/pretrain-ar/model.pt" in kd["input"]  # the KD students stay on the first seed
    # the ordinary runs train with train.seed: a seeds list that does not start with it is refused
    doc["pipeline"]["seeds"] = [1, 2]
    (params / "pipeline.yaml").write_text(yaml.safe_dump(doc))
    proc = snakemake("-n", "--config", f"params_dir={params}", check=False)
    assert proc.returncode != 0 and "pipeline.seeds starts with 1" in proc.stdout + proc.stderr


def test_shell_commands_follow_the_design_contract():
    """Each rule's command line is the one of docs/design.md, Commands."""
    proc = snakemake("-n", "--forceall", "-p", "--nocolor")
    commands = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"python -m narvl (\w+)(?: (caption|vqa|grounding|decode)\b)?", line)
        if m and "python -m narvl" in line:
            commands.setdefault(" ".join(filter(None, m.groups())), line.split("python -m narvl", 1)[1])
    design = (ROOT / "docs/design.md").read_text()
    block = design.split("## Commands", 1)[1]
    for name, cmd in commands.items():
        # every --option the workflow passes is one the design's command for that subcommand names
        design_lines = [ln for ln in block.splitlines() if re.match(rf"^narvl {name}\b", ln)]
        assert design_lines, f"narvl {name} is not in docs/design.md"
        documented = set(re.findall(r"--[a-z-]+", " ".join(design_lines)))
        used = set(re.findall(r"--[a-z-]+", cmd.split(">")[0]))
        assert used <= documented, f"narvl {name}: {sorted(used - documented)} not in docs/design.md: {cmd}"
    assert {"synth", "shard", "tokenizer", "train", "distill", "export", "decode", "score caption", "score vqa",
            "score grounding", "bench decode", "report"} <= set(commands), sorted(commands)


# ---------------------------------------------------------------------------------------------- real preset
def real_preset_on_placeholders(tmp_path: Path) -> Path:
    """params/real/ with every data path moved under tmp_path (empty placeholder files and folders)."""
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params/real", params)
    doc = yaml.safe_load((params / "pipeline.yaml").read_text())
    real = doc["pipeline"]["real"]

    def move(value, key):
        if isinstance(value, dict):
            return {k: move(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v, key) for v in value]
        if key == "format":
            return value
        path = tmp_path / "disk" / value.lstrip("/")
        if key == "images":
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        return str(path)

    doc["pipeline"]["real"] = move(real, None)
    for key in ("shards_dir", "kd_shards_dir", "runs_dir", "results_dir", "logs_dir"):
        doc["pipeline"][key] = str(tmp_path / "out" / doc["pipeline"][key])
    readme = tmp_path / "README.md"
    readme.write_text("<!-- narvl:results:start -->\n<!-- narvl:results:end -->\n")
    doc["pipeline"]["readme"] = str(readme)
    (params / "pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    train = yaml.safe_load((params / "train.yaml").read_text())  # train.init: OFA-base and its BPE folder
    init = tmp_path / "disk" / train["train"]["init"].lstrip("/")
    bpe = tmp_path / "disk" / train["train"]["init_bpe_dir"].lstrip("/")
    init.parent.mkdir(parents=True, exist_ok=True)
    init.touch()
    bpe.mkdir(parents=True, exist_ok=True)
    train["train"].update(init=str(init), init_bpe_dir=str(bpe))
    (params / "train.yaml").write_text(yaml.safe_dump(train, sort_keys=False))
    data = yaml.safe_load((params / "data.yaml").read_text())  # data.tokenizer.gpt2_bpe_dir: the same BPE folder
    for name in ("encoder.json", "vocab.bpe"):
        (bpe / name).touch()
    data["data"]["tokenizer"]["gpt2_bpe_dir"] = str(bpe)
    (params / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return params


def test_real_preset_has_the_same_keys_as_the_default():
    """The preset changes paths and scale, nothing else: every params file has the default's keys."""

    def keys(node, prefix=""):
        if isinstance(node, dict) and not (set(node) & {"caption", "vqa", "grounding"}):
            return set().union(*(keys(v, f"{prefix}{k}.") for k, v in node.items())) | {prefix}
        return {prefix}

    for stage in STAGES:
        default = yaml.safe_load((ROOT / f"params/{stage}.yaml").read_text())
        real = yaml.safe_load((ROOT / f"params/real/{stage}.yaml").read_text())
        skip = {"pipeline.real.", "model.overrides."}  # overrides are free-form changes on top of a preset
        missing = {k for k in keys(default) - keys(real) if not any(k.startswith(s) for s in skip)}
        extra = {k for k in keys(real) - keys(default) if not any(k.startswith(s) for s in skip)}
        assert not missing and not extra, f"params/real/{stage}.yaml: missing {sorted(missing)}, extra {sorted(extra)}"
    pipeline = yaml.safe_load((ROOT / "params/real/pipeline.yaml").read_text())["pipeline"]
    assert pipeline["source"] == "real" and set(pipeline["real"]) == set(pipeline["tasks"])
    assert yaml.safe_load((ROOT / "params/real/model.yaml").read_text())["model"]["preset"] == "base"


def test_real_preset_dry_run(tmp_path):
    params = real_preset_on_placeholders(tmp_path)
    jobs = dry_run_jobs("--config", f"params_dir={params}")
    rules = {j["rule"] for j in jobs}
    assert "synth" not in rules  # real data: nothing is generated
    assert {"shard_karpathy", "shard_vqav2", "shard_refer", "tokenizer", "train", "distill", "train_kd", "decode",
            "score_caption", "score_vqa", "score_grounding", "bench_decode", "report"} <= rules
    disk = str(tmp_path / "disk")
    caption = next(j for j in jobs if j["rule"] == "shard_karpathy")
    assert any(p.startswith(disk) and p.endswith("dataset_coco.json") for p in caption["input"]), caption
    assert all(p.startswith(str(tmp_path / "out")) for j in jobs for p in j["output"]), "outputs outside out/"
    train = next(j for j in jobs if j["rule"] == "train")
    assert str(params / "train.yaml") in train["input"]
    assert str(tmp_path / "disk" / "path/to/ofa_base.pt") in train["input"]  # train.init is the run's input
    # the tokenizer is OFA's GPT-2 BPE (data.tokenizer.gpt2_bpe_dir), so that the OFA checkpoint's rows line up
    bpe = tmp_path / "disk" / "path/to/OFA/utils/BPE"
    tokenizer = next(j for j in jobs if j["rule"] == "tokenizer")
    assert {str(bpe / "encoder.json"), str(bpe / "vocab.bpe")} <= set(tokenizer["input"]), tokenizer
    # GPU resources reach the training jobs
    proc = snakemake("-n", "--forceall", "--nocolor", "-p", "--config", f"params_dir={params}")
    text = proc.stdout + proc.stderr
    assert re.search(rf"narvl tokenizer --params \S+ --gpt2 {re.escape(str(bpe))}/encoder.json "
                     rf"{re.escape(str(bpe))}/vocab.bpe --out", text), text[-3000:]
    gpu = yaml.safe_load((params / "pipeline.yaml").read_text())["pipeline"]["resources"]["train"]["gpu"]
    assert gpu > 0 and re.search(rf"rule train:(?:\n    .*)*\n    resources: .*gpu={gpu}\b", text), text[-3000:]


def test_missing_real_input_is_reported(tmp_path):
    params = real_preset_on_placeholders(tmp_path)
    doc = yaml.safe_load((params / "pipeline.yaml").read_text())
    missing = doc["pipeline"]["real"]["caption"]["annotations"]
    Path(missing).unlink()
    proc = snakemake("-n", "--config", f"params_dir={params}", check=False)
    assert proc.returncode != 0
    assert "MissingInputException" in proc.stdout + proc.stderr and missing in proc.stdout + proc.stderr


def test_bad_pipeline_values_fail_with_the_schema(tmp_path):
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params, ignore=shutil.ignore_patterns("real"))
    text = (params / "pipeline.yaml").read_text().replace("decoders: [greedy, beam]", "decoders: [greedy, sampling]")
    (params / "pipeline.yaml").write_text(text)
    proc = snakemake("-n", "--config", f"params_dir={params}", check=False)
    assert proc.returncode != 0 and "sampling" in proc.stdout + proc.stderr
    # a constrained AR decoder the task does not have (Task.ar_decoders), named with the file and the task
    text = text.replace("decoders: [greedy, sampling]", "decoders: [greedy, beam]").replace(
        "grounding: [bins]", "grounding: [bins, trie]")
    (params / "pipeline.yaml").write_text(text)
    proc = snakemake("-n", "--config", f"params_dir={params}", check=False)
    assert proc.returncode != 0 and "pipeline.ar_decoders.grounding: ['trie'] not among the task's constrained " \
        "decoders (bins)" in proc.stdout + proc.stderr



@pytest.mark.parametrize("edit, message", [
    ({"train": {"init": "weights.pt"}}, "pipeline.pretrain makes the model every training starts from, but train.init "
                                        "names one too (weights.pt): set one of them"),
    ({"pipeline": {"tasks": ["caption"]}, "train": {"pretrain": {"steps": 5, "weights": {"caption": 0.0, "vqa": 1.0}}}},
     "pipeline.pretrain: no task of pipeline.tasks has a positive weight in train.pretrain.weights"),
])
def test_pretrain_conflicts_are_refused_by_name(tmp_path, edit, message):
    """pipeline.pretrain with train.init set, or with no weighted task among pipeline.tasks: refused."""
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params, ignore=shutil.ignore_patterns("real"))
    for stage, values in edit.items():
        doc = yaml.safe_load((params / f"{stage}.yaml").read_text())
        doc[stage].update(values)
        (params / f"{stage}.yaml").write_text(yaml.safe_dump(doc))
    proc = snakemake("-n", "--config", f"params_dir={params}", check=False)
    assert proc.returncode != 0 and message in " ".join((proc.stdout + proc.stderr).split())

# ---------------------------------------------------------------------------------------- DVC vs Snakemake
def dvc_stages(root: Path) -> tuple[list[dict], list[str], list[str]]:
    """dvc.yaml's stages (name, target, deps, params files, outs) in file order, paths tracked by .dvc files, and
    the top-level metrics, as DVC itself resolves them."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages, tracked = [], []
        for stage in repo.index.stages:
            if not stage.cmd:  # data.dvc
                tracked += [o.def_path for o in stage.outs]
                continue
            stages.append({
                "name": stage.name,
                "cmd": stage.cmd,
                "deps": [d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)],
                "params": [d.def_path for d in stage.deps if isinstance(d, ParamsDependency)],
                "outs": [o.def_path for o in stage.outs],
            })
        metrics = [m for paths in repo.index._metrics.values() for m in paths]
    order = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    stages.sort(key=lambda s: order.index(s["name"]))
    return stages, tracked, metrics


def covered(path: str, prefixes: list[str]) -> bool:
    path = os.path.normpath(path)
    return any(path == os.path.normpath(p) or path.startswith(os.path.normpath(p) + os.sep) for p in prefixes)


def disagreements(stages: list[dict], tracked: list[str], jobs_of) -> list[str]:
    """Where dvc.yaml and the Snakemake DAG disagree. `jobs_of(target)` gives a target's dry-run jobs."""
    problems, upstream_outputs, upstream_keys = [], {}, set()
    for stage in stages:
        first, *rest = stage["cmd"].split("&&")
        if rest and not (stage["name"] == "data" and [shlex.split(r) for r in rest] == [
                ["dvc", "commit", "--quiet", "data.dvc"]]):
            problems.append(f"stage {stage['name']}: runs more than its Snakemake target: {stage['cmd']}")
        words = shlex.split(first)
        if words[0] != "snakemake":
            problems.append(f"stage {stage['name']}: does not run snakemake: {stage['cmd']}")
            continue
        target = words[-1]
        jobs = [j for j in jobs_of(target) if (j["rule"], tuple(j["output"])) not in upstream_keys]
        produced = {os.path.normpath(p) for j in jobs for p in j["output"]}
        for path in sorted(produced):
            if not covered(path, stage["outs"] + tracked):
                problems.append(f"stage {stage['name']}: Snakemake writes {path}, not an out of the stage")
        for out in stage["outs"]:
            if not any(covered(p, [out]) for p in produced):
                problems.append(f"stage {stage['name']}: out {out} is written by no Snakemake job of {target}")
        for job in jobs:
            for path in job["input"]:
                path = os.path.normpath(path)
                if path in produced or covered(path, tracked):  # tracked: versioned by a .dvc file (data.dvc)
                    continue
                if path in upstream_outputs:
                    if not covered(path, stage["deps"]):
                        problems.append(f"stage {stage['name']}: reads {path} (from stage "
                                        f"{upstream_outputs[path]}) without a dep on it")
                elif path.startswith("params") and path.endswith(".yaml"):
                    if path not in map(os.path.normpath, stage["params"]):
                        problems.append(f"stage {stage['name']}: rule {job['rule']} reads {path}, not in params")
                elif not covered(path, stage["deps"] + tracked):
                    problems.append(f"stage {stage['name']}: rule {job['rule']} reads {path}, not a dep")
        for path in produced:
            upstream_outputs[path] = stage["name"]
        upstream_keys |= {(j["rule"], tuple(j["output"])) for j in jobs}
    return sorted(set(problems))


@pytest.fixture(scope="module")
def snakemake_jobs():
    cache: dict[str, list[dict]] = {}

    def jobs_of(target: str) -> list[dict]:
        if target not in cache:
            cache[target] = dry_run_jobs(target)
        return cache[target]

    return jobs_of


def test_dvc_stages_agree_with_snakemake(snakemake_jobs):
    stages, tracked, metrics = dvc_stages(ROOT)
    assert [s["name"] for s in stages] == ["data", "train", "evaluate", "report"]
    assert disagreements(stages, tracked, snakemake_jobs) == []
    # the last stage builds the default target, so `dvc repro` and `snakemake --cores all` make the same files
    assert shlex.split(stages[-1]["cmd"])[-1] == "all"
    results = yaml.safe_load((ROOT / "params/pipeline.yaml").read_text())["pipeline"]["results_dir"]
    assert metrics == [f"{results}/metrics"] and f"{results}/metrics" in stages[2]["outs"]
    # data.dvc versions the raw data that the data stage's synth job writes
    if (ROOT / "data.dvc").exists():
        raw = yaml.safe_load((ROOT / "params/pipeline.yaml").read_text())["pipeline"]["raw_dir"]
        assert tracked == [raw]


def test_dvc_agreement_check_catches_a_missing_out_and_a_missing_param(tmp_path, snakemake_jobs):
    """The agreement test can fail: drop an out and a params file from a copy of dvc.yaml."""
    stages, tracked, _ = dvc_stages(ROOT)
    broken = [dict(s) for s in stages]
    broken[1]["outs"] = [o for o in broken[1]["outs"] if "shards-kd" not in o]
    broken[2]["params"] = [p for p in broken[2]["params"] if not p.endswith("decode.yaml")]
    broken[3]["deps"] = [d for d in broken[3]["deps"] if "bench" not in d]
    problems = disagreements(broken, tracked, snakemake_jobs)
    assert any("stage train: Snakemake writes data/shards-kd/caption" in p for p in problems), problems
    assert any("stage evaluate: rule decode reads params/decode.yaml, not in params" in p for p in problems)
    assert any("stage report: reads results/bench/decode.json (from stage evaluate)" in p for p in problems)


# ----------------------------------------------------------------------------------------------- container
def def_sections(text: str) -> dict[str, list[str]]:
    sections, current = {"header": []}, "header"
    for line in text.splitlines():
        m = re.match(r"^%(\w+)", line)
        if m:
            current = m.group(1)
            sections[current] = []
        elif line.strip():
            sections[current].append(line.strip())
    return sections


def test_container_definition_installs_exactly_the_readme_requirements():
    from spython.main.parse.parsers import SingularityParser
    from spython.main.parse.writers import DockerWriter

    path = ROOT / "containers/narvl.def"
    parser = SingularityParser(str(path))
    recipe = next(iter(parser.recipe.values()))
    assert recipe.fromHeader == "debian:12"  # Debian 12's python3 is the README's Python 3.11
    sections = def_sections(path.read_text())
    assert "Bootstrap: docker" in sections["header"]
    for name in ("help", "labels", "files", "environment", "post", "test"):
        assert sections.get(name), f"%{name} missing or empty"
    # the two requirements files, and nothing else, are copied in
    copied = sorted(line.split()[0] for line in recipe.files)
    assert copied == ["requirements.lock", "requirements.txt"]
    # one pip install, the same as install.sh's: -r requirements.txt -c requirements.lock with the same options
    installs = [line for line in recipe.install if re.search(r"pip install", line)]
    assert len(installs) == 1, installs
    ours = shlex.split(installs[0])
    theirs = next(shlex.split(ln.replace("\\", " ")) for ln in
                  (ROOT / "install.sh").read_text().replace("\\\n", " ").splitlines() if "-r requirements.txt" in ln)
    def opts(words):  # the pip options, up to a shell redirection
        words = words[words.index("install") + 1:]
        return [w for w in words[:next((i for i, w in enumerate(words) if re.match(r"^\d?>", w)), len(words))]]

    assert opts(ours) == opts(theirs), (ours, theirs)
    assert any(re.search(r"pip check", line) for line in recipe.install)
    assert not any(re.search(r"\bpip3? install\b|conda install", line) for line in recipe.install
                   if line not in installs), "another package install in %post"
    # labels parse as key value; %environment puts the image's venv first on PATH
    assert all(len(label.split(None, 1)) == 2 for label in recipe.labels)
    assert any(e.startswith("PATH=/opt/narvl/venv/bin:") for e in recipe.environ)
    assert any("python" in line for line in sections["test"])
    # spython's Docker writer understands the recipe (a parse that lost sections would fail here)
    docker = DockerWriter(parser.recipe).convert()
    assert "FROM debian:12" in docker and "requirements.lock" in docker


def test_debootstrap_definition_is_the_docker_one_from_debians_mirror():
    """containers/narvl-debootstrap.def: the same sections byte for byte, bookworm (Debian 12) from Debian's mirror."""
    docker = (ROOT / "containers/narvl.def").read_text()
    deb = (ROOT / "containers/narvl-debootstrap.def").read_text()
    def split(text):
        head, _, body = text.partition("\n%")
        keys = dict(line.split(":", 1) for line in head.splitlines() if line.strip() and not line.startswith("#"))
        return {k.strip(): v.strip() for k, v in keys.items()}, body

    docker_head, docker_body = split(docker)
    deb_head, deb_body = split(deb)
    assert docker_head == {"Bootstrap": "docker", "From": "debian:12"}
    assert deb_head == {"Bootstrap": "debootstrap", "OSVersion": "bookworm", "MirrorURL": "http://deb.debian.org/debian"}
    assert deb_body == docker_body


def test_rootfs_build_script_runs_the_definitions_sections():
    """scripts/build_rootfs.sh takes %files, %post, %environment and %test from the definition itself (its awk
    reader gives what spython parses); the real build ran once (docs/workflow.md has its timings)."""
    script = (ROOT / "scripts/build_rootfs.sh").read_text()
    body = script[script.index("section() {"):].split("\n", 1)[0]
    sections = def_sections((ROOT / "containers/narvl.def").read_text())
    for name in ("files", "post", "environment", "test"):
        got = subprocess.run(["bash", "-c", f"DEF=containers/narvl.def; {body}; section {name}"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        assert [line.strip() for line in got.splitlines() if line.strip()] == sections[name], name
        assert f"section {name}" in script
    assert "debootstrap --variant=minbase \"$SUITE\"" in script and "SUITE=bookworm" in script
    assert "bwrap --bind \"$ROOTFS\" /" in script
    # the tiny run uses the end-to-end test's parameters, so it follows the default's keys
    assert "from tests.test_workflow_e2e import write_tiny_params" in script


def test_every_rule_runs_in_the_container():
    pipeline = yaml.safe_load((ROOT / "params/pipeline.yaml").read_text())["pipeline"]
    common = (ROOT / "workflow/rules/common.smk").read_text()
    assert re.search(r"^container: PIPELINE\.container", common, re.M)
    assert pipeline["container"] == "containers/narvl.sif"
    # `container:` at the top of the rules applies to every rule after it: common.smk is included first
    snakefile = (ROOT / "Snakefile").read_text()
    includes = re.findall(r'^include: "([^"]+)"', snakefile, re.M)
    assert includes[0] == "workflow/rules/common.smk" and not re.search(r"^rule ", common, re.M)
    # lint reports a rule without a container or conda environment; it is clean (test_snakemake_lint_is_clean)
