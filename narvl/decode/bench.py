"""`narvl bench decode`: latency of AR and NAR decoding on the same encoder, written as JSON.

For every task's output length, batch size (decode.bench_batch_sizes, or --batch-sizes) and device (the CPU, and
the GPU when torch.cuda.is_available()), one run times side by side, interleaved, after one warm-up round
(milliseconds, inputs already on the device, torch.inference_mode):

    encoder only   the encoder (ResNet + transformer): the floor for any decoder
    NAR greedy     NAR forward + per-slot argmax of the logits + CTC collapse, one vectorised pass (greedy_decode)
    NAR beam       NAR forward + log-softmax + CTC prefix beam search, decode.beam_size (batched from 5 items)
    AR greedy      AR encoder + KV-cached greedy generation         (ARModel.generate, beam_size 1)
    AR beam        AR encoder + KV-cached beam search, decode.beam_size and decode.length_penalty
    AR trie        VQA (--models): beam search constrained to the candidate answers (OFA's trie)
    AR allcand     VQA (--models): every candidate answer scored, the best taken (OFA's all-candidate inference)
    AR bins        grounding (--models): greedy generation of <bin> tokens only (OFA's box decoding)

The constrained AR decoders are those of pipeline.ar_decoders (narvl.decode.constrained); each is compared with the
first NAR model's greedy decoding of the same round and batch (timed in that round, after the pairs of one decoder). AR and NAR models are prepared alike for inference
(narvl.model.inference.prepare: decode.fold_batchnorm, decode.channels_last). `encoder_variants` times, in the same
rounds, the encoder of copies of the first NAR model: as trained (`eager`), `fold_bn`, `fold_bn+channels_last`,
and with --compile `fold_bn+channels_last+compile` (torch.compile; its compilation falls in the warm-up round).
`nar_parts` times the first NAR model's greedy decoding in parts, in the same rounds: `decoder` (the query decoder
and output projection on a ready encoder output) and `collapse` (CTC greedy collapse of ready logits); encoder +
decoder + collapse is NAR greedy, which says where the time over the encoder goes.

The inputs are a fixed sample: the first decode.bench_samples samples of the task's evaluation split (--models) or
one random batch (--preset). At batch size b <= the sample size, the sample is cut into consecutive batches of b
(batch 1: every sample on its own); a larger b tiles the sample into one batch. Each of decode.bench_repeats rounds
times every batch with every method, an AR measurement right next to the NAR one it is compared with (A B, then B A
in the next round, so that neither always goes first). A pair is one (round, batch): its ratio AR time / NAR time
is a speed-up measured under the same machine load, which is what makes two runs on a busy machine comparable.
A batch size with fewer batches than batch 1 gets more rounds, so that every row has at least as many pairs as
batch 1 (decode.bench_repeats x the sample size; `rounds` in each row).

Per (device, task, batch) row: `ms` maps each method to the median time of one batch over every (round, batch),
`ms_iqr` to its [first, third] quartile, `samples_per_s` to batch / median time; `speedup` maps `<nar
model>_<decoder>` (nar_greedy, nar-kd_beam, ...) to {"median", "q1", "q3", "pairs"} of the per-pair ratios AR time /
NAR time, same decoder: the speed-up the results table shows, with its spread; and `ar_<decoder>` of an AR-only
decoder to the ratios of that AR time to NAR greedy's; `encoder_variants` maps each variant to {"median", "q1",
"q3"} ms. `threads` is torch's CPU thread count. Methods are named `encoder` and
`<model>_<decoder>`. `ratios` (for the first NAR model; `ratios_by_nar` for each, from the medians):
nar_greedy_over_encoder, ar_greedy_over_nar_greedy, ar_beam_over_nar_greedy, ar_beam_over_nar_beam, next to the
paper's AR/NAR speed-ups (OFA vs NARVL: grounding 2.4x, VQA 12.7x, caption 7.2x, entailment 1.4x).

Three modes:
  --models M.pt ...   trained model files (`narvl export`): per task one AR file and one or more NAR files (a
                      file's model name is its folder's name after "<task>-": runs/vqa-nar-kd/model.pt is
                      `nar-kd`); inputs are the first decode.bench_samples samples of the task's first evaluation
                      split (pipeline.eval_splits) read from --shards/<task> with --shards/tokenizer.json; AR generation
                      stops at EOS (at most data.loader.max_target_len[task] + 1 tokens): the decoding cost the
                      results table shows.
  --preset NAME       randomly initialised AR and NAR models of an architecture preset (cpu/tiny/medium/base/large/huge)
                      sharing one encoder's weights; random images of data.shard.image_size[task] pixels and
                      data.loader.max_source_len prompt tokens; N = model.num_queries[task] and AR generation
                      forced to exactly data.loader.max_target_len[task] + 1 tokens (EOS suppressed until the
                      last step), so the comparison is fair at a fixed output length.

  --merge PART ...    benchmark files of disjoint tasks (the workflow runs one --models job per task, so that each
                      starts as soon as that task's models exist) merged into one file, as one run over every task
                      writes it (`merge`); times nothing and needs no --params.

Reads the params folder (model, data, decode, pipeline yaml); writes --out:
    {"mode", "preset", "arch", "parameters", "decode", "inference", "paper_speedup", "targets", "environment",
     "results": [{"device", "task", "batch", "samples", "batches", "rounds", "threads", "ms": {method: ms},
                  "ms_iqr": {method: [q1, q3]}, "samples_per_s": {method: x},
                  "speedup": {"<nar>_<decoder>" | "ar_<decoder>": {"median", "q1", "q3", "pairs"}},
                  "encoder_variants": {variant: {"median", "q1", "q3"}}, "nar_parts": {part: {...}},
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

from narvl import params as P
from narvl.params import PRESETS

PAPER_SPEEDUP = {"grounding": 2.4, "vqa": 12.7, "caption": 7.2, "entailment": 1.4}
ENCODER = "encoder"  # the method name of the encoder-only measurement
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype -> torch dtype name
log = logging.getLogger("narvl.bench.decode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path,
                        help="parameter folder (model.yaml, data.yaml, decode.yaml, pipeline.yaml); --models, --preset")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--models", nargs="+", type=Path, help="exported model files (one AR and NAR files per task)")
    mode.add_argument("--preset", choices=list(PRESETS), help="random models of this preset")
    mode.add_argument("--merge", nargs="+", type=Path, metavar="PART",
                      help="merge benchmark files of other tasks (one job per task) into one; times nothing")
    parser.add_argument("--shards", type=Path, help="shards root (<root>/<task>/, <root>/tokenizer.json); --models")
    parser.add_argument("--tasks", nargs="+", help="only these tasks (default: all the mode provides)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the CPU, and the GPU when one is available")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="weights and images in this precision (bf16/fp16: for GPUs; bf16 also runs on a CPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default 0: torch's own choice); 1 is steadier on a busy machine")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="time these batch sizes instead of decode.bench_batch_sizes (e.g. 32 128: throughput)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the encoder under torch.compile (encoder_variants; compiles once per shape)")
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


def methods(ar, nars: dict[str, Any], images, src, mask, ar_fns: dict[str, Callable], beam_size: int,
            encoders: dict[str, Any] | None = None) -> dict[str, Callable[[], Any]]:
    """method name (`encoder`, `<model>_<decoder>`, `encoder:<variant>`) -> a function decoding the batch: the
    encoder alone first, then each NAR method, then the AR methods (`ar_fns`: decoder -> fn(model, images, src,
    mask), from narvl.decode.constrained.ar_decoder); `encoders` adds the encoder of other model copies (the
    variants of `encoder_variants`). `pairs` says which NAR and AR methods `measure` keeps adjacent."""
    import torch

    from narvl.decode.ctc import beam_search, greedy_decode

    first = next(iter(nars.values()))
    fns = {ENCODER: lambda: first.encode(images, src, mask)}
    for variant, model in (encoders or {}).items():
        fns[f"{ENCODER}:{variant}"] = lambda model=model: model.encode(images, src, mask)
    # the first NAR model's greedy decoding in parts (`nar_parts`): its decoder on a ready encoder output, and
    # the CTC collapse of ready logits; with the encoder they add up to NAR greedy
    with torch.inference_mode():
        enc = first.encode(images, src, mask)
        logits = first.decode(enc)
    blank0 = first.special_ids["blank"]
    fns[f"{ENCODER}:part:decoder"] = lambda: first.decode(enc)
    fns[f"{ENCODER}:part:collapse"] = lambda: greedy_decode(logits, blank0)
    for name, nar in nars.items():
        blank = nar.special_ids["blank"]
        # greedy: the per-slot argmax of the logits (no log-softmax); beam search needs log-probabilities
        fns[f"{name}_greedy"] = lambda nar=nar, blank=blank: greedy_decode(nar(images, src, mask), blank)
        fns[f"{name}_beam"] = lambda nar=nar, blank=blank: beam_search(
            nar(images, src, mask).float().log_softmax(-1), blank, beam_size)
    fns.update({f"ar_{decoder}": (lambda fn=fn: fn(ar, images, src, mask)) for decoder, fn in ar_fns.items()})
    return fns


def pairs(fns: dict[str, Any]) -> list[tuple[str, str]]:
    """(NAR method, AR method) timed back to back: every NAR method with the AR method of its decoder, and the
    first NAR model's greedy decoding with each AR-only decoder (trie, allcand, bins: `ar_<decoder>`)."""
    nar = [name for name in fns if not name.startswith((ENCODER, "ar_"))]
    same = [(name, f"ar_{name.rpartition('_')[2]}") for name in nar]
    extra = [(nar[0], name) for name in fns
             if name.startswith("ar_") and name not in ("ar_greedy", "ar_beam")] if nar else []
    return same + extra


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
                times = {name: timer(fn) for name, fn in fns.items() if name.startswith(ENCODER)}
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
    """Median and quartiles per method, and the per-pair speed-ups (AR / NAR of the same round and batch): keyed by
    the NAR method for a pair of one decoder, by the AR method for an AR-only decoder (NAR greedy's speed-up over
    it). The encoder variants go to `encoder_variants` ({variant: {"median", "q1", "q3"}})."""
    names = list(times[0])
    per = {name: spread([t[name] for t in times]) for name in names}
    speedup = {}
    for nar, ar in pairs(dict.fromkeys(names)):
        key = nar if ar.rpartition("_")[2] == nar.rpartition("_")[2] else ar
        speedup[key] = {**spread([t[ar] / t[nar] for t in times]), "pairs": len(times)}
    main = [n for n in names if not n.startswith(f"{ENCODER}:")]
    extra = {n.partition(":")[2]: per[n] for n in names if n.startswith(f"{ENCODER}:")}
    return {"ms": {n: per[n]["median"] for n in main}, "ms_iqr": {n: [per[n]["q1"], per[n]["q3"]] for n in main},
            "speedup": speedup,
            "encoder_variants": {n: v for n, v in extra.items() if not n.startswith("part:")},
            "nar_parts": {n.removeprefix("part:"): v for n, v in extra.items() if n.startswith("part:")}}


