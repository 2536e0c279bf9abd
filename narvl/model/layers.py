"""Pre-LN transformer layers shared by the encoder and both decoders, with an optional key/value cache.

Shapes: B batch, L query length, S key length, d model width, h heads, d_h = d / h.
Padding masks are bool with True at padding (the batch dict's convention); attention masks given to
`scaled_dot_product_attention` are bool with True where attention is allowed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention. Self-attention when `memory` is None, else cross-attention to `memory`."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model {d} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.dropout = dropout

    def split(self, x: Tensor) -> Tensor:  # (B, L, d) -> (B, h, L, d_h)
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, S, d) -> 2 x (B, h, S, d_h)
        return self.split(self.k(x)), self.split(self.v(x))

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], allowed: Tensor | None) -> Tensor:
        # x (B, L, d); kv: keys and values (B, h, S, d_h); allowed (B, 1, L|1, S) bool or None
        q = self.split(self.q(x))  # (B, h, L, d_h)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, h, n, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * dh))  # (B, L, d)


class FeedForward(nn.Sequential):
    def __init__(self, d: int, ffn: int, dropout: float):
        super().__init__(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))


class EncoderLayer(nn.Module):
    """x + SelfAttn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor | None) -> Tensor:
        # x (B, S, d); allowed (B, 1, 1, S)
        h = self.ln_attn(x)
        x = x + self.drop(self.attn(h, self.attn.project_kv(h), allowed))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class DecoderLayer(nn.Module):
    """x + SelfAttn(LN(x)), x + CrossAttn(LN(x), memory), x + FFN(LN(x)).

    Self-attention is full (NAR queries) or causal (AR); the caller builds the mask. With a `cache` dict the
    layer appends this step's self-attention keys/values to it and reuses the cross-attention keys/values.
    """

    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.ln_self = nn.LayerNorm(d)
        self.self_attn = Attention(d, heads, dropout)
        self.ln_cross = nn.LayerNorm(d)
        self.cross_attn = Attention(d, heads, dropout)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_allowed: Tensor | None, self_allowed: Tensor | None,
                cache: dict[str, Tensor] | None = None) -> Tensor:
        # x (B, L, d); memory (B, S, d); memory_allowed (B, 1, 1, S); self_allowed (B|1, 1, L, L_total) or None
        h = self.ln_self(x)
        k, v = self.self_attn.project_kv(h)  # (B, h, L, d_h)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)  # (B, h, L_past + L, d_h)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            if "mk" not in cache:
                cache["mk"], cache["mv"] = self.cross_attn.project_kv(memory)
            mkv = (cache["mk"], cache["mv"])
        else:
            mkv = self.cross_attn.project_kv(memory)
        x = x + self.drop(self.self_attn(h, (k, v), self_allowed))
        x = x + self.drop(self.cross_attn(self.ln_cross(x), mkv, memory_allowed))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class TokenEmbedding(nn.Embedding):
    """The token embedding, whose weight is also the decoders' output projection (tied): `embed(ids)` embeds,
    `embed(x, project=True)` gives logits x @ E^T. Both uses go through the module call, so module hooks (DeepSpeed
    ZeRO-3 gathering a partitioned weight) see them."""

    def forward(self, x: Tensor, project: bool = False) -> Tensor:
        return F.linear(x, self.weight) if project else super().forward(x)


def padding_to_allowed(padding: Tensor) -> Tensor:
    """(B, S) bool True at padding -> (B, 1, 1, S) bool True where attention is allowed."""
    return (~padding)[:, None, None, :]
