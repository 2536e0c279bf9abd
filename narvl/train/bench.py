"""Training throughput (samples/s) with 1 and 2 data-parallel processes (train.bench_nprocs), NAR and AR.

Reads   --params DIR      train.yaml (bench_steps, bench_nprocs, micro_batch, ...), model.yaml, data.yaml
        --shards DIR      the task's shards (the task is read from the shard names)
        --tokenizer FILE  tokenizer.json
Writes  --out FILE        JSON: per (kind, processes x OMP threads) samples/s over the steps after the first log
                          window (warm-up excluded), overall samples/s, wall time, and the speed-up over the best
                          single-process configuration

Each measurement is a real `narvl train` run (DeepSpeed, torchrun) of train.bench_steps steps in a temporary
folder, with micro_batch samples per process and step (the global batch grows with the processes: weak scaling).
On CPUs the processes share the machine's cores (OMP threads = cores / processes), and one process with one thread
is measured too; on GPUs each process has a GPU, and process counts above the visible GPUs are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from narvl import params as P
from narvl.errors import NarvlError
from narvl.io import read_json, write_json

log = logging.getLogger("narvl.bench.train")
KINDS = ("nar", "ar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help="parameter folder (train.yaml, model.yaml, data.yaml)")
    parser.add_argument("--shards", required=True, help="shard folder of one task (data/shards/TASK)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json")
    parser.add_argument("--out", required=True, help="JSON file to write (results/bench/train.json)")


def shard_task(shards: Path) -> str:
    from narvl.data.shard_folder import read_sizes

    sizes = read_sizes(shards)
    if "train" not in sizes or not sizes["train"]["shards"]:
        raise NarvlError(f"{shards / 'sizes.json'}: missing or without a train split")
    task = str(sizes["train"]["shards"][0]).split("-", 1)[0]
    if task not in P.TASKS:
        raise NarvlError(f"{shards}: shard {sizes['train']['shards'][0]} does not name a task")
    return task


def bench_params(src: Path, dst: Path, task: str, nproc: int, train: P.TrainParams) -> Path:
    """A copy of the params folder for one measurement: nproc processes, bench_steps steps, one checkpoint."""
    shutil.copytree(src, dst)
    doc = yaml.safe_load((dst / "train.yaml").read_text())
    doc["train"].update(
        nproc=nproc, global_batch=train.micro_batch * train.grad_accum * nproc,
        steps={**train.steps, task: train.bench_steps}, checkpoint_every=train.bench_steps,
        log_every=max(1, train.bench_steps // 6), val_every=0, val_batches=1)
    (dst / "train.yaml").write_text(yaml.safe_dump(doc))
    return dst


def steady_samples_per_s(tb_dir: Path) -> float | None:
    """Median of the logged windows after the first (which holds the warm-up)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    if "train/samples_per_s" not in acc.Tags()["scalars"]:
        return None
    values = [e.value for e in acc.Scalars("train/samples_per_s")]
    return statistics.median(values[1:] if len(values) > 1 else values)


def main(args: argparse.Namespace) -> int:
    params_dir, shards, out = Path(args.params), Path(args.shards), Path(args.out)
    train = P.load_stage(params_dir, "train")
    if train.bench_steps < 2 or not train.bench_nprocs or min(train.bench_nprocs) < 1:
        raise NarvlError(f"{params_dir / 'train.yaml'}: train.bench_steps must be >= 2 and train.bench_nprocs "
                         "a non-empty list of positive counts")
    task = shard_task(shards)
    if not Path(args.tokenizer).is_file():
        raise NarvlError(f"{args.tokenizer}: no such tokenizer file")

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = os.cpu_count() or 1
    # (processes, OMP threads per process): the cores shared out; on CPUs also one process with one thread, since
    # OpenMP threads spinning on a busy machine can make one process with all cores much slower than that
    configs = [(n, 1 if gpus else max(1, cores // n)) for n in train.bench_nprocs]
    if not gpus and (1, 1) not in configs:
        configs.append((1, 1))
    results = []
    tmp_root = Path(tempfile.mkdtemp(prefix=".bench-train-", dir=out.parent if out.parent.exists() else None))
    try:
        for kind in KINDS:
            for nproc, threads in configs:
                entry = {"kind": kind, "nproc": nproc, "threads_per_process": threads,
                         "micro_batch": train.micro_batch,
                         "global_batch": train.micro_batch * train.grad_accum * nproc, "steps": train.bench_steps}
                if gpus and nproc > gpus:
                    results.append(dict(entry, skipped=f"{nproc} processes need {nproc} GPUs, {gpus} visible"))
                    continue
                p = bench_params(params_dir, tmp_root / f"params-{kind}-{nproc}-{threads}", task, nproc, train)
                run = tmp_root / f"run-{kind}-{nproc}-{threads}"
                cmd = [sys.executable, "-m", "narvl", "train", "--params", str(p), "--task", task, "--kind", kind,
                       "--shards", str(shards), "--tokenizer", str(args.tokenizer), "--out", str(run)]
                log.info("bench train: %s, %d process(es) x %d thread(s)", kind, nproc, threads)
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise NarvlError(f"bench train: `{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
                summary = read_json(run / "summary.json")
                results.append(dict(entry, samples_per_s=summary["samples_per_s"],
                                    samples_per_s_steady=steady_samples_per_s(run / "tb"),
                                    command_wall_s=round(wall, 3), train_wall_s=summary["wall_s"],
                                    final_loss=summary["final"].get("loss")))
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    speedup = {}  # against the fastest one-process configuration
    for kind in KINDS:
        rows = [r for r in results if r["kind"] == kind and r.get("samples_per_s_steady")]
        base = max((r["samples_per_s_steady"] for r in rows if r["nproc"] == 1), default=None)
        for r in rows:
            if base:
                speedup[f"{kind}-{r['nproc']}x{r['threads_per_process']}"] = round(r["samples_per_s_steady"] / base, 3)
    from importlib.metadata import version

    report = {
        "benchmark": "train", "task": task, "device": "cuda" if gpus else "cpu",
        "gpu": torch.cuda.get_device_name(0) if gpus else None, "gpus": gpus, "cpu_count": cores,
        "platform": platform.platform(), "torch": torch.__version__, "deepspeed": version("deepspeed"),
        "precision": train.precision, "zero_stage": train.zero_stage, "params_hash": P.digest(train),
        "results": results, "speedup_vs_best_1_process": speedup,
        "note": "speed-up of each (kind, processes x threads) over the fastest one-process configuration; weak "
                "scaling (micro_batch samples per process and step)",
    }
    write_json(out, report)
    print(json.dumps({"results": [{k: r.get(k) for k in ("kind", "nproc", "threads_per_process",
                                                          "samples_per_s_steady")}
                                  for r in results], "speedup_vs_best_1_process": speedup}, indent=1))
    return 0
