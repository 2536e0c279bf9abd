"""A shard folder as `narvl shard` writes it: `<task>-<split>-%06d.tar` webdataset shards (`<key>.jpg` and
`<key>.json`, the sample fields of docs/design.md) and `sizes.json` listing each split's shards by name.

`ShardFolder` is its one reader: sizes.json read and checked once, a split's shard paths, and the samples (with or
without their images) in shard order. Kept free of heavy imports so that every stage (the report too) can check a
folder before opening a file of it. The one writer is `narvl.data.shard.write_shards`."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from narvl import tasks
from narvl.data.sample import Sample
from narvl.errors import NarvlError
from narvl.io import read_json


def check_key_part(split: str) -> str:
    if not split or "." in split or "/" in split or "\\" in split:
        raise NarvlError(f"split name {split!r}: must be non-empty, without dots or slashes")
    return split


def read_sizes(shard_dir: Path, task: str | None = None) -> dict:
    """sizes.json of a shard folder, checked: the one reader of shard folders.

    Every split name is a key part (no dots or slashes) and every shard name is exactly `<task>-<split>-%06d.tar`
    of that split (so no name reaches outside the folder); with `task`, every shard is one of that task's.
    """
    path = Path(shard_dir) / "sizes.json"
    if not path.is_file():
        raise NarvlError(f"{path}: missing (is {shard_dir} a shard folder made by `narvl shard`?)")
    sizes = read_json(path)
    if not isinstance(sizes, dict):
        raise NarvlError(f"{path}: expected a mapping of split -> {{shards, samples, ...}}")
    for split, entry in sizes.items():
        try:
            check_key_part(split)
        except NarvlError as e:
            raise NarvlError(f"{path}: {e}") from e
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list) or "samples" not in entry:
            raise NarvlError(f"{path}: split '{split}': expected {{\"shards\": [...], \"samples\": N, ...}}")
        pattern = re.compile(rf"(?P<task>{'|'.join(tasks.NAMES)})-{re.escape(split)}-\d{{6}}\.tar")
        for name in entry["shards"]:
            m = pattern.fullmatch(name) if isinstance(name, str) else None
            if m is None:
                raise NarvlError(f"{path}: split '{split}': shard name {name!r} is not <task>-{split}-NNNNNN.tar "
                                 f"(a shard folder lists only its own files, by name)")
            if task is not None and m["task"] != task:
                raise NarvlError(f"{path}: split '{split}': shard {name} is not a '{task}' shard but a {m['task']} "
                                 f"one (a {task} model, or --task {task}, on another task's shards?)")
    return sizes


def iter_samples(shards: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Samples of tar shards in order, via webdataset's tar reader: {"key", "jpg" (bytes), "meta" (dict)}."""
    from webdataset.tariterators import tarfile_samples

    for shard in shards:
        for raw in tarfile_samples([{"url": str(shard)}]):
            key = raw["__key__"]
            if "json" not in raw or "jpg" not in raw:
                raise NarvlError(f"{shard}: sample {key} lacks its {'json' if 'json' not in raw else 'jpg'} member")
            try:
                meta = json.loads(raw["json"])
            except json.JSONDecodeError as e:
                raise NarvlError(f"{shard}: sample {key}: json member is not valid JSON ({e})") from e
            Sample.from_json(meta, f"{shard}: sample {key}")  # the common fields present and typed
            yield {"key": key, "jpg": raw["jpg"], "meta": meta}


def iter_metas(shards: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The json member of every sample of tar shards, in order, without reading the images (tarfile seeks over
    them): what a pass over the targets alone needs (references, candidate answers)."""
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if not member.name.endswith(".json"):
                        continue
                    f = tar.extractfile(member)
                    try:
                        meta = json.loads(f.read() if f is not None else b"")
                    except json.JSONDecodeError as e:
                        raise NarvlError(f"{shard}: {member.name}: not valid JSON ({e})") from e
                    Sample.from_json(meta, f"{shard}: {member.name}")
                    yield meta
        except (tarfile.TarError, OSError) as e:
            raise NarvlError(f"{shard}: cannot read this shard as a tar file ({e})") from e


class ShardFolder:
    """A checked shard folder (`read_sizes`); with `task`, every shard must be one of that task's."""

    def __init__(self, path: str | Path, task: str | None = None):
        self.path = Path(path)
        self.task = task
        self.sizes = read_sizes(self.path, task)

    @property
    def splits(self) -> list[str]:
        return sorted(self.sizes)

    def entry(self, split: str) -> dict:
        if split not in self.sizes:
            raise NarvlError(f"{self.path / 'sizes.json'}: no split '{split}' (has {', '.join(self.splits)})")
        return self.sizes[split]

    def samples_count(self, split: str) -> int:
        return int(self.entry(split)["samples"])

    def shards(self, split: str) -> list[Path]:
        """The split's shard files, each present; a split without samples is an error."""
        shards = [self.path / name for name in self.entry(split)["shards"]]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise NarvlError(f"{self.path}: shards listed in sizes.json are missing: {', '.join(missing)}")
        if not shards:
            raise NarvlError(f"{self.path / 'sizes.json'}: split '{split}' has no samples")
        return shards

    def samples(self, split: str) -> Iterator[dict[str, Any]]:
        """{"key", "jpg", "meta"} of every sample of the split, in shard order."""
        return iter_samples(self.shards(split))

    def metas(self, split: str) -> Iterator[dict[str, Any]]:
        """The sample json of every sample of the split, in shard order, without the images."""
        return iter_metas(self.shards(split))
