"""Loaders: the batch dict, exactly-once evaluation across ranks and workers, the training split per slot."""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from narvl import params
from narvl.data.images import IMAGENET_MEAN, IMAGENET_STD
from narvl.data.loader import epoch_samples, eval_loader, iter_samples, train_loader
from narvl.data.readers import read_ofa_tsv
from narvl.data.shard import write_shards
from narvl.data.shard_folder import ShardFolder
from narvl.data.tokenizer import Tokenizer
from narvl.errors import NarvlError
from tests.fixtures.data import make

BASE = params.load("params/data.yaml")
N = 23  # samples in the test split: not a multiple of ranks x workers x batch


def data_params(per_shard: int, workers: int, buffer: int = 4):
    return dataclasses.replace(
        BASE, shard=dataclasses.replace(BASE.shard, samples_per_shard=per_shard),
        loader=dataclasses.replace(BASE.loader, num_workers=workers, shuffle_buffer=buffer))


def tsv_rows(task: str) -> list[list[str]]:
    rows = []
    for i in range(N):
        size = (40 + 3 * i, 30 + (7 * i) % 50)
        jpg = make.b64(make.jpeg_bytes(i, size))
        if task == "caption":
            rows.append([str(i), str(i), f"caption number {i} of a box", "", jpg])
        elif task == "vqa":
            rows.append([str(100 + i), str(i), f"question {i}?", f"1.0|!+yes&&0.{i % 9 + 1}|!+no", "", jpg])
        else:
            w, h = size
            box = f"{w * 0.1:.1f},{h * 0.2:.1f},{w * 0.9:.1f},{h * 0.7:.1f}"
            rows.append([str(i), str(i), f"box {i}", box, jpg])
    return rows


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """{(task, per_shard): folder} with train and val splits of N samples each."""
    root = tmp_path_factory.mktemp("loader")
    out = {}
    for task in ("caption", "vqa", "grounding"):
        for per_shard in (3, 100):
            if task != "caption" and per_shard == 3:
                continue
            tsv = make.ofa_tsv(root / f"{task}.tsv", tsv_rows(task))

            def records():
                yield from read_ofa_tsv(task, "train", tsv)
                yield from read_ofa_tsv(task, "val", tsv)

            folder = root / f"{task}-{per_shard}"
            write_shards(records(), task, data_params(per_shard, 0), folder)
            out[task, per_shard] = folder
    return out


@pytest.fixture(scope="module")
def tok():
    texts = [r[2] for r in tsv_rows("caption")] + ["what does the image describe?", "yes no question"]
    return Tokenizer.train(texts, vocab_size=200, num_bins=BASE.tokenizer.num_bins, lowercase=True)


def all_keys(folder: Path, split: str) -> list[str]:
    sizes = json.loads((folder / "sizes.json").read_text())
    return [s["key"] for s in iter_samples([folder / s for s in sizes[split]["shards"]])]


@pytest.mark.parametrize("per_shard", [3, 100])  # 8 shards (>= 4 slots) and 1 shard (< 4 slots)
def test_eval_every_sample_exactly_once_over_2_ranks_and_2_workers_in_fixed_order(shards, tok, per_shard):
    folder = shards["caption", per_shard]
    p = data_params(per_shard, workers=2)

    def run():
        return [[m["id"] for b in eval_loader(folder, "val", tok, p, "caption", 4, rank, 2) for m in b["meta"]]
                for rank in (0, 1)]

    first = run()
    seen = Counter(k for rank in first for k in rank)
    assert sorted(seen) == sorted(all_keys(folder, "val")) and set(seen.values()) == {1} and len(seen) == N
    assert run() == first  # deterministic order
    assert first[0] and first[1]


@pytest.mark.parametrize("per_shard", [3, 100])
def test_training_epochs_split_samples_across_slots_exactly(shards, per_shard):
    folder = shards["caption", per_shard]
    shard_files = [folder / s for s in json.loads((folder / "sizes.json").read_text())["train"]["shards"]]
    orders = []
    for epoch in (0, 1):
        per_slot = [[s["key"] for s in epoch_samples(shard_files, slot, 4, seed=7, epoch=epoch)] for slot in range(4)]
        keys = [k for slot in per_slot for k in slot]
        assert sorted(keys) == sorted(all_keys(folder, "train")) and len(set(keys)) == N
        assert all(per_slot)
        orders.append(per_slot)
    if per_shard == 3:
        assert orders[0] != orders[1]  # shard order reshuffled every epoch


