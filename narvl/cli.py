"""`python -m narvl <subcommand>`: the one entry point for people, Snakemake rules, DVC stages and tests.

Each subcommand lives in its own module, which defines

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def main(args: argparse.Namespace) -> int | None

Modules are imported only when their subcommand runs, so `narvl --help` is instant and an inference user does not
import the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from narvl import __version__
from narvl.errors import NarvlError

# name -> (module, one-line help). The module's docstring is the subcommand's long help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("narvl.synth.generate", "generate the embedded default dataset in the real datasets' formats"),
    "shard": ("narvl.data.shard", "read a dataset (COCO/Karpathy, VQAv2, RefCOCO, OFA TSV) into webdataset shards"),
    "tokenizer": ("narvl.data.tokenizer", "train the BPE tokenizer (with location bins and the CTC blank)"),
    "preview": ("narvl.data.preview", "render a PNG grid of samples from a shard, as the model sees them"),
    "pretrain-resnet": ("narvl.train.pretrain_resnet", "ImageNet in miniature: the ResNet's starting weights (train.init_resnet)"),
    "train": ("narvl.train.main", "train the NAR model or the AR baseline with DeepSpeed"),
    "distill": ("narvl.train.distill", "decode the training set with an AR teacher into knowledge-distillation shards"),
    "import-ofa": ("narvl.ofa_import", "convert an OFA fairseq checkpoint into a narvl model file (ar or nar)"),
    "export": ("narvl.train.export", "write a self-describing fp32 model file from a training checkpoint"),
    "decode": ("narvl.decode.run", "decode a split with an exported model into a predictions file"),
    "predict": ("narvl.predict", "answer one prompt about one image with a model file (grounding: draw the box)"),
    "score": ("narvl.eval.score", "score predictions with the official metrics into a metrics JSON"),
    "baselines": ("narvl.eval.baselines", "trivial baselines (majority answer, random/largest object, constant caption) as metrics JSON"),
    "report": ("narvl.report.main", "results tables, plots, gallery; compare with or publish the reference"),
    "bench": ("narvl.bench", "benchmarks (data loader, decoding, training) written as JSON"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="narvl",
        description="narvl: non-autoregressive vision-language models as a reproducible pipeline. "
        "Every subcommand reads parameter files and explicit input paths and writes explicit output paths.",
    )
    parser.add_argument("--version", action="version", version=f"narvl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name == chosen:
            module = importlib.import_module(module_name)
            p = sub.add_parser(
                name,
                help=help_text,
                description=(module.__doc__ or help_text).strip(),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            if module.add_arguments.__code__.co_argcount == 2:  # nested subcommands (bench) import lazily too
                module.add_arguments(p, argv[argv.index(name) + 1:])
            else:
                module.add_arguments(p)
            p.set_defaults(_module=module)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._module.main(args) or 0)
    except NarvlError as e:
        print(f"narvl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"narvl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
