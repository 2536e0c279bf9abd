"""The whole workflow, end to end, on tiny data: a fresh clone, `dvc repro` (which runs every Snakemake target)
after which `dvc status` is clean, a second `dvc repro` that does nothing, `dvc metrics show`, publishing the run and
the reproduction line of the next run, one parameter changed that reruns only what depends on it, and
`snakemake --report`. The tiny parameter set is made from params/*.yaml by `write_tiny_params`, so it
follows the default's keys; only sizes, steps and output folders change."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from narvl.tasks import NAMES as TASKS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Values changed from params/*.yaml for the tiny runs (a key the default does not have is left out, so this list
# may name keys of a stage that is still being written).
TINY = {
    "data": {
        "synth": {"image_size": 48, "supersample": 2, "train_images": 40, "restval_images": 4, "val_images": 6,
                  "test_images": 8, "captions_per_image": 2, "questions_per_image": 2, "refs_per_image": 1,
                  "sentences_per_ref": 1, "ve_train_images": 8, "ve_dev_images": 4, "ve_test_images": 4},
        "shard": {"image_size": {"caption": 48, "vqa": 48, "grounding": 48, "entailment": 48}},
        "tokenizer": {"vocab_size": 200, "num_bins": 16},
        # the tiny BPE (vocab_size 200) spells "maybe" in more than the default's 2 tokens
        "loader": {"num_workers": 0, "shuffle_buffer": 16, "bench_micro_batch": 4, "bench_batches": 2,
                   "max_target_len": {"caption": 20, "vqa": 6, "grounding": 4, "entailment": 6}},
    },
    "model": {"overrides": {"d_model": 32, "heads": 2, "ffn_dim": 64, "resnet_width": 8},
              "num_queries": {"caption": 20, "vqa": 6, "grounding": 5, "entailment": 6}},
    "train": {"nproc": 1, "steps": {"caption": 2, "vqa": 2, "grounding": 2, "entailment": 2}, "global_batch": 4,
              "micro_batch": 4, "task_overrides": {"pretrain": {"nproc": 1, "micro_batch": 4}},
              "grad_accum": 1, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "val_every": 0,
              "val_batches": 1, "keep_checkpoints": 1, "distill_tasks": ["caption"],
              "resnet_pretrain": {"scenes": 32, "test_scenes": 8, "steps": 2, "batch": 8, "lr": 1.0e-3},
              "pretrain": {"steps": 2}},
    "decode": {"batch_size": 8, "beam_size": 2, "bench_batch_sizes": [1, 4], "bench_repeats": 1, "bench_samples": 4},
    "score": {"meteor": False, "spice": False},
    "pipeline": {"eval_splits": {"caption": ["test"], "vqa": ["val"], "grounding": ["val"], "entailment": ["dev"]}},
}


def _merge(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        if key not in base:
            continue
        if isinstance(value, dict) and isinstance(base[key], dict) and not (set(value) & set(TASKS)):
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


def write_tiny_params(dst: Path, out: Path | None = None, source: Path = ROOT / "params") -> Path:
    """params/*.yaml with TINY's values; with `out`, every output folder (and the README) lives under it."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yaml")):
        stage = path.stem
        doc = yaml.safe_load(path.read_text())
        doc[stage] = _merge(doc[stage], TINY.get(stage, {}))
        if stage == "pipeline" and out is not None:
            for key in ("raw_dir", "shards_dir", "kd_shards_dir", "runs_dir", "results_dir", "logs_dir"):
                doc[stage][key] = str(out / doc[stage][key])
            doc[stage]["readme"] = str(out / "README.md")
        (dst / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "README.md").write_text(README)
    return dst


README = "# tiny\n\n<!-- narvl:results:start -->\n<!-- narvl:results:end -->\n"


def env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def run(*cmd: str, cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        logs = ""
        for log in sorted(cwd.glob("logs/**/*.log")):
            text = log.read_text(errors="replace")
            if "rror" in text:
                logs += f"\n--- {log}\n{text[-2000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n"
                             f"{proc.stderr[-5000:]}{logs}")
    return proc


