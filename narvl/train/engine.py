"""The DeepSpeed engine and the training objective (one rank's view).

    build_engine   model (narvl.model.build_model) + torch AdamW (decay / no-decay groups) + warm-up/cosine
                   LambdaLR, wrapped by deepspeed.initialize with the config of narvl.train.config
    resume_lr_scheduler   after loading a checkpoint: the LambdaLR rebuilt for the current params' schedule
    forward_loss   one micro-batch: NAR -> Q-CTC on the N query slots, AR -> teacher-forced label-smoothed CE;
                   returns (loss, named stats) in float32 whatever the training precision
    validate       loss and greedy exact match on a validation split (the model is in eval mode meanwhile)

Exact match is computed from one forward pass: NAR collapses the argmax of each slot (greedy CTC decoding); AR
compares the teacher-forced argmax (over the tokens generation may emit) with the target at every position
including EOS, which holds exactly when greedy generation (within its length limit) reproduces the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from narvl.decode.ctc import greedy_decode
from narvl.loss.ar import ar_loss, slot_targets, teacher_forcing
from narvl.loss.location import LocationTargets
from narvl.loss.qctc import qctc_loss
from narvl.params import TrainParams
from narvl.train.config import WarmupCosine, deepspeed_config

# stats that add up over micro-batches and ranks; every other stat is averaged
COUNTS = ("samples", "feasible", "infeasible", "tokens", "weight")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases, norms and other vectors. Names are kept so that
    export can map mixed-precision master weights back to parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append((name, p))
    return [{"params": [p for _, p in g], "names": [n for n, _ in g], "weight_decay": wd}
            for g, wd in ((decay, weight_decay), (no_decay, 0.0))]


def adamw(groups: list[dict[str, Any]], train: TrainParams) -> torch.optim.AdamW:
    """torch's AdamW in its multi-tensor form (`foreach`: one update per group, not a Python loop over the
    parameters, which torch picks on the CPU by itself): the same arithmetic bit for bit (tested), in about a quarter
    less of the optimizer's time (docs/training.md)."""
    return torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.adam_betas), eps=train.adam_eps, foreach=True)


def build_engine(model: nn.Module, train: TrainParams, total_steps: int):
    """-> (engine, optimizer, scheduler, param names per group, ds_config)."""
    import deepspeed

    groups = param_groups(model, train.weight_decay)
    names = [g.pop("names") for g in groups]
    optimizer = adamw(groups, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(train, total_steps))
    config = deepspeed_config(train)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=config)
    return engine, optimizer, scheduler, names, config


def lr_schedule(train: TrainParams, total_steps: int) -> WarmupCosine:
    return WarmupCosine(train.warmup_steps, total_steps, train.min_lr_ratio)


