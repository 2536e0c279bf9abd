"""The tasks, each in a room of its own: what is particular to captioning, VQA, grounding and visual entailment.

Every stage (shard, loader, train, distill, decode, score, report, the workflow) asks the task object and never
branches on a task's name. A task module holds, behind the small interface of `narvl.tasks.base.Task`:

- its readers (the real formats' files -> `Record`s) and the sample fields it adds when sharding;
- its prompt and training target (token ids and a loss weight);
- the post-processing of decoded tokens into a prediction and the prediction's record in the official format;
- its scorer's arguments and call, the headline metric and the table columns; its trivial baselines.

This module stays light (no torch): `narvl.params` and the workflow read `NAMES` from it.
"""

from __future__ import annotations

import importlib

from narvl.errors import NarvlError

NAMES = ("caption", "vqa", "grounding", "entailment")  # the order of the tables and of every per-task listing

_cache: dict = {}


def get(name: str):
    """The task object of `name` (a `narvl.tasks.base.Task`)."""
    if name not in NAMES:
        raise NarvlError(f"unknown task '{name}' (tasks: {', '.join(NAMES)})")
    if name not in _cache:
        _cache[name] = importlib.import_module(f"narvl.tasks.{name}").TASK
    return _cache[name]


def all_tasks() -> list:
    return [get(name) for name in NAMES]


def with_format(fmt: str):
    """The task whose raw format is `fmt` (`narvl shard --format`), or None for OFA's TSV files (any task)."""
    for task in all_tasks():
        if fmt in task.formats:
            return task
    return None
