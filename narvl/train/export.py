"""Export the newest complete checkpoint of a training run as the self-describing fp32 model file.

Reads   --run DIR    DIR/checkpoints (run.json and the newest step_* folder with COMPLETE.json whose files all
                     load: a truncated one is named and skipped; every file is loaded with weights_only=True and
                     only the classes of checkpoint.deepspeed_allow)
        --tokenizer  the tokenizer to embed (default: the path run.json records); it must be the file the run
                     trained with (run.json's sha256)
Writes  --out FILE   the `narvl-model-v1` file of narvl.model.save (kind, task, architecture, vocabulary size,
                     queries, special ids, tokenizer, step, fp32 state_dict); `narvl decode` and `narvl distill`
                     load it with narvl.model.load, without DeepSpeed. "tokenizer" is run.json's reference
                     {"path", "sha256"} plus "json", the tokenizer file's text (`Tokenizer.embed`), so that
                     `narvl predict` needs the model file alone. When the recorded file is missing or changed
                     (and no --tokenizer is given) the model is exported without it, with a warning.

ZeRO checkpoints (stages 1-3) keep fp32 master weights partitioned over the ranks' optimizer files: they are
gathered with DeepSpeed's zero_to_fp32. Stage 0 with bf16/fp16 keeps fp32 masters in the optimizer state: they
replace the half-precision module weights. Stage 0 fp32 saves the weights themselves.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from narvl.errors import NarvlError
from narvl.io import load_torch_file, restricted_torch_loads
from narvl.train import checkpoint as ck

log = logging.getLogger("narvl.export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="training run folder (runs/TASK-KIND)")
    parser.add_argument("--out", required=True, help="model file to write (runs/TASK-KIND/model.pt)")
    parser.add_argument("--tokenizer", help="tokenizer file to embed (default: the one run.json records)")


def fp32_state_dict(tag_dir: Path, run_info: dict[str, Any]) -> dict[str, Any]:
    """The consolidated fp32 state_dict of one DeepSpeed checkpoint folder (no process group needed)."""
    import torch

    if list(tag_dir.glob("*_optim_states.pt")):  # ZeRO 1-3: partitioned fp32 masters
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with restricted_torch_loads(ck.deepspeed_allow()):  # zero_to_fp32 passes weights_only=False itself
            state = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    path = tag_dir / "mp_rank_00_model_states.pt"
    if not path.is_file():
        raise NarvlError(f"{tag_dir}: neither ZeRO optimizer files nor {path.name}: not a DeepSpeed checkpoint")
    blob = load_torch_file(path, allow=ck.deepspeed_allow())
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["module"].items()}
    optimizer = blob.get("optimizer") or {}
    masters = optimizer.get("fp32_groups") if isinstance(optimizer, dict) else None
    if masters is not None:  # mixed precision without ZeRO: the fp32 copies live in the optimizer
        names = run_info.get("param_groups")
        if not names or [len(g) for g in names] != [len(g) for g in masters]:
            raise NarvlError(f"{tag_dir}: cannot map the fp32 master weights to parameter names "
                             f"(run.json param_groups does not match the optimizer groups)")
        for group_names, group in zip(names, masters):
            for name, tensor in zip(group_names, group):
                if state[name].shape != tensor.shape:
                    raise NarvlError(f"{tag_dir}: master weight of {name} has shape {tuple(tensor.shape)}, "
                                     f"the module {tuple(state[name].shape)}")
                state[name] = tensor.float().clone()
    return state


def tokenizer_reference(ref: dict[str, Any], tokenizer: Path | None, run: Path) -> dict[str, Any]:
    """run.json's tokenizer reference with the tokenizer's text embedded (`Tokenizer.embed`). The file is
    `tokenizer` or the recorded path; it must have the recorded sha256. Without `tokenizer`, a recorded file that
    is gone or changed leaves the reference as it is (warning); with it, either is an error."""
    from narvl.data.tokenizer import Tokenizer

    path = Path(tokenizer if tokenizer is not None else ref.get("path", ""))
    if tokenizer is None and not path.is_file():
        log.warning("%s: the tokenizer the run trained with (%s) is not there: exporting without embedding it "
                    "(`narvl predict` will need --tokenizer; or export again with --tokenizer)", run, path)
        return ref
    embedded = Tokenizer.embed(path)
    if embedded["sha256"] != ref.get("sha256"):
        why = (f"{path}: sha256 {embedded['sha256'][:12]} is not that of the tokenizer the run {run} trained with "
               f"({ref.get('path', '?')}, {str(ref.get('sha256'))[:12]})")
        if tokenizer is not None:
            raise NarvlError(why)
        log.warning("%s: exporting without embedding it (`narvl predict` will need --tokenizer)", why)
        return ref
    return {**ref, "json": embedded["json"]}


def export(run: Path, out: Path, tokenizer: Path | None = None) -> dict[str, Any]:
    from narvl.model import ModelIdentity, save

    ckpt_dir = run / "checkpoints"
    info = ck.read_run_info(ckpt_dir)
    latest, broken = ck.latest_readable(ckpt_dir, ck.deepspeed_allow(), ranks=False)  # before DeepSpeed reads
    for tag_dir, why in broken:
        log.warning("skipping checkpoint %s: %s; exporting the previous complete checkpoint", tag_dir, why)
    if info is None or latest is None:
        raise NarvlError(f"{ckpt_dir}: no complete checkpoint to export (train first: `narvl train ... --out {run}`)"
                         + "".join(f"; {why}" for _, why in broken))
    step, tag_dir = latest
    ident = ModelIdentity.from_dict(info["identity"], str(ckpt_dir / ck.RUN_INFO))
    model = ident.build()
    state = fp32_state_dict(tag_dir, info)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise NarvlError(f"{tag_dir}: checkpoint does not match the model of run.json: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    meta = {"task": ident.task, "step": step, "tokenizer": tokenizer_reference(info["tokenizer"], tokenizer, run)}
    save(out, model, meta)
    log.info("exported %s (step %d, %s) to %s", tag_dir, step, ident.kind, out)
    return meta


def main(args: argparse.Namespace) -> int:
    export(Path(args.run), Path(args.out), Path(args.tokenizer) if args.tokenizer else None)
    return 0
