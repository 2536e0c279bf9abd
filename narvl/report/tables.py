"""The paper's main table: per task, AR and NAR (and NAR-KD) quality, latency per sample and speed-up over AR.

Every number comes from a metrics cell or the decoding benchmark. `main.csv` holds the exact values (tidy: one
value per row, written with Python's shortest round-trip repr); `main.md` shows them as the paper does (captions
x100 with one decimal, VQA and grounding percentages with two, latency in ms with two, speed-up with two).
The speed-up of a row is the benchmark's median per-pair ratio AR time / NAR time (same task, decoder, batch size,
inputs and round; its interquartile range beside it), or AR latency / the row's latency for a benchmark file without
pair ratios. An AR row of a constrained decoder (OFA's trie and all-candidate VQA, <bin>-only grounding) shows NAR
greedy's speed-up over it: the paper's comparison for VQA.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import statistics
from dataclasses import dataclass
from typing import Any

from narvl import tasks
from narvl.report.inputs import BASELINE_DECODER, BASELINES, DECODERS, MODELS, Cell
from narvl.tasks.base import Column, f2 as _f2

MODEL_LABEL = {"ar": "AR (OFA)", "nar": "NAR (NARVL)", "nar-kd": "NAR + KD",
               "baseline-constant": "baseline: constant caption", "baseline-majority": "baseline: majority per type",
               "baseline-blind": "baseline: AR, blank images", "baseline-random-object": "baseline: random object",
               "baseline-largest-object": "baseline: largest object"}
DECODER_LABEL = {"trie": "trie over answers", "allcand": "all answers scored", "bins": "bins only"}
AR_ONLY = tuple(DECODER_LABEL)


def task_columns(task: str, splits: list[str]) -> list[Column]:
    return tasks.get(task).columns(splits)


SEEDED = re.compile(r"(?P<base>ar|nar|nar-kd)-seed[0-9]+")


def merge_seeds(cells: list[Cell]) -> list[Cell]:
    """The cells of one (task, split, model, decoder) over the seeds of pipeline.seeds (`ar` and `ar-seed1`, ...)
    as one cell: each numeric metric the mean over the seeds, `spread` its sample sd and the count. A cell without
    other seeds is returned as it is."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        m = SEEDED.fullmatch(c.model)
        groups.setdefault((c.task, c.split, m["base"] if m else c.model, c.decoder), []).append(c)
    out = []
    for (_, _, base, _), group in groups.items():
        if len(group) == 1 and group[0].model == base:
            out.append(group[0])
            continue
        first = next((c for c in group if c.model == base), group[0])
        mean, spread = {}, {}
        for key, value in first.metrics.items():
            values = [c.metrics.get(key) for c in group]
            if len(values) > 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                mean[key] = statistics.fmean(values)
                spread[key] = (statistics.stdev(values), len(values))
        out.append(dataclasses.replace(first, model=base, metrics={**first.metrics, **mean}, spread=spread))
    return out


def _split_order(task: str, splits: set[str]) -> list[str]:
    return tasks.get(task).ordered_splits(splits)


def bench_device(bench: list[dict]) -> str | None:
    """The device the tables use: the GPU when the benchmark has one (the paper's setting), else the CPU."""
    devices = {r["device"] for r in bench}
    return "cuda" if "cuda" in devices else ("cpu" if "cpu" in devices else next(iter(sorted(devices)), None))


def latency(bench: list[dict], task: str) -> tuple[int | None, dict[tuple[str, str], dict]]:
    """(batch size shown, {(model, decoder): benchmark record}) at the task's smallest benchmarked batch size."""
    device = bench_device(bench)
    recs = [r for r in bench if r["task"] == task and r["decoder"] in DECODERS and r["device"] == device]
    if not recs:
        return None, {}
    b = min(r["batch_size"] for r in recs)
    return b, {(r["model"], r["decoder"]): r for r in recs if r["batch_size"] == b}


def speedup(lat: dict[tuple[str, str], dict], model: str, decoder: str) -> dict[str, float] | None:
    """{"median", "q1", "q3"} of the row's speed-up over AR (1 for AR itself); None when a timing is missing."""
    rec, ar = lat.get((model, decoder)), lat.get(("ar", decoder))
    if rec is None or ar is None:
        return None
    if model == "ar" and decoder in AR_ONLY:  # NAR greedy's speed-up over this AR decoding
        if rec.get("speedup"):
            return {k: rec["speedup"][k] for k in ("median", "q1", "q3")}
        nar = lat.get(("nar", "greedy"))
        return None if nar is None else {k: rec["ms_per_sample"] / nar["ms_per_sample"] for k in ("median", "q1", "q3")}
    if model == "ar":
        return {"median": 1.0, "q1": 1.0, "q3": 1.0}
    if rec.get("speedup"):
        return {k: rec["speedup"][k] for k in ("median", "q1", "q3")}
    ratio = ar["ms_per_sample"] / rec["ms_per_sample"]
    return {"median": ratio, "q1": ratio, "q3": ratio}


