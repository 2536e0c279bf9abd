"""Can the `cpu` preset's ResNet trunk learn the default's shapes on its own? (docs/tuning.md, issue 13)

    .venv/bin/python scripts/shape_probe.py [--readout pool|patch] [--width 8] [--steps 600] [--objects 1]
                                            [--through resnet|encoder]

One object per 96-px scene (--objects N: N objects, the first one's shape is the label) (narvl.synth.scene, the default's renderer and radii of data.synth), 3,000
training and 500 test scenes, 6-way shape classification from the trunk's (B, C, 6, 6) map: its global average
(`pool`) or the one patch feature at the object's centre (`patch`: what an image token of the encoder holds).
`--through encoder` reads the image tokens of the whole `cpu` encoder (ResNet, image projection, two layers over
image and a 4-token prompt) instead of the ResNet's map. AdamW, lr 1e-3, batch 32, one thread; prints the test
accuracy every 200 steps. Nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from narvl.synth import scene as synth_scene
from narvl.data.images import IMAGENET_MEAN, IMAGENET_STD
from narvl.model.encoder import Encoder
from narvl.model.resnet import ResNet
from narvl.params import PRESETS

SIZE, STRIDE = 96, 16


def scenes(n: int, rng: random.Random, small, large, objects: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> images (n, 3, 96, 96) normalised, shape labels (n,), the index of the patch holding each centre (n,)."""
    images, labels, patches = [], [], []
    grid = SIZE // STRIDE
    for _ in range(n):
        scene = synth_scene.make_scene(rng, SIZE, objects, objects, small, large)
        obj = scene.objects[0]
        xs, ys = obj.polygon[0::2], obj.polygon[1::2]
        cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
        images.append(np.asarray(Image.open(io.BytesIO(synth_scene.render(scene, 4, 90))).convert("RGB")))
        labels.append(synth_scene.SHAPES.index(obj.shape))
        patches.append(int(cy // STRIDE) * grid + int(cx // STRIDE))
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return x, torch.tensor(labels), torch.tensor(patches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readout", choices=["pool", "patch"], default="pool")
    parser.add_argument("--width", type=int, default=8, help="model.resnet_width (the cpu preset's: 8)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--small-radius", type=float, nargs=2, default=[0.09, 0.11])
    parser.add_argument("--large-radius", type=float, nargs=2, default=[0.16, 0.19])
    parser.add_argument("--objects", type=int, default=1, help="objects per scene (the first one is labelled)")
    parser.add_argument("--through", choices=["resnet", "encoder"], default="resnet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y, p = scenes(3500, random.Random(0), tuple(args.small_radius), tuple(args.large_radius), args.objects)
    torch.manual_seed(0)
    if args.through == "resnet":
        trunk = ResNet([1, 1, 1], args.width)
        head = nn.Linear(trunk.out_channels, len(synth_scene.SHAPES))

        def tokens(images):  # (B, 36, C)
            return trunk(images).flatten(2).transpose(1, 2)
    else:
        arch = dataclasses.replace(PRESETS["cpu"], dropout=0.0, resnet_width=args.width)
        trunk = Encoder(arch, 16)
        head = nn.Linear(arch.d_model, len(synth_scene.SHAPES))
        prompt = torch.tensor([[1, 10, 11, 2]])

        def tokens(images):  # the image tokens of the encoder's output (B, 36, d)
            b = len(images)
            return trunk(images, prompt.expand(b, -1), torch.zeros(b, 4, dtype=torch.bool)).memory[:, :36]
    opt = torch.optim.AdamW([*trunk.parameters(), *head.parameters()], lr=1e-3)

    def logits(images, patches):
        feats = tokens(images)
        return head(feats.mean(1) if args.readout == "pool" else feats[torch.arange(len(images)), patches])

    t0 = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, 3000, (32,))
        loss = F.cross_entropy(logits(x[idx], p[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == args.steps:
            trunk.eval()
            with torch.no_grad():
                acc = (logits(x[3000:], p[3000:]).argmax(-1) == y[3000:]).float().mean().item()
            trunk.train()
            print(f"{args.through} readout {args.readout} width {args.width} objects {args.objects} step {step}: loss {loss.item():.3f}, "
                  f"test accuracy {acc:.3f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
