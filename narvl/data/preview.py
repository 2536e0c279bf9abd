"""Render a PNG grid of samples from a shard folder, as the model sees them.

Reads the first 12 samples of --split in --shards (sizes.json and tars) and the --tokenizer; with --params (the
parameter folder: its data.yaml) prompts and targets are truncated and images placed on the loader's square canvas
exactly as in training, without it the canvas is the largest image and nothing is truncated. Each panel shows the
normalised image turned back into pixels, the prompt and the target decoded from the token ids the model receives
(VQA: also the answers' soft scores and the loss weight; grounding: the box recovered from the 4 location tokens in
green over the sample's pixel box in red). Writes --out (PNG).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from narvl.errors import NarvlError

COUNT = 12
COLUMNS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, type=Path, help="a shard folder, e.g. data/shards/grounding")
    parser.add_argument("--split", required=True, help="split name in sizes.json, e.g. train")
    parser.add_argument("--tokenizer", required=True, type=Path, help="data/shards/tokenizer.json")
    parser.add_argument("--params", type=Path, help="parameter folder (data.yaml): truncate and pad as the loader does")
    parser.add_argument("--out", required=True, type=Path, help="PNG file")


def render(shard_dir: Path, split: str, tokenizer, data_params, out: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from narvl.data.images import IMAGENET_MEAN, IMAGENET_STD
    from narvl import tasks
    from narvl.data.loader import Collator
    from narvl.data.shard_folder import ShardFolder
    from narvl.io import atomic_path

    samples = []
    for sample in ShardFolder(shard_dir).samples(split):
        samples.append(sample)
        if len(samples) == COUNT:
            break
    task = samples[0]["meta"]["task"]
    spec = tasks.get(task)
    if data_params is not None:
        lp = data_params.loader
        collate = Collator(tokenizer, task, data_params.shard.image_size[task], lp.max_source_len,
                           lp.max_target_len[task])
    else:
        canvas = max(max(s["meta"]["size"]) for s in samples)
        collate = Collator(tokenizer, task, canvas, 10**6, 10**6)
    batch = collate(samples)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rows = (len(samples) + COLUMNS - 1) // COLUMNS
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(4 * COLUMNS, 5.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, meta in enumerate(batch["meta"]):
        ax = axes.flat[i]
        pixels = (batch["images"][i] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(pixels)
        src = batch["src_tokens"][i][~batch["src_mask"][i]].tolist()
        tgt = batch["tgt_tokens"][i, : int(batch["tgt_lengths"][i])].tolist()
        lines = [f"{meta['id']} (image {meta['image_id']})", f"Q: {tokenizer.decode(src)}"]
        if spec.predicts_box:  # the box and its binned target (location tokens) drawn
            size = max(meta["size"])
            box = tokenizer.tokens_to_box(tgt, size)
            x0, y0, x1, y1 = meta["box"]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", lw=1.5))
            if box is not None:
                bx0, by0, bx1, by1 = box
                ax.add_patch(plt.Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, color="lime", lw=1.5,
                                           ls="--"))
            names = " ".join(tokenizer.id_to_token(t) for t in tgt)
            lines.append(f"A: {names}")
        else:
            lines.append(f"A: {tokenizer.decode(tgt)} (weight {float(batch['weights'][i]):.2f})")
            lines += [line for line in spec.gallery_lines(meta) if not line.startswith(("Q: ", "ref: "))]
        ax.set_title("\n".join(textwrap.fill(line, 44) for line in lines), fontsize=8, loc="left")
    fig.suptitle(f"{shard_dir} [{split}]: the first {len(samples)} samples as the model sees them", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (5.0 * rows)))
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return len(samples)


def main(args: argparse.Namespace) -> int:
    from narvl import params as params_mod
    from narvl.data.tokenizer import Tokenizer

    data_params = params_mod.load_stage(args.params, "data") if args.params else None
    tokenizer = Tokenizer.load(args.tokenizer)
    if data_params is not None and data_params.tokenizer.num_bins != tokenizer.num_bins:
        raise NarvlError(f"{args.tokenizer}: {tokenizer.num_bins} location tokens, but {args.params / 'data.yaml'} "
                         f"says data.tokenizer.num_bins {data_params.tokenizer.num_bins}")
    n = render(args.shards, args.split, tokenizer, data_params, args.out)
    print(f"{args.out}: {n} samples of {args.shards} [{args.split}]")
    return 0
