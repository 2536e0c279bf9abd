"""Inference-only speed-ups of a loaded model, applied alike to AR and NAR (they share the encoder).

    fold_batchnorm(module) -> int          BatchNorm folded into the convolution before it (eval statistics)
    prepare(model, fold_bn, channels_last, compile) -> model

`narvl decode` and `narvl bench decode` call `prepare` with decode.fold_batchnorm / decode.channels_last; the
benchmark measures the encoder with and without each (`encoder_variants`, docs/model.md). SDPA attention is always
on (narvl.model.layers). A prepared model is for inference only: folded statistics no longer train, so it is never
saved.
"""

from __future__ import annotations

import torch
from torch import nn


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(x)) for bn's running statistics: w * g / s, (b - mean) * g / s + beta, s = sqrt(var + eps)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        folded = (bias - bn.running_mean) * scale + bn.bias.detach()
        if conv.bias is None:
            conv.bias = nn.Parameter(folded)
        else:
            conv.bias.copy_(folded)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d into the Conv2d that feeds it, in place, and replace it by nn.Identity: the pairs
    `convN`/`bnN` of one module (the ResNet stem, Bottleneck blocks) and Sequential(Conv2d, BatchNorm2d) (the
    downsample paths). Returns the number of folded pairs. Eval mode only: a training BatchNorm uses batch
    statistics, which cannot be folded."""
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode (BatchNorm's running statistics)")
    folded = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        for name, child in children.items():
            if not isinstance(child, nn.BatchNorm2d):
                continue
            if isinstance(parent, nn.Sequential):
                prev = children.get(str(int(name) - 1))
            else:
                prev = children.get("conv" + name[2:]) if name.startswith("bn") else None
            if isinstance(prev, nn.Conv2d) and prev.out_channels == child.num_features:
                _fold(prev, child)
                setattr(parent, name, nn.Identity())
                folded += 1
    return folded


def prepare(model: nn.Module, fold_bn: bool = True, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """The model (eval mode, in place) with BatchNorm folded, the ResNet in channels_last memory layout (its input
    is converted on entry) and the encoder under torch.compile, as asked."""
    model.eval()
    resnet = model.encoder.embed_images
    if fold_bn:
        fold_batchnorm(resnet)
    if channels_last:
        resnet.to(memory_format=torch.channels_last)
        resnet.channels_last = True
    if compile:
        model.encoder = torch.compile(model.encoder, dynamic=False)
    return model
