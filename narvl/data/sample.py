"""A shard sample's json (docs/design.md, "Shards"): the fields every task shares, typed, and the task's own.

`narvl shard` writes every sample through `Sample.to_json`, and `ShardFolder` checks every sample it reads with
`Sample.from_json`, so a sample that lacks a common field, or holds one of the wrong type, stops the stage that
reads it with the shard and the key named, instead of a KeyError further on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from narvl.errors import NarvlError

# the common fields and their types; a task's own fields (question_id, box, pair_id, ...) are in `fields`
COMMON: dict[str, type | tuple[type, ...]] = {"id": str, "task": str, "split": str, "image_id": int,
                                               "orig_size": list, "size": list, "prompt": str, "target": str}


@dataclass(frozen=True)
class Sample:
    id: str  # the webdataset key: <split>_<8-digit index>
    task: str
    split: str
    image_id: int
    orig_size: tuple[int, int]  # [w, h] of the original image
    size: tuple[int, int]  # [w, h] after resizing (the stored JPEG)
    prompt: str  # the encoder's text input
    target: str  # the training target text (grounding: its location tokens)
    fields: dict[str, Any] = field(default_factory=dict)  # the task's own fields

    def to_json(self) -> dict[str, Any]:
        clash = sorted(set(self.fields) & set(COMMON))
        if clash:
            raise NarvlError(f"sample {self.id}: task fields {clash} would replace common fields")
        return {"id": self.id, "task": self.task, "split": self.split, "image_id": self.image_id,
                "orig_size": list(self.orig_size), "size": list(self.size), "prompt": self.prompt,
                "target": self.target, **self.fields}

    @classmethod
    def from_json(cls, meta: Any, where: str) -> "Sample":
        """The sample of a json member, checked; `where` names the shard and key in errors."""
        if not isinstance(meta, dict):
            raise NarvlError(f"{where}: the sample json is {type(meta).__name__}, not an object")
        for key, kind in COMMON.items():
            if key not in meta:
                raise NarvlError(f"{where}: the sample json lacks '{key}' (not written by this narvl shard?)")
            value = meta[key]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise NarvlError(f"{where}: '{key}' should be {kind.__name__}, got {type(value).__name__} "
                                 f"{value!r:.60}")
        for key in ("orig_size", "size"):
            if len(meta[key]) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                              for v in meta[key]):
                raise NarvlError(f"{where}: '{key}' should be [width, height] in pixels, got {meta[key]!r:.60}")
        return cls(id=meta["id"], task=meta["task"], split=meta["split"], image_id=meta["image_id"],
                   orig_size=tuple(meta["orig_size"]), size=tuple(meta["size"]), prompt=meta["prompt"],
                   target=meta["target"], fields={k: v for k, v in meta.items() if k not in COMMON})
