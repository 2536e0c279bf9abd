"""Batches from webdataset shards: an endless shuffled training stream and an exactly-once evaluation pass.

Every batch is the dict of docs/design.md:

    images      float32 (B, 3, S, S)  ImageNet-normalised, the resized image at the top left of an S x S canvas
                                      (S = data.shard.image_size[task]; the padding is 0, i.e. the mean colour)
    src_tokens  int64 (B, L)          <bos> prompt <eos>, right-padded with pad_id (L <= loader.max_source_len)
    src_mask    bool (B, L)           True at padding
    tgt_tokens  int64 (B, T)          target ids without bos/eos, right-padded (T <= loader.max_target_len[task])
    tgt_lengths int64 (B,)
    weights     float32 (B,)          VQA: the soft score of the target answer; otherwise 1
    meta        list[dict]            the samples' json

Targets and weights are the task's (`narvl.tasks`, `Task.target`): the text `target` of the json (VQA: the answer with
the highest soft score, weighted by it); grounding the 4 location tokens of the box, binned over the canvas side S.
A loader given `rewrite` turns each sample's json into another prompt and text target on the same image first (the
pretraining's region samples from grounding shards, `narvl.tasks.grounding.region_sample`).

How samples are split across R ranks x W workers (slot s = rank * W + worker, of R * W slots):
- With at least as many shards as slots, slot s reads shards s, s + RW, ...; with fewer shards every slot reads
  them all and keeps the samples whose index i has i % RW == s. Either way each sample goes to exactly one slot.
- Training reshuffles the shard order every epoch (seeded by `seed` and the epoch, the same on every slot), passes
  samples through a shuffle buffer seeded by (seed, slot), and never ends; `batches_per_epoch` says how many
  batches one rank takes to see its share of an epoch (from sizes.json).
- Evaluation reads shards in order; with workers, the DataLoader returns their batches round-robin, so the order
  is fixed for a given (ranks, workers, micro_batch).
"""

from __future__ import annotations

import io
import math
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from narvl.data.images import IMAGENET_MEAN, IMAGENET_STD
from narvl.data.shard_folder import ShardFolder, iter_metas, iter_samples  # noqa: F401 - re-exported
from narvl.data.tokenizer import Tokenizer
from narvl.errors import NarvlError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loader workers are forked processes


# ------------------------------------------------------------------------------------------------------ reading
def decode_jpeg_array(data: bytes) -> np.ndarray:
    """uint8 (h, w, 3)."""
    with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def decode_jpeg(data: bytes) -> torch.Tensor:
    """uint8 (3, h, w)."""
    return torch.from_numpy(decode_jpeg_array(data).copy()).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------------- collation
