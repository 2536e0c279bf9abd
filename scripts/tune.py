"""One tuning experiment through the real DAG (docs/tuning.md): a copy of params/ with some values changed, its own
folders, one core, greedy decoding of the chosen tasks and kinds, and one JSON line with the metrics.

    .venv/bin/python scripts/tune.py NAME TASKS KINDS [stage.key.path=YAML ...] [--root DIR] [--dry-run]

    .venv/bin/python scripts/tune.py vqa1800 vqa ar "train.steps={caption: 600, vqa: 1800, grounding: 1200}"

TASKS and KINDS are comma-separated (vqa,grounding / ar,nar). Everything goes under ROOT/NAME (default ROOT:
tune/, git-ignored): params/, the data, runs, results and logs; the line is appended to ROOT/results.jsonl. Training
runs in one process with the global batch as its micro-batch (`train.nproc: 1`, as the pipeline's fine-tunes do), the
multi-task pretraining too (the pipeline's runs on two processes, so its data order differs): compare experiments
with each other, not with the published tables. --dry-run writes the
params and prints the Snakemake jobs without running them. With `pipeline.pretrain` on, the multi-task AR stage
trains on the experiment's tasks only (train.pretrain.weights of the others dropped), so compare its experiments
with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def edited_params(folder: Path, edits: list[str], tasks: list[str], kinds: list[str], work: Path) -> None:
    """params/ copied to `folder` with `edits` (stage.key.path=YAML) applied and the experiment's own folders."""
    shutil.copytree(ROOT / "params", folder, ignore=shutil.ignore_patterns("real"))
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in folder.glob("*.yaml")}
    for edit in edits:
        key, sep, value = edit.partition("=")
        stage, *path = key.split(".")
        if not sep or stage not in docs or not path:
            sys.exit(f"tune.py: {edit!r}: expected stage.key=value with a stage of {', '.join(sorted(docs))}")
        node = docs[stage][stage]
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or path[-1] not in node:
            sys.exit(f"tune.py: {edit!r}: params/{stage}.yaml has no key {key}")
        node[path[-1]] = yaml.safe_load(value)
    train = docs["train"]["train"]
    train.update(nproc=1, micro_batch=train["global_batch"], grad_accum=1,
                 distill_tasks=[t for t in train["distill_tasks"] if t in tasks and "nar-kd" in kinds])
    for name, over in list(train["task_overrides"].items()):  # the pretraining's two processes too: one core
        over = {k: v for k, v in over.items() if k not in ("nproc", "micro_batch", "grad_accum")}
        train["task_overrides"][name] = over
        if not over:
            del train["task_overrides"][name]
    # the multi-task AR stage (pipeline.pretrain) mixes the experiment's tasks only: the others have no shards here
    # (the workflow passes pipeline.tasks as --tasks anyway; this keeps the params copy saying so)
    train["pretrain"]["weights"] = {t: w for t, w in train["pretrain"]["weights"].items() if t in tasks}
    docs["pipeline"]["pipeline"].update(
        tasks=tasks, kinds=kinds, decoders=["greedy"], ar_decoders={}, baselines=False,
        raw_dir=str(work / "raw"), shards_dir=str(work / "shards"),
        kd_shards_dir=str(work / "shards-kd"), runs_dir=str(work / "runs"), results_dir=str(work / "results"),
        logs_dir=str(work / "logs"), published_dir=str(work / "published"))
    for stage, doc in docs.items():
        (folder / f"{stage}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("tasks")
    parser.add_argument("kinds")
    parser.add_argument("edits", nargs="*")
    parser.add_argument("--root", type=Path, default=ROOT / "tune")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    tasks, kinds = args.tasks.split(","), args.kinds.split(",")
    work = (args.root / args.name).resolve()
    if work.exists():
        if not (work / ".tune").is_file():
            sys.exit(f"tune.py: {work} exists and was not made by this script; choose another NAME or --root")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / ".tune").touch()
    edited_params(work / "params", args.edits, tasks, kinds, work)
    eval_splits = yaml.safe_load((work / "params" / "pipeline.yaml").read_text())["pipeline"]["eval_splits"]
    targets = [str(work / "results" / "metrics" / f"{t}-{eval_splits[t][0]}-{k}-greedy.json")
               for t in tasks for k in kinds]
    cmd = [str(Path(sys.executable).parent / "snakemake"), *targets, "--cores", "1", "--nolock",
           *(["-n"] if args.dry_run else []), "--config", f"params_dir={work / 'params'}"]
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    (work / "snakemake.log").write_text(proc.stdout + proc.stderr)
    if args.dry_run:
        print(proc.stdout + proc.stderr)
        return proc.returncode
    line = {"name": args.name, "tasks": tasks, "kinds": kinds, "edits": args.edits, "rc": proc.returncode,
            "seconds": round(time.time() - start)}
    for target in map(Path, targets):
        if target.is_file():
            metrics = json.loads(target.read_text())["metrics"]
            line[target.stem] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print(json.dumps(line))
    with open(args.root / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
