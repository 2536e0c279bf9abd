"""Teacher-forced cross-entropy with uniform label smoothing for the AR baseline.

For sample i with target y_1..y_L followed by EOS (L+1 predicted positions), logits (B, T, V) where T >= L+1:

    nll_it    = -log p_t(y_t)                 smooth_it = 1/V sum_v -log p_t(v)
    l_i       = sum_t [(1 - eps) nll_it + eps smooth_it] over the L+1 positions
    loss      = sum_i w_i l_i / sum_i (L_i + 1)        (mean per predicted token, weights multiply log-likelihoods)

With `loc` (narvl.loss.location.LocationTargets), positions whose gold token is a location bin use the
distance-aware term of narvl.loss.location instead of nll_it. The same function scores the NAR model's slots when
each slot has its own target (`slot_targets`: the identity alignment, no CTC).

Use `teacher_forcing(tgt_tokens, tgt_lengths, bos, eos, pad)` to build prev_tokens and the shifted targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from narvl.loss.location import LocationTargets, location_terms


def teacher_forcing(tgt_tokens: Tensor, tgt_lengths: Tensor, bos: int, eos: int, pad: int) -> tuple[Tensor, Tensor]:
    """tgt_tokens (B, T) without bos/eos -> prev_tokens (B, T+1) = [bos, y..., pad] and gold (B, T+1) = [y..., eos,
    pad]; positions past each target are pad in both."""
    b, t = tgt_tokens.shape
    pos = torch.arange(t + 1, device=tgt_tokens.device)[None, :]  # (1, T+1)
    lengths = tgt_lengths.to(tgt_tokens.device)[:, None]
    body = torch.cat([tgt_tokens, tgt_tokens.new_full((b, 1), pad)], dim=1)  # (B, T+1)
    gold = torch.where(pos < lengths, body, torch.where(pos == lengths, eos, pad))
    shifted = torch.cat([tgt_tokens.new_full((b, 1), bos), tgt_tokens], dim=1)  # (B, T+1)
    prev = torch.where(pos <= lengths, shifted, pad)
    return prev, gold


def slot_targets(tgt_tokens: Tensor, tgt_lengths: Tensor, num_slots: int, eos: int, blank: int) -> Tensor:
    """Per-slot targets of the identity alignment: (B, T) targets -> (B, N) = [y..., eos, blank...]. Needs
    L_i + 1 <= N for every sample (upstream NARVL: 4 box tokens + EOS on 5 grounding slots)."""
    b, t = tgt_tokens.shape
    if int(tgt_lengths.max()) + 1 > num_slots:
        raise ValueError(f"per-slot targets need target length + 1 <= {num_slots} slots, got a target of "
                         f"{int(tgt_lengths.max())} tokens")
    pos = torch.arange(num_slots, device=tgt_tokens.device)[None, :]
    lengths = tgt_lengths.to(tgt_tokens.device)[:, None]
    body = torch.cat([tgt_tokens, tgt_tokens.new_full((b, max(0, num_slots - t)), blank)], dim=1)[:, :num_slots]
    return torch.where(pos < lengths, body, torch.where(pos == lengths, eos, blank))


def ar_loss(logits: Tensor, gold: Tensor, gold_lengths: Tensor, label_smoothing: float = 0.0,
            weights: Tensor | None = None, loc: LocationTargets | None = None) -> tuple[Tensor, dict[str, float]]:
    """logits (B, T, V); gold (B, T) next tokens (EOS included); gold_lengths (B,) predicted positions per sample
    (target length + 1). Returns (loss, stats: loss, nll per token, smooth per token, tokens, samples, weight; with
    `loc` also loc_err, the mean |expected bin - gold bin| over location positions)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    b, t, v = logp.shape
    mask = (torch.arange(t, device=logp.device)[None, :] < gold_lengths.to(logp.device)[:, None]).float()
    nll = -logp.gather(-1, gold.clamp(0, v - 1).unsqueeze(-1)).squeeze(-1)  # (B, T)
    smooth = -logp.mean(-1)  # (B, T)
    data_term, loc_err = nll, None
    if loc is not None and loc.active:
        is_bin, term, err = location_terms(logp, gold, loc)
        data_term = torch.where(is_bin, term, nll)
        bin_mask = is_bin.float() * mask
        loc_err = float((err.detach() * bin_mask).sum() / bin_mask.sum().clamp_min(1.0))
    per_token = (1.0 - label_smoothing) * data_term + label_smoothing * smooth
    w = torch.ones(b, device=logp.device) if weights is None else weights.float().to(logp.device)
    tokens = mask.sum().clamp_min(1.0)
    loss = (per_token * mask * w[:, None]).sum() / tokens
    with torch.no_grad():
        stats = {"loss": float(loss.detach()), "nll": float((nll * mask).sum() / tokens),
                 "smooth": float((smooth * mask).sum() / tokens), "tokens": int(mask.sum()), "samples": b,
                 "weight": float(w.sum())}
        if loc_err is not None:
            stats["loc_err"] = loc_err
    return loss, stats
