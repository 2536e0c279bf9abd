"""DVC as a lab shares data, and dvc.lock kept current: real `dvc` commands on real narvl data."""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from narvl.synth import generate as synth
from tests.test_synth import small_params

ROOT = Path(__file__).parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))


def dvc(cwd, *args, check=True):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([DVC, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def test_push_to_a_local_folder_remote_and_pull_into_a_second_clone(tmp_path):
    """docs/data-default.md, "Sharing data": one lab member records and pushes, another clones and pulls."""
    lab = tmp_path / "lab-store"  # the shared folder (an NFS mount in a lab)
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    subprocess.run(["git", "init", "-q", str(alice)], check=True)
    dvc(alice, "init", "-q")
    synth.generate(small_params(), alice / "data" / "raw")
    shutil.copy2(ROOT / "data.dvc", alice / "data.dvc")  # the checkout's data.dvc, pointed at this version
    dvc(alice, "commit", "--force", "--quiet", "data.dvc")
    dvc(alice, "remote", "add", "-d", "lab", str(lab))
    pushed = dvc(alice, "push").stdout
    files = sum(1 for p in (alice / "data" / "raw").rglob("*") if p.is_file())
    assert f"{files + 1} files pushed" in pushed, pushed  # every file of the folder, and its listing (.dir)
    assert len(list(lab.rglob("*.dir"))) == 1

    # bob: the git side of the repository (data.dvc, .dvc/config) without data or cache
    bob.mkdir()
    shutil.copy2(alice / "data.dvc", bob / "data.dvc")
    shutil.copytree(alice / ".dvc", bob / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    subprocess.run(["git", "init", "-q", str(bob)], check=True)
    assert "not in cache" in dvc(bob, "status").stdout
    assert "everything is up to date" not in dvc(bob, "status", "--cloud").stdout.lower()
    dvc(bob, "pull")
    assert same_tree(alice / "data" / "raw", bob / "data" / "raw")
    assert "up to date" in dvc(bob, "status").stdout

    # a file changed on bob's side is caught, and the remote still restores the recorded version
    victim = next(p for p in sorted((bob / "data" / "raw").rglob("*.json")))
    victim.write_text("{}")
    assert "modified" in dvc(bob, "status").stdout
    dvc(bob, "checkout", "--force")
    assert same_tree(alice / "data" / "raw", bob / "data" / "raw")


def _outs_and_tracked():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        produced = [o.def_path for s in repo.index.stages for o in s.outs]
        status = repo.status()
    return produced, status


def stale_entries(status: dict, produced: list[str]) -> list[str]:
    """What `dvc status` says is out of date in dvc.lock itself: a changed source or params dependency or command.
    Outputs (and dependencies on other stages' outputs or on data/raw) are left out: a checkout that has not run the
    pipeline has none of them."""
    def made(path):
        path = os.path.normpath(path)
        return any(path == os.path.normpath(p) or path.startswith(os.path.normpath(p) + os.sep) for p in produced)

    stale = []
    for stage, entries in status.items():
        stage = stage.split("dvc.yaml:")[-1]  # DVC names a stage "<path>/dvc.yaml:<name>" outside its repo's folder
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed"
                stale.append(f"{stage}: {entry}")
                continue
            for kind, changes in entry.items():
                if kind != "changed deps":
                    continue
                for path, change in changes.items():
                    if not made(path):
                        stale.append(f"{stage}: {path} {change}")
    return sorted(stale)


def test_dvc_lock_matches_the_sources_and_params_of_this_checkout():
    """dvc.lock records the hash of every source file and parameter the stages read: a commit that changes narvl/,
    workflow/ or params/ without refreshing it fails here (refresh: docs/workflow.md, "Refreshing dvc.lock")."""
    assert (ROOT / "dvc.lock").is_file(), "dvc.lock is committed for the default"
    produced, status = _outs_and_tracked()
    assert stale_entries(status, produced) == []


def test_stale_lock_check_catches_an_edited_source(tmp_path):
    """The check above can fail: a copy of the checkout with one source file edited."""
    copy = tmp_path / "repo"
    keep = ("dvc.yaml", "dvc.lock", "data.dvc", "Snakefile", ".dvc", ".dvcignore", "narvl", "workflow", "params",
            "published", "README.md")
    copy.mkdir()
    for name in keep:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("cache", "tmp", "__pycache__"))
        elif src.exists():
            shutil.copy2(src, copy / name)
    subprocess.run(["git", "init", "-q", str(copy)], check=True)
    from dvc.repo import Repo

    with Repo(str(copy)) as repo:
        produced = [o.def_path for s in repo.index.stages for o in s.outs]
        assert stale_entries(repo.status(), produced) == []
    with open(copy / "narvl" / "eval" / "__init__.py", "a") as f:
        f.write("# edited\n")
    params = yaml.safe_load((copy / "params" / "score.yaml").read_text())
    params["score"]["iou_threshold"] = 0.7
    (copy / "params" / "score.yaml").write_text(yaml.safe_dump(params))
    with Repo(str(copy)) as repo:
        stale = stale_entries(repo.status(), produced)
    assert any(s.startswith("evaluate: narvl/eval") for s in stale), stale
    assert any(s.startswith("evaluate: params/score.yaml") for s in stale), stale
