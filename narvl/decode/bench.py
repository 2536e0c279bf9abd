"""`narvl bench decode`: latency of AR and NAR decoding on the same encoder, written as JSON.

For every task's output length, batch size (decode.bench_batch_sizes) and device (the CPU, and the GPU when
torch.cuda.is_available()), one run times side by side, interleaved, after one warm-up round (milliseconds, inputs
already on the device):

    encoder only   the encoder (ResNet + transformer): the floor for any decoder
    NAR greedy     NAR forward + log-softmax + CTC collapse         (narvl.decode.ctc.greedy_decode)
    NAR beam       NAR forward + CTC prefix beam search, decode.beam_size
    AR greedy      AR encoder + KV-cached greedy generation         (ARModel.generate, beam_size 1)
    AR beam        AR encoder + KV-cached beam search, decode.beam_size and decode.length_penalty

The inputs are a fixed sample: the first decode.bench_samples samples of the task's evaluation split (--models) or
one random batch (--preset). At batch size b <= the sample size, the sample is cut into consecutive batches of b
(batch 1: every sample on its own); a larger b tiles the sample into one batch. Each of decode.bench_repeats rounds
times every batch with every method, an AR measurement right next to the NAR one it is compared with (A B, then B A
in the next round, so that neither always goes first). A pair is one (round, batch): its ratio AR time / NAR time
is a speed-up measured under the same machine load, which is what makes two runs on a busy machine comparable.
A batch size with fewer batches than batch 1 gets more rounds, so that every row has at least as many pairs as
batch 1 (decode.bench_repeats x the sample size; `rounds` in each row).

Per (device, task, batch) row: `ms` maps each method to the median time of one batch over every (round, batch),
`ms_iqr` to its [first, third] quartile; `speedup` maps `<nar model>_<decoder>` (nar_greedy, nar-kd_beam, ...) to
{"median", "q1", "q3", "pairs"} of the per-pair ratios AR time / NAR time, same decoder: the speed-up the results
table shows, with its spread. `threads` is torch's CPU thread count. Methods are named `encoder` and
`<model>_<decoder>`. `ratios` (for the first NAR model; `ratios_by_nar` for each, from the medians):
nar_greedy_over_encoder, ar_greedy_over_nar_greedy, ar_beam_over_nar_greedy, ar_beam_over_nar_beam, next to the
paper's AR/NAR speed-ups (OFA vs NARVL: grounding 2.4x, VQA 12.7x, caption 7.2x, entailment 1.4x).

Two modes:
  --models M.pt ...   trained model files (`narvl export`): per task one AR file and one or more NAR files (a
                      file's model name is its folder's name after "<task>-": runs/vqa-nar-kd/model.pt is
                      `nar-kd`); inputs are the first decode.bench_samples samples of the task's first evaluation
                      split (pipeline.eval_splits) read from --shards/<task> with --shards/tokenizer.json; AR generation
                      stops at EOS (at most decode.max_len[task] tokens): the decoding cost the results table shows.
  --preset NAME       randomly initialised AR and NAR models of an architecture preset (cpu/tiny/medium/base/large/huge)
                      sharing one encoder's weights; random images of data.shard.image_size[task] pixels and
                      data.loader.max_source_len prompt tokens; N = model.num_queries[task] and AR generation
                      forced to exactly decode.max_len[task] tokens (EOS suppressed until the last step), so the
                      comparison is fair at a fixed output length.

Reads the params folder (model, data, decode, pipeline yaml); writes --out:
    {"mode", "preset", "arch", "parameters", "decode", "paper_speedup", "targets", "environment",
     "results": [{"device", "task", "batch", "samples", "batches", "rounds", "threads", "ms": {method: ms},
                  "ms_iqr": {method: [q1, q3]}, "speedup": {"<nar>_<decoder>": {"median", "q1", "q3", "pairs"}},
                  "ratios", "ratios_by_nar", "nar_models", "num_queries", "ar_max_len", "ar_forced_length",
                  "image_size", "source_len", "paper_speedup"}], "models"?, "splits"?}
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from narvl.params import PRESETS

PAPER_SPEEDUP = {"grounding": 2.4, "vqa": 12.7, "caption": 7.2, "entailment": 1.4}
ENCODER = "encoder"  # the method name of the encoder-only measurement
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype -> torch dtype name
log = logging.getLogger("narvl.bench.decode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, type=Path, help="params folder (model, data, decode, pipeline)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--models", nargs="+", type=Path, help="exported model files (one AR and NAR files per task)")
    mode.add_argument("--preset", choices=list(PRESETS), help="random models of this preset")
    parser.add_argument("--shards", type=Path, help="shards root (<root>/<task>/, <root>/tokenizer.json); --models")
    parser.add_argument("--tasks", nargs="+", help="only these tasks (default: all the mode provides)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the CPU, and the GPU when one is available")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="weights and images in this precision (bf16/fp16: for GPUs; bf16 also runs on a CPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default 0: torch's own choice); 1 is steadier on a busy machine")
    parser.add_argument("--out", required=True, type=Path, help="JSON output")


def _timer(device) -> Callable[[Callable[[], Any]], float]:
    import torch

    def run(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1000.0

    return run


def methods(ar, nars: dict[str, Any], images, src, mask, ar_max_len: int, ar_min_len: int,
            decode_params) -> dict[str, Callable[[], Any]]:
    """method name (`encoder`, `<model>_<decoder>`) -> a function decoding the batch, the encoder alone first, then
    each NAR method followed by the AR method of the same decoder (the pairs `measure` keeps adjacent)."""
    import torch.nn.functional as F

    from narvl.decode.ctc import beam_search, greedy_decode

    k, lp = decode_params.beam_size, decode_params.length_penalty
    first = next(iter(nars.values()))
    fns = {ENCODER: lambda: first.encode(images, src, mask)}
    ar_fns = {"greedy": lambda: ar.generate(images, src, mask, ar_max_len, 1, lp, min_len=ar_min_len),
              "beam": lambda: ar.generate(images, src, mask, ar_max_len, k, lp, min_len=ar_min_len)}
    for name, nar in nars.items():
        def logp(nar=nar):
            return F.log_softmax(nar(images, src, mask).float(), dim=-1)

        blank = nar.special_ids["blank"]
        fns[f"{name}_greedy"] = lambda logp=logp, blank=blank: greedy_decode(logp(), blank)
        fns[f"{name}_beam"] = lambda logp=logp, blank=blank: beam_search(logp(), blank, k)
    fns.update({f"ar_{decoder}": fn for decoder, fn in ar_fns.items()})
    return fns


def pairs(fns: dict[str, Any]) -> list[tuple[str, str]]:
    """(NAR method, AR method) of the same decoder, for every NAR model in `fns`."""
    return [(name, f"ar_{name.rpartition('_')[2]}") for name in fns
            if name != ENCODER and not name.startswith("ar_")]


def measure(batches: list[dict[str, Callable[[], Any]]], repeats: int, device) -> list[dict[str, float]]:
    """One {method: ms} per (round, batch): `repeats` rounds after a warm-up round, each timing every batch with
    every method; each (NAR, AR) pair of a decoder is timed back to back, AR second in even rounds and first in odd
    ones. `batches` holds per input batch the functions of `methods`."""
    import torch

    timer = _timer(device)
    out: list[dict[str, float]] = []
    with torch.inference_mode():
        for rnd in range(repeats + 1):
            for fns in batches:
                times = {ENCODER: timer(fns[ENCODER])}
                for nar, ar in pairs(fns):
                    for name in ((nar, ar) if rnd % 2 == 0 else (ar, nar)):
                        if name not in times:  # the AR method is timed once per round, next to the first NAR model
                            times[name] = timer(fns[name])
                if rnd:  # round 0 is the warm-up
                    out.append(times)
    return out


def spread(values: list[float]) -> dict[str, float]:
    """{"median", "q1", "q3"} of `values` (inclusive quartiles; one value is its own spread)."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": median, "q1": q1, "q3": q3}


