"""`narvl bench decode`: latency of AR and NAR decoding on the same encoder, written as JSON.

For every task's output length, batch size (decode.bench_batch_sizes) and device (the CPU, and the GPU when
torch.cuda.is_available()), one run times side by side, round-robin over decode.bench_repeats repetitions after
one warm-up (milliseconds, images already on the device; `ms` is the fastest repetition, the least disturbed by
other processes, and the ratios use it; `ms_median` is the median):

    encoder     the encoder alone (ResNet + transformer), the floor for any decoder
    nar_greedy  NAR forward + log-softmax + CTC collapse           (narvl.decode.ctc.greedy_decode)
    nar_beam    NAR forward + CTC prefix beam search, decode.beam_size
    ar_greedy   AR encoder + KV-cached greedy generation           (ARModel.generate, beam_size 1)
    ar_beam     AR encoder + KV-cached beam search, decode.beam_size and decode.length_penalty

and the ratios nar_greedy/encoder, ar_greedy/nar_greedy, ar_beam/nar_greedy, ar_beam/nar_beam next to the
paper's AR/NAR speed-ups (OFA vs NARVL: grounding 2.4x, VQA 12.7x, caption 7.2x, entailment 1.4x).

Two modes:
  --models M.pt ...   trained model files (`narvl export`); per task one AR and one NAR file; inputs are the first
                      samples of the task's first evaluation split (pipeline.eval_splits) read from
                      --shards/<task> with the tokenizer --shards/tokenizer.json; AR generation stops at EOS
                      (at most decode.max_len[task] tokens): the real decoding cost the results table reports.
  --preset NAME       randomly initialised AR and NAR models of an architecture preset (cpu/tiny/base/large)
                      sharing one encoder's weights; random images of data.shard.image_size[task] pixels and
                      data.loader.max_source_len prompt tokens; N = model.num_queries[task] and AR generation
                      forced to exactly decode.max_len[task] tokens (EOS suppressed until the last step), so the
                      comparison is fair at a fixed output length.

Reads the params folder (model, data, decode, pipeline yaml); writes --out.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

PAPER_SPEEDUP = {"grounding": 2.4, "vqa": 12.7, "caption": 7.2, "entailment": 1.4}
METHODS = ("encoder", "nar_greedy", "nar_beam", "ar_greedy", "ar_beam")
log = logging.getLogger("narvl.bench.decode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, type=Path, help="params folder (model, data, decode, pipeline)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--models", nargs="+", type=Path, help="exported model files (one AR and one NAR per task)")
    mode.add_argument("--preset", choices=["cpu", "tiny", "base", "large"], help="random models of this preset")
    parser.add_argument("--shards", type=Path, help="shards root (<root>/<task>/, <root>/tokenizer.json); --models")
    parser.add_argument("--tasks", nargs="+", help="only these tasks (default: all the mode provides)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the CPU, and the GPU when one is available")
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


def measure(nar, ar, images, src, mask, ar_max_len: int, ar_min_len: int, decode_params,
            device) -> dict[str, list[float]]:
    """Milliseconds of each repetition of each method, measured round-robin (after one warm-up round)."""
    import torch
    import torch.nn.functional as F

    from narvl.decode.ctc import beam_search, greedy_decode

    blank = nar.special_ids["blank"]
    k, lp = decode_params.beam_size, decode_params.length_penalty

    def nar_logp():
        return F.log_softmax(nar(images, src, mask).float(), dim=-1)

    fns = {
        "encoder": lambda: nar.encode(images, src, mask),
        "nar_greedy": lambda: greedy_decode(nar_logp(), blank),
        "nar_beam": lambda: beam_search(nar_logp(), blank, k),
        "ar_greedy": lambda: ar.generate(images, src, mask, ar_max_len, 1, lp, min_len=ar_min_len),
        "ar_beam": lambda: ar.generate(images, src, mask, ar_max_len, k, lp, min_len=ar_min_len),
    }
    timer = _timer(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for rnd in range(decode_params.bench_repeats + 1):
            for name, fn in fns.items():
                t = timer(fn)
                if rnd:  # round 0 is the warm-up
                    times[name].append(t)
    return times


def ratios(ms: dict[str, float]) -> dict[str, float]:
    return {
        "nar_greedy_over_encoder": ms["nar_greedy"] / ms["encoder"],
        "ar_greedy_over_nar_greedy": ms["ar_greedy"] / ms["nar_greedy"],
        "ar_beam_over_nar_greedy": ms["ar_beam"] / ms["nar_greedy"],
        "ar_beam_over_nar_beam": ms["ar_beam"] / ms["nar_beam"],
    }


def _devices(choice: str):
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        from narvl.errors import NarvlError

        raise NarvlError("--device cuda: no GPU is available (torch.cuda.is_available() is False)")
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [torch.device(choice)]


def _preset_setups(args, prm) -> list[dict[str, Any]]:
    """Random AR and NAR models per task sharing one encoder's weights, random inputs."""
    import torch

    from narvl.model import build_model
    from narvl.params import PRESETS

    arch = PRESETS[args.preset]
    data = prm["data"]
    vocab = data.tokenizer.vocab_size + 5 + data.tokenizer.num_bins  # BPE + 5 specials + location bins
    special = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "blank": 4}
    tasks = args.tasks or list(prm["model"].num_queries)
    setups = []
    torch.manual_seed(0)
    for task in tasks:
        n = prm["model"].num_queries[task]
        nar = build_model("nar", arch, vocab, n, special).eval()
        ar = build_model("ar", arch, vocab, n, special).eval()
        ar.encoder.load_state_dict(nar.encoder.state_dict())  # the same encoder for both
        size = data.shard.image_size[task]
        s = data.loader.max_source_len
        max_len = prm["decode"].max_len[task]

        def make_inputs(b, size=size, s=s, vocab=vocab):
            g = torch.Generator().manual_seed(b)
            return (torch.randn(b, 3, size, size, generator=g), torch.randint(5, vocab, (b, s), generator=g),
                    torch.zeros(b, s, dtype=torch.bool))

        setups.append({"task": task, "nar": nar, "ar": ar, "inputs": make_inputs, "num_queries": n,
                       "ar_max_len": max_len, "ar_min_len": max_len, "image_size": size, "source_len": s})
    return setups


