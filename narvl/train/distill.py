"""Sequence-level knowledge distillation: rewrite the training targets with an AR teacher's beam-search outputs.

Reads   --params DIR      decode.yaml (beam_size, length_penalty, batch_size), data.yaml (loader; AR length
                          budget max_target_len + 1)
        --model FILE      the exported AR teacher (runs/TASK-ar/model.pt)
        --shards DIR      the task's shards (sizes.json + <task>-<split>-NNNNNN.tar)
        --tokenizer FILE  tokenizer.json (must be the one the teacher was trained with)
Writes  --out DIR         the same shard layout and sizes.json: the train split rewritten, every other split
                          copied unchanged (students are evaluated on the original data); distill.json records the
                          teacher, the decoding settings and counts. The folder appears only when complete; it
                          may replace only an earlier output of narvl and must not hold any input.

In each training sample's json, `target` becomes the teacher's output for that sample's image and prompt, and the
original is kept as `original_target`; every other member and field is unchanged. For VQA the teacher's answer
carries weight 1: `scores` becomes {teacher answer: 1.0} (the annotators' scores move to `original_scores`),
because the loader weights each target by its soft score and a teacher answer outside the annotators' answers
would otherwise get weight 0. Identical (image, prompt) inputs (a caption image's several captions) are decoded
once. Train a NAR student on the result with `narvl train --shards DIR`.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from narvl import params as P, tasks
from narvl.errors import NarvlError
from narvl.io import atomic_path, check_output, file_sha256, write_json
from narvl.train.main import check_shards

log = logging.getLogger("narvl.distill")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help="parameter folder (decode.yaml, data.yaml)")
    parser.add_argument("--model", required=True, help="exported AR teacher (runs/TASK-ar/model.pt)")
    parser.add_argument("--shards", required=True, help="shard folder of the task (data/shards/TASK)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json")
    parser.add_argument("--out", required=True, help="output shard folder (data/shards-kd/TASK)")


def input_key(meta: dict[str, Any]) -> tuple[int, str]:
    """Samples with the same image and prompt get the same teacher output."""
    return int(meta["image_id"]), str(meta["prompt"])


def teacher_targets(model, tokenizer, shards: Path, data: P.DataParams, decode: P.DecodeParams, task: str,
                    device) -> tuple[dict[str, str], int]:
    """sample id -> teacher text for the train split, and the number of distinct inputs decoded."""
    import torch
    from tqdm import tqdm

    from narvl.data.loader import eval_loader

    loader = eval_loader(shards, "train", tokenizer, data, task, decode.batch_size, 0, 1)
    cache: dict[tuple[int, str], str] = {}
    out: dict[str, str] = {}
    bar = tqdm(total=loader.samples, desc=f"distill {task}", unit="sample", mininterval=1.0)
    for batch in loader:
        metas = batch["meta"]
        todo: dict[tuple[int, str], int] = {}
        for i, meta in enumerate(metas):
            k = input_key(meta)
            if k not in cache and k not in todo:
                todo[k] = i
        if todo:
            idx = torch.tensor(list(todo.values()))
            with torch.no_grad():
                hyps = model.generate(batch["images"][idx].to(device), batch["src_tokens"][idx].to(device),
                                      batch["src_mask"][idx].to(device), max_len=P.ar_max_len(data, task),
                                      beam_size=decode.beam_size, length_penalty=decode.length_penalty)
            for k, ids in zip(todo, hyps):
                cache[k] = tokenizer.decode(ids)
        for meta in metas:
            out[meta["id"]] = cache[input_key(meta)]
        bar.update(len(metas))
    bar.close()
    return out, len(cache)


def rewrite_meta(meta: dict[str, Any], teacher: str, task: str) -> dict[str, Any]:
    """The sample with the teacher's target (`Task.distilled_meta`; VQA also replaces its soft scores)."""
    return tasks.get(task).distilled_meta(meta, teacher)


