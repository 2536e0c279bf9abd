"""install.sh: what it refuses before it touches anything (the full install runs in CI: .ci/run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_install_refuses_a_full_disk_before_creating_the_venv(tmp_path):
    for name in ("install.sh", "requirements.txt", "requirements.lock", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {**os.environ, "PYTHON": sys.executable, "NARVL_INSTALL_MIN_FREE_GB": "1000000000"}
    if shutil.which("java") is None:  # install.sh would install Java first; this test is about the disk check
        env["PATH"] = f"{tmp_path}:{env['PATH']}"
        (tmp_path / "java").write_text("#!/bin/sh\n")
        (tmp_path / "java").chmod(0o755)
    done = subprocess.run(["bash", "install.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "GB free on the file system of" in done.stderr
    assert "installing needs about 1000000000 GB" in done.stderr
    assert "NARVL_INSTALL_MIN_FREE_GB" in done.stderr
    assert not (tmp_path / ".venv").exists()  # nothing was created


def test_install_checks_the_disk_only_when_it_installs(tmp_path):
    """An up-to-date .venv needs no free space: the stamp check comes first."""
    for name in ("install.sh", "requirements.txt", "requirements.lock", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    want = subprocess.run("cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -c1-16",
                          shell=True, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / ".venv" / ".narvl-install-stamp").write_text(want + "\n")
    env = {**os.environ, "PYTHON": sys.executable, "NARVL_INSTALL_MIN_FREE_GB": "1000000000"}
    if shutil.which("java") is None:
        env["PATH"] = f"{tmp_path}:{env['PATH']}"
        (tmp_path / "java").write_text("#!/bin/sh\n")
        (tmp_path / "java").chmod(0o755)
    done = subprocess.run(["bash", "install.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ".venv is up to date" in done.stdout
