"""A workflow target through a real Slurm: `snakemake --profile profiles/slurm-local` (the Slurm executor plugin,
sbatch, squeue) runs the data stage on tiny parameters, every job as a Slurm job.

Needs a running Slurm. CI starts a single-node one (.ci/run runs scripts/start_slurm.sh as root); by hand:
    sudo bash scripts/start_slurm.sh && .venv/bin/python -m pytest tests/test_workflow_slurm.py
Without Slurm this test fails, saying how to start it; NARVL_SKIP_SLURM=1 skips it instead (say so when you do).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from narvl.tasks import NAMES as TASKS

sys.path.insert(0, str(Path(__file__).parent))
from test_workflow_e2e import BIN, ROOT, env, write_tiny_params  # noqa: E402

HOW = ("start a single-node Slurm with `sudo bash scripts/start_slurm.sh` (Debian: installs slurm-wlm and munge), "
       "or set NARVL_SKIP_SLURM=1 to skip this test")


def slurm_state() -> str | None:
    """The node state sinfo reports, or None when there is no answering Slurm controller."""
    if shutil.which("sinfo") is None:
        return None
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None
    states = proc.stdout.split()
    return states[0] if proc.returncode == 0 and states else None


@pytest.fixture
def slurm():
    if os.environ.get("NARVL_SKIP_SLURM") == "1":
        pytest.skip("NARVL_SKIP_SLURM=1: the Slurm test was not run")
    state = slurm_state()
    if state is None:
        pytest.fail(f"no running Slurm found (sinfo {'missing' if shutil.which('sinfo') is None else 'failed'}): "
                    f"{HOW}", pytrace=False)
    if not re.match(r"^(idle|mixed|allocated|completing)", state):
        pytest.fail(f"Slurm is running but its node is '{state}': {HOW}", pytrace=False)


@pytest.mark.slow
@pytest.mark.slurm
def test_data_stage_through_slurm(slurm, tmp_path):
    out = tmp_path / "out"
    params = write_tiny_params(tmp_path / "params", out)
    slurm_logs = tmp_path / "slurm_logs"
    cmd = [str(BIN / "snakemake"), "--profile", "profiles/slurm-local", "--config", f"params_dir={params}",
           "--slurm-logdir", str(slurm_logs), "--slurm-keep-successful-logs", "--nocolor", "data_all"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    # every job went through sbatch
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", text)
    rules = ["synth", "shard_karpathy", "shard_vqav2", "shard_refer", "shard_snli_ve", "tokenizer"]
    assert len(submitted) == len(rules), text[-4000:]
    for rule in rules:
        logs = list((slurm_logs / f"rule_{rule}").rglob("*.log"))
        assert any(re.match(r"^\d+", log.stem) and re.match(r"^\d+", log.stem).group() in submitted
                   for log in logs), (rule, logs, submitted)
    # and produced the stage's outputs
    shards = out / "data/shards"
    for task in TASKS:
        assert (shards / task / "sizes.json").is_file()
    assert (shards / "tokenizer.json").is_file()
    # a second run submits nothing
    again = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slurm
def test_a_failing_job_is_reported_failed(slurm, tmp_path):
    """A job that fails inside Slurm fails the workflow (and names the rule)."""
    out = tmp_path / "out"
    params = write_tiny_params(tmp_path / "params", out)
    # a value the loader accepts and `narvl synth` refuses: the command fails inside its Slurm job
    data = params / "data.yaml"
    data.write_text(data.read_text().replace("min_objects: 2", "min_objects: 9"))
    cmd = [str(BIN / "snakemake"), "--profile", "profiles/slurm-local", "--config", f"params_dir={params}",
           "--nocolor", "--retries", "0", str(out / "data/raw")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert re.search(r"Error in rule synth", text), text[-3000:]
    assert "has been submitted with SLURM jobid" in text
    assert "need 1 <= min_objects <= max_objects" in (out / "logs/data/synth.log").read_text()
