"""Tiny inputs for the training tests (not a test module): caption shards in the docs/design.md format, written
here with tarfile so the tests do not depend on `narvl synth`/`narvl shard`; a BPE tokenizer trained by
narvl.data.tokenizer; a params folder shrunk to a d=32, 2+2-layer model.

The images are learnable: a square or a circle of one of four colours, captioned "a <colour> <shape>".
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "circle")
CLASSES = [(c, s) for c in COLORS for s in SHAPES]
PROMPT = "what does the image describe?"


def image_bytes(color: str, shape: str, i: int) -> bytes:
    img = Image.new("RGB", (32, 32), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    o = i % 4
    box = (4 + o, 4 + o, 24 + o, 24 + o)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLORS[color])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sample(split: str, i: int) -> tuple[str, bytes, dict]:
    color, shape = CLASSES[i % len(CLASSES)]
    key = f"{split}_{i:08d}"
    text = f"a {color} {shape}"
    meta = {"id": key, "task": "caption", "split": split, "image_id": (100000 if split != "train" else 0) + i,
            "orig_size": [32, 32], "size": [32, 32], "prompt": PROMPT, "target": text, "references": [text]}
    return key, image_bytes(color, shape, i), meta


def write_split(out: Path, split: str, n: int, per_shard: int) -> dict:
    names = []
    for start in range(0, n, per_shard):
        name = f"caption-{split}-{len(names):06d}.tar"
        with tarfile.open(out / name, "w") as tar:
            for i in range(start, min(n, start + per_shard)):
                key, jpg, meta = sample(split, i)
                for ext, data in (("jpg", jpg), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        names.append(name)
    return {"shards": names, "samples": n, "skipped": 0, "skipped_ids": []}


def make_shards(out: Path, train: int = 64, val: int = 16, test: int = 8) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": write_split(out, "train", train, 32), "val": write_split(out, "val", val, 16),
             "test": write_split(out, "test", test, 16)}
    (out / "sizes.json").write_text(json.dumps(sizes, indent=2))
    return out


def grounding_sample(split: str, i: int, category: bool) -> tuple[str, bytes, dict]:
    """The caption sample's image as a grounding sample: the shape's box as 4 of the tokenizer's 8 bins, and (with
    `category`) the shape as the object's COCO category, as `narvl shard --format refer` writes them."""
    color, shape = CLASSES[i % len(CLASSES)]
    key = f"{split}_{i:08d}"
    o = i % 4
    box = [4.0 + o, 4.0 + o, 24.0 + o, 24.0 + o]
    bins = " ".join(f"<bin_{min(7, round(c / 32 * 7))}>" for c in box)
    meta = {"id": key, "task": "grounding", "split": split, "image_id": (100000 if split != "train" else 0) + i,
            "orig_size": [32, 32], "size": [32, 32], "prompt": f'which region does the text " {color} " describe?',
            "target": bins, "expression": color, "ref_id": i, "sent_id": i, "ann_id": i, "orig_box": box, "box": box,
            **({"category": shape} if category else {})}
    return key, image_bytes(color, shape, i), meta


def make_grounding_shards(out: Path, category: bool = True, train: int = 32, val: int = 16) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, n in (("train", train), ("val", val)):
        name = f"grounding-{split}-000000.tar"
        with tarfile.open(out / name, "w") as tar:
            for i in range(n):
                key, jpg, meta = grounding_sample(split, i, category)
                for ext, data in (("jpg", jpg), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        sizes[split] = {"shards": [name], "samples": n, "skipped": 0, "skipped_ids": []}
    (out / "sizes.json").write_text(json.dumps(sizes, indent=2))
    return out


def make_tokenizer(path: Path) -> Path:
    from narvl.data.tokenizer import Tokenizer

    texts = [PROMPT] + [f"a {c} {s}" for c, s in CLASSES]
    Tokenizer.train(texts * 4, vocab_size=60, num_bins=8, lowercase=True).save(path)
    return path


def edit_yaml(path: Path, **values) -> None:
    doc = yaml.safe_load(path.read_text())
    stage = path.stem
    doc[stage].update(values)
    path.write_text(yaml.safe_dump(doc))


def make_params(src: Path, dst: Path, **train) -> Path:
    """Copy params/*.yaml and shrink them: d=32, 2+2 layers, 32-pixel images, 2 ranks x micro-batch 4."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.yaml"):
        (dst / f.name).write_text(f.read_text())
    edit_yaml(dst / "train.yaml", **{
        "nproc": 2, "steps": {"caption": 12, "vqa": 12, "grounding": 12}, "global_batch": 8, "micro_batch": 4,
        "grad_accum": 1, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 4, "log_every": 2, "val_batches": 2,
        "keep_checkpoints": 2, "label_smoothing": 0.0, "task_overrides": {}, **train})
    edit_yaml(dst / "model.yaml", overrides={
        "d_model": 32, "heads": 2, "encoder_layers": 2, "decoder_layers": 2, "ffn_dim": 64, "resnet_width": 8,
        "dropout": 0.0, "max_target_len": 8, "max_source_len": 16},
        num_queries={"caption": 6, "vqa": 4, "grounding": 5})
    data = yaml.safe_load((dst / "data.yaml").read_text())
    data["data"]["shard"]["image_size"] = {"caption": 32, "vqa": 32, "grounding": 32}
    data["data"]["loader"].update(num_workers=0, shuffle_buffer=16, max_source_len=16,
                                  max_target_len={"caption": 6, "vqa": 4, "grounding": 4})
    (dst / "data.yaml").write_text(yaml.safe_dump(data))
    edit_yaml(dst / "decode.yaml", batch_size=16, beam_size=3)
    return dst