@dataclass
class Table:
    task: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]
    values: list[dict[str, Any]]  # tidy exact values for the CSV


def build(cells: list[Cell], bench: list[dict], bench_mode: str | None = "models") -> list[Table]:
    tables = []
    device = bench_device(bench)
    cells = merge_seeds(cells)
    by_task: dict[str, dict[tuple[str, str, str], Cell]] = {}
    for c in cells:
        by_task.setdefault(c.task, {})[(c.split, c.model, c.decoder)] = c
    for task in tasks.NAMES:
        task_cells = by_task.get(task, {})
        b, lat = latency(bench, task)
        if not task_cells and not lat:
            continue
        splits = _split_order(task, {s for s, _, _ in task_cells})
        cols = task_columns(task, splits)
        header = ["model", "decoder"] + [c.label for c in cols]
        if b is not None:
            header += [f"ms/sample ({device}, batch {b})", "speed-up"]
        rows, notes, values = [], [], []
        for model in MODELS + BASELINES:
            for decoder in DECODERS + (BASELINE_DECODER,):
                present = [task_cells.get((c.split, model, decoder)) for c in cols]
                if not any(present) and (model, decoder) not in lat:
                    continue
                if model == "nar-kd" and not any(m == "nar-kd" for _, m, _ in task_cells):
                    continue  # no KD student scored for this task: its timing alone would repeat the NAR row
                row = [MODEL_LABEL[model], DECODER_LABEL.get(decoder, decoder)]
                if model in BASELINES:
                    row[1] = "–" if decoder == BASELINE_DECODER else decoder
                for col, cell in zip(cols, present):
                    if cell is None:
                        row.append("–")
                        continue
                    value = cell.metrics.get(col.metric)
                    mark = ""
                    if cell.coverage.get("missing"):
                        mark = "†"
                        note = (f"† {cell.path.name}: {cell.coverage['missing']} of {cell.coverage['references']} "
                                "items had no prediction and were scored as wrong.")
                        if note not in notes:
                            notes.append(note)
                    if value is None:
                        row.append("n/a")
                        reason = cell.unavailable.get(col.metric, "not computed")
                        # first clause, without machine-specific parentheses (paths); the metrics file has it all
                        reason = re.sub(r"\s*\([^)]*\)", "", reason.split(";")[0]).strip()
                        note = f"n/a {col.metric}: {reason} (the metrics files say more)"
                        if note not in notes:
                            notes.append(note)
                    elif col.metric in cell.spread:
                        sd, n = cell.spread[col.metric]
                        row.append(f"{col.fmt(value)} ± {col.fmt(sd)}{mark}")
                        note = "mean ± sd over the seeds of pipeline.seeds (the CSV has the sd as <metric>_sd)."
                        if note not in notes:
                            notes.append(note)
                    else:
                        row.append(col.fmt(value) + mark)
                    source = cell.path.name if col.metric not in cell.spread else \
                        f"mean of {cell.spread[col.metric][1]} seeds ({cell.path.name} and its -seed<N> cells)"
                    values.append({"task": task, "split": col.split, "model": model, "decoder": decoder,
                                   "quantity": col.metric, "value": value, "source": source})
                    if col.metric in cell.spread:
                        values.append({"task": task, "split": col.split, "model": model, "decoder": decoder,
                                       "quantity": f"{col.metric}_sd", "value": cell.spread[col.metric][0],
                                       "source": source})
                if b is not None:
                    ms = lat[(model, decoder)]["ms_per_sample"] if (model, decoder) in lat else None
                    up = speedup(lat, model, decoder)
                    row.append("–" if ms is None else _f2(ms))
                    if up is None:
                        row.append("–")
                    elif (model == "ar" and decoder not in AR_ONLY) or up["q1"] == up["q3"]:
                        row.append(f"{up['median']:.2f}×")
                    else:
                        row.append(f"{up['median']:.2f}× ({up['q1']:.2f}–{up['q3']:.2f})")
                    if ms is not None:
                        values.append({"task": task, "split": "", "model": model, "decoder": decoder,
                                       "quantity": f"ms_per_sample@{device},batch{b}", "value": ms,
                                       "source": "bench"})
                    if up is not None:
                        values.append({"task": task, "split": "", "model": model, "decoder": decoder,
                                       "quantity": f"speedup_vs_ar@{device},batch{b}", "value": up["median"],
                                       "source": "bench"})
                rows.append(row)
        scale = tasks.get(task).scale
        threads = sorted({r["threads"] for r in lat.values() if r.get("threads")})
        timing = ("" if b is None else
                  " Latency: `narvl bench decode` (median ms per batch / batch size"
                  + (f", {'/'.join(map(str, threads))} CPU threads" if threads and device == "cpu" else "")
                  + "); speed-up = median of the per-pair ratios AR time / NAR time (interleaved, same inputs and "
                  "decoder), interquartile range in brackets; NAR + KD reuses the NAR timing when it was not timed."
                  + (" Baseline rows: what a model scores without looking (or without a model); no timing."
                     if any(c.model in BASELINES for c in task_cells.values()) else "")
                  + (" AR rows decoded with trie / all answers scored / bins only (OFA's constrained modes) show NAR "
                     "greedy's speed-up over that AR decoding." if any(d in AR_ONLY for _, d in lat) else "")
                  + (" Timed with randomly initialised models at a fixed output length (--preset)."
                     if bench_mode == "preset" else ""))
        notes.insert(0, f"{scale}; splits: {', '.join(splits) or 'none scored'}.{timing}")
        tables.append(Table(task, header, rows, notes, values))
    return tables


