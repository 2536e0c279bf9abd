"""End to end on a small embedded default (`narvl synth`): shard all three tasks, train the tokenizer, load."""

from __future__ import annotations

import dataclasses
import json

import pytest

from narvl import params
from narvl.cli import main as cli_main
from narvl.data.loader import eval_loader, iter_samples, train_loader
from narvl.synth.generate import generate
from narvl.data.tokenizer import Tokenizer

BASE = params.load("params/data.yaml")


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    root = tmp_path_factory.mktemp("default")
    synth = dataclasses.replace(BASE.synth, train_images=24, restval_images=2, val_images=4, test_images=4)
    generate(synth, root / "raw")
    p = dataclasses.replace(BASE, synth=synth, shard=dataclasses.replace(BASE.shard, samples_per_shard=25),
                            loader=dataclasses.replace(BASE.loader, num_workers=0))
    (root / "params").mkdir()
    (root / "params/data.yaml").write_text(json.dumps({"data": dataclasses.asdict(p)}))
    raw, yaml = root / "raw", str(root / "params")
    commands = {
        "caption": ["--format", "karpathy", "--annotations", raw / "captions/dataset_coco.json"],
        "vqa": ["--format", "vqav2", "--questions", *sorted((raw / "vqa").glob("*_questions.json")),
                "--annotations", *sorted((raw / "vqa").glob("*_annotations.json"))],
        "grounding": ["--format", "refer", "--refs", raw / "refcoco/refs(unc).p",
                      "--instances", raw / "refcoco/instances.json"],
    }
    for task, argv in commands.items():
        assert cli_main(["shard", "--params", yaml, "--task", task, *map(str, argv), "--images", str(raw / "images"),
                         "--out", str(root / task)]) == 0
    assert cli_main(["tokenizer", "--params", yaml, "--shards", *(str(root / t) for t in commands),
                     "--out", str(root / "tokenizer.json")]) == 0
    return root, p


def test_default_shards_have_every_split_and_no_skips(default):
    root, _ = default
    expected = {"caption": {"train", "val", "test"}, "vqa": {"train", "val"},
                "grounding": {"train", "val", "testA", "testB"}}
    for task, splits in expected.items():
        sizes = json.loads((root / task / "sizes.json").read_text())
        assert set(sizes) == splits, task
        for split, entry in sizes.items():
            assert entry["samples"] > 0 and entry["skipped"] == 0, (task, split)
            keys = [s["key"] for s in iter_samples([root / task / n for n in entry["shards"]])]
            assert keys == [f"{split}_{i:08d}" for i in range(entry["samples"])]


def test_default_text_is_covered_by_the_tokenizer_and_boxes_survive(default):
    root, p = default
    tok = Tokenizer.load(root / "tokenizer.json")
    for task in ("caption", "vqa", "grounding"):
        batch = next(iter(train_loader(root / task, "train", tok, p, task, 8, 0, 1, seed=0)))
        for i, meta in enumerate(batch["meta"]):
            src = batch["src_tokens"][i][~batch["src_mask"][i]].tolist()
            assert tok.unk_id not in src
            if task == "grounding":
                box = tok.tokens_to_box(batch["tgt_tokens"][i].tolist(), max(meta["size"]))
                step = max(meta["size"]) / (tok.num_bins - 1)
                assert all(abs(a - b) <= step / 2 + 1e-6 for a, b in zip(box, meta["box"]))
            else:
                n = int(batch["tgt_lengths"][i])
                assert tok.decode(batch["tgt_tokens"][i, :n].tolist()) in meta["target"]
        n_eval = sum(len(b["meta"]) for b in eval_loader(root / task, "val", tok, p, task, 8, 0, 1))
        assert n_eval == json.loads((root / task / "sizes.json").read_text())["val"]["samples"]
