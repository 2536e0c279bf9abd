"""Reading the report's inputs: metrics cells, the decoding benchmark, training logs, predictions, shard samples.

The decoding benchmark (`results/bench/decode.json`, written by `narvl bench decode`, narvl/decode/bench.py) holds

    {"mode": "models" | "preset", "results": [{"device": "cpu" | "cuda", "task": str, "batch": int, "threads": int,
                 "ms": {"encoder", "nar_greedy", "nar_beam", "ar_greedy", "ar_beam": median ms per batch},
                 "speedup": {"nar_greedy", ...: {"median", "q1", "q3", "pairs"}}, ...}]}

and is read into flat records {device, task, model, decoder, batch_size, ms_per_sample (ms / batch), threads,
speedup (the per-pair AR/NAR ratio's {"median", "q1", "q3", "pairs"}: NAR models over the AR model of their decoder,
and AR-only decoders (trie, allcand, bins) over NAR greedy)}. A NAR + KD student has the
same architecture and decoder as the NAR model: when the benchmark did not time it, its records reuse the NAR
timing (derived, marked `"derived_from": "nar"`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from narvl.errors import NarvlError
from narvl.data.shard_folder import ShardFolder
from narvl.cell import BASELINE_DECODER, BASELINES, DECODERS, MODELS, CellName  # noqa: F401 - re-exported
from narvl.io import read_json

log = logging.getLogger(__name__)



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
    spread: dict[str, tuple[float, int]] = field(default_factory=dict)  # metric -> (sd, seeds): merged seeds only


def load_metrics(source: str | Path | list[str | Path]) -> list[Cell]:
    """Metrics cells from a list of files, or from every *.json of one folder. The workflow passes the files of the
    cells it built, so metrics left over from another configuration never enter the tables."""
    if isinstance(source, (str, Path)):
        source = [source]
    paths = [Path(p) for p in source]
    if len(paths) == 1 and paths[0].is_dir():
        paths = sorted(paths[0].glob("*.json"))
    elif len(paths) == 1 and not paths[0].exists():
        raise NarvlError(f"{paths[0]}: no such metrics folder or file")
    cells = []
    for path in paths:
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
        raise NarvlError(f"{paths[0].parent}: more than one metrics file for the cells {sorted(dup)}")
    return cells


def load_bench(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(flat latency records, {"mode", "device"}) from `narvl bench decode`'s JSON."""
    path = Path(path)
    data = read_json(path)
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise NarvlError(f"{path}: expected an object with a 'results' list (narvl bench decode output)")
    out = []
    for i, row in enumerate(rows):
        try:
            device, task, batch, ms = row["device"], row["task"], int(row["batch"]), dict(row["ms"])
        except (KeyError, TypeError, ValueError) as e:
            raise NarvlError(f"{path}: results[{i}]: needs device, task, batch and ms ({e})") from e
        timed = {method.partition("_")[0] for method in ms}
        for method, value in ms.items():
            model, _, decoder = method.partition("_")
            if not decoder:
                model, decoder = method, method  # the encoder alone
            rec = {"device": device, "task": task, "model": model, "decoder": decoder, "batch_size": batch,
                   "ms_per_sample": float(value) / batch, "threads": row.get("threads"),
                   "speedup": (row.get("speedup") or {}).get(method)}
            out.append(rec)
            if model == "nar" and "nar-kd" not in timed:
                out.append({**rec, "model": "nar-kd", "derived_from": "nar"})
    devices = sorted({r["device"] for r in out})
    info = {"mode": data.get("mode"), "devices": devices}
    return out, info


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


def load_summaries(runs: str | Path) -> dict[str, dict[str, Any]]:
    """{run name: summary.json} of every finished run (`narvl train` writes it at the end)."""
    runs = Path(runs)
    if not runs.is_dir():
        return {}
    out = {}
    for path in sorted(runs.glob("*/summary.json")):
        data = read_json(path)
        if not isinstance(data, dict):
            raise NarvlError(f"{path}: expected a JSON object")
        out[path.parent.name] = data
    return out


def find_predictions(folder: str | Path | None) -> dict[tuple[str, str, str, str], Path]:
    """{(task, split, model, decoder): path} of `results/predictions/*.json` (sidecars excluded)."""
    found: dict[tuple[str, str, str, str], Path] = {}
    if folder is None or not Path(folder).is_dir():
        return found
    for path in sorted(Path(folder).glob("*.json")):
        cell = CellName.parse(path.stem)
        if cell:
            found[(cell.task, cell.split, cell.model, cell.decoder)] = path
    return found


def shard_samples(shard_dir: str | Path, split: str, limit: int) -> Iterator[tuple[dict, bytes]]:
    """The first `limit` (sample json, jpg bytes) of a split, in shard order."""
    for count, sample in enumerate(ShardFolder(shard_dir).samples(split)):
        if count >= limit:
            return
        yield sample["meta"], sample["jpg"]


def read_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")
