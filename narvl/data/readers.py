"""What the readers of the real datasets' formats share: the `Record` they return, strict JSON field access, the
text cleaning, and OFA's TSV files (one per split, base64 images), whose row layout each task gives.

The format readers live with their tasks (narvl/tasks/): karpathy (caption), vqav2 (vqa), refer (grounding),
snli-ve (entailment); ofa-tsv reads any task's TSV through `Task.tsv_columns` and `Task.tsv_records`.

Readers return records in a deterministic order (sorted by ids; TSV rows in file order). They never decode images:
the shard writer does, and a missing or corrupt image skips that sample (counted in sizes.json). A malformed file
or record stops with a NarvlError naming the file, the record and the problem.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from narvl.errors import NarvlError


@dataclass
class Record:
    """One sample before its image is read: the writer adds id, orig_size, size and the task's `shard_fields`."""

    split: str
    source_id: str  # names the sample in skip reports, e.g. "question_id=458752000"
    image: Path | str  # a file, or base64 text (OFA TSV)
    image_key: str  # identical images share a key, so the writer decodes and resizes each image once
    image_id: int
    fields: dict[str, Any] = field(default_factory=dict)  # prompt, target and the task's fields; grounding: orig_box


def clean_text(text: str) -> str:
    """Lower-case, punctuation to spaces (apostrophes kept), single spaces: the form of the training text."""
    text = re.sub(r"[^\w\s']", " ", text.lower())
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------------- helpers
def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NarvlError(f"{path}: not valid JSON ({e})") from e


def get_field(record: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    """record[key], checked for presence and type, else a NarvlError naming the file and the record."""
    if not isinstance(record, dict):
        raise NarvlError(f"{path}: {where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise NarvlError(f"{path}: {where}: missing key '{key}'")
    value = record[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise NarvlError(f"{path}: {where}: '{key}' should be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def coco_image_path(images: Path, file_name: str) -> Path:
    """COCO images live in <images>/<train2014|val2014>/COCO_<subset>_<id>.jpg; a flat folder works too."""
    m = re.match(r"COCO_([A-Za-z]+\d*)_\d+\.\w+$", file_name)
    if m and not (images / file_name).exists():
        return images / m.group(1) / file_name
    return images / file_name


# ----------------------------------------------------------------------------------------------------- OFA TSV
def tsv_int(value: str, path: Path, where: str, column: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise NarvlError(f"{path}: {where}: column '{column}' should be an integer, got {value!r:.40}") from e


def read_ofa_tsv(task: str, split: str, path: Path) -> Iterator[Record]:
    """Stream the rows of one OFA TSV file (one split) as records, in file order, in the task's column layout
    (`Task.tsv_columns`, OFA's README / datasets.md). A file without rows is an error (it would give its split no
    samples without a word)."""
    from narvl import tasks

    spec = tasks.get(task)
    columns = spec.tsv_columns
    image_col = spec.tsv_image_column
    try:
        f = open(path, encoding="utf-8", newline="\n")
    except FileNotFoundError as e:
        raise NarvlError(f"{path}: no such file") from e
    rows = 0
    with f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            rows += 1
            cols = line.split("\t")
            where = f"line {lineno}"
            if len(cols) != len(columns):
                raise NarvlError(f"{path}: {where}: expected {len(columns)} tab-separated columns "
                                 f"({', '.join(columns)}) for {task}, found {len(cols)}")
            where = f"line {lineno} ({columns[0]} {cols[0].strip()})"
            image_id = tsv_int(cols[1], path, where, columns[1])
            base = dict(split=split, image=cols[image_col], image_key=f"{path}:{lineno}", image_id=image_id)
            yield from spec.tsv_records(cols, base, path, lineno, where)
    if rows == 0:
        raise NarvlError(f"{path}: no rows: the {task} TSV file for split '{split}' is empty")
