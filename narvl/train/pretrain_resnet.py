"""ImageNet in miniature: the model's ResNet trained to name the shape and the colour of one rendered object, written as
the file `train.init_resnet` loads (OFA's resnet_model_path).

OFA does not start its image backbone from random weights: its ResNet comes from an ImageNet classifier (cut after
the third stage) before any vision-language training. The embedded default has no ImageNet, so this command makes its
stand-in from the default's own renderer (narvl.synth.scene): scenes of one object each, with data.synth's image size,
supersampling, radii and JPEG quality, and two linear heads (6 shapes, 8 colours) on the ResNet's average-pooled
features. The heads are dropped; the file holds the ResNet's parameters and BatchNorm statistics under torchvision's
names. Measured in docs/tuning.md (part five): it lets the models learn which shapes a scene holds.

Reads   --params DIR   train.yaml (train.resnet_pretrain: scenes, test_scenes, steps, batch, lr; train.seed),
                       model.yaml (the preset's resnet_layers and resnet_width), data.yaml (data.synth: the renderer)
Writes  --out FILE     a torch file {"format": "narvl-resnet-v1", "state_dict", "resnet_layers", "resnet_width",
                       "steps", "test_accuracy": {"shape", "colour"}} (weights_only-loadable: tensors and plain data)

One thread, seeded by data.synth.seed and train.seed: the same params give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import logging
import random
from pathlib import Path

from narvl import params as P
from narvl.errors import NarvlError

log = logging.getLogger("narvl.pretrain_resnet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, type=Path, help="parameter folder (train, model, data)")
    parser.add_argument("--out", required=True, type=Path, help="the ResNet file (runs/resnet-pretrain/resnet.pt)")


def render_scenes(synth, count: int, seed: str):
    """(images float32 (n, 3, S, S) ImageNet-normalised, shape ids (n,), colour ids (n,)) of `count` one-object
    scenes drawn by the default's renderer."""
    import numpy as np
    import torch
    from PIL import Image

    from narvl.data.images import IMAGENET_MEAN, IMAGENET_STD
    from narvl.synth import scene as synth_scene

    rng = random.Random(seed)
    colours = sorted(synth_scene.COLOURS)
    images, shapes, cols = [], [], []
    for _ in range(count):
        scene = synth_scene.make_scene(rng, synth.image_size, 1, 1, tuple(synth.small_radius),
                                       tuple(synth.large_radius))
        obj = scene.objects[0]
        jpg = synth_scene.render(scene, synth.supersample, synth.jpeg_quality)
        with Image.open(io.BytesIO(jpg), formats=["JPEG"]) as img:
            images.append(np.asarray(img.convert("RGB")))
        shapes.append(synth_scene.SHAPES.index(obj.shape))
        cols.append(colours.index(obj.colour))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return x.float(), torch.tensor(shapes), torch.tensor(cols)


def pretrain(synth, arch, rp, seed: int, progress: bool = True, where: str = "train params") -> dict:
    """Train the ResNet of `arch` (model params) on rendered one-object scenes; -> the file's content."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from tqdm import tqdm

    from narvl.model.resnet import ResNet
    from narvl.synth import scene as synth_scene

    if min(rp.scenes, rp.test_scenes, rp.steps, rp.batch) < 1 or rp.lr <= 0:
        raise NarvlError(f"{where}: train.resnet_pretrain: scenes, test_scenes, steps and batch must be at least 1 "
                         f"and lr positive, got {rp}")
    torch.set_num_threads(1)
    x, y_shape, y_colour = render_scenes(synth, rp.scenes + rp.test_scenes, f"{synth.seed}-resnet-pretrain")
    torch.manual_seed(seed)
    resnet = ResNet(arch.resnet_layers, arch.resnet_width)
    shape_head = nn.Linear(resnet.out_channels, len(synth_scene.SHAPES))
    colour_head = nn.Linear(resnet.out_channels, len(synth_scene.COLOURS))
    opt = torch.optim.AdamW([*resnet.parameters(), *shape_head.parameters(), *colour_head.parameters()], lr=rp.lr)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(rp.steps), desc="pretrain-resnet", unit="step", disable=not progress, mininterval=1.0)
    for _ in bar:
        idx = torch.randint(0, rp.scenes, (rp.batch,), generator=gen)
        feats = resnet(x[idx]).mean((2, 3))
        loss = F.cross_entropy(shape_head(feats), y_shape[idx]) + F.cross_entropy(colour_head(feats), y_colour[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    resnet.eval()
    with torch.no_grad():
        feats = torch.cat([resnet(chunk).mean((2, 3)) for chunk in x[rp.scenes:].split(256)])
        test_shape, test_colour = y_shape[rp.scenes:], y_colour[rp.scenes:]
        accuracy = {"shape": float((shape_head(feats).argmax(-1) == test_shape).float().mean()),
                    "colour": float((colour_head(feats).argmax(-1) == test_colour).float().mean())}
    return {"format": "narvl-resnet-v1", "state_dict": {k: v.clone() for k, v in resnet.state_dict().items()},
            "resnet_layers": list(arch.resnet_layers), "resnet_width": arch.resnet_width, "steps": rp.steps,
            "test_accuracy": accuracy}


def main(args: argparse.Namespace) -> int:
    import torch

    from narvl.io import check_output, write_bytes

    train = P.load_stage(args.params, "train")
    arch = P.load_stage(args.params, "model").arch()
    synth = P.load_stage(args.params, "data").synth
    check_output(args.out, is_dir=False, inputs=[args.params])
    blob = pretrain(synth, arch, train.resnet_pretrain, train.seed, where=str(args.params / "train.yaml"))
    buf = io.BytesIO()
    torch.save(blob, buf)
    write_bytes(args.out, buf.getvalue())
    acc = blob["test_accuracy"]
    print(f"{args.out}: ResNet {arch.resnet_layers} width {arch.resnet_width} after {blob['steps']} steps; held-out "
          f"accuracy shape {100 * acc['shape']:.1f}%, colour {100 * acc['colour']:.1f}%")
    return 0