def to_markdown(tables: list[Table], level: int = 2) -> str:
    out = []
    for t in tables:
        out.append(f"{'#' * level} {tasks.get(t.task).title}\n")
        out.append("| " + " | ".join(t.header) + " |")
        out.append("|" + "|".join(" --- " for _ in t.header) + "|")
        for row in t.rows:
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        out.extend(f"{n}  " if i < len(t.notes) - 1 else n for i, n in enumerate(t.notes))
        out.append("")
    return "\n".join(out)


def to_csv(tables: list[Table], extra: list[dict[str, Any]] = ()) -> str:
    buf = io.StringIO()
    fields = ["task", "split", "model", "decoder", "quantity", "value", "source"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for v in [v for t in tables for v in t.values] + list(extra):
        value = v["value"]
        text = "" if value is None else repr(value) if isinstance(value, int) else repr(float(value))
        w.writerow({**v, "value": text})
    return buf.getvalue()


# summary.json fields shown in the training table: (label, path in the summary, format)
TRAIN_COLUMNS = [
    ("steps", ("steps",), "{:d}"),
    ("train loss", ("final", "loss"), "{:.4f}"),
    ("val loss", ("val", "loss"), "{:.4f}"),
    ("val exact match", ("val", "exact_match"), "{:.3f}"),
    ("samples/s", ("samples_per_s",), "{:.1f}"),
    ("processes", ("world_size",), "{:d}"),
    ("wall s", ("wall_s_total",), "{:.0f}"),
]


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _get(d: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def training_table(summaries: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table of the runs' summary.json and the tidy values behind it ("" when there are no runs)."""
    if not summaries:
        return "", []
    lines = ["## Training runs\n", "| run | " + " | ".join(c[0] for c in TRAIN_COLUMNS) + " |",
             "|" + "|".join(" --- " for _ in range(len(TRAIN_COLUMNS) + 1)) + "|"]
    values = []
    for run, summary in sorted(summaries.items()):
        cells = []
        for label, path, fmt in TRAIN_COLUMNS:
            v = _get(summary, path)
            ok = _number(v)
            cells.append(fmt.format(v) if ok and (fmt != "{:d}" or isinstance(v, int)) else "–")
            if ok:
                values.append({"task": summary.get("task", ""), "split": "", "model": run, "decoder": "",
                               "quantity": f"train:{'.'.join(path)}", "value": v, "source": f"{run}/summary.json"})
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    notes = []
    for run, summary in sorted(summaries.items()):
        streams = _per_stream_val(summary)
        if not streams:
            continue
        parts = []
        for name, val in streams.items():
            parts.append(f"{name} {val['loss']:.4f} / {val['exact_match']:.3f}")
            for key in ("loss", "exact_match"):
                values.append({"task": summary.get("task", ""), "split": "", "model": run, "decoder": "",
                               "quantity": f"train:val.{name}.{key}", "value": val[key],
                               "source": f"{run}/summary.json"})
        notes.append(f"{run} validates each of its streams (val loss / exact match): {'; '.join(parts)}.")
    lines.append("\nFrom `runs/*/summary.json` (`narvl train`): final training window and validation at the end."
                 + "".join(f"  \n{n}" for n in notes) + "\n")
    return "\n".join(lines), values


def _per_stream_val(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """A multi-task run's validation per stream (`narvl train --task pretrain`: summary.json's val by task), or {}."""
    val = summary.get("val")
    if not isinstance(summary.get("tasks"), dict) or not isinstance(val, dict):
        return {}
    return {name: v for name, v in sorted(val.items())
            if isinstance(v, dict) and _number(v.get("loss")) and _number(v.get("exact_match"))}
