"""Checkpoint folder layout, completeness and compatibility (torch is imported only where tensors are saved).

    runs/<run>/checkpoints/
      run.json                      what the checkpoints belong to: the model identity (kind, task, architecture,
                                    vocabulary, queries, special ids) and its hash, ZeRO stage, world size, tokenizer
      step_00000100/                one DeepSpeed checkpoint (save_checkpoint on all ranks, tag = step_%08d)
        ...DeepSpeed files...
        ranks/rank_00000.pt         per rank: data position (epoch, batches consumed) and RNG states
        COMPLETE.json               written by rank 0 after every rank finished writing; a folder without it is
                                    incomplete (a run killed while saving) and is ignored and removed on resume
                                    (and so is a complete one with a truncated or corrupt file: resume and export
                                    fall back to the previous complete checkpoint, naming the file)
      latest                        DeepSpeed's pointer (not used: narvl resumes from the newest COMPLETE folder)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from narvl.errors import NarvlError
from narvl.io import UnreadableFile, atomic_path, load_torch_file, read_json

RUN_INFO = "run.json"
MARKER = "COMPLETE.json"
TAG_RE = re.compile(r"step_(\d{8})")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def identity_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_durable_json(path: Path, obj: Any) -> None:
    """Write JSON atomically and fsync it and its folder, so the marker survives a crash right after."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------- listing
def checkpoints(ckpt_dir: Path) -> tuple[list[tuple[int, Path]], list[Path]]:
    """(complete [(step, folder)] ascending, incomplete folders)."""
    complete, incomplete = [], []
    if not ckpt_dir.is_dir():
        return complete, incomplete
    for child in sorted(ckpt_dir.iterdir()):
        m = TAG_RE.fullmatch(child.name)
        if not m or not child.is_dir():
            continue
        if (child / MARKER).is_file():
            complete.append((int(m.group(1)), child))
        else:
            incomplete.append(child)
    complete.sort()
    return complete, incomplete


def latest_complete(ckpt_dir: Path) -> tuple[int, Path] | None:
    complete, _ = checkpoints(ckpt_dir)
    return complete[-1] if complete else None


def deepspeed_allow() -> list[type]:
    """The classes DeepSpeed 0.19.8 pickles into its checkpoint files, beyond tensors and plain data.

    Found with torch.serialization.get_unsafe_globals_in_checkpoint on checkpoints of every configuration narvl
    trains on CPU (ZeRO 0-3, fp32 and bf16): only the ZeRO 1-3 optimizer files hold objects, the ZeRO stage enum,
    the loss scaler and the fp32 master fragments' addresses. DynamicLossScaler is what the same field holds with
    fp16 (GPU only). Every other class is refused, so a planted file cannot run code.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def check_files(tag_dir: Path, allow: list[type], ranks: bool = True) -> None:
    """Load the torch files of a checkpoint folder safely (memory-mapped: cheap), DeepSpeed's and with `ranks` the
    per-rank states: UnreadableFile names a truncated or corrupt one, NarvlError one with objects outside `allow`."""
    for path in sorted(tag_dir.glob("*.pt")) + (sorted(tag_dir.glob("ranks/*.pt")) if ranks else []):
        load_torch_file(path, allow=allow, mmap=True)


def latest_readable(ckpt_dir: Path, allow: list[type],
                    ranks: bool = True) -> tuple[tuple[int, Path] | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint whose files all load (check_files), and the newer complete ones that did not
    [(folder, the error naming the file)]."""
    complete, _ = checkpoints(ckpt_dir)
    broken = []
    for step, tag_dir in reversed(complete):
        try:
            check_files(tag_dir, allow, ranks)
        except UnreadableFile as e:
            broken.append((tag_dir, str(e)))
            continue
        return (step, tag_dir), broken
    return None, broken


def marker(tag_dir: Path) -> dict[str, Any]:
    return read_json(tag_dir / MARKER)


def mark_complete(tag_dir: Path, info: dict[str, Any]) -> None:
    write_durable_json(tag_dir / MARKER, info)


def prune(ckpt_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (rank 0, after marking the newest)."""
    complete, _ = checkpoints(ckpt_dir)
    removed = [path for _, path in complete[:-keep]] if keep > 0 else []
    for path in removed:
        # unmark first: a crash in the middle of rmtree leaves an incomplete folder, never a broken "complete" one
        (path / MARKER).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    return removed


# --------------------------------------------------------------------------------------------- compatibility
def read_run_info(ckpt_dir: Path) -> dict[str, Any] | None:
    path = ckpt_dir / RUN_INFO
    return read_json(path) if path.is_file() else None


def write_run_info(ckpt_dir: Path, info: dict[str, Any]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_durable_json(ckpt_dir / RUN_INFO, info)


def check_compatible(ckpt_dir: Path, info: dict[str, Any]) -> None:
    """Refuse to resume checkpoints written for another model (or an incompatible ZeRO layout).

    `info` is what this run would write to run.json. Checked only when a complete checkpoint exists.
    """
    if latest_complete(ckpt_dir) is None:
        return
    path = ckpt_dir / RUN_INFO
    old = read_run_info(ckpt_dir)
    if old is None:
        raise NarvlError(f"{path}: missing, so the checkpoints in {ckpt_dir} cannot be checked against this run; "
                         "remove the folder to start afresh")
    if old.get("identity_hash") != info["identity_hash"]:
        a, b = old.get("identity", {}), info["identity"]
        diffs = [f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in sorted(set(a) | set(b))
                 if a.get(k) != b.get(k)]
        raise NarvlError(f"{path}: the checkpoints belong to another model configuration (hash "
                         f"{old.get('identity_hash')} vs {info['identity_hash']}): {'; '.join(diffs)}. "
                         "Use another --out or remove the folder to start afresh")
    if old.get("zero_stage") != info["zero_stage"]:
        raise NarvlError(f"{path}: the checkpoints were written with ZeRO stage {old.get('zero_stage')}, this run "
                         f"uses stage {info['zero_stage']}; set train.zero_stage back or start afresh")
    if info["zero_stage"] > 0 and old.get("world_size") != info["world_size"]:
        raise NarvlError(f"{path}: the ZeRO-{info['zero_stage']} checkpoints are partitioned over "
                         f"{old.get('world_size')} ranks, this run has {info['world_size']}; run with the same "
                         "number of processes or start afresh")


# ------------------------------------------------------------------------------------------- per-rank state
def rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / "ranks" / f"rank_{rank:05d}.pt"


def capture_rng() -> dict[str, Any]:
    """RNG states as tensors and plain data (the rank file loads with weights_only=True, no allow-list)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_rank_state(tag_dir: Path, rank: int, state: dict[str, Any]) -> None:
    import torch

    path = rank_file(tag_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_rank_state(tag_dir: Path, rank: int) -> dict[str, Any] | None:
    path = rank_file(tag_dir, rank)
    if not path.is_file():
        return None
    return load_torch_file(path)
