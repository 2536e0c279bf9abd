"""The NAR model: N learnable queries decoded in parallel against the encoder (NARVL).

    images, src_tokens, src_mask --OFA's encoder--> memory (B, P+S, d)
    queries (N, d) as the decoder's inputs, slot n at decoder position n (position biases over the slots)
        --OFA's decoder layers (full self-attention, no causal mask; cross-attention)--> (B, N, d)
        --tied projection--> logits (B, N, V), V including the CTC blank (a row of the token embedding)

Training applies Q-CTC (`narvl.loss.qctc`) to log_softmax(logits); decoding collapses the N slots
(`narvl.decode.ctc`). The model returns outputs only; the loss is separate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from narvl.model.decoder import Decoder
from narvl.model.encoder import Encoder, EncoderOut
from narvl.params import ArchParams


class NARModel(nn.Module):
    kind = "nar"

    def __init__(self, arch: ArchParams, vocab_size: int, num_queries: int, special_ids: dict[str, int]):
        super().__init__()
        if num_queries > arch.max_target_len:
            raise ValueError(f"num_queries {num_queries} exceeds max_target_len {arch.max_target_len}")
        self.arch, self.vocab_size, self.num_queries = arch, vocab_size, num_queries
        self.special_ids = dict(special_ids)
        self.encoder = Encoder(arch, vocab_size)
        self.queries = nn.Parameter(torch.randn(num_queries, arch.d_model) * 0.02)  # (N, d)
        self.decoder = Decoder(arch)

    def encode(self, images: Tensor | None, src_tokens: Tensor, src_mask: Tensor,
               patch_masks: Tensor | None = None) -> EncoderOut:
        return self.encoder(images, src_tokens, src_mask, patch_masks)

    def decode(self, enc: EncoderOut) -> Tensor:  # -> logits (B, N, V)
        x = self.queries.unsqueeze(0).expand(enc.memory.size(0), -1, -1)  # (B, N, d)
        return self.decoder(x, enc, self.encoder.embed_tokens, causal=False)

    def forward(self, images: Tensor | None, src_tokens: Tensor, src_mask: Tensor,
                patch_masks: Tensor | None = None) -> Tensor:
        """images (B, 3, H, W) or None, src_tokens (B, S), src_mask (B, S) True at padding, patch_masks (B,) bool
        (False: that sample's image is padding) -> logits (B, N, V)."""
        return self.decode(self.encode(images, src_tokens, src_mask, patch_masks))

