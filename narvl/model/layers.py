"""OFA's transformer layers (OFA-Sys/OFA models/ofa/unify_transformer_layer.py, unify_multihead_attention.py), with
an optional key/value cache, and the relative-position buckets of unify_transformer.py.

Module and parameter names are fairseq's (`self_attn.q_proj`, `attn_ln`, `ffn_layernorm`, `encoder_attn`, ...), so
an OFA checkpoint maps onto them by name (narvl/ofa_import.py).

Shapes: B batch, L query length, S key length, d model width, h heads, d_h = d / h. Padding masks are bool with True
at padding (the batch dict's convention). Attention biases are float (B|1, h, L, S); -inf entries mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# OFA's make_token_bucket_position uses DEFAULT_MAX_SOURCE_POSITIONS for its log scale, whatever the table sizes
TOKEN_BUCKET_MAX_POSITION = 1024


class Attention(nn.Module):
    """OFA's multi-head attention: q scaled by (d_h * attn_scale_factor)^-1/2, an additive bias (absolute and
    relative positions, masks) on the logits, softmax in float32, NormFormer head scales `c_attn` before out_proj."""

    def __init__(self, d: int, heads: int, attn_scale_factor: float, dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model {d} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, d // heads
        self.scaling = float(self.head_dim * attn_scale_factor) ** -0.5
        self.dropout = dropout
        self.c_attn = nn.Parameter(torch.ones(heads))  # NormFormer head scale
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def split(self, x: Tensor) -> Tensor:  # (B, L, d) -> (B, h, L, d_h)
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, S, d) -> 2 x (B, h, S, d_h)
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], bias: Tensor) -> Tensor:
        # x (B, L, d); kv: keys and values (B, h, S, d_h); bias (B|1, h, L, S) float, -inf where masked
        q = self.split(self.q_proj(x))  # (B, h, L, d_h)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=bias.to(q.dtype), scale=self.scaling,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y * self.c_attn.to(y.dtype)[None, :, None, None]  # (B, h, L, d_h)
        b, h, n, dh = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, n, h * dh))  # (B, L, d)


class FeedForwardMixin:
    """fc1 -> GELU (erf) -> ffn_layernorm (NormFormer) -> fc2, shared by both layer types."""

    fc1: nn.Linear
    fc2: nn.Linear
    ffn_layernorm: nn.LayerNorm

    def ffn(self, x: Tensor) -> Tensor:
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class EncoderLayer(nn.Module, FeedForwardMixin):
    """x + drop(attn_ln(SelfAttn(self_attn_layer_norm(x)))), then x + drop(FFN(final_layer_norm(x)))."""

    def __init__(self, d: int, heads: int, ffn: int, attn_scale_factor: float, dropout: float):
        super().__init__()
        self.self_attn = Attention(d, heads, attn_scale_factor, 0.0)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.attn_ln = nn.LayerNorm(d)
        self.ffn_layernorm = nn.LayerNorm(ffn)
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:  # x (B, S, d); bias (B, h, S, S)
        h = self.self_attn_layer_norm(x)
        x = x + self.drop(self.attn_ln(self.self_attn(h, self.self_attn.project_kv(h), bias)))
        return x + self.drop(self.ffn(self.final_layer_norm(x)))


class DecoderLayer(nn.Module, FeedForwardMixin):
    """Self-attention (self_attn_ln after it), cross-attention `encoder_attn` (cross_attn_ln after it), FFN; each
    pre-LN with its residual. With a `cache` dict the layer appends this step's self-attention keys/values to it and
    computes the cross-attention keys/values once."""

    def __init__(self, d: int, heads: int, ffn: int, attn_scale_factor: float, dropout: float):
        super().__init__()
        self.self_attn = Attention(d, heads, attn_scale_factor, 0.0)
        self.self_attn_ln = nn.LayerNorm(d)
        self.cross_attn_ln = nn.LayerNorm(d)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = Attention(d, heads, attn_scale_factor, 0.0)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.ffn_layernorm = nn.LayerNorm(ffn)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, self_bias: Tensor, cross_bias: Tensor,
                cache: dict[str, Tensor] | None = None) -> Tensor:
        # x (B, L, d); memory (B, S, d); self_bias (B, h, L, L_total); cross_bias (B, h, L, S)
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.project_kv(h)  # (B, h, L, d_h)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)  # (B, h, L_past + L, d_h)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            if "mk" not in cache:
                cache["mk"], cache["mv"] = self.encoder_attn.project_kv(memory)
            mkv = (cache["mk"], cache["mv"])
        else:
            mkv = self.encoder_attn.project_kv(memory)
        x = x + self.drop(self.self_attn_ln(self.self_attn(h, (k, v), self_bias)))
        x = x + self.drop(self.cross_attn_ln(self.encoder_attn(self.encoder_attn_layer_norm(x), mkv, cross_bias)))
        return x + self.drop(self.ffn(self.final_layer_norm(x)))


class TokenEmbedding(nn.Embedding):
    """The token embedding, whose weight is also the decoder's output projection (tied): `embed(ids)` embeds,
    `embed(x, project=True)` gives logits x @ E^T. Both uses go through the module call, so module hooks (DeepSpeed
    ZeRO-3 gathering a partitioned weight) see them."""

    def forward(self, x: Tensor, project: bool = False) -> Tensor:
        return F.linear(x, self.weight) if project else super().forward(x)


def position_keys(k_lin: nn.Linear, pos_k: Tensor, heads: int) -> Tensor:
    """The key half of OFA's absolute position bias: k_lin(pos_k) (B|1, S, d) split into (B|1, h, S, d_h)."""
    k = k_lin(pos_k)
    return k.view(k.size(0), k.size(1), heads, -1).transpose(1, 2)