def dry_run_rules(cwd: Path, *args: str) -> dict[str, int]:
    proc = run(str(BIN / "snakemake"), "-n", "--nocolor", *args, cwd=cwd)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    counts = {}
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def fresh_clone(dst: Path) -> Path:
    """The checkout's files (tracked, and untracked ones git does not ignore) in a new git repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def missing_subcommands() -> list[str]:
    """Subcommands whose module this checkout does not have yet (the rooms are merged one by one)."""
    sys.path.insert(0, str(ROOT))
    from narvl.bench import BENCHMARKS
    from narvl.cli import SUBCOMMANDS

    modules = {name: module for name, (module, _) in SUBCOMMANDS.items()}
    modules.update({f"bench {name}": module for name, (module, _) in BENCHMARKS.items()})
    return sorted(name for name, module in modules.items()
                  if not (ROOT / (module.replace(".", "/") + ".py")).is_file())


@pytest.mark.slow
def test_fresh_clone_dvc_repro_end_to_end(tmp_path):
    missing = missing_subcommands()
    if missing:  # a partial checkout cannot run the pipeline; the full one must
        pytest.skip(f"this checkout has no module yet for: narvl {', '.join(missing)}")
    clone = fresh_clone(tmp_path / "clone")
    write_tiny_params(clone / "params", source=clone / "params")
    doc = yaml.safe_load((clone / "params/pipeline.yaml").read_text())
    doc["pipeline"]["readme"] = "tiny-README.md"  # published_dir stays published/default: the tiny run replaces it
    (clone / "params/pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (clone / "tiny-README.md").write_text(README)
    assert not (clone / "results").exists()  # git ignores the workflow's results: a clone has none
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    run("git", "init", "-q", cwd=clone)
    # the tiny data is another version of data/raw: record it in data.dvc, as docs/data-default.md says to
    run(str(BIN / "python"), "-m", "narvl", "synth", "--params", "params", "--out", "data/raw", cwd=clone)
    run(str(BIN / "dvc"), "commit", "--force", "--quiet", "data.dvc", cwd=clone)
    shutil.rmtree(clone / "data" / "raw")
    shutil.rmtree(clone / ".dvc" / "cache")
    run("git", "add", "-A", cwd=clone)
    run(*git, "commit", "-qm", "tiny clone", cwd=clone)

    # 1. the whole DAG through DVC's four stages
    run(str(BIN / "dvc"), "repro", cwd=clone)
    pipeline = yaml.safe_load((clone / "params/pipeline.yaml").read_text())["pipeline"]
    train = yaml.safe_load((clone / "params/train.yaml").read_text())["train"]
    cells = [(t, s, m, d) for t in pipeline["tasks"] for s in pipeline["eval_splits"][t]
             for m in pipeline["kinds"] + (["nar-kd"] if t in train["distill_tasks"] else [])
             for d in pipeline["decoders"] + (pipeline["ar_decoders"].get(t, []) if m == "ar" else [])]
    # the trivial baselines (pipeline.baselines) are cells of their own
    baselines = {"caption": [("baseline-constant", "none")],
                 "vqa": [("baseline-majority", "none"), ("baseline-blind", "greedy")],
                 "grounding": [("baseline-random-object", "none"), ("baseline-largest-object", "none")],
                 "entailment": [("baseline-blind", "greedy")]}
    assert pipeline["baselines"]
    cells += [(t, s, m, d) for t in pipeline["tasks"] for s in pipeline["eval_splits"][t] for m, d in baselines[t]]
    for t, s, m, d in cells:
        metrics = json.loads((clone / f"results/metrics/{t}-{s}-{m}-{d}.json").read_text())
        assert (metrics["task"], metrics["split"], metrics["model"], metrics["decoder"]) == (t, s, m, d)
        assert metrics["metrics"], metrics
    table = (clone / "results/tables/main.md").read_text()
    assert "## Image captioning" in table and "NAR + KD" in table
    with open(clone / "results/tables/main.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["task"], r["split"], r["model"], r["decoder"]) for r in rows if r["split"]} == set(cells)
    assert (clone / "tiny-README.md").read_text() == README  # only publishing rewrites the README block
    assert (clone / "results/plots/gallery.png").stat().st_size > 0
    # compared with the default's published run: other numbers, and cells the tiny run does not have
    first = (clone / "results/tables/reproduction.md").read_text().splitlines()[2]
    published = len(list((clone / "published/default/metrics").glob("*.json")))
    assert first.startswith(f"reproduced 0 of {published} quality cells exactly;"), first
    assert "missing from the run" in first, first

    # 2. DVC agrees: up to date after the run (data/raw in the cache, timings recorded), nothing to do the second
    # time for DVC and for Snakemake
    status = run(str(BIN / "dvc"), "status", cwd=clone)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    again = run(str(BIN / "dvc"), "repro", cwd=clone)
    assert "Data and pipelines are up to date" in again.stdout + again.stderr, again.stdout
    assert dry_run_rules(clone) == {}

    # 2b. publish the run; the next run compares itself with it (only the comparison reruns) and says so last
    metrics = sorted(str(p.relative_to(clone)) for p in (clone / "results/metrics").glob("*.json"))
    run(str(BIN / "python"), "-m", "narvl", "report", "--publish", "published/default", "--metrics", *metrics,
        "--bench", "results/bench/decode.json", "--out", "results", "--readme", "tiny-README.md", cwd=clone)
    assert "### Image captioning" in (clone / "tiny-README.md").read_text()
    assert dry_run_rules(clone) == {"reproduction": 1, "all": 1}
    final = run(str(BIN / "snakemake"), "--cores", "1", cwd=clone)
    # the verdict is the run's last output line (stdout; Snakemake's log lines go to stderr and end with the path of
    # its log and the elapsed time)
    last = [line for line in final.stdout.splitlines() if line.strip()][-1]
    assert last == (f"results/tables/reproduction.md: reproduced {len(cells)} of {len(cells)} quality cells "
                    "exactly; speed-ups within 0% of published"), final.stdout[-2000:]
    checked = run(str(BIN / "python"), "-m", "narvl", "report", "--metrics", *metrics, "--bench",
                  "results/bench/decode.json", "--published", "published/default", "--score-params",
                  "params/score.yaml", "--check", cwd=clone)
    assert checked.stdout.startswith(f"reproduced {len(cells)} of {len(cells)}")

    # 3. the metrics, as DVC lists them
    shown = run(str(BIN / "dvc"), "metrics", "show", "--json", cwd=clone)
    listed = json.loads(shown.stdout)
    files = {Path(p).name for entry in listed.values() for p in entry["data"]}
    assert files == {f"{t}-{s}-{m}-{d}.json" for t, s, m, d in cells}

    # 4. one scoring parameter: only the grounding scores and the report rerun
    score = clone / "params/score.yaml"
    original = score.read_text()
    score.write_text(original.replace("iou_threshold: 0.5", "iou_threshold: 0.6"))
    grounding = [c for c in cells if c[0] == "grounding" and c[3] != "none"]  # decoded cells; then the baselines
    guesses = [c for c in cells if c[0] == "grounding" and c[3] == "none"]
    assert dry_run_rules(clone) == {"score_grounding": len(grounding), "baseline_grounding": len(guesses),
                                    "report": 1, "reproduction": 1, "all": 1}
    score.write_text(original)
    # one decoding parameter: the beam and trie decodes, and the AR teacher's beam search, so the KD students and
    # all their cells; nothing else (no shards, no AR or NAR training, no greedy, allcand or bins decode of ar/nar)
    decode = clone / "params/decode.yaml"
    decode.write_text(decode.read_text().replace(f"beam_size: {TINY['decode']['beam_size']}", "beam_size: 3"))
    rerun = dry_run_rules(clone)
    kd_tasks = sorted({c[0] for c in cells if c[2] == "nar-kd"})
    changed = [c for c in cells if c[3] in ("beam", "trie") or c[2] == "nar-kd"]
    scores = sum(n for r, n in rerun.items() if r.startswith("score_"))
    assert rerun.pop("decode") == len(changed) and scores == len(changed), rerun
    assert {r: n for r, n in rerun.items() if not r.startswith("score_")} == {
        "distill": len(kd_tasks), "train_kd": len(kd_tasks), "export": len(kd_tasks),
        "bench_decode_task": len(pipeline["tasks"]), "bench_decode": 1, "report": 1, "reproduction": 1, "all": 1}, rerun
    # a comment in a params file reruns nothing (params files count by their values, not their time stamps)
    decode.write_text(decode.read_text().replace("beam_size: 3", f"beam_size: {TINY['decode']['beam_size']}"))
    (clone / "params/train.yaml").write_text((clone / "params/train.yaml").read_text() + "# a comment\n")
    assert dry_run_rules(clone) == {}
    # one task's training steps: that task's models and what follows from them, nothing of the other tasks
    text = (clone / "params/train.yaml").read_text()
    (clone / "params/train.yaml").write_text(text.replace("grounding: 2\n", "grounding: 3\n", 1))  # (not 2.5: a weight)
    rerun = dry_run_rules(clone)
    assert rerun.get("train") == len(pipeline["kinds"]) and "train_kd" not in rerun and "synth" not in rerun, rerun
    assert rerun.get("decode") == len([c for c in cells if c[0] == "grounding" and c[3] != "none"]), rerun
    assert "baseline_grounding" not in rerun, rerun  # the guesses use no model
    assert rerun.get("bench_decode_task") == 1, rerun  # grounding's benchmark alone, then the merge
    (clone / "params/train.yaml").write_text(text)

    # 5. the Snakemake report bundles tables, plots and the gallery
    run(str(BIN / "snakemake"), "--report", "results/report.zip", cwd=clone)
    with zipfile.ZipFile(clone / "results/report.zip") as z:
        names = "\n".join(z.namelist())
    for name in ("main.md", "main.csv", "gallery.png", "training_curves.png", "latency_batch.png"):
        assert name in names, names
