"""OFA's decoder stack (OFA-Sys/OFA models/ofa/unify_transformer.py, TransformerDecoder), shared by both objectives,
parameters named as fairseq's; the output projection is tied to the encoder's token embedding.

    x (B, L, d): embedded previous tokens (AR) or the N query vectors (NAR) --layernorm_embedding, dropout-->
    pre-LN decoder layers --layer_norm--> x @ E^T --> logits (B, L, V)

Positions enter as attention biases only: decoder position t uses embed_positions[t] through pos_ln;
self-attention gets self_pos_q/k_linear of those (one absolute bias for every layer) plus each layer's text
relative bias, cross-attention gets cross_pos_q_linear of them against cross_pos_k_linear of the encoder's
normalised positions. The AR decoder adds a causal mask and, when generating, keeps a per-layer key/value cache; the
NAR decoder's queries attend to each other fully.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from narvl.model.encoder import EncoderOut
from narvl.model.layers import (DecoderLayer, TokenEmbedding, abs_position_bias, padding_bias, position_keys,
                                token_rel_buckets)
from narvl.params import ArchParams


class Decoder(nn.Module):
    def __init__(self, arch: ArchParams):
        super().__init__()
        d = arch.d_model
        self.arch = arch
        self.max_len = arch.max_target_len
        self.layernorm_embedding = nn.LayerNorm(d)
        self.embed_positions = nn.Embedding(arch.max_target_len + 2, d)
        self.pos_ln = nn.LayerNorm(d)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self.layers = nn.ModuleList(DecoderLayer(d, arch.heads, arch.ffn_dim, arch.attn_scale_factor, arch.dropout)
                                    for _ in range(arch.decoder_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.token_rel_pos_table_list = nn.ModuleList(nn.Embedding(2 * arch.token_bucket_size - 1, arch.heads)
                                                      for _ in range(arch.decoder_layers))
        self.drop = nn.Dropout(arch.dropout)
        nn.init.normal_(self.embed_positions.weight, std=0.02)
        for table in self.token_rel_pos_table_list:
            nn.init.zeros_(table.weight)  # as OFA (zero_init=True)

    def forward(self, x: Tensor, enc: EncoderOut, embed: TokenEmbedding, causal: bool, offset: int = 0,
                self_padding: Tensor | None = None, caches: list[dict[str, Tensor]] | None = None,
                trace: dict | None = None) -> Tensor:
        """x (B, L, d) inputs of positions offset..offset+L-1 -> logits (B, L, V).

        enc: the encoder's output; embed: the token embedding (tied projection). self_padding (B, offset+L) True at
        padded keys (AR previous tokens), or None. With `caches` (one dict per layer) the keys of positions before
        offset come from the cache (AR generation). `trace` receives states, self_bias0 and cross_bias.
        """
        b, n, _ = x.shape
        total = offset + n
        if total > self.max_len:
            raise ValueError(f"decoder positions up to {total} exceed max_target_len {self.max_len}")
        heads, factor = self.arch.heads, self.arch.attn_scale_factor
        pos = self.pos_ln(self.embed_positions(torch.arange(total, device=x.device)[None]))  # (1, offset+L, d)
        self_bias = abs_position_bias(self.self_pos_q_linear, pos[:, offset:],
                                      position_keys(self.self_pos_k_linear, pos, heads), heads, factor)  # (1,h,L,L')
        if caches is not None and "pos_k" in caches[0]:  # the encoder side is fixed while generating
            cross_keys = caches[0]["pos_k"]
        else:
            cross_keys = position_keys(self.cross_pos_k_linear, enc.pos, heads)  # (B, h, S, d_h)
            if caches is not None:
                caches[0]["pos_k"] = cross_keys
        cross_bias = abs_position_bias(self.cross_pos_q_linear, pos[:, offset:], cross_keys, heads,
                                       factor)  # (B, h, L, S)
        if trace is not None:
            trace["cross_bias"] = cross_bias
        cross_bias = cross_bias + padding_bias(enc.padding, cross_bias.dtype)
        mask = torch.zeros(b, 1, n, total, dtype=self_bias.dtype, device=x.device)  # causal and padding
        if causal:
            keys = torch.arange(total, device=x.device)
            mask = mask.masked_fill(keys[None, :] > keys[offset:, None], -torch.inf)
        if self_padding is not None:
            mask = mask + padding_bias(self_padding, mask.dtype)
        rel_idx = token_rel_buckets(n, total, self.arch.token_bucket_size, x.device, q_offset=offset)  # (L, L_tot)
        x = self.drop(self.layernorm_embedding(x))  # (B, L, d)
        states = [x]
        for i, layer in enumerate(self.layers):
            bias = self_bias + self.token_rel_pos_table_list[i](rel_idx).permute(2, 0, 1)  # (1, h, L, offset+L)
            if trace is not None and i == 0:
                trace["self_bias0"] = bias
            x = layer(x, enc.memory, bias + mask, cross_bias, None if caches is None else caches[i])
            states.append(x)
        if trace is not None:
            trace["states"] = states
        return embed(self.layer_norm(x), project=True)  # (B, L, V)
