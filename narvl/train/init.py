"""`train.init`: the weights a training run starts from, a narvl model file or an OFA fairseq checkpoint; and
`train.init_resnet`: the weights its ResNet starts from (OFA's resnet_model_path), loaded first.

    narvl model file (`narvl-model-v1`: `narvl import-ofa`, `narvl export`): its architecture (dropout aside),
        vocabulary and special ids must equal the run's; a file of the other kind transfers everything but the NAR
        query vectors (an AR file starts a NAR run with new queries, and the CTC blank's embedding row taken from
        <eos>'s; a NAR file starts an AR run without them).
    OFA checkpoint (`{"model", "args"/"cfg"}`): mapped as `narvl import-ofa` does (narvl/ofa_import.py), the
        architecture read from its cfg must equal the run's (dropout aside), and the embedding rows are reordered
        into the run's tokenizer through train.init_bpe_dir (OFA's encoder.json and dict.txt).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from narvl.errors import NarvlError
from narvl.ofa_import import (NEW_KEYS, arch_from_checkpoint, map_state, read_checkpoint, safe_load,
                              vocabulary_rows)


def _check_arch(found, want, path: Path) -> None:
    a, b = dataclasses.asdict(found), dataclasses.asdict(want)
    diff = [f"{k}: {a[k]} (file) vs {b[k]} (params)" for k in a if k != "dropout" and a[k] != b[k]]
    if diff:
        raise NarvlError(f"{path}: train.init's architecture differs from model params: {'; '.join(diff)}")


def blank_from_eos(state: dict, special_ids: dict[str, int]) -> dict:
    """An AR model's state with the CTC blank's embedding row (also its output row: the projection is tied) set to
    <eos>'s, for a NAR run that starts from it.

    An AR model never predicts the blank, so its training pushes that row away from every decoder output; a NAR run
    started from it then cannot put blanks in its spare slots, and Q-CTC stalls (VQA loss about 6 instead of 1 after
    600 steps, docs/tuning.md part six). <eos> is the AR model's "nothing more here", the blank's role."""
    key = "encoder.embed_tokens.weight"
    table = state[key].clone()
    table[special_ids["blank"]] = table[special_ids["eos"]]
    return {**state, key: table}


def load_init(path: str | Path, model: nn.Module, tokenizer, bpe_dir: str | Path | None) -> str:
    """Copy the init weights into `model` (built from the run's params); returns a one-line description."""
    from narvl import model as narvl_model

    path = Path(path)
    blob = safe_load(path)
    if isinstance(blob, dict) and blob.get("format") == narvl_model.FORMAT:
        source, meta = narvl_model.load(path)
        _check_arch(source.arch, model.arch, path)
        for key in ("vocab_size", "special_ids"):
            if meta[key] != getattr(model, key):
                raise NarvlError(f"{path}: train.init has {key} {meta[key]}, the run's tokenizer gives "
                                 f"{getattr(model, key)}")
        state = {k: v for k, v in source.state_dict().items() if k not in NEW_KEYS or source.kind == model.kind}
        what = f"narvl {meta['kind']} model file (task {meta['task']}, step {meta['step']})"
        if source.kind == "ar" and model.kind == "nar":
            state = blank_from_eos(state, model.special_ids)
            what += "; the CTC blank's embedding row from <eos>'s"
    else:
        state_ofa, cfg = read_checkpoint(path, blob)
        arch, ofa_vocab = arch_from_checkpoint(state_ofa, cfg, path)
        _check_arch(arch, model.arch, path)
        if bpe_dir is None:
            raise NarvlError(f"{path}: an OFA checkpoint as train.init needs train.init_bpe_dir (OFA's utils/BPE) "
                             f"to line its vocabulary up with the tokenizer")
        num_bins = int(cfg.get("_task", {}).get("num_bins", 1000))
        rows = vocabulary_rows(tokenizer, Path(bpe_dir), ofa_vocab, num_bins)
        target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        state, ignored = map_state(state_ofa, target, path, rows)
        what = f"OFA checkpoint ({len(state)} tensors used, {len(ignored)} ignored)"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise NarvlError(f"{path}: train.init does not fit the model: {e}") from e
    if unexpected or set(missing) - set(NEW_KEYS):
        raise NarvlError(f"{path}: train.init does not fit the model: missing {missing}, unexpected {unexpected}")
    return f"{path}: {what}" + (f"; new: {', '.join(missing)}" if missing else "")


# ------------------------------------------------------------------------------------------- train.init_resnet
RESNET_FORMAT = "narvl-resnet-v1"  # `narvl pretrain-resnet`'s file: {"format", "state_dict", "resnet_layers", ...}
RESNET_IGNORED = ("layer4.", "fc.")  # an ImageNet classifier's last stage and head: OFA cuts the ResNet after layer3


def resnet_state(path: str | Path) -> dict:
    """The ResNet state dict of a train.init_resnet file: `narvl pretrain-resnet`'s file, or a plain state dict in
    torchvision's names (an ImageNet ResNet's .pth; OFA's resnet_model_path), without layer4 and fc. Read with
    weights_only: the file holds tensors and plain data only."""
    from narvl.io import load_torch_file

    path = Path(path)
    blob = load_torch_file(path)
    if isinstance(blob, dict) and blob.get("format") == RESNET_FORMAT:
        blob = blob.get("state_dict")
    import torch

    if not isinstance(blob, dict) or not blob or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                         for k, v in blob.items()):
        raise NarvlError(f"{path}: train.init_resnet: expected a ResNet state dict (parameter name -> tensor) or a "
                         f"`narvl pretrain-resnet` file")
    return {k: v for k, v in blob.items() if not k.startswith(RESNET_IGNORED)}


def load_resnet(path: str | Path, resnet: nn.Module) -> str:
    """Copy a train.init_resnet file into the encoder's ResNet (every parameter and BatchNorm statistic: missing,
    unexpected or differently shaped entries are refused by name); returns a one-line description."""
    path = Path(path)
    state = resnet_state(path)
    own = resnet.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} (file) vs {tuple(own[k].shape)} (model)" for k in sorted(set(own) & set(state))
             if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}" if missing else "",
                 f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}" if unexpected else "",
                 f"shapes differ: {'; '.join(wrong[:3])}" if wrong else ""]
        raise NarvlError(f"{path}: train.init_resnet does not fit the model's ResNet (model.preset / resnet_layers / "
                         f"resnet_width): {'; '.join(p for p in parts if p)}")
    resnet.load_state_dict(state)
    return f"{path}: ResNet ({len(state)} tensors)"