def summarise(times: list[dict[str, float]]) -> dict[str, Any]:
    """Median and quartiles per method, and the per-pair speed-ups (AR / NAR of the same round and batch)."""
    names = list(times[0])
    per = {name: spread([t[name] for t in times]) for name in names}
    speedup = {}
    for nar, ar in pairs(dict.fromkeys(names)):
        speedup[nar] = {**spread([t[ar] / t[nar] for t in times]), "pairs": len(times)}
    return {"ms": {n: per[n]["median"] for n in names}, "ms_iqr": {n: [per[n]["q1"], per[n]["q3"]] for n in names},
            "speedup": speedup}


def ratios(ms: dict[str, float], nar: str) -> dict[str, float]:
    return {
        "nar_greedy_over_encoder": ms[f"{nar}_greedy"] / ms[ENCODER],
        "ar_greedy_over_nar_greedy": ms["ar_greedy"] / ms[f"{nar}_greedy"],
        "ar_beam_over_nar_greedy": ms["ar_beam"] / ms[f"{nar}_greedy"],
        "ar_beam_over_nar_beam": ms["ar_beam"] / ms[f"{nar}_beam"],
    }


def _devices(choice: str):
    import torch

    from narvl.errors import NarvlError

    if choice == "cuda" and not torch.cuda.is_available():
        raise NarvlError("--device cuda: no GPU is available (torch.cuda.is_available() is False)")
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [torch.device(choice)]


