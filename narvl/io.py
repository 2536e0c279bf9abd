"""Safe input and output: what narvl writes appears under its final name only when complete, it replaces only
outputs it wrote itself, and it loads torch files without running code from them (docs/design.md, "Safety rules").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from narvl.errors import NarvlError

# Written into every output folder by atomic_path(is_dir=True): the folder is narvl's and a rerun may replace it.
OUTPUT_MARKER = ".narvl-output"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Errors of reading that say nothing about a file's content (permissions, I/O, resources): not "corrupt".
TRANSIENT = (errno.EACCES, errno.EPERM, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN,
             errno.ESTALE, errno.ETIMEDOUT)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks: the one hash narvl records for provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NarvlError(f"{path}: cannot create the folder {parent}: {e.strerror}") from e
    if not os.access(parent, os.W_OK):
        raise NarvlError(f"{path}: the folder {parent} is not writable")


def _tmp_re(path: Path) -> re.Pattern:
    """The temporary names atomic_path gives `path`: `.<name>.<pid>.<8 random characters>.tmp`."""
    return re.compile(rf"\.{re.escape(path.name)}\.(?P<pid>\d+)\.[a-z0-9_]{{8}}\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(path: Path) -> list[Path]:
    """Remove the temporary siblings that earlier, killed writers of `path` left (their process is gone)."""
    pattern, removed = _tmp_re(path), []
    if not path.parent.is_dir():
        return removed
    for child in path.parent.iterdir():
        m = pattern.fullmatch(child.name)
        if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() and not child.is_symlink() else child.unlink()
            removed.append(child)
    return removed


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(path: Path, *, is_dir: bool, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse an output that would replace an input or something narvl did not write (see atomic_path)."""
    target = path.resolve()
    for inp in inputs:
        if inp is not None and _inside(Path(inp).resolve(), target):
            what = "is" if Path(inp).resolve() == target else "contains"
            raise NarvlError(f"{path}: the output {what} the input {inp}; writing it would replace the input. "
                             "Choose an --out outside the inputs")
    if not is_dir:
        if path.is_dir():
            raise NarvlError(f"{path}: is a folder, but this output is a file; name a file (e.g. {path}/out.json)")
        return
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise NarvlError(f"{path}: exists and is not a folder narvl wrote; remove it or choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (path / OUTPUT_MARKER).is_file():
        raise NarvlError(f"{path}: a non-empty folder that narvl did not write (no {OUTPUT_MARKER} in it); "
                         "narvl replaces only its own outputs: choose another --out, or empty or remove the "
                         "folder yourself")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False, overwrite: bool = True,
                inputs: Iterable[str | os.PathLike] = (), marker: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to `path`, on failure remove it.

    `is_dir=True` yields a fresh temporary folder; it gets OUTPUT_MARKER (unless `marker=False`: such an output
    is never replaced once it has files), and an existing `path` is replaced only when it is empty or has that
    marker. An output that equals or contains one of `inputs` is refused, and so is an existing `path` with
    `overwrite=False`. Temporary siblings of `path` left by killed runs are removed first.
    A full disk is a NarvlError naming `path`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise NarvlError(f"{path}: already exists; remove it or choose another output")
    check_output(path, is_dir=is_dir, inputs=inputs)
    _check_parent(path)
    remove_leftovers(path)
    prefix = f".{path.name}.{os.getpid()}."
    try:
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        _no_space(path, e)
        raise
    try:
        if is_dir and marker:
            (tmp / OUTPUT_MARKER).write_text("written by narvl: a rerun of the same command may replace this folder\n")
        yield tmp
        if is_dir:
            os.chmod(tmp, 0o755)
            if path.exists():  # ours (checked above): move it aside, put the new one in place, then delete it
                old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
                return
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if isinstance(e, OSError):
            _no_space(path, e)
        raise


def _no_space(path: Path, e: OSError) -> None:
    if e.errno in NO_SPACE:
        raise NarvlError(f"{path}: no space left on the device while writing it ({os.strerror(e.errno)}); "
                         "nothing was replaced: free space and run again") from e


def json_bytes(obj: Any, *, indent: int | None = 2) -> bytes:
    """JSON with sorted keys, so equal objects give identical bytes."""
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write JSON atomically with sorted keys, so equal objects give identical bytes."""
    write_bytes(path, json_bytes(obj, indent=indent))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a missing file or a syntax error into a NarvlError naming the file and position."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise NarvlError(f"{path}: is a folder, expected a JSON file") from e
    except json.JSONDecodeError as e:
        raise NarvlError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


# --------------------------------------------------------------------------------------------- torch files
class UnreadableFile(NarvlError):
    """A torch file that is truncated or corrupt (not one that is refused for safety)."""


@contextlib.contextmanager
def restricted_torch_loads(allow: Iterable[Any] = ()) -> Iterator[None]:
    """Every torch.load inside (also third-party ones that pass weights_only=False, as DeepSpeed does) runs with
    weights_only=True: tensors and plain containers, plus only the classes in `allow`."""
    import torch

    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with torch.serialization.safe_globals(list(allow)):
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def load_torch_file(path: str | os.PathLike, *, allow: Iterable[Any] = (), map_location: Any = "cpu",
                    mmap: bool = False) -> Any:
    """torch.load a file that someone else may have written: weights_only=True, plus the classes in `allow`.

    A file that would need another class (code could run while loading it) is a NarvlError naming the file and
    the class; a truncated or corrupt file is an UnreadableFile naming the file.
    """
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        raise NarvlError(f"{path}: is a folder, expected a torch file")
    try:
        with restricted_torch_loads(allow):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    except OSError as e:
        if e.errno in TRANSIENT:  # the file may be fine: never a reason to discard it (resume deletes unreadable ones)
            raise NarvlError(f"{path}: cannot read it: {e.strerror}") from e
        raise UnreadableFile(f"{path}: truncated or corrupt torch file ({e})") from e
    except pickle.UnpicklingError as e:
        refused = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", str(e))
        if refused:
            raise NarvlError(f"{path}: refused to load: it holds a {refused[1]} object, which is neither a tensor "
                             "nor plain data and could run code") from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFile(f"{path}: truncated or corrupt torch file ({first})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFile(f"{path}: truncated or corrupt torch file ({first})") from e