def ratios(ms: dict[str, float], nar: str) -> dict[str, float]:
    return {
        "nar_greedy_over_encoder": ms[f"{nar}_greedy"] / ms[ENCODER],
        "ar_greedy_over_nar_greedy": ms["ar_greedy"] / ms[f"{nar}_greedy"],
        "ar_beam_over_nar_greedy": ms["ar_beam"] / ms[f"{nar}_greedy"],
        "ar_beam_over_nar_beam": ms["ar_beam"] / ms[f"{nar}_beam"],
    }


def encoder_variants(model, compile: bool) -> dict[str, Any]:
    """Copies of `model` whose encoders `encoder_variants` times beside the prepared one: as trained (`eager`),
    BatchNorm folded, folded + channels_last, and with --compile that under torch.compile too."""
    import copy

    from narvl.model.inference import prepare

    out = {"eager": copy.deepcopy(model).eval(),
           "fold_bn": prepare(copy.deepcopy(model), fold_bn=True),
           "fold_bn+channels_last": prepare(copy.deepcopy(model), fold_bn=True, channels_last=True)}
    if compile:
        out["fold_bn+channels_last+compile"] = prepare(copy.deepcopy(model), True, True, compile=True)
    return out


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

    from narvl.decode.constrained import ar_decoder
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
        max_len = P.ar_max_len(data, task)

        def make_inputs(b, size=size, s=s, vocab=vocab):
            g = torch.Generator().manual_seed(b)
            return [(torch.randn(b, 3, size, size, generator=g), torch.randint(5, vocab, (b, s), generator=g),
                     torch.zeros(b, s, dtype=torch.bool))]

        ar_fns = {d: ar_decoder(d, task, None, prm["decode"], max_len, min_len=max_len) for d in ("greedy", "beam")}
        setups.append({"task": task, "nars": {"nar": nar}, "ar": ar, "inputs": make_inputs, "num_queries": n,
                       "ar_fns": ar_fns, "ar_max_len": max_len, "ar_min_len": max_len, "image_size": size,
                       "source_len": s})
    return setups


