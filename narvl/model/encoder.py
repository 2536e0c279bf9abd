"""OFA's encoder (OFA-Sys/OFA models/ofa/unify_transformer.py, TransformerEncoder), parameters named as fairseq's.

    images (B, 3, H, W) --embed_images (ResNet, stride 16)--> (B, C, h, w) --flatten row-major, image_proj-->
        (B, P, d), P = h*w, + type_embedding[1] --patch_layernorm_embedding, dropout--> image tokens
    src_tokens (B, S) --embed_tokens (shared with the decoder)--> (B, S, d) + type_embedding[0]
        --layernorm_embedding, dropout--> text tokens
    x = [image ; text] (B, P+S, d), padded positions zeroed (text padding; whole images with patch_masks False)

No position is added to x: positions enter as attention-logit biases. Text position t uses embed_positions[t]
through pos_ln, image patch (row, col) embed_image_positions[row * image_bucket_size + col + 1] through
image_pos_ln; pos_q_linear / pos_k_linear make one absolute bias shared by every layer; each layer adds its own
text relative bias (text x text block) and image relative bias (image x image block). Pre-LN layers, then
`layer_norm`. Every parameter is used through a module call, so DeepSpeed ZeRO-3's per-module gathering works.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from narvl.model.layers import (EncoderLayer, TokenEmbedding, abs_position_bias, image_rel_index, padding_bias,
                                position_keys, token_rel_buckets)
from narvl.model.resnet import ResNet
from narvl.params import ArchParams

TEXT_TYPE, IMAGE_TYPE = 0, 1


class EncoderOut(NamedTuple):
    memory: Tensor  # (B, P+S, d) after layer_norm
    padding: Tensor  # (B, P+S) bool, True at padding
    pos: Tensor  # (B, P+S, d) the normalised position embeddings (the decoder's cross-attention position keys)


def image_rel_rows(bucket_size: int) -> int:
    return (2 * bucket_size - 1) ** 2 + 3  # OFA's 3 extra rows serve position id 0, which patches never use


class Encoder(nn.Module):
    def __init__(self, arch: ArchParams, vocab_size: int):
        super().__init__()
        d = arch.d_model
        self.arch = arch
        self.embed_tokens = TokenEmbedding(vocab_size, d)
        self.layernorm_embedding = nn.LayerNorm(d)
        self.type_embedding = nn.Embedding(2, d)
        self.embed_images = ResNet(arch.resnet_layers, arch.resnet_width)
        self.image_proj = nn.Linear(self.embed_images.out_channels, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d)
        self.embed_positions = nn.Embedding(arch.max_source_len + 2, d)
        self.embed_image_positions = nn.Embedding(arch.image_bucket_size ** 2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        self.layers = nn.ModuleList(EncoderLayer(d, arch.heads, arch.ffn_dim, arch.attn_scale_factor, arch.dropout)
                                    for _ in range(arch.encoder_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.token_rel_pos_table_list = nn.ModuleList(nn.Embedding(2 * arch.token_bucket_size - 1, arch.heads)
                                                      for _ in range(arch.encoder_layers))
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(image_rel_rows(arch.image_bucket_size), arch.heads) for _ in range(arch.encoder_layers))
        self.drop = nn.Dropout(arch.dropout)
        nn.init.normal_(self.embed_tokens.weight, std=d ** -0.5)  # tied output: logits start near unit scale
        for emb in (self.type_embedding, self.embed_positions, self.embed_image_positions):
            nn.init.normal_(emb.weight, std=0.02)
        for table in [*self.token_rel_pos_table_list, *self.image_rel_pos_table_list]:
            nn.init.zeros_(table.weight)  # as OFA (zero_init=True)

    def _ids(self, n: int, kind: int, device: torch.device) -> Tensor:
        return torch.full((1, n), kind, dtype=torch.long, device=device)

    def embed_image(self, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int], Tensor]:
        """-> image tokens (B, P, d), normalised positions (1, P, d), the grid (h, w), ResNet features (B, P, C)."""
        feats = self.embed_images(images)  # (B, C, h, w)
        h, w = feats.shape[-2:]
        grid = self.arch.image_bucket_size
        if h > grid or w > grid:
            raise ValueError(f"image of {images.shape[-2]}x{images.shape[-1]} pixels gives a {h}x{w} patch grid, "
                             f"more than the {grid}x{grid} of image_bucket_size")
        feats = feats.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
        x = self.image_proj(feats) + self.type_embedding(self._ids(h * w, IMAGE_TYPE, images.device))
        x = self.drop(self.patch_layernorm_embedding(x))
        rows = torch.arange(h, device=images.device).repeat_interleave(w)
        cols = torch.arange(w, device=images.device).repeat(h)
        pos = self.image_pos_ln(self.embed_image_positions((rows * grid + cols + 1)[None]))  # (1, P, d)
        return x, pos, (h, w), feats

    def embed_text(self, src_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """-> text tokens (B, S, d) and normalised positions (1, S, d)."""
        s = src_tokens.size(1)
        if s > self.arch.max_source_len:
            raise ValueError(f"source of {s} tokens is longer than max_source_len {self.arch.max_source_len}")
        x = self.embed_tokens(src_tokens) + self.type_embedding(self._ids(s, TEXT_TYPE, src_tokens.device))
        pos = self.pos_ln(self.embed_positions(torch.arange(s, device=src_tokens.device)[None]))  # (1, S, d)
        return self.drop(self.layernorm_embedding(x)), pos

    def forward(self, images: Tensor | None, src_tokens: Tensor, src_mask: Tensor, patch_masks: Tensor | None = None,
                trace: dict | None = None) -> EncoderOut:
        """images (B, 3, H, W) or None (text only); src_mask (B, S) True at padding; patch_masks (B,) bool, False
        marks a sample's whole image as padding (default: all True). `trace`, when given, receives intermediates
        (image_features, states: the embedding and each layer's output, layer0_bias) for checks against OFA."""
        b, s = src_tokens.shape
        x, pos = self.embed_text(src_tokens)
        padding = src_mask.bool()
        p = 0
        if images is not None:
            img, img_pos, (h, w), feats = self.embed_image(images)
            p = h * w
            img_pad = torch.zeros(b, p, dtype=torch.bool, device=x.device)
            if patch_masks is not None:
                img_pad = img_pad | ~patch_masks.bool()[:, None]
            x, pos, padding = torch.cat([img, x], 1), torch.cat([img_pos, pos], 1), torch.cat([img_pad, padding], 1)
            if trace is not None:
                trace["image_features"] = feats
        x = x * (~padding)[..., None].to(x.dtype)  # (B, P+S, d), padded positions zeroed
        heads = self.arch.heads
        abs_bias = abs_position_bias(self.pos_q_linear, pos, position_keys(self.pos_k_linear, pos, heads), heads,
                                     self.arch.attn_scale_factor)  # (1, h, P+S, P+S)
        text_idx = token_rel_buckets(s, s, self.arch.token_bucket_size, x.device)  # (S, S)
        image_idx = image_rel_index(h, w, self.arch.image_bucket_size, x.device) if p else None  # (P, P)
        pad_bias = padding_bias(padding, abs_bias.dtype)  # (B, 1, 1, P+S)
        states = [x]
        for i, layer in enumerate(self.layers):
            bias = abs_bias.clone()  # (1, h, P+S, P+S): positions are the same for every item
            bias[:, :, p:, p:] += self.token_rel_pos_table_list[i](text_idx).permute(2, 0, 1)
            if p:
                bias[:, :, :p, :p] += self.image_rel_pos_table_list[i](image_idx).permute(2, 0, 1)
            if trace is not None and i == 0:
                trace["layer0_bias"] = bias.expand(b, -1, -1, -1)
            x = layer(x, bias + pad_bias)
            states.append(x)
        if trace is not None:
            trace["states"] = states
        return EncoderOut(self.layer_norm(x), padding, pos.expand(b, -1, -1))