def _preset_setups(args, prm) -> list[dict[str, Any]]:
    """Random AR and NAR models per task sharing one encoder's weights, random inputs."""
    import torch

    from narvl.model import build_model

    arch = PRESETS[args.preset]
    data = prm["data"]
    vocab = data.tokenizer.vocab_size + 5 + data.tokenizer.num_bins  # BPE + 5 specials + location bins
    special = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "blank": 4}
    setups = []
    torch.manual_seed(0)
    for task in args.tasks or list(prm["model"].num_queries):
        n = prm["model"].num_queries[task]
        nar = build_model("nar", arch, vocab, n, special).eval()
        ar = build_model("ar", arch, vocab, n, special).eval()
        ar.encoder.load_state_dict(nar.encoder.state_dict())  # the same encoder for both
        size, s = data.shard.image_size[task], data.loader.max_source_len
        max_len = prm["decode"].max_len[task]

        def make_inputs(b, size=size, s=s, vocab=vocab):
            g = torch.Generator().manual_seed(b)
            return [(torch.randn(b, 3, size, size, generator=g), torch.randint(5, vocab, (b, s), generator=g),
                     torch.zeros(b, s, dtype=torch.bool))]

        setups.append({"task": task, "nars": {"nar": nar}, "ar": ar, "inputs": make_inputs, "num_queries": n,
                       "ar_max_len": max_len, "ar_min_len": max_len, "image_size": size, "source_len": s})
    return setups


def model_name(path: Path, task: str, kind: str) -> str:
    """runs/<task>-<model>/model.pt -> <model> (ar, nar, nar-kd); else the file's kind."""
    folder = path.parent.name
    return folder[len(task) + 1:] if folder.startswith(f"{task}-") and len(folder) > len(task) + 1 else kind


