"""`narvl preview` and `narvl bench data` on tiny shards."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from narvl import params
from narvl.cli import main as cli_main
from narvl.data import bench
from narvl.data.tokenizer import Tokenizer
from narvl.errors import NarvlError
from tests.fixtures.data import make

BASE = params.load("params/data.yaml")


@pytest.fixture(scope="module")
def grounding(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    make.refer(root / "raw")
    out = root / "grounding"
    assert cli_main(["shard", "--params", "params", "--task", "grounding", "--format", "refer",
                     "--refs", str(root / "raw/refcoco/refs(unc).p"), "--instances",
                     str(root / "raw/refcoco/instances.json"), "--images", str(root / "raw/images"),
                     "--out", str(out)]) == 0
    make.karpathy(root / "raw")
    assert cli_main(["shard", "--params", "params", "--task", "caption", "--format", "karpathy",
                     "--annotations", str(root / "raw/captions/dataset_coco.json"), "--images",
                     str(root / "raw/images"), "--out", str(root / "caption")]) == 0
    tok = Tokenizer.train(["which region does the text \" girl on the left \" describe?"] * 3, 100,
                          BASE.tokenizer.num_bins, True)
    tok.save(root / "tokenizer.json")
    return root


def test_preview_draws_a_png_grid(grounding, capsys):
    out = grounding / "preview.png"
    assert cli_main(["preview", "--shards", str(grounding / "grounding"), "--split", "testB", "--tokenizer",
                     str(grounding / "tokenizer.json"), "--params", "params", "--out", str(out)]) == 0
    assert "6 samples" in capsys.readouterr().out
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 600
    green = (image[..., 1] > 200) & (image[..., 0] < 80) & (image[..., 2] < 80)
    assert green.sum() > 100  # the boxes decoded from location tokens are drawn


def test_bench_data_reports_0_1_2_workers(grounding, tmp_path):
    p = dataclasses.replace(BASE, loader=dataclasses.replace(BASE.loader, bench_micro_batch=4, bench_batches=3))
    (tmp_path / "params").mkdir()  # a parameter folder holding the one file `bench data` reads
    (tmp_path / "params/data.yaml").write_text(json.dumps({"data": dataclasses.asdict(p)}))  # JSON is YAML
    out = tmp_path / "data.json"
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.main(parser.parse_args(["--params", str(tmp_path / "params"), "--shards",
                                         str(grounding / "caption"), "--tokenizer",
                                         str(grounding / "tokenizer.json"), "--out", str(out)])) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "caption" and report["micro_batch"] == 4
    assert [r["workers"] for r in report["results"]] == [0, 1, 2]
    for r in report["results"]:
        assert r["samples"] == 12 and r["samples_per_s"] > 0
    with pytest.raises(NarvlError, match="no train samples"):
        bench.main(parser.parse_args(["--params", str(tmp_path / "params"), "--shards", str(grounding / "grounding"),
                                      "--tokenizer", str(grounding / "tokenizer.json"), "--out", str(out)]))
