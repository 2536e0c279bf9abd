"""PNG plots: training curves, latency against batch size, quality against speed, and the predictions gallery."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from narvl.io import atomic_path  # noqa: E402
from narvl.report.inputs import DECODERS, MODELS, Cell, read_image, shard_samples  # noqa: E402
from narvl import tasks  # noqa: E402
from narvl.report.tables import MODEL_LABEL, _split_order  # noqa: E402

log = logging.getLogger(__name__)
COLORS = {"ar": "tab:blue", "nar": "tab:red", "nar-kd": "tab:orange"}
STYLES = {"greedy": "-", "beam": "--", "trie": ":", "allcand": "-.", "bins": ":"}
MARKERS = {"greedy": "o", "beam": "s", "trie": "^", "allcand": "D", "bins": "v"}


def _plain_log_axis(axis, ticks=None) -> None:
    """Log axis labelled with plain numbers (1, 8, 32) instead of 2^3 or 3x10^1."""
    if ticks is not None:
        axis.set_ticks(sorted(set(ticks)))
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path | None:
    if not curves:
        log.warning("no tensorboard scalars under the runs folder: %s not written", path)
        return None
    n = len(curves)
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.2 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (run, tags) in zip(axes.flat, sorted(curves.items())):
        shown = [t for t in sorted(tags) if "loss" in t.lower()] or sorted(tags)[:4]
        for tag in shown:
            steps, values = zip(*tags[tag])
            ax.plot(steps, values, "--" if tag.startswith("val") else "-", marker="." if len(steps) < 20 else None,
                    label=tag, lw=1.2)
        ax.set_title(run)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Training curves (tensorboard scalars of runs/*/tb)")
    return _save(fig, path)


def latency_vs_batch(bench: list[dict], path: Path) -> Path | None:
    from narvl.report.tables import bench_device

    device = bench_device(bench)
    bench = [r for r in bench if r["device"] == device and "derived_from" not in r]  # NAR + KD = NAR timing
    shown = [t for t in tasks.NAMES if any(r["task"] == t for r in bench)]
    if not shown:
        log.warning("the decoding benchmark has no records: %s not written", path)
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4.4 * len(shown), 3.6), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], shown):
        for model in MODELS:
            for decoder in DECODERS:
                pts = sorted((r["batch_size"], r["ms_per_sample"]) for r in bench
                             if r["task"] == task and r["model"] == model and r["decoder"] == decoder)
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, STYLES[decoder], marker=MARKERS[decoder], color=COLORS[model],
                            label=f"{MODEL_LABEL[model]} {decoder}")
        enc = sorted((r["batch_size"], r["ms_per_sample"]) for r in bench
                     if r["task"] == task and r["model"] == "encoder")
        if enc:
            xs, ys = zip(*enc)
            ax.plot(xs, ys, ":", color="gray", label="encoder alone")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_log_axis(ax.xaxis, [r["batch_size"] for r in bench if r["task"] == task])
        _plain_log_axis(ax.yaxis)
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per sample")
        ax.set_title(task)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=5, fontsize=8)
    fig.suptitle(f"Decoding latency against batch size ({device}; NAR + KD has the NAR timing)")
    return _save(fig, path)


def quality_vs_speed(cells: list[Cell], bench: list[dict], path: Path) -> Path | None:
    from narvl.report.tables import bench_device, latency

    tables_device = bench_device(bench)
    panels = []
    by_task: dict[str, list[Cell]] = {}
    for c in cells:
        by_task.setdefault(c.task, []).append(c)
    for task in tasks.NAMES:
        spec = tasks.get(task)
        b, lat = latency(bench, task)
        splits = _split_order(task, {c.split for c in by_task.get(task, [])})
        pts = []
        for c in by_task.get(task, []):
            if c.split == splits[0] and (c.model, c.decoder) in lat:
                value = c.metrics.get(spec.headline)
                if value is not None:
                    pts.append((1000.0 / lat[(c.model, c.decoder)]["ms_per_sample"],
                                value * (100 if spec.headline_x100 else 1), c.model, c.decoder))
        if pts:
            panels.append((task, splits[0], b, pts))
    if not panels:
        log.warning("no task has both metrics and benchmark latency: %s not written", path)
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False, layout="constrained")
    for ax, (task, split, b, pts) in zip(axes[0], panels):
        for speed, value, model, decoder in pts:
            ax.scatter([speed], [value], color=COLORS[model], marker=MARKERS[decoder], s=50,
                       label=f"{MODEL_LABEL[model]} {decoder}")
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_xlabel(f"samples/s (batch {b}, {tables_device})")
        spec = tasks.get(task)
        ax.set_ylabel(f"{spec.headline}{' x100' if spec.headline_x100 else ' (%)'} ({split})")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Quality against decoding speed")
    return _save(fig, path)


def _printable(text: str) -> str:
    """Control characters (undecodable byte tokens of an untrained model) shown as U+FFFD instead of missing glyphs."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _pick(preds: dict, task: str, split: str, model: str) -> Path | None:
    for decoder in DECODERS:
        if (task, split, model, decoder) in preds:
            return preds[(task, split, model, decoder)]
    return None


