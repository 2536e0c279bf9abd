"""narvl models: the NAR model (N queries + Q-CTC) and the AR baseline over OFA's encoder (OFA's exact architecture).

    ModelIdentity(kind, task, arch, vocab_size, num_queries, special_ids)   what a model is, built in one place:
                              `.build()` makes the model; run.json and the model file store `.to_dict()`
    build_model(kind, arch, vocab_size, num_queries, special_ids) -> NARModel | ARModel
    save(path, model, meta)   the self-describing fp32 file (`narvl-model-v1`, docs/design.md)
    load(path) -> (model, meta)

This package never imports narvl.train, narvl.data or narvl.eval: inference needs only the model file, the
tokenizer and narvl.decode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from narvl.errors import NarvlError
from narvl.io import atomic_path, load_torch_file
from narvl.model.ar import ARModel
from narvl.model.nar import NARModel
from narvl.params import ArchParams

FORMAT = "narvl-model-v1"
KINDS = {"nar": NARModel, "ar": ARModel}
SPECIAL = ("pad", "bos", "eos", "unk", "blank")
META_KEYS = ("task", "tokenizer", "step")  # what the caller of save() supplies


@dataclass(frozen=True)
class ModelIdentity:
    """What makes a model: its kind, task, architecture, vocabulary size, NAR query slots and special token ids.
    `narvl train` makes it (run.json), `narvl export` and `narvl.model.load` rebuild the model from it."""

    kind: str
    task: str
    arch: ArchParams
    vocab_size: int
    num_queries: int
    special_ids: dict[str, int]

    def build(self) -> NARModel | ARModel:
        return build_model(self.kind, self.arch, self.vocab_size, self.num_queries, self.special_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "task": self.task, "arch": dataclasses.asdict(self.arch),
                "vocab_size": self.vocab_size, "num_queries": self.num_queries, "special_ids": dict(self.special_ids)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "ModelIdentity":
        """The identity stored by `to_dict` (a model file, run.json); `where` names the file in errors."""
        try:
            return cls(kind=data["kind"], task=data["task"], arch=ArchParams(**data["arch"]),
                       vocab_size=int(data["vocab_size"]), num_queries=int(data["num_queries"]),
                       special_ids=dict(data["special_ids"]))
        except (KeyError, TypeError, ValueError) as e:
            raise NarvlError(f"{where}: incomplete model identity ({type(e).__name__}: {e})") from e


def build_model(kind: str, arch: ArchParams, vocab_size: int, num_queries: int,
                special_ids: dict[str, int]) -> NARModel | ARModel:
    """kind 'nar' or 'ar'; special_ids maps pad, bos, eos, unk, blank to ids (from the tokenizer)."""
    if kind not in KINDS:
        raise NarvlError(f"model kind '{kind}' is not one of {', '.join(KINDS)}")
    missing = [k for k in SPECIAL if k not in special_ids]
    if missing:
        raise NarvlError(f"special_ids lacks {', '.join(missing)}")
    bad = {k: v for k, v in special_ids.items() if not 0 <= v < vocab_size}
    if bad:
        raise NarvlError(f"special ids {bad} are outside the vocabulary of {vocab_size}")
    return KINDS[kind](arch, vocab_size, num_queries, special_ids)


def save(path: str | Path, model: NARModel | ARModel, meta: dict[str, Any]) -> None:
    """Write `{"format", "kind", "task", "arch", "vocab_size", "num_queries", "special_ids", "tokenizer", "step",
    "state_dict"}` atomically, parameters as fp32 CPU tensors.

    meta supplies task (str), tokenizer (a JSON-like reference, e.g. {"path": ..., "sha256": ...}) and step (int).
    """
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise NarvlError(f"{path}: model metadata lacks {', '.join(missing)}")
    model = getattr(model, "module", model)  # unwrap DDP / DeepSpeed engines
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.state_dict().items()}
    identity = ModelIdentity(model.kind, meta["task"], model.arch, model.vocab_size, model.num_queries,
                             dict(model.special_ids))
    blob = {"format": FORMAT, **identity.to_dict(), "tokenizer": meta["tokenizer"], "step": int(meta["step"]),
            "state_dict": state}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[NARModel | ARModel, dict[str, Any]]:
    """Rebuild the model from the file alone; returns (model in eval mode, meta without state_dict)."""
    path = Path(path)
    if not path.exists():
        raise NarvlError(f"{path}: no such model file")
    blob = load_torch_file(path, map_location=map_location)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise NarvlError(f"{path}: format is {found!r}, expected '{FORMAT}'")
    try:
        model = ModelIdentity.from_dict(blob, str(path)).build()
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise NarvlError(f"{path}: inconsistent model file: {e}") from e
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model.eval(), meta


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARModel", "NARModel", "ModelIdentity", "build_model", "save", "load", "count_parameters", "FORMAT"]
