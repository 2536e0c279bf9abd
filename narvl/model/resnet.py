"""OFA's image backbone (OFA-Sys/OFA models/ofa/resnet.py): a ResNet v1.5 of Bottleneck blocks (stride on the 3x3
conv), stem and stages layer1-layer3 only, total stride 16. Module names are OFA's (`conv1`, `bn1`, `layer1.0.conv2`,
`layer1.0.downsample.0`, ...), so `encoder.embed_images.*` of an OFA checkpoint loads by name.

OFA's widths are 64/128/256 (1024 output channels) with blocks [3,4,6] (resnet50), [3,4,23] (resnet101) or
[3,8,36] (resnet152); `width` scales them (the small CPU preset), `layers` gives the blocks per stage.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 block (1x1, 3x3 with the stride, 1x1 to 4x the planes; BatchNorm after each conv,
    the residual added before the last ReLU), with its module names and their creation order, so weights in
    torchvision's or OFA's names load and a seed draws the same initial weights as the torchvision block did. Written
    here because importing torchvision costs every narvl process about 1.5 s (it pulls in torch._dynamo through
    torchvision.ops)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, layers: list[int], width: int):
        super().__init__()
        if len(layers) != 3 or min(layers) < 1:
            raise ValueError(f"resnet_layers must list 3 stages of at least one block, got {layers}")
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * Bottleneck.expansion))
            stage = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.out_channels = inplanes  # 16 * width
        self.channels_last = False  # set by narvl.model.inference.prepare: inputs converted to that layout
        self.frozen = "none"  # set by freeze (train.freeze_resnet)
        self._cache: dict[bytes, Tensor] | None = None  # set by cache_features: SHA-256 of an image -> features
        self._cache_budget = self._cache_bytes = 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def freeze(self, what: str) -> None:
        """Fix part of the ResNet for training (train.freeze_resnet). "batchnorm": OFA's --freeze-resnet, its
        FrozenBatchNorm2d: every BatchNorm's statistics and affine weights stay as loaded, the convolutions train.
        "all": nothing in the ResNet trains. "none": all of it trains. BatchNorm layers of a frozen ResNet stay in
        eval mode whatever `train()` is called with; their parameters stop requiring gradients, so the optimizer
        (which takes only parameters that do) leaves them alone."""
        if what not in ("none", "batchnorm", "all"):
            raise ValueError(f"freeze: expected none, batchnorm or all, got {what!r}")
        self.frozen = what
        if what != "all":
            self.cache_features(0)
        for m in self.modules():
            if what != "batchnorm" or isinstance(m, nn.BatchNorm2d):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(what == "none")
        self.train(self.training)

    def cache_features(self, max_bytes: int) -> None:
        """Remember the features of every image seen, by its content, up to `max_bytes` of features (0: off). Only
        for a ResNet frozen "all" (a fixed function of the image): its forward pass is about a sixth of a
        `cpu`-preset training step, and a fine-tune sees each image many times. Each image's
        features are computed alone (a batch of one), so what an image gets does not depend on the batch it came
        in, and a resumed run recomputes exactly what it had cached."""
        if max_bytes and self.frozen != "all":
            raise ValueError(f"cache_features needs a ResNet frozen 'all', this one is frozen {self.frozen!r}")
        self._cache = {} if max_bytes else None
        self._cache_budget, self._cache_bytes = max_bytes, 0

    def _cached_forward(self, images: Tensor) -> Tensor:
        host = images.detach().cpu()
        out = []
        for i in range(len(host)):
            digest = hashlib.sha256(f"{tuple(host[i].shape)} {host[i].dtype}".encode())  # SHA-NI: 2 GB/s
            digest.update(host[i].contiguous().view(torch.uint8).numpy())
            key = digest.digest()
            feats = self._cache.get(key)
            if feats is None:
                feats = self._features(images[i:i + 1])[0]
                size = feats.numel() * feats.element_size()
                if self._cache_bytes + size <= self._cache_budget:
                    self._cache[key] = feats
                    self._cache_bytes += size
            out.append(feats)
        return torch.stack(out)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if self.frozen != "none":
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.train(False)
        return self

    def forward(self, images: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, 16 width, H/16, W/16)
        if self._cache is not None and not images.requires_grad:
            with torch.no_grad():
                return self._cached_forward(images)
        return self._features(images)

    def _features(self, images: Tensor) -> Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer3(self.layer2(self.layer1(x)))
