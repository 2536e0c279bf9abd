"""Reading the report's inputs: metrics cells, the decoding benchmark, training logs, predictions, shard samples.

The decoding benchmark (`results/bench/decode.json`, written by `narvl bench decode`) is read as

    {"results": [{"task": str, "model": "ar" | "nar" | "nar-kd", "decoder": "greedy" | "beam",
                  "batch_size": int, "ms_per_sample": float, ...}, ...], ...}

(`kind` is accepted for `model`; records with other decoders, e.g. the encoder alone, are kept for the plots only).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from narvl.errors import NarvlError
from narvl.eval.common import CELL_RE
from narvl.io import read_json

log = logging.getLogger(__name__)

MODELS = ("ar", "nar", "nar-kd")
DECODERS = ("greedy", "beam")


@dataclass(frozen=True)
class Cell:
    task: str
    split: str
    model: str
    decoder: str
    metrics: dict[str, Any]
    unavailable: dict[str, str]
    coverage: dict[str, Any]
    path: Path


def load_metrics(folder: str | Path) -> list[Cell]:
    folder = Path(folder)
    if not folder.is_dir():
        raise NarvlError(f"{folder}: no such metrics folder")
    cells = []
    for path in sorted(folder.glob("*.json")):
        data = read_json(path)
        try:
            cell = Cell(task=data["task"], split=data["split"], model=data["model"], decoder=data["decoder"],
                        metrics=dict(data["metrics"]), unavailable=dict(data.get("unavailable", {})),
                        coverage=dict(data.get("coverage", {})), path=path)
        except (KeyError, TypeError) as e:
            raise NarvlError(f"{path}: not a narvl metrics file (missing {e})") from e
        if None in (cell.split, cell.model, cell.decoder):
            raise NarvlError(f"{path}: the metrics cell is not fully named (split/model/decoder): "
                             "score it with --split/--model/--decoder or a <task>-<split>-<model>-<decoder>.json name")
        cells.append(cell)
    keys = [(c.task, c.split, c.model, c.decoder) for c in cells]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise NarvlError(f"{folder}: more than one metrics file for the cells {sorted(dup)}")
    return cells


def load_bench(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    data = read_json(path)
    records = data.get("results") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise NarvlError(f"{path}: expected an object with a 'results' list (narvl bench decode output)")
    out = []
    for i, r in enumerate(records):
        try:
            rec = {"task": r["task"], "model": r.get("model", r.get("kind")), "decoder": r["decoder"],
                   "batch_size": int(r["batch_size"]), "ms_per_sample": float(r["ms_per_sample"])}
        except (KeyError, TypeError, ValueError) as e:
            raise NarvlError(f"{path}: results[{i}]: needs task, model, decoder, batch_size, ms_per_sample ({e})")
        if rec["model"] is None:
            raise NarvlError(f"{path}: results[{i}]: needs 'model' (ar, nar, nar-kd)")
        out.append(rec)
    return out


def load_curves(runs: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run name: {scalar tag: [(step, value), ...]}} from each run's tensorboard folder (`runs/*/tb`)."""
    runs = Path(runs)
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if not runs.is_dir():
        log.warning("%s: no runs folder; no training curves", runs)
        return curves
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for tb in sorted(runs.glob("*/tb")):
        acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        if tags:
            curves[tb.parent.name] = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}
    return curves


def find_predictions(folder: str | Path | None) -> dict[tuple[str, str, str, str], Path]:
    """{(task, split, model, decoder): path} of `results/predictions/*.json` (sidecars excluded)."""
    found: dict[tuple[str, str, str, str], Path] = {}
    if folder is None or not Path(folder).is_dir():
        return found
    for path in sorted(Path(folder).glob("*.json")):
        m = CELL_RE.match(path.stem)
        if m:
            found[(m["task"], m["split"], m["model"], m["decoder"])] = path
    return found


def shard_samples(shard_dir: str | Path, split: str, limit: int) -> Iterator[tuple[dict, bytes]]:
    """The first `limit` (sample json, jpg bytes) of a split, in shard order."""
    shard_dir = Path(shard_dir)
    sizes = read_json(shard_dir / "sizes.json")
    if split not in sizes:
        raise NarvlError(f"{shard_dir / 'sizes.json'}: no split '{split}'")
    count = 0
    for name in sizes[split]["shards"]:
        pending: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard_dir / name) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                pending.setdefault(key, {})[ext] = tar.extractfile(member).read()
                if "json" in pending[key] and "jpg" in pending[key]:
                    parts = pending.pop(key)
                    yield json.loads(parts["json"]), parts["jpg"]
                    count += 1
                    if count >= limit:
                        return


def read_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")
