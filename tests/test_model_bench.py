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
    assert [(r["task"], r["batch"], r["device"]) for r in rows] == [("grounding", 1, "cpu"), ("grounding", 2, "cpu")]
    for r in rows:
        assert set(r["ms"]) == {"encoder", "nar_greedy", "nar_beam", "ar_greedy", "ar_beam"}
        assert all(r["ms"][k] > 0 and r["ms"][k] <= r["ms_median"][k] for k in r["ms"])
        assert r["ar_forced_length"] and r["num_queries"] == 5 and r["image_size"] == 48 and r["ar_max_len"] == 5
        assert r["ratios"]["ar_greedy_over_nar_greedy"] == r["ms"]["ar_greedy"] / r["ms"]["nar_greedy"]
        assert r["ratios"]["nar_greedy_over_encoder"] == r["ms"]["nar_greedy"] / r["ms"]["encoder"]
        assert r["ratios_by_nar"] == {"nar": r["ratios"]} and r["paper_speedup"] == bench.PAPER_SPEEDUP["grounding"]
    assert "nar_g/enc" in capsys.readouterr().out
    # the report reads these rows: per-sample latency of every (model, decoder) at each batch size
    from narvl.report.inputs import load_bench

    records, info = load_bench(out)
    got = {(r["model"], r["decoder"], r["batch_size"]): r["ms_per_sample"] for r in records}
    for r in rows:
        assert got[("ar", "beam", r["batch"])] == r["ms"]["ar_beam"] / r["batch"]
        assert got[("nar", "greedy", r["batch"])] == r["ms"]["nar_greedy"] / r["batch"]


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
    nar, ar = setup["nars"]["nar"], setup["ar"]
    for (k1, v1), (k2, v2) in zip(nar.encoder.state_dict().items(), ar.encoder.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    images, src, mask = setup["inputs"](2)
    out = ar.generate(images, src, mask, setup["ar_max_len"], 2, 1.0, min_len=setup["ar_min_len"])
    assert [len(r) for r in out] == [2, 2]


def test_models_mode_reads_eval_shards_and_names_models_by_folder(tmp_path):
    """Model files (ar, nar, nar-kd) of one task + caption shards made by the data stage's own writer."""
    import dataclasses

    from narvl import model as narvl_model
    from narvl import params
    from narvl.data.readers import read_ofa_tsv
    from narvl.data.shard import write_shards
    from narvl.data.tokenizer import Tokenizer
    from tests.fixtures.data import make

    prm_dir = tmp_path / "params"
    shutil.copytree(Path(__file__).parents[1] / "params", prm_dir)
    decode = yaml.safe_load((prm_dir / "decode.yaml").read_text())
    decode["decode"].update(bench_batch_sizes=[1, 3], bench_repeats=1, beam_size=2)
    (prm_dir / "decode.yaml").write_text(yaml.safe_dump(decode))
    pipe = yaml.safe_load((prm_dir / "pipeline.yaml").read_text())
    pipe["pipeline"]["eval_splits"]["caption"] = ["val"]
    (prm_dir / "pipeline.yaml").write_text(yaml.safe_dump(pipe))

    rows = [[str(i), str(i), f"a box number {i}", "", make.b64(make.jpeg_bytes(i, (60, 40)))] for i in range(2)]
    tsv = make.ofa_tsv(tmp_path / "caption.tsv", rows)
    shards = tmp_path / "shards"
    write_shards(read_ofa_tsv("caption", "val", tsv), "caption", params.load(prm_dir / "data.yaml"),
                 shards / "caption")
    tok = Tokenizer.train([r[2] for r in rows] + ["what does the image describe?"], vocab_size=60, num_bins=10,
                          lowercase=True)
    tok.save(shards / "tokenizer.json")
    special = {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id, "unk": tok.unk_id, "blank": tok.blank_id}
    arch = dataclasses.replace(params.PRESETS["cpu"], d_model=32, heads=2, ffn_dim=64, resnet_width=8)
    paths = []
    for folder, kind in (("caption-ar", "ar"), ("caption-nar", "nar"), ("caption-nar-kd", "nar")):
        m = narvl_model.build_model(kind, arch, tok.vocab_size, 20, special)
        paths.append(tmp_path / "runs" / folder / "model.pt")
        narvl_model.save(paths[-1], m, {"task": "caption", "tokenizer": "tokenizer.json", "step": 0})

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "decode.json"
    args = parser.parse_args(["--params", str(prm_dir), "--models", *map(str, paths), "--shards", str(shards),
                              "--device", "cpu", "--out", str(out)])
    assert bench.main(args) == 0
    result = read_json(out)
    assert result["mode"] == "models" and result["splits"] == {"caption": "val"}
    assert set(result["models"]["caption"]) == {"ar", "nar", "nar-kd"}
    rows = result["results"]
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        assert set(r["ms"]) == {"encoder", "nar_greedy", "nar_beam", "nar-kd_greedy", "nar-kd_beam", "ar_greedy",
                                "ar_beam"}
        assert r["nar_models"] == ["nar", "nar-kd"] and set(r["ratios_by_nar"]) == {"nar", "nar-kd"}
        assert r["ratios"] == r["ratios_by_nar"]["nar"]
        assert not r["ar_forced_length"] and r["image_size"] == 96
