"""The paper's main table: per task, AR and NAR (and NAR-KD) quality, latency per sample and speed-up over AR.

Every number comes from a metrics cell or the decoding benchmark. `main.csv` holds the exact values (tidy: one
value per row, written with Python's shortest round-trip repr); `main.md` shows them as the paper does (captions
x100 with one decimal, VQA and grounding percentages with two, latency in ms with two, speed-up with two).
The speed-up of a row is AR latency / the row's latency, same task, decoder and batch size.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Callable

from narvl.report.inputs import DECODERS, MODELS, Cell

MODEL_LABEL = {"ar": "AR (OFA)", "nar": "NAR (NARVL)", "nar-kd": "NAR + KD"}
TASK_TITLE = {"caption": "Image captioning", "vqa": "Visual question answering", "grounding": "Visual grounding"}
HEADLINE = {"caption": "CIDEr", "vqa": "accuracy", "grounding": "Acc@0.5"}


def _x100_1(v: float) -> str:
    return f"{100 * v:.1f}"


def _f2(v: float) -> str:
    return f"{v:.2f}"


@dataclass(frozen=True)
class Column:
    split: str
    metric: str
    label: str
    fmt: Callable[[float], str]


def task_columns(task: str, splits: list[str]) -> list[Column]:
    cols: list[Column] = []
    for split in splits:
        prefix = f"{split} " if len(splits) > 1 or task == "grounding" else ""
        if task == "caption":
            for metric, label in (("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("CIDEr", "CIDEr"), ("SPICE", "SPICE")):
                cols.append(Column(split, metric, f"{prefix}{label}", _x100_1))
        elif task == "vqa":
            for metric, label in (("accuracy", "accuracy"), ("accuracy_yes/no", "yes/no"),
                                  ("accuracy_number", "number"), ("accuracy_other", "other")):
                cols.append(Column(split, metric, f"{prefix}{label}", _f2))
        else:
            cols.append(Column(split, "Acc@0.5", f"{split} Acc@0.5" if prefix else "Acc@0.5", _f2))
    return cols


def _split_order(task: str, splits: set[str]) -> list[str]:
    preferred = {"caption": ["test", "val"], "vqa": ["val", "test-dev", "test"],
                 "grounding": ["val", "testA", "testB", "test"]}[task]
    return [s for s in preferred if s in splits] + sorted(splits - set(preferred))


def latency(bench: list[dict], task: str) -> tuple[int | None, dict[tuple[str, str], float]]:
    """(batch size shown, {(model, decoder): ms per sample}) at the task's smallest benchmarked batch size."""
    recs = [r for r in bench if r["task"] == task and r["decoder"] in DECODERS]
    if not recs:
        return None, {}
    b = min(r["batch_size"] for r in recs)
    return b, {(r["model"], r["decoder"]): r["ms_per_sample"] for r in recs if r["batch_size"] == b}


@dataclass
class Table:
    task: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]
    values: list[dict[str, Any]]  # tidy exact values for the CSV


def build(cells: list[Cell], bench: list[dict]) -> list[Table]:
    tables = []
    for task in ("caption", "vqa", "grounding"):
        task_cells = {(c.split, c.model, c.decoder): c for c in cells if c.task == task}
        b, lat = latency(bench, task)
        if not task_cells and not lat:
            continue
        splits = _split_order(task, {s for s, _, _ in task_cells})
        cols = task_columns(task, splits)
        header = ["model", "decoder"] + [c.label for c in cols]
        if b is not None:
            header += [f"ms/sample (batch {b})", "speed-up"]
        rows, notes, values = [], [], []
        for model in MODELS:
            for decoder in DECODERS:
                present = [task_cells.get((c.split, model, decoder)) for c in cols]
                if not any(present) and (model, decoder) not in lat:
                    continue
                row = [MODEL_LABEL[model], decoder]
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
                        note = f"n/a {col.metric}: {reason}"
                        if note not in notes:
                            notes.append(note)
                    else:
                        row.append(col.fmt(value) + mark)
                    values.append({"task": task, "split": col.split, "model": model, "decoder": decoder,
                                   "quantity": col.metric, "value": value, "source": cell.path.name})
                if b is not None:
                    ms = lat.get((model, decoder))
                    ar = lat.get(("ar", decoder))
                    row.append("–" if ms is None else _f2(ms))
                    speedup = None if ms is None or ar is None else ar / ms
                    row.append("–" if speedup is None else f"{speedup:.2f}×")
                    if ms is not None:
                        values.append({"task": task, "split": "", "model": model, "decoder": decoder,
                                       "quantity": f"ms_per_sample@batch{b}", "value": ms, "source": "bench"})
                    if speedup is not None:
                        values.append({"task": task, "split": "", "model": model, "decoder": decoder,
                                       "quantity": f"speedup_vs_ar@batch{b}", "value": speedup, "source": "bench"})
                rows.append(row)
        scale = {"caption": "scores x100", "vqa": "accuracy in %", "grounding": "Acc@0.5 in %"}[task]
        notes.insert(0, f"{scale}; splits: {', '.join(splits) or 'none scored'}; speed-up = AR latency / latency, "
                        "same decoder and batch size.")
        tables.append(Table(task, header, rows, notes, values))
    return tables


def to_markdown(tables: list[Table], level: int = 2) -> str:
    out = []
    for t in tables:
        out.append(f"{'#' * level} {TASK_TITLE[t.task]}\n")
        out.append("| " + " | ".join(t.header) + " |")
        out.append("|" + "|".join(" --- " for _ in t.header) + "|")
        for row in t.rows:
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        out.extend(f"{n}  " if i < len(t.notes) - 1 else n for i, n in enumerate(t.notes))
        out.append("")
    return "\n".join(out)


def to_csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    fields = ["task", "split", "model", "decoder", "quantity", "value", "source"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for t in tables:
        for v in t.values:
            w.writerow({**v, "value": "" if v["value"] is None else repr(float(v["value"]))})
    return buf.getvalue()