class Collator:
    """Samples -> the batch dict (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, task: str, canvas: int, max_source_len: int, max_target_len: int,
                 rewrite: Callable[[dict], dict] | None = None):
        from narvl import tasks

        self.tok, self.task, self.canvas = tokenizer, task, canvas
        self.spec = tasks.get(task)
        # `rewrite`: each sample's json -> another prompt and text target on the same image (the pretraining's
        # region samples, narvl.tasks.grounding.region_sample); its target is text whatever the task's
        self.rewrite = rewrite
        self.max_source_len, self.max_target_len = max_source_len, max_target_len
        # (x / 255 - mean) / std  ==  x * scale + bias, per channel
        self.scale = (1.0 / (255.0 * np.asarray(IMAGENET_STD))).astype(np.float32).reshape(3, 1, 1)
        self.bias = (-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)).astype(np.float32).reshape(3, 1, 1)

    def source(self, meta: dict) -> list[int]:
        ids = self.tok.encode(meta["prompt"])[: self.max_source_len - 2]
        return [self.tok.bos_id, *ids, self.tok.eos_id]

    def target(self, meta: dict) -> tuple[list[int], float]:
        if self.rewrite is not None:
            return self.tok.encode(meta["target"])[: self.max_target_len], 1.0
        return self.spec.target(meta, self.tok, self.max_target_len)

    def images(self, samples: list[dict]) -> torch.Tensor:
        """(B, 3, S, S): each image at the top left, normalised; the padding is 0.

        Done in numpy, whose element-wise operations stay on one thread: with no loader workers this runs in the
        training process, where torch's intra-op threads would compete with the model's.
        """
        out = np.zeros((len(samples), 3, self.canvas, self.canvas), dtype=np.float32)
        for i, sample in enumerate(samples):
            img = decode_jpeg_array(sample["jpg"])
            h, w, _ = img.shape
            if h > self.canvas or w > self.canvas:
                raise NarvlError(f"sample {sample['key']}: image {w}x{h} is larger than the {self.canvas}-pixel "
                                 "canvas (data.shard.image_size changed since the shards were made? run `narvl "
                                 "shard` again)")
            region = out[i, :, :h, :w]
            np.multiply(img.transpose(2, 0, 1), self.scale, out=region, casting="unsafe")
            region += self.bias
        return torch.from_numpy(out)

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        metas = [s["meta"] for s in samples]
        if self.rewrite is not None:
            metas = [self.rewrite(m) for m in metas]
        srcs = [self.source(m) for m in metas]
        tgts, weights = zip(*(self.target(m) for m in metas))
        b = len(samples)
        src = torch.full((b, max(map(len, srcs))), self.tok.pad_id, dtype=torch.long)
        tgt = torch.full((b, max(1, max(map(len, tgts)))), self.tok.pad_id, dtype=torch.long)
        for i, (s, t) in enumerate(zip(srcs, tgts)):
            src[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            tgt[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return {
            "images": self.images(samples),
            "src_tokens": src,
            "src_mask": src.eq(self.tok.pad_id),
            "tgt_tokens": tgt,
            "tgt_lengths": torch.tensor([len(t) for t in tgts], dtype=torch.long),
            "weights": torch.tensor(weights, dtype=torch.float32),
            "meta": metas,
        }


# ------------------------------------------------------------------------------------------------------ streams
def _slot(rank: int, world_size: int) -> tuple[int, int]:
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    return rank * workers + worker, world_size * workers


def _slot_samples(shards: list[Path], slot: int, slots: int) -> Iterator[dict]:
    if len(shards) >= slots:
        yield from iter_samples(shards[slot::slots])
    else:
        for i, sample in enumerate(iter_samples(shards)):
            if i % slots == slot:
                yield sample


def epoch_samples(shards: list[Path], slot: int, slots: int, seed: int, epoch: int) -> Iterator[dict]:
    """One training epoch of one slot, before the shuffle buffer: the shard order is reshuffled every epoch."""
    order = list(shards)
    random.Random(f"{seed}-epoch-{epoch}").shuffle(order)
    return _slot_samples(order, slot, slots)


class _Stream(IterableDataset):
    def __init__(self, shards: list[Path], collate: Collator, micro_batch: int, rank: int, world_size: int,
                 train: bool, seed: int, shuffle_buffer: int):
        super().__init__()
        self.shards, self.collate, self.micro_batch = shards, collate, micro_batch
        self.rank, self.world_size, self.train = rank, world_size, train
        self.seed, self.shuffle_buffer = seed, shuffle_buffer

    def _train_samples(self, slot: int, slots: int) -> Iterator[dict]:
        from webdataset.filters import _shuffle

        def endless():
            for epoch in range(10**12):
                count = 0
                for sample in epoch_samples(self.shards, slot, slots, self.seed, epoch):
                    count += 1
                    yield sample
                if count == 0:
                    raise NarvlError(f"{self.shards[0].parent}: ranks x workers = {slots} slots, more than the split's "
                                     f"samples: slot {slot} gets none (use fewer loader workers or ranks)")

        rng = random.Random(f"{self.seed}-slot-{slot}")
        return _shuffle(endless(), bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, slots = _slot(self.rank, self.world_size)
        samples = self._train_samples(slot, slots) if self.train else _slot_samples(self.shards, slot, slots)
        batch: list[dict] = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == self.micro_batch:
                yield self.collate(batch)
                batch = []
        if batch:
            yield self.collate(batch)


class Loader:
    """An iterable of batches (a torch DataLoader over one slot stream per worker)."""

    def __init__(self, stream: _Stream, num_workers: int, samples: int, batches_per_epoch: int):
        self.samples = samples  # samples in the split (all ranks)
        self.batches_per_epoch = batches_per_epoch  # batches one rank takes per epoch (training)
        self._loader = DataLoader(stream, batch_size=None, num_workers=num_workers,
                                  persistent_workers=False, prefetch_factor=2 if num_workers else None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._loader)


def _split_shards(shard_dir: Path, split: str) -> tuple[list[Path], int]:
    folder = ShardFolder(shard_dir)
    return folder.shards(split), folder.samples_count(split)


def _collator(tokenizer: Tokenizer, data_params, task: str, rewrite: Callable[[dict], dict] | None) -> Collator:
    lp = data_params.loader
    if task not in lp.max_target_len or task not in data_params.shard.image_size:
        raise NarvlError(f"data params: task '{task}' missing in loader.max_target_len or shard.image_size")
    return Collator(tokenizer, task, data_params.shard.image_size[task], lp.max_source_len, lp.max_target_len[task],
                    rewrite)


def train_loader(shard_dir, split: str, tokenizer: Tokenizer, data_params, task: str, micro_batch: int,
                 rank: int, world_size: int, seed: int, rewrite: Callable[[dict], dict] | None = None) -> Loader:
    """Endless shuffled batches of `micro_batch` samples for one rank (see the module docstring); `rewrite`: see
    `Collator`."""
    shards, samples = _split_shards(Path(shard_dir), split)
    lp = data_params.loader
    stream = _Stream(shards, _collator(tokenizer, data_params, task, rewrite), micro_batch, rank, world_size,
                     train=True, seed=seed, shuffle_buffer=lp.shuffle_buffer)
    return Loader(stream, lp.num_workers, samples, math.ceil(samples / (micro_batch * world_size)))


def mixed_batches(loaders: dict[str, Any], weights: dict[str, float], seed: int) -> Iterator[dict[str, Any]]:
    """Endless training batches from several tasks' streams (`narvl train --task pretrain`), each tagged with its
    task (batch["task"]): every batch is one task's, drawn with probability proportional to weights[task] by a
    generator seeded with `seed` alone, so that all ranks draw the same sequence of tasks and every optimizer step
    has one objective. With one task it is that task's stream."""
    names = sorted(loaders)
    rng = random.Random(f"{seed}-tasks")
    streams = {name: iter(loaders[name]) for name in names}
    shares = [weights[name] for name in names]
    while True:
        name = names[0] if len(names) == 1 else rng.choices(names, shares)[0]
        batch = next(streams[name])
        batch["task"] = name
        yield batch


def eval_loader(shard_dir, split: str, tokenizer: Tokenizer, data_params, task: str, micro_batch: int,
                rank: int, world_size: int, rewrite: Callable[[dict], dict] | None = None) -> Loader:
    """Every sample of the split exactly once across ranks and workers, in a fixed order, meta kept."""
    shards, samples = _split_shards(Path(shard_dir), split)
    stream = _Stream(shards, _collator(tokenizer, data_params, task, rewrite), micro_batch, rank, world_size,
                     train=False, seed=0, shuffle_buffer=0)
    return Loader(stream, data_params.loader.num_workers, samples, math.ceil(samples / (micro_batch * world_size)))


__all__ = ["train_loader", "eval_loader", "mixed_batches", "iter_samples", "Collator", "Loader", "decode_jpeg"]