def test_train_loader_ranks_and_workers_get_different_samples_and_never_end(shards, tok):
    folder = shards["caption", 3]
    p = data_params(3, workers=2, buffer=2)
    firsts = []
    for rank in (0, 1):
        loader = train_loader(folder, "train", tok, p, "caption", 2, rank, 2, seed=0)
        assert loader.batches_per_epoch == 6  # ceil(23 / (2 * 2))
        it = iter(loader)
        batches = [next(it) for _ in range(2 * loader.batches_per_epoch)]  # more than an epoch: it goes on
        assert all(b["images"].shape[0] == 2 for b in batches)
        firsts.append({m["id"] for b in batches[:2] for m in b["meta"]})  # one batch from each worker
        del it
    assert len(firsts[0]) == len(firsts[1]) == 4
    assert not firsts[0] & firsts[1]


def test_batch_dict_images_tokens_and_targets(shards, tok):
    p = data_params(100, workers=0)
    canvas = BASE.shard.image_size["caption"]
    (batch, *_) = list(eval_loader(shards["caption", 100], "val", tok, p, "caption", 5, 0, 1))
    assert batch["images"].shape == (5, 3, canvas, canvas) and batch["images"].dtype == torch.float32
    assert batch["src_tokens"].dtype == torch.long and batch["src_mask"].dtype == torch.bool
    assert batch["src_mask"].equal(batch["src_tokens"].eq(tok.pad_id))
    assert batch["tgt_lengths"].dtype == torch.long and batch["weights"].dtype == torch.float32
    for i, meta in enumerate(batch["meta"]):
        src = batch["src_tokens"][i][~batch["src_mask"][i]].tolist()
        assert src[0] == tok.bos_id and src[-1] == tok.eos_id and tok.decode(src) == meta["prompt"]
        n = batch["tgt_lengths"][i].item()
        max_len = BASE.loader.max_target_len["caption"]
        assert batch["tgt_tokens"][i, :n].tolist() == tok.encode(meta["target"])[:max_len]
        assert (batch["tgt_tokens"][i, n:] == tok.pad_id).all()
        assert tok.bos_id not in batch["tgt_tokens"][i].tolist() and tok.eos_id not in batch["tgt_tokens"][i].tolist()
    # pixels: the resized JPEG normalised with ImageNet statistics at the top left, zeros elsewhere
    sample = next(iter_samples([shards["caption", 100] / "caption-val-000000.tar"]))
    w, h = sample["meta"]["size"]
    assert max(w, h) == canvas
    pixels = torch.tensor(np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")), dtype=torch.float32)
    pixels = pixels.permute(2, 0, 1) / 255
    expected = (pixels - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(batch["images"][0, :, :h, :w], expected, atol=1e-5)
    assert batch["images"][0, :, h:, :].abs().sum() == 0 and batch["images"][0, :, :, w:].abs().sum() == 0


def test_vqa_weight_is_the_target_soft_score_and_grounding_target_is_4_bins(shards, tok):
    p = data_params(100, workers=0)
    for batch in eval_loader(shards["vqa", 100], "val", tok, p, "vqa", 8, 0, 1):
        for i, meta in enumerate(batch["meta"]):
            assert meta["target"] == "yes" and batch["weights"][i].item() == pytest.approx(1.0)
    for batch in eval_loader(shards["grounding", 100], "val", tok, p, "grounding", 8, 0, 1):
        assert batch["tgt_tokens"].shape[1] == 4 and (batch["tgt_lengths"] == 4).all()
        for i, meta in enumerate(batch["meta"]):
            size = max(meta["size"])
            box = tok.tokens_to_box(batch["tgt_tokens"][i].tolist(), size)
            step = size / (tok.num_bins - 1)
            assert all(abs(a - b) <= step / 2 + 1e-6 for a, b in zip(box, meta["box"]))
            assert meta["box"] == pytest.approx([c * size / max(meta["orig_size"]) for c in meta["orig_box"]], abs=0.6)


def test_region_samples_rewrite_grounding_samples_into_text_targets(shards, tok):
    """The pretraining's region samples (OFA's grounded captioning): a grounding sample's box goes into the prompt as
    its 4 location tokens, the target is the object's category as text; a sample without a category is an error
    naming it."""
    from narvl.data.loader import Collator
    from narvl.tasks.grounding import region_sample

    samples = [dict(s, meta=dict(s["meta"], category="red circle"))
               for s in islice(iter_samples(ShardFolder(shards["grounding", 100]).shards("train")), 3)]
    canvas = data_params(100, 0).shard.image_size["grounding"]
    batch = Collator(tok, "grounding", canvas, 64, 16, rewrite=region_sample)(samples)
    for i, sample in enumerate(samples):
        bins = [t for t in tok.encode(sample["meta"]["target"]) if tok.is_bin(t)]
        assert len(bins) == 4 and all(tok.is_bin(b) for b in bins)
        src = batch["src_tokens"][i][~batch["src_mask"][i]].tolist()
        head = tok.encode("what does the region describe?")
        assert src[: len(head) + 1] == [tok.bos_id, *head] and src[-5:] == [*bins, tok.eos_id]
        want = tok.encode("red circle")
        assert batch["tgt_tokens"][i][: batch["tgt_lengths"][i]].tolist() == want and batch["weights"][i] == 1
        assert batch["meta"][i]["target"] == "red circle"
    plain = Collator(tok, "grounding", canvas, 64, 16)(samples)  # without the rewrite: the box tokens
    assert all(tok.is_bin(t) for t in plain["tgt_tokens"][0].tolist())
    bare = [dict(s, meta={k: v for k, v in s["meta"].items() if k != "category"}) for s in samples]
    with pytest.raises(NarvlError, match=r"grounding sample train_\d+: no 'category' field"):
        Collator(tok, "grounding", canvas, 64, 16, rewrite=region_sample)(bare)


def test_training_with_more_slots_than_samples_stops_with_a_clear_error(tmp_path, tok):
    rows = [[str(i), str(i), f"caption {i}", "", make.b64(make.jpeg_bytes(i, (32, 24)))] for i in range(3)]
    tsv = make.ofa_tsv(tmp_path / "c.tsv", rows)
    write_shards(read_ofa_tsv("caption", "train", tsv), "caption", data_params(100, 0), tmp_path / "c")
    loader = train_loader(tmp_path / "c", "train", tok, data_params(100, 0), "caption", 2, 3, 4, seed=0)
    with pytest.raises(NarvlError, match="4 slots, more than the split's samples: slot 3 gets none"):
        next(iter(loader))


def test_mixed_batches_draw_tasks_by_weight_alike_on_every_rank_and_tag_them():
    """`narvl train --task pretrain`'s stream: each batch is one task's, tagged, drawn in proportion to the weights by
    a generator of the seed alone (two ranks draw the same tasks), each task's own stream in its own order."""
    from narvl.data.loader import mixed_batches

    def stream(task, rank):
        return ({"n": i, "rank": rank} for i in range(10**6))

    weights = {"caption": 1.0, "grounding": 3.0}
    draws = {rank: [next(it) for _ in range(4000)] for rank in (0, 1)
             for it in [mixed_batches({t: stream(t, rank) for t in weights}, weights, seed=5)]}
    tasks = [[b["task"] for b in draws[rank]] for rank in (0, 1)]
    assert tasks[0] == tasks[1]
    share = Counter(tasks[0])["grounding"] / 4000
    assert 0.72 < share < 0.78, share
    for task in weights:  # each task's batches come in its stream's order
        assert [b["n"] for b in draws[0] if b["task"] == task] == list(range(Counter(tasks[0])[task]))
    other = [b["task"] for b, _ in zip(mixed_batches({t: stream(t, 0) for t in weights}, weights, seed=6),
                                       range(4000))]
    assert other != tasks[0]
    single = mixed_batches({"vqa": stream("vqa", 0)}, {"vqa": 1.0}, seed=5)
    assert [next(single)["task"] for _ in range(3)] == ["vqa"] * 3
