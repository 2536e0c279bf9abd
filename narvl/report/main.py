"""Build the results tables, plots and gallery; compare a run with the published reference; publish a run.

    narvl report --metrics results/metrics/*.json --bench results/bench/decode.json --runs runs \\
                 --predictions results/predictions --shards data/shards --out results
    narvl report --metrics results/metrics/*.json --bench results/bench/decode.json \\
                 --published published/default --score-params params/score.yaml --out results [--check]
    narvl report --publish published/default --metrics results/metrics/*.json --bench results/bench/decode.json \\
                 --out results --readme README.md [--run-log .snakemake/log/<date>.snakemake.log]

Reads: every metrics cell `results/metrics/<task>-<split>-<model>-<decoder>.json` (`narvl score`), the decoding
benchmark (`narvl bench decode`: latency per sample and per-pair speed-ups by task, model, decoder and batch size),
and to build the tables and plots also the runs' tensorboard logs and summaries (`runs/*/tb`, `runs/*/summary.json`),
the predictions files and the evaluation shards (for the gallery images).

Build (--runs, --predictions, --shards and --out given), each file written atomically:
    OUT/tables/main.md    the paper's main table per task: AR / NAR / NAR-KD quality (CIDEr, BLEU-4, METEOR, SPICE;
                          VQA accuracy per answer type; Acc@0.5 per RefCOCO split), ms per sample, speed-up over AR
    OUT/tables/main.csv   the same values exactly, one per row (task, split, model, decoder, quantity, value, source)
                          (main.md and main.csv also list the training runs from runs/*/summary.json)
    OUT/plots/training_curves.png, latency_batch.png, quality_speed.png, gallery.png
A plot whose inputs are absent (no tensorboard logs yet, no predictions) is skipped with a warning.

Compare (--published DIR): every metrics value and speed-up against DIR's (narvl/report/reproduce.py), tolerances
from --score-params (score.reproduction); writes OUT/tables/reproduction.md and reproduction.csv (with --out) and
prints one line, e.g. "reproduced 24 of 24 quality cells exactly; speed-ups within 8% of published". With --check
the exit status is 1 when a quality value differs beyond its tolerance or a published cell is missing.

Publish (--publish DIR): copies the metrics cells, the benchmark and (with --out) OUT/tables/main.* and
OUT/plots/*.png into DIR with a machine.json (date, machine, commands; with --run-log the Snakemake run's elapsed
time, cores and jobs from its log), then rewrites the block between
`<!-- narvl:results:start -->` and `<!-- narvl:results:end -->` of --readme from DIR's copy only (an error when
the markers are missing; nothing else in the file changes). `--publish DIR --readme README.md` alone only rewrites
the block from DIR.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from narvl import params
from narvl.errors import NarvlError
from narvl.io import read_json, write_text
from narvl.report import inputs, plots, readme, reproduce, tables

log = logging.getLogger(__name__)
GALLERY_SAMPLES = 4  # samples per task in the gallery (presentation only)
DEFAULT_COMMANDS = ["bash install.sh", ".venv/bin/snakemake --cores all"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", type=Path, nargs="+",
                        help="metrics cells (narvl score): the files, or one folder whose *.json are all read")
    parser.add_argument("--bench", type=Path, help="decoding benchmark JSON (narvl bench decode)")
    parser.add_argument("--runs", type=Path, help="training runs folder (tensorboard logs in */tb)")
    parser.add_argument("--predictions", type=Path, help="predictions folder (for the gallery)")
    parser.add_argument("--shards", type=Path, help="shards folder (gallery images)")
    parser.add_argument("--out", type=Path, help="results folder: tables/ and plots/ (built, compared, published)")
    parser.add_argument("--published", type=Path, help="compare with this published folder (pipeline.published_dir)")
    parser.add_argument("--score-params", type=Path, help="params/score.yaml: score.reproduction's tolerances")
    parser.add_argument("--check", action="store_true",
                        help="with --published: exit 1 when a quality value differs beyond its tolerance")
    parser.add_argument("--publish", type=Path, metavar="DIR", help="copy the run into DIR and refresh --readme")
    parser.add_argument("--readme", type=Path, help="with --publish: README.md whose results block is refreshed")
    parser.add_argument("--run-log", type=Path,
                        help="with --publish: the run's Snakemake log (.snakemake/log/*.snakemake.log); its elapsed "
                             "time, cores and jobs go into machine.json and the README block")
    parser.add_argument("--command", dest="commands", action="append",
                        help=f"with --publish: a command that made the run, for machine.json (repeatable; default "
                             f"{DEFAULT_COMMANDS})")


def _need(args: argparse.Namespace, what: str, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise NarvlError(f"narvl report {what} needs {', '.join(missing)}")


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base)).as_posix()


def _origin(paths: list[Path]) -> str:
    """The folder the metrics cells came from (or the folders, when they came from several)."""
    folders = sorted({(p if p.is_dir() else p.parent).as_posix() for p in paths})
    return f"`{folders[0]}`" if len(folders) == 1 else ", ".join(f"`{f}`" for f in folders)


def build(args: argparse.Namespace, cells: list[inputs.Cell], bench: list[dict], bench_info: dict) -> None:
    built = tables.build(cells, bench, bench_info["mode"])
    sources = (f"Generated by `narvl report` from {len(cells)} metrics files in {_origin(args.metrics)} and "
               f"`{args.bench.as_posix()}`; do not edit by hand.")
    train_md, train_values = tables.training_table(inputs.load_summaries(args.runs))
    write_text(args.out / "tables" / "main.md",
               f"# narvl results\n\n{sources}\n\n{tables.to_markdown(built, level=2)}\n{train_md}")
    write_text(args.out / "tables" / "main.csv", tables.to_csv(built, train_values))
    plot_dir = args.out / "plots"
    made = [
        plots.training_curves(inputs.load_curves(args.runs), plot_dir / "training_curves.png"),
        plots.latency_vs_batch(bench, plot_dir / "latency_batch.png"),
        plots.quality_vs_speed(cells, bench, plot_dir / "quality_speed.png"),
        plots.gallery(inputs.find_predictions(args.predictions), args.shards, plot_dir / "gallery.png",
                      GALLERY_SAMPLES),
    ]
    log.info("wrote %s, %s, %d plots", args.out / "tables" / "main.md", args.out / "tables" / "main.csv",
             sum(p is not None for p in made))


def readme_block(published: Path, readme_path: Path) -> str:
    """The README's results block, from the published folder only."""
    cells = inputs.load_metrics(published / "metrics")
    bench, info = inputs.load_bench(published / "bench" / "decode.json")
    machine = read_json(published / reproduce.MACHINE)
    base = readme_path.resolve().parent
    main_md = published / "tables" / "main.md"
    links = "\n".join(f"![{p.stem}]({_rel(p, base)})" for p in sorted((published / "plots").glob("*.png")))
    where, run = machine.get("machine", {}), machine.get("run")
    took = ""
    if run:  # `narvl report --publish --run-log`: Snakemake's own elapsed time of the run
        took = (f"; the Snakemake run took {run['elapsed_s']:,.0f} s ({run['elapsed_s'] / 60:.1f} minutes) for "
                f"{run.get('jobs') or '?'} jobs on {run.get('cores') or '?'} cores")
    return (f"<!-- Generated by `narvl report --publish` from the published run in `{_rel(published, base)}`; "
            "do not edit by hand. -->\n\n"
            f"Published {machine.get('date', '?')} from commit {str((machine.get('git') or {}).get('commit'))[:10]} "
            f"on {where.get('cpu', '?')} ({where.get('cpu_count', '?')} cores), with "
            + ", then ".join(f"`{c}`" for c in machine.get("commands", [])) + f"{took}.\n\n"
            f"{tables.to_markdown(tables.build(cells, bench, info['mode']), level=3)}\n"
            f"Full table: [{_rel(main_md, base)}]({_rel(main_md, base)})\n\n{links}\n")