def model_name(path: Path, task: str, kind: str) -> str:
    """runs/<task>-<model>/model.pt -> <model> (ar, nar, nar-kd); else the file's kind."""
    folder = path.parent.name
    return folder[len(task) + 1:] if folder.startswith(f"{task}-") and len(folder) > len(task) + 1 else kind


def _model_setups(args, prm) -> list[dict[str, Any]]:
    """Trained AR and NAR files per task; inputs from the task's first evaluation split."""
    from narvl import model as narvl_model
    from narvl.data.loader import eval_loader
    from narvl.decode.constrained import ar_decoder
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

        decoders = ["greedy", "beam", *prm["pipeline"].ar_decoders.get(task, [])]
        max_len = P.ar_max_len(prm["data"], task)
        ar_fns = {d: ar_decoder(d, task, tokenizer, prm["decode"], max_len, args.shards / task) for d in decoders}
        setups.append({"task": task, "nars": {n: m for n, m, _ in nars}, "ar": ar, "inputs": make_inputs,
                       "ar_fns": ar_fns,
                       "num_queries": nars[0][1].num_queries, "ar_max_len": max_len,
                       "ar_min_len": 0, "split": split, "image_size": int(batch["images"].size(-1)),
                       "source_len": int(batch["src_tokens"].size(1)),
                       "models": {"ar": str(ar_path), **{n: str(p) for n, _, p in nars}}})
    return setups


