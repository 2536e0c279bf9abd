"""scripts/gpu_check.sh: every step it runs on a GPU runs here on the CPU (--cpu-smoke), end to end, and the JSON it
writes holds what docs/model.md says."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_the_json(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, NARVL_PYTHON=str(ROOT / ".venv/bin/python"))
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--cpu-smoke", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["mode"] == "cpu-smoke"
    # the CUDA tests were collected and, without a GPU, reported as skipped (not as passed)
    import torch

    cuda = result["pytest_cuda"]
    assert cuda["exit_code"] == 0 and cuda["tests"] >= 4 and cuda["failures"] == cuda["errors"] == 0
    if not torch.cuda.is_available():
        assert cuda["skipped"] == cuda["tests"]
    for dtype in ("fp32", "bf16"):
        rows = result["bench_decode"][dtype]
        assert {r["task"] for r in rows} == {"vqa"} and {r["batch"] for r in rows} == {1, 2}
        assert all(r["ms"]["encoder"] > 0 and r["speedup"]["nar_greedy"]["median"] > 0 for r in rows)
        # the smoke times the default's 96-px images (the GPU run: params/real's 480 px), with the NAR parts
        assert {r["image_size"] for r in rows} == {96} and all(r["nar_parts"]["decoder"]["median"] > 0 for r in rows)
    assert result["train"]["steps"] == 4 and result["train"]["task"] == "caption" and result["train"]["kind"] == "nar"
    assert not (out / ".gpu_check.json.tmp").exists()


def test_refuses_to_run_without_a_gpu_unless_asked_for_the_smoke(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would run the real check")
    env = dict(os.environ, NARVL_PYTHON=str(ROOT / ".venv/bin/python"))
    proc = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), str(tmp_path / "c")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "torch sees no GPU" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert not (tmp_path / "c").exists()