def main(args: argparse.Namespace) -> int:
    if args.publish is not None:
        _need(args, "--publish", "readme")
        if args.run_log is not None and args.metrics is None:
            raise NarvlError("narvl report --run-log goes with --publish DIR --metrics --bench (the run it timed)")
        if args.metrics is not None or args.bench is not None:
            _need(args, "--publish", "metrics", "bench")
            metrics = [c.path for c in inputs.load_metrics(args.metrics)]
            inputs.load_bench(args.bench)  # a malformed benchmark is not published
            reproduce.publish(args.publish, metrics, args.bench, args.out, args.commands or DEFAULT_COMMANDS,
                              args.run_log)
            log.info("published %d metrics cells, %s%s into %s", len(metrics), args.bench,
                     f" and {args.out}'s tables and plots" if args.out else "", args.publish)
        changed = readme.refresh(args.readme, readme_block(args.publish, args.readme))
        log.info("%s %s from %s", args.readme, "refreshed" if changed else "unchanged", args.publish)
        return 0

    _need(args, "", "metrics", "bench")
    cells = inputs.load_metrics(args.metrics)
    bench, bench_info = inputs.load_bench(args.bench)
    build_args = ("runs", "predictions", "shards")
    if any(getattr(args, n) is not None for n in build_args):
        _need(args, "(building the tables)", *build_args, "out")
        build(args, cells, bench, bench_info)
    if args.published is None:
        if args.check:
            raise NarvlError("narvl report --check needs --published (the folder to compare with)")
        return 0
    _need(args, "--published", "score_params")
    rep = params.load(args.score_params, "score").reproduction
    tolerance = {"quality": rep.quality_tolerance, "speedup": rep.speedup_tolerance}
    if not (args.published / "metrics").is_dir():
        if args.check:
            raise NarvlError(f"{args.published}: no published metrics/ to check against")
        line = reproduce.no_reference(args.out, args.published) if args.out else "nothing compared"
        print(line, flush=True)
        return 0
    rows = reproduce.compare(cells, bench, args.published, tolerance)
    line = reproduce.summary_line(rows, tolerance)
    if args.out is not None:
        reproduce.write(args.out, rows, line, args.published, tolerance)
    print(line, flush=True)
    bad = reproduce.failures(rows)
    if args.check and bad:
        for r in bad[:20]:
            log.error("%s-%s-%s-%s %s: published %s, reproduced %s (%s)", r.task, r.split, r.model, r.decoder,
                      r.quantity, r.published, r.reproduced, r.verdict)
        return 1
    return 0