def gallery(preds: dict, shards: Path | None, path: Path, per_task: int) -> Path | None:
    """Test samples with the reference and the AR / NAR predictions side by side (boxes for grounding)."""
    from narvl.io import read_json

    rows = []
    for task in tasks.NAMES:
        splits = _split_order(task, {s for (t, s, _, _) in preds if t == task})
        split = next((s for s in splits if _pick(preds, task, s, "ar") or _pick(preds, task, s, "nar")), None)
        if split is None or shards is None or not (shards / task / "sizes.json").is_file():
            continue
        models = [(m, p) for m in MODELS if (p := _pick(preds, task, split, m)) is not None]
        indexes = {m: tasks.get(task).index_predictions(read_json(p)) for m, p in models}
        samples = list(shard_samples(shards / task, split, per_task))
        if samples:
            rows.append((task, split, samples, indexes))
    if not rows:
        log.warning("no predictions with matching shards: %s not written", path)
        return None
    ncols = max(len(s) for _, _, s, _ in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.6 * ncols, 4.3 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, (task, split, samples, indexes) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(samples):
                continue
            meta, jpg = samples[c]
            img = read_image(jpg)
            ax.imshow(img)
            spec = tasks.get(task)
            lines = spec.gallery_lines(meta)
            ref_box = spec.reference_box(meta)  # original pixels; predictions are boxes too
            if ref_box is not None:
                sx = meta["size"][0] / meta["orig_size"][0]
                sy = meta["size"][1] / meta["orig_size"][1]

                def draw(box, color, label):
                    x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
                    ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2, ec=color))
                    lines.append(f"{label}: [{', '.join(f'{v:.0f}' for v in box)}]")

                draw(ref_box, "lime", "ref")
            for m, index in indexes.items():
                pred = spec.lookup(index, meta)
                if pred is None:
                    lines.append(f"{MODEL_LABEL[m]}: (no prediction)")
                elif ref_box is not None:
                    draw(pred, COLORS[m], MODEL_LABEL[m])
                else:
                    lines.append(f"{MODEL_LABEL[m]}: {pred if pred.strip() else '(empty)'}")
            text = "\n".join(textwrap.fill(_printable(line), 38) for line in lines)
            ax.set_title(text, fontsize=7, loc="left")
        axes[r][0].text(-0.08, 0.5, f"{task} ({split})", transform=axes[r][0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=10)
    fig.suptitle("Test predictions: reference vs AR vs NAR" + (" (boxes: ref green, AR blue, NAR red, KD orange)"
                                                               if any(tasks.get(t).predicts_box for t, *_ in rows)
                                                               else ""))
    return _save(fig, path)


__all__ = ["training_curves", "latency_vs_batch", "quality_vs_speed", "gallery"]