def rewrite_shard(src: Path, dst: Path, targets: dict[str, str], task: str) -> tuple[int, int]:
    """Copy a tar shard member by member, replacing the json targets. -> (samples, targets changed)."""
    samples = changed = 0
    with tarfile.open(src, "r") as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for member in tin:
            data = tin.extractfile(member).read() if member.isfile() else None
            if member.isfile() and member.name.endswith(".json"):
                meta = json.loads(data)
                key = member.name[: -len(".json")]
                if meta.get("id") != key:
                    raise NarvlError(f"{src}: member {member.name}: json id {meta.get('id')!r} is not its key")
                if key not in targets:
                    raise NarvlError(f"{src}: sample {key} was not decoded (shards changed while distilling?)")
                new = rewrite_meta(meta, targets[key], task)
                samples += 1
                changed += new["target"] != meta["target"]
                data = json.dumps(new, sort_keys=True, ensure_ascii=False).encode("utf-8")
                member = copy.copy(member)
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    return samples, changed


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    params_dir = Path(args.params)
    decode = P.load_stage(params_dir, "decode")
    data = P.load_stage(params_dir, "data")
    shards, out, tok_path = Path(args.shards), Path(args.out), Path(args.tokenizer)
    inputs = [params_dir, args.model, shards, tok_path]
    check_output(out, is_dir=True, inputs=inputs)  # before the teacher decodes: a refused --out costs nothing

    from narvl.data.tokenizer import Tokenizer
    from narvl.model import load

    model, meta = load(args.model)
    task = meta["task"]
    if meta["kind"] != "ar":
        raise NarvlError(f"{args.model}: the teacher must be an AR model, this one is '{meta['kind']}'")
    if not tasks.get(task).text_targets:
        text = [t.name for t in tasks.all_tasks() if t.text_targets]
        raise NarvlError(f"{args.model}: distillation rewrites text targets ({', '.join(text)}); "
                         f"'{task}' targets are not text")
    if task not in data.loader.max_target_len:
        raise NarvlError(f"{params_dir / 'data.yaml'}: data.loader.max_target_len has no entry for '{task}'")
    if P.ar_max_len(data, task) > model.arch.max_target_len:
        raise NarvlError(f"{params_dir / 'data.yaml'}: data.loader.max_target_len.{task} = "
                         f"{data.loader.max_target_len[task]} (+1 for EOS) exceeds the teacher's max_target_len "
                         f"{model.arch.max_target_len}")
    sizes = check_shards(shards, task, ["train"])
    tokenizer = Tokenizer.load(tok_path)
    expected = (meta.get("tokenizer") or {}).get("sha256")
    if expected and expected != file_sha256(tok_path):
        raise NarvlError(f"{tok_path}: not the tokenizer the teacher {args.model} was trained with "
                         f"(sha256 {expected[:12]}...)")
    for split, entry in sizes.items():  # every split is copied: all must be there
        for name in entry["shards"]:
            if not (shards / name).is_file():
                raise NarvlError(f"{shards / 'sizes.json'}: split '{split}': shard {shards / name} is missing")

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    targets, distinct = teacher_targets(model, tokenizer, shards, data, decode, task, device)
    if len(targets) != int(sizes["train"]["samples"]):
        raise NarvlError(f"{shards / 'sizes.json'}: train lists {sizes['train']['samples']} samples, the shards "
                         f"hold {len(targets)}")
    samples = changed = 0
    with atomic_path(out, is_dir=True, inputs=inputs) as tmp:
        for split, entry in sizes.items():
            for name in entry["shards"]:
                if split == "train":
                    n, c = rewrite_shard(shards / name, tmp / name, targets, task)
                    samples, changed = samples + n, changed + c
                else:
                    link_or_copy(shards / name, tmp / name)
        write_json(tmp / "sizes.json", sizes)
        write_json(tmp / "distill.json", {
            "teacher": {"path": str(args.model), "sha256": file_sha256(args.model), "step": meta["step"],
                        "task": task},
            "source_shards": str(shards), "beam_size": decode.beam_size, "length_penalty": decode.length_penalty,
            "max_len": P.ar_max_len(data, task), "train_samples": samples, "distinct_inputs": distinct,
            "targets_changed": changed, "empty_targets": sum(not t.strip() for t in targets.values()),
            "wall_s": round(time.perf_counter() - t0, 3),
        })
    log.info("distilled %d %s training samples (%d distinct inputs, %d targets changed) into %s in %.1f s",
             samples, task, distinct, changed, out, time.perf_counter() - t0)
    return 0


__all__ = ["main", "teacher_targets", "rewrite_meta", "rewrite_shard"]