def _model_setups(args, prm) -> list[dict[str, Any]]:
    """Trained AR and NAR files per task; inputs from the task's first evaluation split."""
    from narvl import model as narvl_model
    from narvl.data.loader import eval_loader
    from narvl.data.tokenizer import Tokenizer
    from narvl.errors import NarvlError

    if args.shards is None:
        raise NarvlError("--models needs --shards (the shards root with <task>/ folders and tokenizer.json)")
    by_task: dict[str, dict[str, list]] = {}
    for path in args.models:
        m, meta = narvl_model.load(path)
        name = model_name(path, meta["task"], meta["kind"])
        if name.startswith("nar") != (meta["kind"] == "nar"):
            name = meta["kind"]
        by_task.setdefault(meta["task"], {}).setdefault(meta["kind"], []).append((name, m, path))
    tokenizer = Tokenizer.load(args.shards / "tokenizer.json")
    setups = []
    for task in args.tasks or sorted(by_task):
        kinds = by_task.get(task, {})
        if len(kinds.get("ar", [])) != 1 or not kinds.get("nar"):
            found = ", ".join(str(p) for files in kinds.values() for _, _, p in files) or "none"
            raise NarvlError(f"--models: task '{task}' needs exactly one AR and at least one NAR model file, "
                             f"got {found}")
        (_, ar, ar_path) = kinds["ar"][0]
        nars = sorted(kinds["nar"], key=lambda x: (x[0] != "nar", x[0]))  # `nar` first: the primary ratios
        names = [n for n, _, _ in nars]
        if len(set(names)) != len(names):
            raise NarvlError(f"--models: task '{task}' has two NAR files named {names}; name their folders "
                             f"<task>-nar and <task>-nar-kd")
        split = prm["pipeline"].eval_splits[task][0]
        want = prm["decode"].bench_samples
        batch = next(iter(eval_loader(args.shards / task, split, tokenizer, prm["data"], task, want, 0, 1)))
        if batch["images"].size(0) < want:
            log.warning("%s: split %s has %d samples, fewer than decode.bench_samples = %d", task, split,
                        batch["images"].size(0), want)

        def make_inputs(b, batch=batch):
            """Consecutive batches of b samples of the fixed sample, or the sample tiled to b when b is larger."""
            pool = (batch["images"], batch["src_tokens"], batch["src_mask"])
            n = pool[0].size(0)
            if b > n:
                reps = -(-b // n)
                return [tuple(t.repeat(reps, *([1] * (t.dim() - 1)))[:b] for t in pool)]
            return [tuple(t[i:i + b] for t in pool) for i in range(0, n - b + 1, b)]

        setups.append({"task": task, "nars": {n: m for n, m, _ in nars}, "ar": ar, "inputs": make_inputs,
                       "num_queries": nars[0][1].num_queries, "ar_max_len": prm["decode"].max_len[task],
                       "ar_min_len": 0, "split": split, "image_size": int(batch["images"].size(-1)),
                       "source_len": int(batch["src_tokens"].size(1)),
                       "models": {"ar": str(ar_path), **{n: str(p) for n, _, p in nars}}})
    return setups


def main(args: argparse.Namespace) -> int:
    import torch

    from narvl import params
    from narvl.io import write_json
    from narvl.model import count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    prm = {stage: params.load(args.params / f"{stage}.yaml", stage)
           for stage in ("model", "data", "decode", "pipeline")}
    setups = _preset_setups(args, prm) if args.preset else _model_setups(args, prm)
    dtype = getattr(torch, DTYPES[args.dtype])
    devices = _devices(args.device)
    if args.dtype == "fp16" and any(d.type == "cpu" for d in devices):
        from narvl.errors import NarvlError

        raise NarvlError("--dtype fp16 needs a GPU: use --device cuda, or fp32/bf16 on the CPU")
    rows = []
    for device in devices:
        for setup in setups:
            ar = setup["ar"].to(device, dtype)
            nars = {n: m.to(device, dtype) for n, m in setup["nars"].items()}
            for b in prm["decode"].bench_batch_sizes:
                inputs = [tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in tensors)
                          for tensors in setup["inputs"](b)]
                batches = [methods(ar, nars, *tensors, setup["ar_max_len"], setup["ar_min_len"], prm["decode"])
                           for tensors in inputs]
                # every batch size gets at least the pairs of batch 1 (rounds x batches): a large batch that holds
                # the whole sample would otherwise have decode.bench_repeats pairs only, too few under load
                repeats = prm["decode"].bench_repeats
                rounds = max(repeats, -(-repeats * len(setup["inputs"](1)) // len(inputs)))
                log.info("%s %s batch %d: timing %s on %d batches", device.type, setup["task"], b,
                         ", ".join(batches[0]), len(batches))
                summary = summarise(measure(batches, rounds, device))
                ms = summary["ms"]
                by_nar = {nar: ratios(ms, nar) for nar in nars}
                rows.append({
                    "device": device.type, "dtype": args.dtype, "task": setup["task"], "batch": b,
                    "samples": sum(int(t[0].size(0)) for t in inputs), "batches": len(inputs),
                    "rounds": rounds, "threads": torch.get_num_threads(), **summary,
                    "ratios": next(iter(by_nar.values())), "ratios_by_nar": by_nar, "nar_models": list(nars),
                    "num_queries": setup["num_queries"], "ar_max_len": setup["ar_max_len"],
                    "ar_forced_length": setup["ar_min_len"] >= setup["ar_max_len"],
                    "image_size": setup["image_size"], "source_len": setup["source_len"],
                    "paper_speedup": PAPER_SPEEDUP.get(setup["task"])})
                for nar, r in by_nar.items():
                    g, bm = summary["speedup"][f"{nar}_greedy"], summary["speedup"][f"{nar}_beam"]
                    print(f"{device.type:4s} {setup['task']:9s} B={b:<3d} {nar:6s} enc {ms[ENCODER]:8.1f}  "
                          f"nar g/b {ms[f'{nar}_greedy']:8.1f} {ms[f'{nar}_beam']:8.1f}  "
                          f"ar g/b {ms['ar_greedy']:8.1f} {ms['ar_beam']:8.1f} ms (medians) | nar_g/enc "
                          f"{r['nar_greedy_over_encoder']:.2f}  speed-up greedy {g['median']:.2f} "
                          f"[{g['q1']:.2f}, {g['q3']:.2f}]  beam {bm['median']:.2f} [{bm['q1']:.2f}, {bm['q3']:.2f}] "
                          f"(paper {PAPER_SPEEDUP.get(setup['task'])})", flush=True)
            setup["ar"], setup["nars"] = ar.cpu().float(), {n: m.cpu().float() for n, m in nars.items()}
    first = setups[0]
    result = {
        "mode": "preset" if args.preset else "models",
        "preset": args.preset,
        "arch": params.to_dict(first["ar"].arch),
        "parameters": {"ar": count_parameters(first["ar"]),
                       **{n: count_parameters(m) for n, m in first["nars"].items()}},
        "decode": params.to_dict(prm["decode"]),
        "paper_speedup": PAPER_SPEEDUP,
        "targets": {"nar_greedy_over_encoder": "<= 1.3",
                    "ar_greedy_over_nar_greedy": ">= 4 at caption length, batch 1"},
        "dtype": args.dtype,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cpu": platform.processor() or platform.machine(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "results": rows,
    }
    if not args.preset:
        result["models"] = {s["task"]: s["models"] for s in setups}
        result["splits"] = {s["task"]: s["split"] for s in setups}
    write_json(args.out, result)
    log.info("wrote %s", args.out)
    return 0
