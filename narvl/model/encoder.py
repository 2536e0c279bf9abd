"""OFA's encoder: ResNet patches and text tokens in one pre-LN transformer.

    images (B, 3, H, W) --ResNet stem + stages 1-3 (stride 16)--> (B, C, H/16, W/16)
        --flatten, Linear(C, d)--> patches (B, P, d), P = (H/16)(W/16), + row/column embeddings (2-D positions)
    src_tokens (B, S) --token embedding--> (B, S, d) + 1-D position embeddings
    [patches ; text] + type embedding (0 image, 1 text) --LayerNorm, dropout, pre-LN layers, LayerNorm--> (B, P+S, d)

The token embedding lives here and is shared with the decoders (their output projection is tied to it). Every
parameter is used through a module call (no `.weight` read from outside its module), so DeepSpeed ZeRO-3's
per-module gathering works.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from narvl.model.layers import EncoderLayer, TokenEmbedding, padding_to_allowed
from narvl.params import ArchParams

IMAGE_TYPE, TEXT_TYPE = 0, 1


class ResNetTrunk(nn.Module):
    """torchvision's ResNet stem and stages 1-3 (OFA cuts the ResNet after stage 3): total stride 16."""

    def __init__(self, block: str, layers: list[int], width: int):
        super().__init__()
        if len(layers) != 3:
            raise ValueError(f"resnet_layers must list 3 stages, got {layers}")
        cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        stages, inplanes = [], width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * cls.expansion:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes * cls.expansion, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes * cls.expansion))
            stage = [cls(inplanes, planes, stride, downsample)]
            inplanes = planes * cls.expansion
            stage += [cls(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.out_channels = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, C, H/16, W/16)
        return self.stages(self.stem(images))


class Encoder(nn.Module):
    def __init__(self, arch: ArchParams, vocab_size: int):
        super().__init__()
        d = arch.d_model
        self.arch = arch
        self.trunk = ResNetTrunk(arch.resnet_block, arch.resnet_layers, arch.resnet_width)
        self.patch_proj = nn.Linear(self.trunk.out_channels, d)
        self.embed_tokens = TokenEmbedding(vocab_size, d)
        self.text_pos = nn.Embedding(arch.max_source_len, d)
        self.row_pos = nn.Embedding(arch.image_grid, d)
        self.col_pos = nn.Embedding(arch.image_grid, d)
        self.type_embed = nn.Embedding(2, d)
        self.ln_embed = nn.LayerNorm(d)
        self.drop = nn.Dropout(arch.dropout)
        self.layers = nn.ModuleList(EncoderLayer(d, arch.heads, arch.ffn_dim, arch.dropout)
                                    for _ in range(arch.encoder_layers))
        self.ln_out = nn.LayerNorm(d)
        nn.init.normal_(self.embed_tokens.weight, std=d ** -0.5)  # tied output: logits start near unit scale
        for emb in (self.text_pos, self.row_pos, self.col_pos, self.type_embed):
            nn.init.normal_(emb.weight, std=0.02)

    def embed_image(self, images: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, P, d)
        feats = self.trunk(images)  # (B, C, h, w)
        b, c, h, w = feats.shape
        if h > self.arch.image_grid or w > self.arch.image_grid:
            raise ValueError(f"image of {images.shape[-2]}x{images.shape[-1]} pixels gives a {h}x{w} patch grid, "
                             f"more than the {self.arch.image_grid}x{self.arch.image_grid} position table")
        patches = self.patch_proj(feats.flatten(2).transpose(1, 2))  # (B, h*w, d), row-major
        rows = torch.arange(h, device=images.device).repeat_interleave(w)  # (h*w,)
        cols = torch.arange(w, device=images.device).repeat(h)  # (h*w,)
        kind = torch.full((1,), IMAGE_TYPE, device=images.device)
        return patches + self.row_pos(rows) + self.col_pos(cols) + self.type_embed(kind)

    def embed_text(self, src_tokens: Tensor) -> Tensor:  # (B, S) -> (B, S, d)
        s = src_tokens.size(1)
        if s > self.arch.max_source_len:
            raise ValueError(f"source of {s} tokens is longer than max_source_len {self.arch.max_source_len}")
        pos = torch.arange(s, device=src_tokens.device)
        kind = torch.full((1,), TEXT_TYPE, device=src_tokens.device)
        return self.embed_tokens(src_tokens) + self.text_pos(pos) + self.type_embed(kind)

    def forward(self, images: Tensor, src_tokens: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> memory (B, P+S, d) and its padding mask (B, P+S), True at padding (text padding only)."""
        img = self.embed_image(images)  # (B, P, d)
        txt = self.embed_text(src_tokens)  # (B, S, d)
        x = self.drop(self.ln_embed(torch.cat([img, txt], dim=1)))  # (B, P+S, d)
        padding = torch.cat([src_mask.new_zeros(img.shape[:2]), src_mask.bool()], dim=1)  # (B, P+S)
        allowed = padding_to_allowed(padding)  # (B, 1, 1, P+S)
        for layer in self.layers:
            x = layer(x, allowed)
        return self.ln_out(x), padding