# Values every merged part must share: they say how the timings were taken.
MERGE_SAME = ("mode", "preset", "dtype", "decode", "inference", "targets", "paper_speedup", "environment")
DEVICE_ORDER = ("cpu", "cuda")  # the order of _devices: every CPU row before the GPU rows


def merge(paths: list[Path]) -> dict[str, Any]:
    """One benchmark of several runs over disjoint tasks (`--merge`; the workflow times each task in its own job, as
    soon as its models exist): the rows of every part, CPU rows first and tasks in alphabetical order within a
    device, as one run over every task writes them; `models` and `splits` merged; `arch` and `parameters` those of
    the alphabetically first task, as in such a run. Parts must agree on MERGE_SAME."""
    from narvl.errors import NarvlError
    from narvl.io import read_json

    parts = []
    for path in paths:
        part = read_json(path)
        if not isinstance(part, dict) or not isinstance(part.get("results"), list) or not part["results"]:
            raise NarvlError(f"{path}: not a `narvl bench decode` file with results (no 'results' rows)")
        for i, row in enumerate(part["results"]):
            if not isinstance(row, dict) or not isinstance(row.get("task"), str) or \
                    not isinstance(row.get("device"), str):
                raise NarvlError(f"{path}: results[{i}] has no 'task' and 'device' names: not a `narvl bench "
                                 "decode` row")
        for key in ("models", "splits"):
            if not isinstance(part.get(key, {}), dict):
                raise NarvlError(f"{path}: '{key}' must map task names to values")
        tasks = sorted({row["task"] for row in part["results"]})
        parts.append((tasks, path, part))
    parts.sort(key=lambda p: p[0])
    seen: dict[str, Path] = {}
    for tasks, path, part in parts:
        for key in MERGE_SAME:
            if part.get(key) != parts[0][2].get(key):
                raise NarvlError(f"{path}: '{key}' is {part.get(key)!r}, but {parts[0][1]} has "
                                 f"{parts[0][2].get(key)!r}: parts of one benchmark must be timed alike (time them "
                                 "again together: `snakemake --forcerun bench_decode_task`)")
        for task in tasks:
            if task in seen:
                raise NarvlError(f"{path}: task '{task}' is also in {seen[task]}: each task in one part only")
            seen[task] = path
    first = parts[0][2]
    result = {key: first[key] for key in first if key not in ("results", "models", "splits")}
    order = {device: i for i, device in enumerate(DEVICE_ORDER)}
    rows = [(order.get(row["device"], len(order)), row["task"], i, j, row)
            for i, (_, _, part) in enumerate(parts) for j, row in enumerate(part["results"])]
    result["results"] = [row for *_, row in sorted(rows, key=lambda r: r[:4])]
    for key in ("models", "splits"):
        if any(key in part for _, _, part in parts):
            result[key] = {task: value for _, _, part in parts for task, value in part.get(key, {}).items()}
    return result


