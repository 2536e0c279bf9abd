"""How close a run came to the published reference, and publishing a run as that reference.

The published folder (pipeline.published_dir, `published/default/` for the embedded default) holds one run's
metrics cells (`metrics/*.json`), decoding benchmark (`bench/decode.json`), tables (`tables/main.md`, `main.csv`),
plots (`plots/*.png`) and `machine.json` (where, when and with which commands it was made). The workflow's results
folder is compared with it cell by cell:

    quality    every metric value of every metrics cell (task, split, model, decoder): exact when equal, "within"
               when |reproduced - published| <= score.reproduction.quality_tolerance, else "differs"; a published
               cell the run lacks is "missing", a cell the published folder lacks is "new"
    speed-ups  every NAR row of the benchmark (device, task, batch, model, decoder) and every AR row of a
               constrained decoder (trie, allcand, bins: NAR greedy's speed-up over it): the median per-pair
               speed-up, compared as a ratio: "within" when |reproduced / published - 1| <=
               score.reproduction.speedup_tolerance, else "outside" (timings depend on the machine and its load:
               reported, never a failure)

`reproduction.csv` has one row per compared value (kind, task, split, model, decoder, quantity, published,
reproduced, difference, verdict; difference = reproduced - published for quality, reproduced / published - 1 for
speed-ups); `reproduction.md` the summary line, the cells and the speed-ups.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from narvl.errors import NarvlError
from narvl.io import atomic_path, read_json, write_json, write_text
from narvl.report import inputs, tables
from narvl.report.runlog import run_info

MACHINE = "machine.json"
PUBLISHER = "narvl report --publish"  # machine.json's "written_by": a folder narvl may replace


@dataclass(frozen=True)
class Row:
    kind: str  # quality | speed-up
    task: str
    split: str
    model: str
    decoder: str
    quantity: str
    published: float | None
    reproduced: float | None
    difference: float | None
    verdict: str  # exact | within | differs | missing | new (quality); within | outside | missing (speed-up)


def _quality_rows(run: list[inputs.Cell], published: list[inputs.Cell], tolerance: float) -> list[Row]:
    ours = {(c.task, c.split, c.model, c.decoder): c for c in run}
    theirs = {(c.task, c.split, c.model, c.decoder): c for c in published}
    rows = []
    for key in sorted(set(ours) | set(theirs)):
        mine, ref = ours.get(key), theirs.get(key)
        names = sorted(set(mine.metrics if mine else {}) | set(ref.metrics if ref else {}))
        for name in names:
            pub = ref.metrics.get(name) if ref else None
            rep = mine.metrics.get(name) if mine else None
            diff = None if pub is None or rep is None else float(rep) - float(pub)
            if ref is None:
                verdict = "new"
            elif mine is None:
                verdict = "missing"
            elif pub == rep:
                verdict = "exact"
            elif diff is not None and abs(diff) <= tolerance:
                verdict = "within"
            else:
                verdict = "differs"
            rows.append(Row("quality", *key, name, pub, rep, diff, verdict))
    return rows


def _speedups(bench: list[dict]) -> dict[tuple, float]:
    """{(device, task, batch, model, decoder): median speed-up} of every timed NAR record (none derived) and every
    AR record of a constrained decoder."""
    out = {}
    for task in sorted({r["task"] for r in bench}):
        for device in sorted({r["device"] for r in bench}):
            recs = [r for r in bench if r["task"] == task and r["device"] == device and not r.get("derived_from")]
            for b in sorted({r["batch_size"] for r in recs}):
                lat = {(r["model"], r["decoder"]): r for r in recs if r["batch_size"] == b}
                for model, decoder in sorted(lat):
                    if (model == "ar" and decoder not in tables.AR_ONLY) or decoder not in inputs.DECODERS:
                        continue
                    up = tables.speedup(lat, model, decoder)
                    if up is not None:
                        out[(device, task, b, model, decoder)] = up["median"]
    return out


def _speedup_rows(run: list[dict], published: list[dict], tolerance: float) -> list[Row]:
    ours, theirs = _speedups(run), _speedups(published)
    rows = []
    for key in sorted(theirs):  # a speed-up the published run has no figure for has nothing to be compared with
        device, task, b, model, decoder = key
        pub, rep = theirs[key], ours.get(key)
        diff = None if rep is None else rep / pub - 1
        verdict = "missing" if rep is None else ("within" if abs(diff) <= tolerance else "outside")
        rows.append(Row("speed-up", task, "", model, decoder, f"speedup_vs_ar@{device},batch{b}", pub, rep, diff,
                        verdict))
    return rows


def _cell_verdicts(rows: list[Row]) -> dict[tuple, str]:
    """The worst verdict of each quality cell's values."""
    order = ["exact", "within", "new", "differs", "missing"]
    out: dict[tuple, str] = {}
    for r in rows:
        if r.kind == "quality":
            key = (r.task, r.split, r.model, r.decoder)
            out[key] = max(out.get(key, "exact"), r.verdict, key=order.index)
    return out


