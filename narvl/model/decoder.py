"""The decoder stack both objectives share: 1-D positions, pre-LN layers, a final LayerNorm and the output
projection tied to the encoder's token embedding.

The NAR decoder feeds it N query vectors with full self-attention; the AR decoder feeds it embedded previous
tokens with a causal mask and, when generating, a per-layer key/value cache.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from narvl.model.layers import DecoderLayer, TokenEmbedding, padding_to_allowed
from narvl.params import ArchParams


class Decoder(nn.Module):
    def __init__(self, arch: ArchParams):
        super().__init__()
        d = arch.d_model
        self.max_len = arch.max_target_len
        self.pos = nn.Embedding(arch.max_target_len, d)  # slot (NAR) or target (AR) positions
        self.ln_embed = nn.LayerNorm(d)
        self.drop = nn.Dropout(arch.dropout)
        self.layers = nn.ModuleList(DecoderLayer(d, arch.heads, arch.ffn_dim, arch.dropout)
                                    for _ in range(arch.decoder_layers))
        self.ln_out = nn.LayerNorm(d)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, x: Tensor, memory: Tensor, memory_padding: Tensor, embed: TokenEmbedding, causal: bool,
                offset: int = 0, caches: list[dict[str, Tensor]] | None = None) -> Tensor:
        """x (B, L, d) inputs of positions offset..offset+L-1 -> logits (B, L, V).

        memory (B, S, d), memory_padding (B, S) True at padding; embed: the token embedding (tied projection).
        With `caches` (one dict per layer) earlier positions come from the cache (AR generation).
        """
        b, n, _ = x.shape
        if offset + n > self.max_len:
            raise ValueError(f"decoder positions up to {offset + n} exceed max_target_len {self.max_len}")
        pos = torch.arange(offset, offset + n, device=x.device)
        x = self.drop(self.ln_embed(x + self.pos(pos)))  # (B, L, d)
        self_allowed = None
        if causal:
            # query i (absolute position offset+i) sees keys 0..offset+i: (1, 1, L, offset+L)
            keys = torch.arange(offset + n, device=x.device)
            self_allowed = (keys[None, :] <= pos[:, None])[None, None]
        memory_allowed = padding_to_allowed(memory_padding)  # (B, 1, 1, S)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, memory_allowed, self_allowed, None if caches is None else caches[i])
        return embed(self.ln_out(x), project=True)  # (B, L, V)