def main(args: argparse.Namespace) -> int:
    from narvl.io import write_json

    if args.merge:
        write_json(args.out, merge(args.merge))
        log.info("merged %d parts into %s", len(args.merge), args.out)
        return 0
    if args.params is None:
        from narvl.errors import NarvlError

        raise NarvlError("--models and --preset need --params (the parameter folder)")

    import torch

    from narvl import params
    from narvl.model import count_parameters
    from narvl.model.inference import prepare

    if args.threads:
        torch.set_num_threads(args.threads)
    prm = {stage: params.load_stage(args.params, stage)
           for stage in ("model", "data", "decode", "pipeline")}
    setups = _preset_setups(args, prm) if args.preset else _model_setups(args, prm)
    dtype = getattr(torch, DTYPES[args.dtype])
    devices = _devices(args.device)
    if args.dtype == "fp16" and any(d.type == "cpu" for d in devices):
        from narvl.errors import NarvlError

        raise NarvlError("--dtype fp16 needs a GPU: use --device cuda, or fp32/bf16 on the CPU")
    dp = prm["decode"]
    if args.batch_sizes and min(args.batch_sizes) < 1:
        from narvl.errors import NarvlError

        raise NarvlError(f"--batch-sizes {' '.join(map(str, args.batch_sizes))}: every batch size must be at least 1")
    for setup in setups:  # the encoder variants start from the model as trained, then AR and NAR are prepared alike
        setup["variants"] = encoder_variants(setup["nars"][next(iter(setup["nars"]))], args.compile)
        for model in (setup["ar"], *setup["nars"].values()):
            prepare(model, dp.fold_batchnorm, dp.channels_last)
    rows = []
    for device in devices:
        for setup in setups:
            ar = setup["ar"].to(device, dtype)
            nars = {n: m.to(device, dtype) for n, m in setup["nars"].items()}
            variants = {n: m.to(device, dtype) for n, m in setup["variants"].items()}
            for b in args.batch_sizes or dp.bench_batch_sizes:
                inputs = [tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in tensors)
                          for tensors in setup["inputs"](b)]
                batches = [methods(ar, nars, *tensors, setup["ar_fns"], dp.beam_size, variants)
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
                    "samples_per_s": {m: 1000.0 * b / v for m, v in ms.items()},
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
            setup["variants"] = {n: m.cpu().float() for n, m in variants.items()}
    first = setups[0]
    result = {
        "mode": "preset" if args.preset else "models",
        "preset": args.preset,
        "arch": params.to_dict(first["ar"].arch),
        "parameters": {"ar": count_parameters(first["ar"]),
                       **{n: count_parameters(m) for n, m in first["nars"].items()}},
        "decode": params.to_dict(prm["decode"]),
        "paper_speedup": PAPER_SPEEDUP,
        "targets": {"nar_greedy_over_encoder": "<= 1.10 at batch 1, <= 1.05 at batch 32",
                    "ar_greedy_over_nar_greedy": ">= 4 at caption length, batch 1"},
        "inference": {"fold_batchnorm": dp.fold_batchnorm, "channels_last": dp.channels_last,
                      "compile_variant": args.compile},
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
