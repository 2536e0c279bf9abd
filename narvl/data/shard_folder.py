"""A shard folder as `narvl shard` writes it: `sizes.json` listing each split's shards by name. Its one reader,
kept free of heavy imports so that every stage (the report too) can check a folder before opening a file of it."""

from __future__ import annotations

import re
from pathlib import Path

from narvl import params as params_mod
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
        pattern = re.compile(rf"(?P<task>{'|'.join(params_mod.TASKS)})-{re.escape(split)}-\d{{6}}\.tar")
        for name in entry["shards"]:
            m = pattern.fullmatch(name) if isinstance(name, str) else None
            if m is None:
                raise NarvlError(f"{path}: split '{split}': shard name {name!r} is not <task>-{split}-NNNNNN.tar "
                                 f"(a shard folder lists only its own files, by name)")
            if task is not None and m["task"] != task:
                raise NarvlError(f"{path}: split '{split}': shard {name} is not a '{task}' shard but a {m['task']} "
                                 f"one (a {task} model, or --task {task}, on another task's shards?)")
    return sizes
