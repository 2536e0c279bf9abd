"""Benchmarks, each written as a JSON file. Speed targets live here, never in timed tests.

    narvl bench data    samples/s of the training loader with 0, 1 and 2 workers
    narvl bench decode  AR vs NAR decoding latency on the same encoder, batch 1 and 32
    narvl bench train   training samples/s with 1 and 2 processes
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "data": ("narvl.data.bench", "samples/s of the training loader with 0, 1 and 2 workers"),
    "decode": ("narvl.decode.bench", "latency of AR and NAR decoding (greedy, beam) and of the encoder alone"),
    "train": ("narvl.train.bench", "training samples/s with 1 and 2 processes"),
}


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Only the chosen benchmark's module is imported (the others may need packages this run does not)."""
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in BENCHMARKS.items():
        if name == chosen:
            module = importlib.import_module(module_name)
            p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(_bench_module=module)
        else:
            sub.add_parser(name, help=help_text)


def main(args: argparse.Namespace) -> int | None:
    return args._bench_module.main(args)
