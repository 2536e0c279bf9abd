"""`narvl bench decode --preset`: runs end to end on tiny settings and writes the documented JSON."""

import argparse
import shutil
from pathlib import Path

import yaml

from narvl.decode import bench
from narvl.io import read_json


def small_params(tmp_path: Path) -> Path:
    out = tmp_path / "params"
    shutil.copytree(Path(__file__).parents[1] / "params", out)
    decode = yaml.safe_load((out / "decode.yaml").read_text())
    decode["decode"].update(bench_batch_sizes=[1, 2], bench_repeats=1, beam_size=2,
                            max_len={"caption": 4, "vqa": 3, "grounding": 5})
    (out / "decode.yaml").write_text(yaml.safe_dump(decode))
    data = yaml.safe_load((out / "data.yaml").read_text())
    data["data"]["shard"]["image_size"] = {"caption": 32, "vqa": 32, "grounding": 48}
    data["data"]["loader"]["max_source_len"] = 8
    (out / "data.yaml").write_text(yaml.safe_dump(data))
    return out


def test_preset_mode_writes_latencies_and_ratios(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "decode.json"
    args = parser.parse_args(["--params", str(small_params(tmp_path)), "--preset", "cpu", "--device", "cpu",
                              "--tasks", "grounding", "--out", str(out)])
    assert bench.main(args) == 0
    result = read_json(out)
    assert result["mode"] == "preset" and result["arch"]["d_model"] == 64
    rows = result["results"]
    assert [(r["task"], r["batch"]) for r in rows] == [("grounding", 1), ("grounding", 2)]
    for r in rows:
        assert set(r["ms"]) == set(bench.METHODS) and all(v > 0 for v in r["ms"].values())
        assert r["ratios"]["ar_greedy_over_nar_greedy"] == r["ms"]["ar_greedy"] / r["ms"]["nar_greedy"]
        assert r["ar_forced_length"] and r["paper_speedup"] == bench.PAPER_SPEEDUP[r["task"]]
    assert rows[0]["num_queries"] == 5 and rows[0]["image_size"] == 48 and rows[0]["ar_max_len"] == 5
    assert "nar_g/enc" in capsys.readouterr().out


def test_forced_length_generation_in_preset_setup(tmp_path):
    """The AR models the preset mode builds generate exactly max_len - 1 tokens (+ EOS) and share the encoder."""
    import torch

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--params", str(small_params(tmp_path)), "--preset", "cpu", "--tasks", "vqa",
                              "--out", str(tmp_path / "x.json")])
    from narvl import params

    prm = {s: params.load(args.params / f"{s}.yaml", s) for s in ("model", "data", "decode", "pipeline")}
    (setup,) = bench._preset_setups(args, prm)
    nar, ar = setup["nar"], setup["ar"]
    for (k1, v1), (k2, v2) in zip(nar.encoder.state_dict().items(), ar.encoder.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    images, src, mask = setup["inputs"](2)
    out = ar.generate(images, src, mask, setup["ar_max_len"], 2, 1.0, min_len=setup["ar_min_len"])
    assert [len(r) for r in out] == [2, 2]