def resume_lr_scheduler(engine, train: TrainParams, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Call right after engine.load_checkpoint. The scheduler DeepSpeed restored carries the schedule saved with the
    checkpoint; it is replaced by a new LambdaLR over the same optimizer with the current params' schedule (e.g. more
    steps), which engine.step() steps from now on. -> the new scheduler.

    The new scheduler takes the restored one's position (last_epoch, base LRs, step count), so the LR after each
    later optimizer step k is base LR x schedule(k). The optimizer keeps the LR restored with it for the one step
    right after the checkpoint (the value the saved run would have used next); with unchanged params all of this is
    exactly what an uninterrupted run does.
    """
    restored = engine.lr_scheduler
    optimizer = restored.optimizer
    next_lrs = [group["lr"] for group in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(train, total_steps))  # sets the groups' LR
    scheduler.load_state_dict(dict(restored.state_dict(), lr_lambdas=[None] * len(restored.lr_lambdas)))
    for group, lr in zip(optimizer.param_groups, next_lrs):
        group["lr"] = lr
    engine.lr_scheduler = scheduler
    return scheduler


@dataclass(frozen=True)
class Objective:
    """What forward_loss needs besides the batch."""

    kind: str  # "nar" | "ar"
    special_ids: dict[str, int]
    label_smoothing: float
    use_weights: bool = False  # VQA soft-score weights
    loc: LocationTargets | None = None  # distance-aware location targets (grounding)
    slot_targets: bool = False  # NAR: one target per slot (identity alignment) instead of Q-CTC


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
            if k == "images":
                v = v.to(dtype)  # the engine holds bf16/fp16 weights in mixed precision
        out[k] = v
    return out


def forward_loss(model: Callable[..., Tensor], batch: dict[str, Any], obj: Objective,
                 with_match: bool = False) -> tuple[Tensor, dict[str, float]]:
    """One micro-batch -> (loss, stats). Losses are computed in float32 from the logits."""
    sp = obj.special_ids
    weights = batch["weights"] if obj.use_weights else None
    tgt, lengths = batch["tgt_tokens"], batch["tgt_lengths"]
    if obj.kind == "nar":
        logits = model(batch["images"], batch["src_tokens"], batch["src_mask"])  # (B, N, V)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if obj.slot_targets:
            n = logits.size(1)
            gold = slot_targets(tgt, lengths, n, eos=sp["eos"], blank=sp["blank"])
            loss, stats = ar_loss(logits, gold, torch.full_like(lengths, n), label_smoothing=obj.label_smoothing,
                                  weights=weights, loc=obj.loc)
        else:
            loss, stats = qctc_loss(log_probs, tgt, lengths, blank=sp["blank"], label_smoothing=obj.label_smoothing,
                                    weights=weights)
        if with_match:
            hyps = greedy_decode(log_probs.detach(), sp["blank"])
            refs = [row[:n].tolist() for row, n in zip(tgt.cpu(), lengths.cpu())]
            stats["exact_match"] = sum(h == r for h, r in zip(hyps, refs)) / max(1, len(refs))
    else:
        prev, gold = teacher_forcing(tgt, lengths, bos=sp["bos"], eos=sp["eos"], pad=sp["pad"])
        logits = model(batch["images"], batch["src_tokens"], batch["src_mask"], prev)  # (B, T+1, V)
        loss, stats = ar_loss(logits, gold, lengths + 1, label_smoothing=obj.label_smoothing, weights=weights,
                              loc=obj.loc)
        if with_match:
            t = gold.size(1)
            inside = torch.arange(t, device=gold.device)[None, :] < (lengths + 1)[:, None]
            scores = logits.detach().float().clone()
            scores[..., [sp["pad"], sp["bos"], sp["blank"]]] = -torch.inf  # tokens generation never emits
            right = (scores.argmax(-1) == gold) | ~inside
            stats["exact_match"] = float(right.all(dim=1).float().mean())
    return loss, stats


class StatWindow:
    """Stats accumulated over micro-batches between two log steps."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, stats: dict[str, float]) -> None:
        self.n += 1
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def reduce(self, dist=None) -> dict[str, float]:
        """Counts summed, other stats averaged per micro-batch, over this window and (with dist) all ranks."""
        keys = sorted(self.sums)
        values = torch.tensor([self.sums[k] for k in keys] + [float(self.n)], dtype=torch.float64)
        if dist is not None and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values)
        n = max(1.0, float(values[-1]))
        out = {k: float(v) if k in COUNTS else float(v) / n for k, v in zip(keys, values[:-1].tolist())}
        self.sums, self.n = {}, 0
        return out


@torch.no_grad()
def validate(engine, batches: Iterable[dict[str, Any]], obj: Objective, max_batches: int, dtype: torch.dtype,
             reduce_over_ranks: bool) -> dict[str, float]:
    """Loss (mean over samples of the batch losses), greedy exact match and infeasible targets over up to
    `max_batches` micro-batches; summed over ranks when each rank validated its own part."""
    import torch.distributed as dist

    engine.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss x samples, samples, matches, infeasible
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        batch = to_device(batch, engine.device, dtype)
        _, stats = forward_loss(engine, batch, obj, with_match=True)
        b = len(batch["meta"])
        totals += torch.tensor([stats["loss"] * b, b, stats["exact_match"] * b, stats.get("infeasible", 0.0)],
                               dtype=torch.float64)
    engine.train()
    if reduce_over_ranks and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    loss_sum, samples, matches, infeasible = totals.tolist()
    if samples == 0:
        return {"loss": math.nan, "exact_match": math.nan, "samples": 0, "infeasible": 0}
    return {"loss": loss_sum / samples, "exact_match": matches / samples, "samples": int(samples),
            "infeasible": int(infeasible)}
