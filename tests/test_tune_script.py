"""scripts/tune.py (docs/tuning.md): the params copy carries the edits and the experiment's own folders, and the
real DAG plans exactly the experiment's jobs (a dry run; the experiments themselves take minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]


def test_dry_run_plans_the_experiment_in_its_own_folders(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/tune.py"), "exp", "vqa", "ar",
                           "train.steps={caption: 600, vqa: 1800, grounding: 1200}",
                           "data.synth.question_phrases=attributes", "--root", str(tmp_path), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    params = tmp_path / "exp" / "params"
    train = yaml.safe_load((params / "train.yaml").read_text())["train"]
    assert train["steps"]["vqa"] == 1800 and train["nproc"] == 1 and train["micro_batch"] == train["global_batch"]
    assert train["task_overrides"]["grounding"] == {"lr": 2.0e-3} and "pretrain" not in train["task_overrides"]
    assert yaml.safe_load((params / "data.yaml").read_text())["data"]["synth"]["question_phrases"] == "attributes"
    assert "rule synth:" in proc.stdout and "rule train:" in proc.stdout and "rule score_vqa:" in proc.stdout
    assert "rule pretrain:" in proc.stdout and train["pretrain"]["weights"] == {"vqa": 1.0}  # the experiment's tasks
    assert "caption" not in {line.split("wildcards: task=")[-1].split(",")[0]
                             for line in proc.stdout.splitlines() if "wildcards: task=" in line}
    assert str(tmp_path / "exp" / "results" / "metrics" / "vqa-val-ar-greedy.json") in proc.stdout


def test_a_misspelt_key_is_refused(tmp_path):
    for edit in ("train.stepz=5", "data.synth.seed.x=1", "data.synthh.seed=1"):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts/tune.py"), "exp", "vqa", "ar", edit,
                               "--root", str(tmp_path), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0 and f"has no key {edit.partition('=')[0]}" in proc.stderr, proc.stderr