def _model_setups(args, prm) -> list[dict[str, Any]]:
    """Trained AR and NAR files per task; inputs from the task's first evaluation split."""
    import torch

    from narvl import model as narvl_model
    from narvl.data.loader import eval_loader
    from narvl.data.tokenizer import Tokenizer
    from narvl.errors import NarvlError

    if args.shards is None:
        raise NarvlError("--models needs --shards (the shards root with <task>/ folders and tokenizer.json)")
    by_task: dict[str, dict[str, Any]] = {}
    for path in args.models:
        m, meta = narvl_model.load(path)
        by_task.setdefault(meta["task"], {}).setdefault(meta["kind"], (m, path))
    tokenizer = Tokenizer.load(args.shards / "tokenizer.json")
    setups = []
    for task in args.tasks or sorted(by_task):
        kinds = by_task.get(task, {})
        if set(kinds) != {"ar", "nar"}:
            raise NarvlError(f"--models: task '{task}' needs one AR and one NAR model file, got "
                             f"{', '.join(str(p) for _, p in kinds.values()) or 'none'}")
        (nar, nar_path), (ar, ar_path) = kinds["nar"], kinds["ar"]
        split = prm["pipeline"].eval_splits[task][0]
        biggest = max(prm["decode"].bench_batch_sizes)
        batch = next(iter(eval_loader(args.shards / task, split, tokenizer, prm["data"], task, biggest, 0, 1)))

        def make_inputs(b, batch=batch):
            reps = -(-b // batch["images"].size(0))  # tile when the split is smaller than b
            take = lambda t: t.repeat(reps, *([1] * (t.dim() - 1)))[:b]  # noqa: E731
            return take(batch["images"]), take(batch["src_tokens"]), take(batch["src_mask"])

        setups.append({"task": task, "nar": nar, "ar": ar, "inputs": make_inputs, "num_queries": nar.num_queries,
                       "ar_max_len": prm["decode"].max_len[task], "ar_min_len": 0, "split": split,
                       "image_size": int(batch["images"].size(-1)), "source_len": int(batch["src_tokens"].size(1)),
                       "models": {"nar": str(nar_path), "ar": str(ar_path)}})
    return setups


def main(args: argparse.Namespace) -> int:
    import torch

    from narvl import params
    from narvl.io import write_json
    from narvl.model import count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    prm = {stage: params.load(args.params / f"{stage}.yaml", stage) for stage in ("model", "data", "decode",
                                                                                  "pipeline")}
    setups = _preset_setups(args, prm) if args.preset else _model_setups(args, prm)
    rows = []
    for device in _devices(args.device):
        for setup in setups:
            nar, ar = setup["nar"].to(device), setup["ar"].to(device)
            for b in prm["decode"].bench_batch_sizes:
                images, src, mask = (t.to(device) for t in setup["inputs"](b))
                log.info("%s %s batch %d: timing %s", device.type, setup["task"], b, ", ".join(METHODS))
                times = measure(nar, ar, images, src, mask, setup["ar_max_len"], setup["ar_min_len"],
                                prm["decode"], device)
                ms = {name: min(ts) for name, ts in times.items()}
                row = {"device": device.type, "task": setup["task"], "batch": b, "ms": ms, "ratios": ratios(ms),
                       "ms_median": {name: statistics.median(ts) for name, ts in times.items()},
                       "num_queries": setup["num_queries"], "ar_max_len": setup["ar_max_len"],
                       "ar_forced_length": setup["ar_min_len"] >= setup["ar_max_len"],
                       "image_size": setup["image_size"], "source_len": setup["source_len"],
                       "paper_speedup": PAPER_SPEEDUP.get(setup["task"])}
                rows.append(row)
                r = row["ratios"]
                print(f"{device.type:4s} {setup['task']:9s} B={b:<3d} enc {ms['encoder']:8.1f}  "
                      f"nar g/b {ms['nar_greedy']:8.1f} {ms['nar_beam']:8.1f}  "
                      f"ar g/b {ms['ar_greedy']:8.1f} {ms['ar_beam']:8.1f} ms | nar_g/enc "
                      f"{r['nar_greedy_over_encoder']:.2f}  ar_g/nar_g {r['ar_greedy_over_nar_greedy']:.2f}  "
                      f"ar_b/nar_g {r['ar_beam_over_nar_greedy']:.2f} (paper {row['paper_speedup']})", flush=True)
            setup["nar"], setup["ar"] = nar.cpu(), ar.cpu()
    first = setups[0]
    result = {
        "mode": "preset" if args.preset else "models",
        "preset": args.preset,
        "arch": params.to_dict(first["nar"].arch),
        "parameters": {"nar": count_parameters(first["nar"]), "ar": count_parameters(first["ar"])},
        "decode": params.to_dict(prm["decode"]),
        "paper_speedup": PAPER_SPEEDUP,
        "targets": {"nar_greedy_over_encoder": "<= 1.3",
                    "ar_greedy_over_nar_greedy": ">= 4 at caption length, batch 1"},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cpu": platform.processor() or platform.machine(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "methods": list(METHODS),
        "results": rows,
    }
    if not args.preset:
        result["models"] = {s["task"]: s["models"] for s in setups}
        result["splits"] = {s["task"]: s["split"] for s in setups}
    write_json(args.out, result)
    log.info("wrote %s", args.out)
    return 0
