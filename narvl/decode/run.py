"""Decode an evaluation split with an exported model into a predictions file in the official results format.

    narvl decode --params params --model runs/TASK-MODEL/model.pt --shards data/shards/TASK \\
                 --split SPLIT --tokenizer data/shards/tokenizer.json --decoder DECODER \\
                 --out results/predictions/TASK-SPLIT-MODEL-DECODER.json

Reads: the model file (`narvl export`: kind, task, arch, step, tokenizer reference, weights), the split's shards
(every sample once, in shard order, through `narvl.data.loader.eval_loader`), the tokenizer, and from the parameter
folder --params `decode.yaml` (batch size, beam size, length penalty) and `data.yaml` (the loader settings).

Decoding (the model first gets narvl.model.inference.prepare: BatchNorm folded when decode.fold_batchnorm, the
ResNet in channels_last when decode.channels_last; the same for AR and NAR):
  AR   `ARModel.generate` (beam_size 1 for greedy, decode.beam_size for beam; data.loader.max_target_len[task] + 1
       tokens at most, EOS included),
       or one of OFA's constrained modes of the task (`Task.ar_decoders`, narvl.decode.constrained): `trie` and
       `allcand` for VQA and entailment (over the decode.answer_candidates most frequent training answers), `bins`
       for grounding.
  NAR  `NARModel.forward` -> `narvl.decode.ctc.greedy_decode` on the logits (per-slot argmax, collapse repeats,
       drop blanks) or log-softmax + `beam_search` (CTC prefix beam search, decode.beam_size); output cut at the
       first EOS.
  The task turns the ids into its prediction (`Task.prediction`): captions and answers are the tokenizer's `decode`
  of the ids; grounding makes a box in original pixels of 4 location tokens (narvl/tasks/grounding.py).

Writes (atomically):
  --out             caption `[{"image_id", "caption"}]`, VQA `[{"question_id", "answer"}]`, grounding
                    `[{"ref_id", "sent_id", "sample_id", "box"}]`, entailment `[{"pair_id", "answer"}]`
                    (`Task.record`): exactly what `narvl score` reads
  <out stem>.meta.json  provenance and timing: the sha256 of --out (`narvl score` refuses a sidecar whose hash is
                    not its predictions'), model file, its sha256, kind, task, step, arch hash, tokenizer, decoder
                    settings, split, samples, device, seconds (model + decoding, and wall) and samples/s
  The sidecar is written first and the predictions second, so a failure (a full disk) never leaves new
  predictions beside an old sidecar. The model's task must be the shards' task.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from narvl import __version__, tasks
from narvl import params as params_mod
from narvl.errors import NarvlError
from narvl.io import file_sha256

log = logging.getLogger(__name__)

BLIND_MODEL = "baseline-blind"  # model name of a decode with --blank-images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, type=Path, help="parameter folder (decode.yaml, data.yaml)")
    parser.add_argument("--model", required=True, type=Path, help="exported model file (narvl export)")
    parser.add_argument("--shards", required=True, type=Path, help="the task's shard folder (sizes.json + tars)")
    parser.add_argument("--split", required=True, help="evaluation split, e.g. test, val, testA")
    parser.add_argument("--tokenizer", required=True, type=Path, help="data/shards/tokenizer.json")
    parser.add_argument("--decoder", required=True, choices=["greedy", "beam", "trie", "allcand", "bins"],
                        help="greedy, beam (any model); trie, allcand (AR VQA, entailment); bins (AR grounding)")
    parser.add_argument("--out", required=True, type=Path, help="predictions JSON to write")
    parser.add_argument("--blank-images", action="store_true",
                        help="feed every sample an all-zero (mean-colour) image: the blind baseline of a trained model "
                             "(model name baseline-blind)")


def sidecar_path(out: Path) -> Path:
    from narvl.eval.common import decode_sidecar_path

    return decode_sidecar_path(out)



def _check_tokenizer(meta: dict, tokenizer_path: Path, model_path: Path, vocab_size: int, model_vocab: int) -> None:
    """The model must have been trained with this tokenizer: same sha256 when the file records one, same size."""
    ref = meta.get("tokenizer")
    if isinstance(ref, dict) and ref.get("sha256"):
        actual = file_sha256(tokenizer_path)
        if actual != ref["sha256"]:
            raise NarvlError(f"{tokenizer_path}: sha256 {actual[:12]} differs from the tokenizer the model "
                             f"{model_path} was trained with ({ref.get('path', '?')}, {str(ref['sha256'])[:12]})")
    if vocab_size != model_vocab:
        raise NarvlError(f"{tokenizer_path}: vocabulary of {vocab_size} tokens, but {model_path} has {model_vocab}")


def predict_batch(model, batch: dict[str, Any], task: str, tokenizer, decoder: str, decode_params,
                  ar_decode=None, max_len: int | None = None) -> list[Any]:
    """Predictions (caption/answer text, or a box in ORIGINAL pixels) for one batch, in batch order. `ar_decode`:
    an AR model's decoding function (narvl.decode.constrained.ar_decoder); made here when not given, for greedy
    and beam, from `max_len` (`narvl.params.ar_max_len`)."""
    import torch.nn.functional as F

    from narvl.decode.ctc import beam_search, greedy_decode

    spec = tasks.get(task)

    images, src, mask = batch["images"], batch["src_tokens"], batch["src_mask"]
    eos = tokenizer.eos_id
    slot_lp = None
    if model.kind == "ar":
        if ar_decode is None:
            from narvl.decode.constrained import ar_decoder

            if max_len is None:
                raise ValueError("predict_batch: an AR model needs ar_decode or max_len")
            ar_decode = ar_decoder(decoder, task, tokenizer, decode_params, max_len)
        seqs = ar_decode(model, images, src, mask)
    else:
        logits = model(images, src, mask).float()  # (B, N, V)
        if decoder != "greedy" or spec.slot_logprobs:  # beam search (and grounding's box fallback) need them
            slot_lp = F.log_softmax(logits, dim=-1)
        if decoder == "greedy":  # the per-slot argmax of the logits is that of the log-probabilities
            seqs = greedy_decode(logits, tokenizer.blank_id, eos)
        else:
            seqs = [hyps[0][0] for hyps in beam_search(slot_lp, tokenizer.blank_id, decode_params.beam_size)]
    seqs = [s[:s.index(eos)] if eos in s else s for s in (list(map(int, s)) for s in seqs)]
    return [spec.prediction(seq, meta, tokenizer, slot_lp[i] if slot_lp is not None else None)
            for i, (seq, meta) in enumerate(zip(seqs, batch["meta"]))]


def record(task: str, meta: dict, pred: Any) -> dict[str, Any]:
    """One record of the predictions file (the task's official results format)."""
    return tasks.get(task).record(meta, pred)


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from narvl import model as narvl_model
    from narvl.data.loader import eval_loader
    from narvl.data.tokenizer import Tokenizer
    from narvl.decode.constrained import ar_decoder, check_decoder
    from narvl.cell import CellName
    from narvl.model.inference import prepare
    from narvl.data.shard_folder import read_sizes
    from narvl.io import check_output, json_bytes, write_bytes, write_json

    decode_params = params_mod.load_stage(args.params, "decode")
    data_params = params_mod.load_stage(args.params, "data")
    model, meta = narvl_model.load(args.model)
    task = meta["task"]
    tokenizer = Tokenizer.load(args.tokenizer)
    _check_tokenizer(meta, args.tokenizer, args.model, tokenizer.vocab_size, meta["vocab_size"])
    max_len = params_mod.ar_max_len(data_params, task, model.arch.max_target_len)
    cell = CellName.parse(args.out.stem)
    if cell and tasks.get(cell.task) is not tasks.get(task):  # the file name's task object is the model's
        raise NarvlError(f"{args.out}: the file name says task '{cell.task}', but {args.model} is a {task} model")

    check_decoder(task, meta["kind"], args.decoder)
    read_sizes(args.shards, task)  # a caption model on VQA shards is an error, not 720 caption records
    check_output(args.out, is_dir=False, inputs=[args.model, args.shards, args.tokenizer, args.params])

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prepare(model, decode_params.fold_batchnorm, decode_params.channels_last).to(device)
    ar_decode = ar_decoder(args.decoder, task, tokenizer, decode_params, max_len, args.shards) if meta["kind"] == "ar" \
        else None
    loader = eval_loader(args.shards, args.split, tokenizer, data_params, task, decode_params.batch_size, 0, 1)
    records: list[dict[str, Any]] = []
    compute_s = 0.0
    wall0 = time.perf_counter()
    with torch.inference_mode(), tqdm(total=loader.samples, desc=f"decode {task} {args.split} "
                                      f"{meta['kind']} {args.decoder}", unit="sample") as bar:
        for batch in loader:
            if args.blank_images:
                batch["images"] = torch.zeros_like(batch["images"])  # 0 after normalisation: the mean colour
            for key in ("images", "src_tokens", "src_mask"):
                batch[key] = batch[key].to(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            preds = predict_batch(model, batch, task, tokenizer, args.decoder, decode_params, ar_decode)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            compute_s += time.perf_counter() - t0
            records.extend(record(task, m, p) for m, p in zip(batch["meta"], preds))
            bar.update(len(preds))
    wall_s = time.perf_counter() - wall0
    if len(records) != loader.samples:
        raise NarvlError(f"{args.shards}: split '{args.split}' yielded {len(records)} samples, sizes.json says "
                         f"{loader.samples}")

    predictions = json_bytes(records, indent=None)
    side = {
        "predictions_sha256": hashlib.sha256(predictions).hexdigest(),
        "model_file": str(args.model), "model_sha256": file_sha256(args.model), "kind": meta["kind"], "task": task,
        "model": BLIND_MODEL if args.blank_images else cell.model if cell else meta["kind"],
        "blank_images": args.blank_images, "step": meta["step"],
        "arch_hash": hashlib.sha256(json.dumps(meta["arch"], sort_keys=True).encode()).hexdigest()[:12],
        "num_queries": meta["num_queries"], "tokenizer": {"path": str(args.tokenizer),
                                                          "sha256": file_sha256(args.tokenizer)},
        "decoder": args.decoder, "decode_params": params_mod.to_dict(decode_params),
        "decode_params_hash": params_mod.digest(decode_params), "split": args.split, "shards": str(args.shards),
        "samples": len(records), "device": device.type, "threads": torch.get_num_threads(),
        "seconds_model_and_decoding": compute_s, "seconds_wall": wall_s,
        "samples_per_s": len(records) / compute_s if compute_s > 0 else None,
        "narvl_version": __version__,
    }
    # one unit: the sidecar first, naming the new predictions by hash, then the predictions. A failure in
    # between leaves the old predictions beside a sidecar that is not theirs, which `narvl score` refuses.
    write_json(sidecar_path(args.out), side)
    write_bytes(args.out, predictions)
    log.info("%s: %d predictions, %.1f samples/s (model + decoding, %s)", args.out, len(records),
             side["samples_per_s"] or 0.0, device.type)
    return 0
