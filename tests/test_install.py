"""install.sh: what it refuses before it touches anything (the full install runs in CI: .ci/run)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_install(folder: Path, min_free_gb: str) -> subprocess.CompletedProcess:
    """install.sh copied into `folder` with its pinned files, run with NARVL_INSTALL_MIN_FREE_GB=min_free_gb."""
    for name in ("install.sh", "requirements.txt", "requirements.lock", "pyproject.toml"):
        shutil.copy(ROOT / name, folder / name)
    env = {**os.environ, "PYTHON": sys.executable, "NARVL_INSTALL_MIN_FREE_GB": min_free_gb}
    if shutil.which("java") is None:  # install.sh would install Java first; these tests are about what comes after
        (folder / "java").write_text("#!/bin/sh\n")
        (folder / "java").chmod(0o755)
        env["PATH"] = f"{folder}:{env['PATH']}"
    return subprocess.run(["bash", "install.sh"], cwd=folder, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_install_refuses_a_full_disk_before_creating_the_venv(tmp_path):
    done = run_install(tmp_path, "1000000000")
    assert done.returncode == 1, done.stderr
    assert "GB free on the file system of" in done.stderr
    assert "installing needs about 1000000000 GB" in done.stderr
    assert "NARVL_INSTALL_MIN_FREE_GB" in done.stderr
    assert not (tmp_path / ".venv").exists()  # nothing was created


def test_install_refuses_a_threshold_that_is_not_a_number(tmp_path):
    done = run_install(tmp_path, "8GB")
    assert done.returncode == 1, done.stderr
    assert "NARVL_INSTALL_MIN_FREE_GB=8GB: expected a whole number of GB" in done.stderr
    assert not (tmp_path / ".venv").exists()


def test_install_checks_the_disk_only_when_it_installs(tmp_path):
    """An up-to-date .venv needs no free space: the stamp check comes first."""
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    pinned = b"".join((ROOT / name).read_bytes() for name in ("requirements.txt", "requirements.lock", "pyproject.toml"))
    (tmp_path / ".venv" / ".narvl-install-stamp").write_text(hashlib.sha256(pinned).hexdigest()[:16] + "\n")
    done = run_install(tmp_path, "1000000000")
    assert done.returncode == 0, done.stderr
    assert ".venv is up to date" in done.stdout