def summary_line(rows: list[Row], tolerance: dict[str, float]) -> str:
    """e.g. "reproduced 24 of 24 quality cells exactly; speed-ups within 8% of published"."""
    cells = _cell_verdicts(rows)
    published = [v for v in cells.values() if v != "new"]
    count = {v: sum(1 for x in published if x == v) for v in ("exact", "within", "differs", "missing")}
    parts = [f"reproduced {count['exact']} of {len(published)} quality cells exactly"]
    if count["within"]:
        parts[0] += f", {count['within']} within {tolerance['quality']:g}"
    if count["differs"]:
        parts[0] += f"; {count['differs']} differ beyond {tolerance['quality']:g}"
    if count["missing"]:
        parts[0] += f"; {count['missing']} missing from the run"
    speed = [r for r in rows if r.kind == "speed-up"]
    measured = [abs(r.difference) for r in speed if r.difference is not None]
    if measured:
        worst = math.ceil(100 * max(measured))
        outside = sum(1 for r in speed if r.verdict == "outside")
        text = f"speed-ups within {worst}% of published"
        if outside:
            text += f" ({outside} of {len(speed)} beyond the {100 * tolerance['speedup']:g}% tolerance)"
        missing = sum(1 for r in speed if r.verdict == "missing")
        if missing:
            text += f"; {missing} speed-ups missing from the run"
        parts.append(text)
    elif speed:
        parts.append(f"{len(speed)} published speed-ups missing from the run")
    return "; ".join(parts)


def compare(run_cells: list[inputs.Cell], run_bench: list[dict], published: Path,
            tolerance: dict[str, float]) -> list[Row]:
    """Every quality value and speed-up of the run against the published folder."""
    cells = inputs.load_metrics(published / "metrics")
    rows = _quality_rows(run_cells, cells, tolerance["quality"])
    if (published / "bench" / "decode.json").is_file():  # a published folder may hold no timings
        bench, _ = inputs.load_bench(published / "bench" / "decode.json")
        rows += _speedup_rows(run_bench, bench, tolerance["speedup"])
    return rows


def failures(rows: list[Row]) -> list[Row]:
    """The quality values `narvl report --check` fails on: beyond the tolerance, or missing from the run."""
    return [r for r in rows if r.kind == "quality" and r.verdict in ("differs", "missing")]


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    fields = ["kind", "task", "split", "model", "decoder", "quantity", "published", "reproduced", "difference",
              "verdict"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r.__dict__, "published": _num(r.published), "reproduced": _num(r.reproduced),
                    "difference": _num(r.difference)})
    return buf.getvalue()


def _show(v: float | None) -> str:
    return "–" if v is None else f"{v:.6g}"


