"""Atomic output: everything narvl writes appears under its final name only when it is complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from narvl.errors import NarvlError


def _check_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NarvlError(f"{path}: cannot create the folder {parent}: {e.strerror}") from e
    if not os.access(parent, os.W_OK):
        raise NarvlError(f"{path}: the folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to `path`, on failure remove it.

    `is_dir=True` yields a fresh temporary folder. With `overwrite=False` an existing `path` is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise NarvlError(f"{path}: already exists; remove it or choose another output")
    _check_parent(path)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            os.chmod(tmp, 0o755)
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write JSON atomically with sorted keys, so equal objects give identical bytes."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, sort_keys=True, ensure_ascii=False)
            f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a missing file or a syntax error into a NarvlError naming the file and position."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    except json.JSONDecodeError as e:
        raise NarvlError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
