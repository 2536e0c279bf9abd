"""Can the `cpu` preset's ResNet trunk learn the default's shapes on its own? (docs/tuning.md, issue 13)

    .venv/bin/python scripts/shape_probe.py [--readout pool|patch] [--width 8] [--steps 600]

One object per 96-px scene (narvl.synth.scene, the default's renderer and radii of data.synth), 3,000
training and 500 test scenes, 6-way shape classification from the trunk's (B, C, 6, 6) map: its global average
(`pool`) or the one patch feature at the object's centre (`patch`: what an image token of the encoder holds).
AdamW, lr 1e-3, batch 32, one thread; prints the test accuracy every 200 steps. Nothing is written.
"""

from __future__ import annotations

import argparse
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
from narvl.model.resnet import ResNet

SIZE, STRIDE = 96, 16


def scenes(n: int, rng: random.Random, small, large) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> images (n, 3, 96, 96) normalised, shape labels (n,), the index of the patch holding each centre (n,)."""
    images, labels, patches = [], [], []
    grid = SIZE // STRIDE
    for _ in range(n):
        scene = synth_scene.make_scene(rng, SIZE, 1, 1, small, large)
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
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y, p = scenes(3500, random.Random(0), tuple(args.small_radius), tuple(args.large_radius))
    torch.manual_seed(0)
    trunk = ResNet([1, 1, 1], args.width)
    head = nn.Linear(trunk.out_channels, len(synth_scene.SHAPES))
    opt = torch.optim.AdamW([*trunk.parameters(), *head.parameters()], lr=1e-3)

    def logits(images, patches):
        feats = trunk(images).flatten(2)  # (B, C, 36)
        return head(feats.mean(-1) if args.readout == "pool" else feats[torch.arange(len(images)), :, patches])

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
            print(f"readout {args.readout} width {args.width} step {step}: loss {loss.item():.3f}, "
                  f"test accuracy {acc:.3f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
