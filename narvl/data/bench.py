"""Throughput of the training loader: samples/s with 0, 1 and 2 worker processes.

Reads data.yaml of the parameter folder --params (data.loader.bench_micro_batch, bench_batches), the train split of
--shards and --tokenizer; times bench_batches batches after the first one (worker start-up is reported apart) of the
real training pipeline (tar reading, shuffle buffer, JPEG decoding, normalisation, tokenization, padding) for one
rank, and writes --out (JSON). The loader should deliver at least 5x the samples/s that training consumes
(`narvl bench train`), so that training never waits for data; the ratio is made where both figures are at hand (the
report).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

WORKERS = (0, 1, 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, type=Path, help="parameter folder (data.yaml)")
    parser.add_argument("--shards", required=True, type=Path, help="a shard folder, e.g. data/shards/caption")
    parser.add_argument("--tokenizer", required=True, type=Path, help="data/shards/tokenizer.json")
    parser.add_argument("--out", required=True, type=Path, help="JSON file, e.g. results/bench/data.json")


def measure(shard_dir: Path, tokenizer, data_params, task: str, workers: int) -> dict:
    from narvl.data.loader import train_loader

    lp = data_params.loader
    p = dataclasses.replace(data_params, loader=dataclasses.replace(lp, num_workers=workers))
    loader = train_loader(shard_dir, "train", tokenizer, p, task, lp.bench_micro_batch, 0, 1, seed=0)
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    samples = 0
    for _ in range(lp.bench_batches):
        samples += next(it)["images"].shape[0]
    seconds = time.perf_counter() - start
    del it
    return {"workers": workers, "samples": samples, "seconds": round(seconds, 4),
            "samples_per_s": round(samples / seconds, 2), "first_batch_s": round(first, 4)}


def main(args: argparse.Namespace) -> int:
    from narvl import params as params_mod
    from narvl.data.shard_folder import ShardFolder
    from narvl.data.tokenizer import Tokenizer
    from narvl.errors import NarvlError
    from narvl.io import write_json

    data_params = params_mod.load_stage(args.params, "data")
    tokenizer = Tokenizer.load(args.tokenizer)
    folder = ShardFolder(args.shards)
    if not folder.sizes.get("train", {}).get("shards"):
        raise NarvlError(f"{args.shards / 'sizes.json'}: no train samples to time the training loader on")
    task = next(folder.metas("train"))["task"]
    results = [measure(args.shards, tokenizer, data_params, task, w) for w in WORKERS]
    for r in results:
        print(f"{task} train loader, {r['workers']} workers: {r['samples_per_s']:.1f} samples/s "
              f"({r['samples']} samples in {r['seconds']:.2f} s; first batch {r['first_batch_s']:.2f} s)")
    write_json(args.out, {
        "benchmark": "data", "task": task, "split": "train", "shards": str(args.shards),
        "micro_batch": data_params.loader.bench_micro_batch, "batches": data_params.loader.bench_batches,
        "image_size": data_params.shard.image_size[task], "results": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "target": "samples_per_s >= 5 x the training samples/s of `narvl bench train` on the same machine",
    })
    return 0