def to_markdown(rows: list[Row], line: str, published: Path, tolerance: dict[str, float]) -> str:
    machine = published / MACHINE
    where = ""
    if machine.is_file():
        m = read_json(machine)
        where = f" (published {m.get('date', '?')} on {m.get('machine', {}).get('cpu', '?')})"
    out = [f"# Reproduction of `{published.as_posix()}`\n", f"{line}\n",
           f"Compared with `{published.as_posix()}`{where}. Quality: every metric value of every metrics cell, "
           f"tolerance {tolerance['quality']:g} (score.reproduction.quality_tolerance; 0 = exact). Speed-ups: the "
           f"median per-pair AR/NAR ratio of `narvl bench decode`, compared as reproduced / published - 1, tolerance "
           f"{100 * tolerance['speedup']:g}% (score.reproduction.speedup_tolerance). Every value: "
           "reproduction.csv.\n", "## Quality cells\n", "| task | split | model | decoder | verdict | largest |difference| |",
           "| --- | --- | --- | --- | --- | --- |"]
    verdicts = _cell_verdicts(rows)
    for key, verdict in verdicts.items():
        diffs = [abs(r.difference) for r in rows if r.kind == "quality" and (r.task, r.split, r.model, r.decoder) == key
                 and r.difference is not None]
        out.append(f"| {' | '.join(key)} | {verdict} | {_show(max(diffs)) if diffs else '–'} |")
    off = [r for r in rows if r.kind == "quality" and r.verdict != "exact"]
    if off:
        out += ["", "## Values not reproduced exactly\n", "| cell | metric | published | reproduced | difference | "
                "verdict |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r.task}-{r.split}-{r.model}-{r.decoder} | {r.quantity} | {_show(r.published)} | "
                f"{_show(r.reproduced)} | {_show(r.difference)} | {r.verdict} |" for r in off]
    speed = [r for r in rows if r.kind == "speed-up"]
    if speed:
        out += ["", "## Speed-ups over AR\n", "| task | model | decoder | where | published | reproduced | "
                "ratio - 1 | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in speed:
            diff = "–" if r.difference is None else f"{100 * r.difference:+.1f}%"
            out.append(f"| {r.task} | {r.model} | {r.decoder} | {r.quantity.partition('@')[2]} | "
                       f"{r.published:.2f}× | {'–' if r.reproduced is None else f'{r.reproduced:.2f}×'} | {diff} | "
                       f"{r.verdict} |")
    return "\n".join(out) + "\n"


def write(out: Path, rows: list[Row], line: str, published: Path, tolerance: dict[str, float]) -> None:
    write_text(out / "tables" / "reproduction.csv", to_csv(rows))
    write_text(out / "tables" / "reproduction.md", to_markdown(rows, line, published, tolerance))


def no_reference(out: Path, published: Path) -> str:
    """Without a published folder there is nothing to compare: the files say so."""
    line = f"no published reference at {published.as_posix()}: nothing compared"
    write_text(out / "tables" / "reproduction.csv", to_csv([]))
    write_text(out / "tables" / "reproduction.md", f"# Reproduction\n\n{line}\n")
    return line


# ------------------------------------------------------------------------------------------------------ publish
def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(commands: list[str], bench_environment: dict[str, Any],
                 run_log: Path | None = None) -> dict[str, Any]:
    """Where, when and how a published run was made (machine.json); with `run_log`, how long it took (`run`)."""
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    info = {
        "written_by": PUBLISHER,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commands": commands,
        "git": {"commit": _git("rev-parse", "HEAD"), "modified_files": None if status is None else bool(status)},
        "machine": {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "torch": torch.__version__,
                    "bench_threads": bench_environment.get("threads"), "gpu": bench_environment.get("gpu")},
    }
    if run_log is not None:
        info["run"] = run_info(run_log)
    return info


def publish(dest: Path, metrics: list[Path], bench: Path, out: Path | None, commands: list[str],
            run_log: Path | None = None) -> None:
    """Copy a run (its metrics cells, benchmark, and OUT's tables and plots) into `dest`, replacing what an earlier
    `narvl report --publish` wrote there; any other existing folder is left alone (an error)."""
    if dest.exists() and not (dest / MACHINE).is_file():
        raise NarvlError(f"{dest}: exists and was not written by `{PUBLISHER}` (no {MACHINE}); choose another "
                         "folder or remove it")
    if dest.exists() and read_json(dest / MACHINE).get("written_by") != PUBLISHER:
        raise NarvlError(f"{dest / MACHINE}: not written by `{PUBLISHER}`; choose another folder or remove it")
    bench_data = read_json(bench)
    machine = machine_info(commands, bench_data.get("environment", {}), run_log)  # a bad log fails before any copy
    with atomic_path(dest, is_dir=True) as tmp:
        (tmp / "metrics").mkdir()
        for path in metrics:
            shutil.copyfile(path, tmp / "metrics" / Path(path).name)
        (tmp / "bench").mkdir()
        shutil.copyfile(bench, tmp / "bench" / "decode.json")
        if out is not None:
            for sub, pattern in (("tables", "main.*"), ("plots", "*.png")):
                found = sorted((out / sub).glob(pattern))
                if not found:
                    raise NarvlError(f"{out / sub}: no {pattern} to publish; run `narvl report` first")
                (tmp / sub).mkdir()
                for path in found:
                    shutil.copyfile(path, tmp / sub / path.name)
        write_json(tmp / MACHINE, machine)
