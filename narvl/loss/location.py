"""Distance-aware targets for location tokens (<bin_0>..<bin_{K-1}>, ids start..start+K-1).

A box coordinate is a K-way classification with no notion of distance: predicting the bin next to the right one
costs as much as predicting the far corner. For a position whose gold token is bin g (of K), with log-probabilities
log p(v) over the whole vocabulary:

    q_k      = exp(-(k - g)^2 / (2 sigma^2)) / sum_j exp(-(j - g)^2 / (2 sigma^2))     (one-hot at g when sigma = 0)
    soft_nll = -sum_k q_k log p(bin_k)                          replaces -log p(bin_g)
    E[k]     = sum_k k * p(bin_k) / sum_j p(bin_j)              expected bin, over the bins only
    l1       = |E[k] - g| / (K - 1)                              in [0, 1]; added with weight l1_weight

so the term of a location position is soft_nll + l1_weight * l1; other positions keep their cross-entropy. With
sigma = 0 and l1_weight = 0 this is exactly the plain cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LocationTargets:
    start: int  # id of <bin_0>
    count: int  # K location tokens
    sigma: float = 0.0  # Gaussian width in bins (0: one-hot)
    l1_weight: float = 0.0  # weight of the expected-bin L1 term

    def __post_init__(self) -> None:
        if self.count < 2 or self.start < 0 or self.sigma < 0 or self.l1_weight < 0:
            raise ValueError(f"bad location targets {self}: need count >= 2, start >= 0, sigma >= 0, l1_weight >= 0")

    @property
    def active(self) -> bool:
        return self.sigma > 0 or self.l1_weight > 0


def soft_bins(g: Tensor, count: int, sigma: float) -> Tensor:
    """(...,) gold bin indices -> (..., count) target distributions (Gaussian of width sigma, one-hot at 0)."""
    k = torch.arange(count, device=g.device, dtype=torch.float32)
    if sigma <= 0:
        return (k == g[..., None].float()).float()
    return torch.softmax(-((k - g[..., None].float()) ** 2) / (2.0 * sigma * sigma), dim=-1)


def location_terms(logp: Tensor, gold: Tensor, loc: LocationTargets) -> tuple[Tensor, Tensor, Tensor]:
    """logp (..., V) log-probabilities, gold (...) token ids -> (is_bin mask, per-position location term,
    per-position |E[k] - g| in bins). The term is meaningful only where is_bin."""
    is_bin = (gold >= loc.start) & (gold < loc.start + loc.count)
    g = (gold - loc.start).clamp(0, loc.count - 1)
    bins = logp[..., loc.start:loc.start + loc.count]  # (..., K)
    soft_nll = -(soft_bins(g, loc.count, loc.sigma) * bins).sum(-1)
    k = torch.arange(loc.count, device=logp.device, dtype=logp.dtype)
    expected = (torch.softmax(bins, dim=-1) * k).sum(-1)
    err = (expected - g.to(logp.dtype)).abs()
    return is_bin, soft_nll + loc.l1_weight * err / (loc.count - 1), err
