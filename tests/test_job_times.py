"""scripts/job_times.py (docs/tuning.md): per-rule times, core-seconds and the wall-time bound from a Snakemake log."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]

# The parts of a Snakemake 9 log the script reads, as `snakemake --cores 2` writes them: a one-thread job (no
# `threads:` line), a two-thread job, a job that overlaps both, and one that never finished.
LOG = """\
Building DAG of jobs...
Provided cores: 2
Select jobs to execute...
[Thu Dec  3 22:22:38 2026]
localrule synth:
    input: params/data.yaml
    output: data/raw
    log: logs/data/synth.log
    jobid: 3
    reason: Missing output files: data/raw
    resources: tmpdir=/tmp, runtime=30
Shell command: python -m narvl synth --params params --out data/raw
[Thu Dec  3 22:22:48 2026]
Finished jobid: 3 (Rule: synth)
[Thu Dec  3 22:22:48 2026]
localrule train:
    input: data/raw
    output: runs/vqa-ar/summary.json, runs/vqa-ar/model.pt
    jobid: 7
    wildcards: task=vqa, run=ar
    priority: 10
    threads: 2
Shell command: python -m narvl train
[Thu Dec  3 22:23:48 2026]
Finished jobid: 7 (Rule: train)
[Thu Dec  3 22:23:48 2026]
localrule decode:
    output: results/predictions/vqa-val-ar-greedy.json
    jobid: 9
[Thu Dec  3 22:23:48 2026]
localrule decode:
    output: results/predictions/vqa-val-ar-beam.json
    jobid: 10
[Thu Dec  3 22:23:53 2026]
Finished jobid: 9 (Rule: decode)
"""


def test_job_times_adds_durations_per_rule_and_bounds_the_wall_time(tmp_path):
    log = tmp_path / "run.snakemake.log"
    log.write_text(LOG)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/job_times.py"), str(log), "--jobs"],
                          capture_output=True, text=True, check=True)
    out = proc.stdout
    assert "    10    60   2  train" in out and "    70     5   1  decode" in out, out
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()
             if line.endswith(" s") and len(line.split()) == 3}
    assert lines == {"train": "60", "synth": "10", "decode": "5"}, out
    assert "3 jobs finished, 1 unfinished" in out
    assert "wall time (first start to last end): 75 s" in out
    assert "core-seconds held by jobs: 135" in out  # 10 + 2 x 60 + 5
    assert "lower bound at 2 cores: 68 s; idle: 8 s of wall time" in out


def test_job_times_says_when_nothing_finished(tmp_path):
    log = tmp_path / "empty.log"
    log.write_text("Building DAG of jobs...\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/job_times.py"), str(log)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1 and f"{log}: no finished job in this log" in proc.stderr