def abs_position_bias(q_lin: nn.Linear, pos_q: Tensor, keys: Tensor, heads: int, attn_scale_factor: float) -> Tensor:
    """OFA's absolute position bias: per-head projections of normalised position embeddings,
    (q_lin(pos_q) * (d_h * attn_scale_factor)^-1/2) keys^T. pos_q (B|1, L, d), keys from position_keys ->
    (B|1, h, L, S). The projections are the owner's modules (`pos_q_linear`, `self_pos_q_linear`, ...)."""
    q = q_lin(pos_q)
    q = q.view(q.size(0), q.size(1), heads, -1).transpose(1, 2) * float(keys.size(-1) * attn_scale_factor) ** -0.5
    return torch.matmul(q, keys.transpose(2, 3))


def token_rel_buckets(q_len: int, k_len: int, bucket_size: int, device: torch.device | None = None,
                      q_offset: int = 0) -> Tensor:
    """OFA's text relative-position index (make_token_bucket_position) for queries at positions
    q_offset..q_offset+q_len-1 and keys 0..k_len-1 -> (q_len, k_len) long in [0, 2*bucket_size-2].

    r = i - j; |r| <= mid (= bucket_size // 2): bucket r; else sign(r) * (ceil(log(|r|/mid) / log(1023/mid) *
    (mid-1)) + mid); index = bucket + bucket_size - 1. Computed with OFA's float32 operations, so ties agree.
    """
    ctx = torch.arange(q_offset, q_offset + q_len, dtype=torch.long, device=device)[:, None]
    mem = torch.arange(k_len, dtype=torch.long, device=device)[None, :]
    rel = ctx - mem
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), mid - 1, rel.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((TOKEN_BUCKET_MAX_POSITION - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(abs_pos.le(mid), rel, log_pos.int() * torch.sign(rel)).long()
    return bucket + bucket_size - 1


def image_rel_index(h: int, w: int, bucket_size: int, device: torch.device | None = None) -> Tensor:
    """OFA's image relative-position index (make_image_bucket_position) between the patches of an h x w grid in
    row-major order -> (h*w, h*w) long: (r1 - r2 + b - 1) * (2b - 1) + (c1 - c2 + b - 1), b = bucket_size."""
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (h*w,)
    cols = torch.arange(w, device=device).repeat(h)
    dr = rows[:, None] - rows[None, :] + bucket_size - 1
    dc = cols[:, None] - cols[None, :] + bucket_size - 1
    return dr * (2 * bucket_size - 1) + dc


def padding_bias(padding: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, S) bool True at padding -> (B, 1, 1, S) float: -inf at padding, 0 elsewhere."""
    return torch.zeros(padding.shape, dtype=dtype, device=padding.device).masked_fill(
        padding, -torch.inf)[:, None, None, :]
