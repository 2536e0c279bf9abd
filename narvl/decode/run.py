"""Decode an evaluation split with an exported model into a predictions file in the official results format.

    narvl decode --params params/decode.yaml --model runs/TASK-MODEL/model.pt --shards data/shards/TASK \\
                 --split SPLIT --tokenizer data/shards/tokenizer.json --decoder DECODER \\
                 --out results/predictions/TASK-SPLIT-MODEL-DECODER.json

Reads: the model file (`narvl export`: kind, task, arch, step, tokenizer reference, weights), the split's shards
(every sample once, in shard order, through `narvl.data.loader.eval_loader`; the loader settings come from
`data.yaml` beside `--params`), the tokenizer, and `decode.yaml` (batch size, beam size, length penalty, AR max_len).

Decoding (the model first gets narvl.model.inference.prepare: BatchNorm folded when decode.fold_batchnorm, the
ResNet in channels_last when decode.channels_last; the same for AR and NAR):
  AR   `ARModel.generate` (beam_size 1 for greedy, decode.beam_size for beam; decode.max_len[task] tokens at most),
       or one of OFA's constrained modes (narvl.decode.constrained): `trie` and `allcand` for VQA (over the
       decode.answer_candidates most frequent training answers), `bins` for grounding.
  NAR  `NARModel.forward` -> `narvl.decode.ctc.greedy_decode` on the logits (per-slot argmax, collapse repeats,
       drop blanks) or log-softmax + `beam_search` (CTC prefix beam search, decode.beam_size); output cut at the
       first EOS.
  Captions and answers are the tokenizer's `decode` of the ids. Grounding takes 4 location tokens
  (`narvl.decode.ctc.box_tokens`: the first 4 decoded, else for NAR the 4 most confident slots), turns them into a box
  in resized pixels over the canvas side max(size) (`Tokenizer.tokens_to_box`), then into original pixels by
  orig_size / size per axis (no clipping, as OFA).

Writes (atomically):
  --out             caption `[{"image_id", "caption"}]`, VQA `[{"question_id", "answer"}]`, grounding
                    `[{"ref_id", "sent_id", "sample_id", "box"}]`: exactly what `narvl score` reads
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

from narvl import __version__
from narvl import params as params_mod
from narvl.errors import NarvlError
from narvl.io import file_sha256

log = logging.getLogger(__name__)

BLIND_MODEL = "baseline-blind"  # model name of a decode with --blank-images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, type=Path, help="params/decode.yaml (data.yaml is read beside it)")
    parser.add_argument("--model", required=True, type=Path, help="exported model file (narvl export)")
    parser.add_argument("--shards", required=True, type=Path, help="the task's shard folder (sizes.json + tars)")
    parser.add_argument("--split", required=True, help="evaluation split, e.g. test, val, testA")
    parser.add_argument("--tokenizer", required=True, type=Path, help="data/shards/tokenizer.json")
    parser.add_argument("--decoder", required=True, choices=["greedy", "beam", "trie", "allcand", "bins"],
                        help="greedy, beam (any model); trie, allcand (AR VQA); bins (AR grounding)")
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
                  ar_decode=None) -> list[Any]:
    """Predictions (caption/answer text, or a box in ORIGINAL pixels) for one batch, in batch order. `ar_decode`:
    an AR model's decoding function (narvl.decode.constrained.ar_decoder); made here when not given."""
    import torch
    import torch.nn.functional as F

    from narvl.decode.ctc import beam_search, box_tokens, greedy_decode

    images, src, mask = batch["images"], batch["src_tokens"], batch["src_mask"]
    eos = tokenizer.eos_id
    slot_lp = None
    if model.kind == "ar":
        if ar_decode is None:
            from narvl.decode.constrained import ar_decoder

            ar_decode = ar_decoder(decoder, task, tokenizer, decode_params)
        seqs = ar_decode(model, images, src, mask)
    else:
        logits = model(images, src, mask).float()  # (B, N, V)
        if decoder != "greedy" or task == "grounding":  # beam search and the box fallback need log-probabilities
            slot_lp = F.log_softmax(logits, dim=-1)
        if decoder == "greedy":  # the per-slot argmax of the logits is that of the log-probabilities
            seqs = greedy_decode(logits, tokenizer.blank_id, eos)
        else:
            seqs = [hyps[0][0] for hyps in beam_search(slot_lp, tokenizer.blank_id, decode_params.beam_size)]
    seqs = [s[:s.index(eos)] if eos in s else s for s in (list(map(int, s)) for s in seqs)]
    if task != "grounding":
        return [tokenizer.decode(s) for s in seqs]
    boxes = []
    for i, (seq, meta) in enumerate(zip(seqs, batch["meta"])):
        ids = box_tokens(seq, tokenizer.bin_offset, tokenizer.num_bins,
                         slot_lp[i] if slot_lp is not None else None)
        box = tokenizer.tokens_to_box(ids, max(meta["size"]))  # resized pixels on the canvas
        sx = meta["orig_size"][0] / meta["size"][0]
        sy = meta["orig_size"][1] / meta["size"][1]
        boxes.append([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy])
    return boxes


def record(task: str, meta: dict, pred: Any) -> dict[str, Any]:
    if task == "caption":
        return {"image_id": meta["image_id"], "caption": pred}
    if task == "vqa":
        return {"question_id": meta["question_id"], "answer": pred}
    return {"ref_id": meta["ref_id"], "sent_id": meta["sent_id"], "sample_id": meta["id"], "box": pred}


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from narvl import model as narvl_model
    from narvl.data.loader import eval_loader
    from narvl.data.tokenizer import Tokenizer
    from narvl.decode.constrained import ar_decoder, check_decoder
    from narvl.eval.common import CELL_RE
    from narvl.model.inference import prepare
    from narvl.data.shard_folder import read_sizes
    from narvl.io import check_output, json_bytes, write_bytes, write_json

    decode_params = params_mod.load(args.params, "decode")
    data_params = params_mod.load(args.params.parent / "data.yaml", "data")
    model, meta = narvl_model.load(args.model)
    task = meta["task"]
    tokenizer = Tokenizer.load(args.tokenizer)
    _check_tokenizer(meta, args.tokenizer, args.model, tokenizer.vocab_size, meta["vocab_size"])
    if task not in decode_params.max_len:
        raise NarvlError(f"{args.params}: decode.max_len has no entry for task '{task}'")
    cell = CELL_RE.match(args.out.stem)
    if cell and cell["task"] != task:
        raise NarvlError(f"{args.out}: the file name says task '{cell['task']}', but {args.model} is a {task} model")

    check_decoder(task, meta["kind"], args.decoder)
    read_sizes(args.shards, task)  # a caption model on VQA shards is an error, not 720 caption records
    check_output(args.out, is_dir=False, inputs=[args.model, args.shards, args.tokenizer, args.params])

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prepare(model, decode_params.fold_batchnorm, decode_params.channels_last).to(device)
    ar_decode = ar_decoder(args.decoder, task, tokenizer, decode_params, args.shards) if meta["kind"] == "ar" \
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
        "model": BLIND_MODEL if args.blank_images else cell["model"] if cell else meta["kind"],
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
