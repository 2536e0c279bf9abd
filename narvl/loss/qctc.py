"""Q-CTC: CTC whose time axis is the N query slots of the NAR decoder (NARVL).

For sample i with target y (length L_i, no bos/eos), slot log-probabilities log p_t(v) (t < N, float32) and
per-sample weight w_i:

    ctc_i    = -log sum over alignments a (length N) that collapse to y of prod_t p_t(a_t)   (torch F.ctc_loss)
    smooth_i = 1/N sum_t 1/V sum_v -log p_t(v)          uniform label smoothing, per slot
    l_i      = (1 - eps) * ctc_i / max(L_i, 1) + eps * smooth_i
    loss     = sum over feasible i of w_i * l_i / (number of feasible samples)

- ctc_i / max(L_i, 1) and the batch mean are torch's reduction='mean' (with eps = 0 and unit weights the loss
  equals F.ctc_loss(..., reduction='mean') over the feasible samples).
- Weights multiply the whole per-sample loss, i.e. the target's log-likelihood (the paper weights VQA answers'
  log-probabilities by their soft score); the normaliser is the sample count, not the weight sum, so a 0.3-score
  answer contributes 0.3 of a 1.0-score one.
- A target is infeasible when L_i + (number of adjacent equal tokens) > N: no alignment of N slots collapses to it
  (repeats need a blank between them). Infeasible samples contribute nothing (loss and gradient; F.ctc_loss runs
  with zero_infinity=True as a guard) and are counted in stats["infeasible"], never silently dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def required_slots(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Fewest CTC frames that can emit each target: length + adjacent repeats. targets (B, T) -> (B,)."""
    t = targets.size(1)
    if t < 2:
        return target_lengths.clone()
    pos = torch.arange(1, t, device=targets.device)  # (T-1,)
    valid = pos[None, :] < target_lengths[:, None]  # pair (j-1, j) lies inside the target
    repeats = ((targets[:, 1:] == targets[:, :-1]) & valid).sum(1)
    return target_lengths + repeats


def qctc_loss(log_probs: Tensor, targets: Tensor, target_lengths: Tensor, blank: int, label_smoothing: float = 0.0,
              weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """log_probs (B, N, V) log-softmax outputs (cast to float32 here); targets (B, T) padded (any pad value),
    target_lengths (B,); weights (B,) or None.

    Returns (loss scalar, stats) with stats: loss, ctc (mean per-token CTC NLL over feasible samples, unweighted),
    smooth (mean smoothing term), samples, feasible, infeasible, weight (sum of weights of feasible samples).
    """
    log_probs = log_probs.float()
    b, n, v = log_probs.shape
    targets = targets.long()
    target_lengths = target_lengths.long().to(log_probs.device)
    if targets.dim() != 2 or targets.size(0) != b:
        raise ValueError(f"targets must be (B={b}, T), got {tuple(targets.shape)}")
    inside = torch.arange(targets.size(1), device=targets.device)[None, :] < target_lengths[:, None]
    if bool((targets[inside] == blank).any()):
        raise ValueError(f"a target contains the blank id {blank}")
    feasible = required_slots(targets, target_lengths) <= n  # (B,)
    input_lengths = torch.full((b,), n, dtype=torch.long, device=log_probs.device)
    ctc = F.ctc_loss(log_probs.transpose(0, 1), targets, input_lengths, target_lengths, blank=blank,
                     reduction="none", zero_infinity=True)  # (B,), sum over the target's tokens
    ctc = ctc / target_lengths.clamp_min(1).to(ctc.dtype)
    smooth = -log_probs.mean(dim=(1, 2))  # (B,)
    per_sample = (1.0 - label_smoothing) * ctc + label_smoothing * smooth
    w = torch.ones(b, device=log_probs.device) if weights is None else weights.float().to(log_probs.device)
    keep = feasible.to(per_sample.dtype)
    count = int(feasible.sum())
    # masked with multiplication, not indexing, so an all-infeasible batch still gives a (zero) graph
    loss = (per_sample * w * keep).sum() / max(count, 1)
    with torch.no_grad():
        denom = max(count, 1)
        stats = {
            "loss": float(loss.detach()),
            "ctc": float((ctc * keep).sum() / denom),
            "smooth": float((smooth * keep).sum() / denom),
            "samples": b,
            "feasible": count,
            "infeasible": b - count,
            "weight": float((w * keep).sum()),
        }
    return loss, stats
