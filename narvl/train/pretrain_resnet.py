"""ImageNet in miniature: the model's ResNet trained to tell, at every cell of its output grid, the shape, colour
and size of the object there, written as the file `train.init_resnet` loads (OFA's resnet_model_path).

OFA does not start its image backbone from random weights: its ResNet comes from an ImageNet classifier (cut after
the third stage) before any vision-language training, and such features tell objects apart where they lie. The
embedded default has no ImageNet, so this command makes its stand-in from the default's own renderer
(narvl.synth.scene): scenes as data.synth draws them (image size, object counts, radii, supersampling, JPEG
quality), and three 1x1-convolution heads on the ResNet's stride-16 feature map that name, for each 16-pixel cell,
the shape (6 + background), colour (8 + background) and size (2 + background) of the object covering most of the
cell (at least 8% of it; background otherwise). The heads are dropped; the file holds the ResNet's parameters and
BatchNorm statistics under torchvision's names. Measured in docs/tuning.md (parts five and eleven): with the
ResNet then frozen (train.freeze_resnet), the models answer shape questions and ground phrases.

Reads   --params DIR   train.yaml (train.resnet_pretrain: scenes, test_scenes, steps, batch, lr; train.seed),
                       model.yaml (the preset's resnet_layers and resnet_width), data.yaml (data.synth: the renderer)
Writes  --out FILE     a torch file {"format": "narvl-resnet-v1", "state_dict", "resnet_layers", "resnet_width",
                       "steps", "test_accuracy": {"shape", "colour", "size", "background"}} (weights_only-loadable:
                       tensors and plain data); the accuracies are per held-out cell, of the cells with an object
                       (background: of those without)

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


CELL = 16  # the ResNet's total stride: one image token per 16x16 cell
MIN_COVER = 0.08  # an object labels a cell when it covers at least this part of it


def cell_labels(scene, rows: int, cols: int, supersample: int):
    """(shape, colour, size) label maps (rows, cols) of `scene`: per 16-px cell, 1 + the index of the attribute of
    the object covering most of the cell (at least MIN_COVER of it, polygons rasterised at `supersample` times the
    size), 0 (background) otherwise."""
    import numpy as np
    from PIL import Image, ImageDraw

    from narvl.synth import scene as synth_scene

    k = supersample
    mask = Image.new("L", (cols * CELL * k, rows * CELL * k), 0)
    draw = ImageDraw.Draw(mask)
    for i, o in enumerate(scene.objects):  # (objects never overlap: each pixel belongs to one of them at most)
        draw.polygon([(o.polygon[j] * k, o.polygon[j + 1] * k) for j in range(0, len(o.polygon), 2)], fill=i + 1)
    cells = np.asarray(mask).reshape(rows, CELL * k, cols, CELL * k).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    colours = sorted(synth_scene.COLOURS)
    out = np.zeros((3, rows, cols), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            cover = np.bincount(cells[r, c], minlength=len(scene.objects) + 1)[1:]
            if cover.max() >= MIN_COVER * cells.shape[2]:
                o = scene.objects[int(cover.argmax())]
                out[:, r, c] = (1 + synth_scene.SHAPES.index(o.shape), 1 + colours.index(o.colour),
                                1 + synth_scene.SIZES.index(o.size))
    return out


def render_scenes(synth, count: int, seed: str, where: str = "data params"):
    """(images float32 (n, 3, S, S) ImageNet-normalised, labels int64 (n, 3, S/16, S/16): shape, colour and size
    per cell, see cell_labels) of `count` scenes drawn by the default's renderer with data.synth's values."""
    import numpy as np
    import torch
    from PIL import Image

    from narvl.data.images import IMAGENET_MEAN, IMAGENET_STD
    from narvl.synth import scene as synth_scene

    if synth.image_size % CELL:
        raise NarvlError(f"{where}: data.synth.image_size {synth.image_size}: `narvl pretrain-resnet` labels the "
                         f"ResNet's {CELL}-pixel cells, so the scenes must be a multiple of {CELL} pixels")
    rng = random.Random(seed)
    side = synth.image_size // CELL
    images, labels = [], []
    for _ in range(count):
        scene = synth_scene.make_scene(rng, synth.image_size, synth.min_objects, synth.max_objects,
                                       tuple(synth.small_radius), tuple(synth.large_radius))
        jpg = synth_scene.render(scene, synth.supersample, synth.jpeg_quality)
        with Image.open(io.BytesIO(jpg), formats=["JPEG"]) as img:
            images.append(np.asarray(img.convert("RGB")))
        labels.append(cell_labels(scene, side, side, synth.supersample))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return x.float(), torch.from_numpy(np.stack(labels))


def pretrain(synth, arch, rp, seed: int, progress: bool = True, where: str = "train params",
             data_where: str = "data params") -> dict:
    """Train the ResNet of `arch` (model params) on rendered scenes, cell by cell; -> the file's content."""
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
    x, y = render_scenes(synth, rp.scenes + rp.test_scenes, f"{synth.seed}-resnet-pretrain", data_where)
    torch.manual_seed(seed)
    resnet = ResNet(arch.resnet_layers, arch.resnet_width)
    heads = nn.ModuleList(nn.Conv2d(resnet.out_channels, 1 + n, 1)
                          for n in (len(synth_scene.SHAPES), len(synth_scene.COLOURS), len(synth_scene.SIZES)))
    opt = torch.optim.AdamW([*resnet.parameters(), *heads.parameters()], lr=rp.lr)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(rp.steps), desc="pretrain-resnet", unit="step", disable=not progress, mininterval=1.0)
    for _ in bar:
        idx = torch.randint(0, rp.scenes, (rp.batch,), generator=gen)
        feats = resnet(x[idx])
        loss = sum(F.cross_entropy(head(feats), y[idx, i]) for i, head in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    resnet.eval()
    with torch.no_grad():
        feats = torch.cat([resnet(chunk) for chunk in x[rp.scenes:].split(256)])
        test = y[rp.scenes:]
        hits = [head(feats).argmax(1) == test[:, i] for i, head in enumerate(heads)]
        on_object = test[:, 0] > 0
        accuracy = {name: float(hit[on_object].float().mean()) for name, hit in zip(("shape", "colour", "size"), hits)}
        accuracy["background"] = float(hits[0][~on_object].float().mean())
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
    blob = pretrain(synth, arch, train.resnet_pretrain, train.seed, where=str(args.params / "train.yaml"),
                    data_where=str(args.params / "data.yaml"))
    buf = io.BytesIO()
    torch.save(blob, buf)
    write_bytes(args.out, buf.getvalue())
    acc = blob["test_accuracy"]
    print(f"{args.out}: ResNet {arch.resnet_layers} width {arch.resnet_width} after {blob['steps']} steps; held-out "
          f"accuracy per object cell: shape {100 * acc['shape']:.1f}%, colour {100 * acc['colour']:.1f}%, size "
          f"{100 * acc['size']:.1f}%; background cells {100 * acc['background']:.1f}%")
    return 0
