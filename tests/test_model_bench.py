"""`narvl bench decode --preset`: runs end to end on tiny settings and writes the documented JSON."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import yaml

from narvl.decode import bench
from narvl.errors import NarvlError
from narvl.io import read_json


def small_params(tmp_path: Path) -> Path:
    out = tmp_path / "params"
    shutil.copytree(Path(__file__).parents[1] / "params", out)
    decode = yaml.safe_load((out / "decode.yaml").read_text())
    decode["decode"].update(bench_batch_sizes=[1, 2], bench_repeats=1, beam_size=2)
    (out / "decode.yaml").write_text(yaml.safe_dump(decode))
    data = yaml.safe_load((out / "data.yaml").read_text())
    data["data"]["shard"]["image_size"] = {"caption": 32, "vqa": 32, "grounding": 48, "entailment": 32}
    # AR lengths (max_target_len + 1, EOS included): caption 4, vqa 3, grounding 5, entailment 3
    data["data"]["loader"]["max_target_len"] = {"caption": 3, "vqa": 2, "grounding": 4, "entailment": 2}
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
        assert all(0 < r["ms_iqr"][k][0] <= r["ms"][k] <= r["ms_iqr"][k][1] for k in r["ms"])
        assert set(r["speedup"]) == {"nar_greedy", "nar_beam"} and r["speedup"]["nar_greedy"]["pairs"] == 1
        assert r["threads"] >= 1 and r["batches"] == 1 and r["samples"] == r["batch"]
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


def test_bf16_weights_and_images(tmp_path):
    """--dtype bf16 (what scripts/gpu_check.sh times on a GPU) runs on the CPU too, and the JSON says so."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out, prm = tmp_path / "decode.json", small_params(tmp_path)
    args = parser.parse_args(["--params", str(prm), "--preset", "cpu", "--device", "cpu",
                              "--tasks", "vqa", "--dtype", "bf16", "--threads", "1", "--out", str(out)])
    assert bench.main(args) == 0
    result = read_json(out)
    assert result["dtype"] == "bf16" and {r["dtype"] for r in result["results"]} == {"bf16"}
    assert all(v > 0 for r in result["results"] for v in r["ms"].values())
    args = parser.parse_args(["--params", str(prm), "--preset", "cpu", "--device", "cpu",
                              "--tasks", "vqa", "--dtype", "fp16", "--out", str(tmp_path / "fp16.json")])
    with pytest.raises(NarvlError, match="--dtype fp16 needs a GPU"):
        bench.main(args)
    assert not (tmp_path / "fp16.json").exists()


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
    ((images, src, mask),) = setup["inputs"](2)
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
    # the split has 2 samples (fewer than decode.bench_samples): batch 1 times each, batch 3 tiles them
    assert [(r["samples"], r["batches"]) for r in rows] == [(2, 2), (3, 1)]
    assert rows[0]["speedup"]["nar-kd_beam"]["pairs"] == 2
    # batch 3 holds the whole sample in one batch: it gets more rounds, so as many pairs as batch 1
    assert [(r["rounds"], r["speedup"]["nar_greedy"]["pairs"]) for r in rows] == [(1, 2), (2, 2)]
    for r in rows:
        assert set(r["ms"]) == {"encoder", "nar_greedy", "nar_beam", "nar-kd_greedy", "nar-kd_beam", "ar_greedy",
                                "ar_beam"}
        assert r["nar_models"] == ["nar", "nar-kd"] and set(r["ratios_by_nar"]) == {"nar", "nar-kd"}
        assert r["ratios"] == r["ratios_by_nar"]["nar"]
        assert not r["ar_forced_length"] and r["image_size"] == 96
        assert set(r["encoder_variants"]) == {"eager", "fold_bn", "fold_bn+channels_last"}
        assert all(v["median"] > 0 for v in r["encoder_variants"].values())
        assert set(r["nar_parts"]) == {"decoder", "collapse"} and r["nar_parts"]["collapse"]["median"] > 0
        assert r["samples_per_s"]["nar_greedy"] == pytest.approx(1000 * r["batch"] / r["ms"]["nar_greedy"])
    assert result["inference"] == {"fold_batchnorm": True, "channels_last": True, "compile_variant": False}


def test_pairs_are_timed_back_to_back_and_alternate_order(monkeypatch):
    """Each NAR method is timed next to the AR method of its decoder; the order flips every round."""
    calls = []
    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock) / 1000.0)
    fns = {name: (lambda name=name: calls.append(name))
           for name in ("encoder", "nar_greedy", "nar_beam", "nar-kd_greedy", "nar-kd_beam", "ar_greedy", "ar_beam")}
    import torch

    times = bench.measure([fns], 2, torch.device("cpu"))
    per_round = [calls[i:i + 7] for i in range(0, len(calls), 7)]
    assert len(per_round) == 3 and len(times) == 2  # one warm-up round, two timed
    assert per_round[0] == ["encoder", "nar_greedy", "ar_greedy", "nar_beam", "ar_beam", "nar-kd_greedy",
                            "nar-kd_beam"]
    assert per_round[1] == ["encoder", "ar_greedy", "nar_greedy", "ar_beam", "nar_beam", "nar-kd_greedy",
                            "nar-kd_beam"]
    assert bench.pairs(fns) == [("nar_greedy", "ar_greedy"), ("nar_beam", "ar_beam"), ("nar-kd_greedy", "ar_greedy"),
                                ("nar-kd_beam", "ar_beam")]


def test_speedup_is_the_median_of_per_pair_ratios():
    """A load spike slows AR and NAR of one pair alike: the per-pair ratio stays, a ratio of medians would not."""
    times = [{"encoder": 1.0, "nar_greedy": n, "ar_greedy": a, "nar_beam": 1.0, "ar_beam": 2.0}
             for n, a in ((1.0, 4.0), (1.0, 4.0), (10.0, 40.0), (10.0, 40.0), (1.1, 4.4))]
    s = bench.summarise(times)
    assert s["speedup"]["nar_greedy"] == {"median": 4.0, "q1": 4.0, "q3": 4.0, "pairs": 5}
    assert s["ms"]["nar_greedy"] == 1.1 and s["ms_iqr"]["nar_greedy"] == [1.0, 10.0]
    assert s["speedup"]["nar_beam"]["median"] == 2.0


def test_batch_sizes_must_be_positive(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "decode.json"
    args = parser.parse_args(["--params", str(small_params(tmp_path)), "--preset", "cpu", "--device", "cpu",
                              "--tasks", "vqa", "--batch-sizes", "1", "0", "--out", str(out)])
    with pytest.raises(NarvlError, match="--batch-sizes 1 0: every batch size must be at least 1"):
        bench.main(args)
    assert not out.exists()


def test_merge_joins_per_task_runs_as_one_run_writes_them(tmp_path):
    """The workflow times each task in its own job (`bench_decode_task`) and merges the files (`--merge`): the
    merged file has the rows, models and layout of one run over every task, in that run's order (CPU rows, tasks
    alphabetically); parts timed differently, or a task in two parts, are refused naming the file."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    prm = small_params(tmp_path)

    def run(out, *tasks):
        args = parser.parse_args(["--params", str(prm), "--preset", "cpu", "--device", "cpu", "--threads", "1",
                                  "--tasks", *tasks, "--out", str(out)])
        assert bench.main(args) == 0
        return read_json(out)

    whole = run(tmp_path / "whole.json", "grounding", "vqa")
    run(tmp_path / "vqa.json", "vqa")
    run(tmp_path / "grounding.json", "grounding")
    merged_out = tmp_path / "decode.json"
    assert bench.main(parser.parse_args(["--merge", str(tmp_path / "vqa.json"), str(tmp_path / "grounding.json"),
                                         "--out", str(merged_out)])) == 0  # no --params: it times nothing
    merged = read_json(merged_out)
    assert set(merged) == set(whole)
    assert {k: v for k, v in merged.items() if k != "results"} == {k: v for k, v in whole.items() if k != "results"}
    assert [(r["device"], r["task"], r["batch"]) for r in merged["results"]] == \
        [(r["device"], r["task"], r["batch"]) for r in whole["results"]] == \
        [("cpu", "grounding", 1), ("cpu", "grounding", 2), ("cpu", "vqa", 1), ("cpu", "vqa", 2)]
    assert [set(r) for r in merged["results"]] == [set(r) for r in whole["results"]]

    # a run's own rows split by task and merged again give that run's file, byte for byte
    for task in ("vqa", "grounding"):
        part = dict(whole, results=[r for r in whole["results"] if r["task"] == task])
        (tmp_path / f"split-{task}.json").write_text(json.dumps(part))
    again = tmp_path / "again.json"
    bench.main(parser.parse_args(["--merge", str(tmp_path / "split-vqa.json"), str(tmp_path / "split-grounding.json"),
                                  "--out", str(again)]))
    assert again.read_bytes() == (tmp_path / "whole.json").read_bytes()

    # the models mode's per-task dicts are merged too
    for task, name in (("vqa", "split-vqa.json"), ("grounding", "split-grounding.json")):
        part = read_json(tmp_path / name)
        part.update(mode="models", preset=None, models={task: {"ar": f"runs/{task}-ar/model.pt"}},
                    splits={task: "val"})
        (tmp_path / name).write_text(json.dumps(part))
    assert bench.main(parser.parse_args(["--merge", str(tmp_path / "split-vqa.json"),
                                         str(tmp_path / "split-grounding.json"), "--out", str(again)])) == 0
    merged = read_json(again)
    assert merged["splits"] == {"grounding": "val", "vqa": "val"} and set(merged["models"]) == {"grounding", "vqa"}

    # rows come out by device, then task, whatever order a part holds them in (`--tasks vqa grounding`)
    mixed = dict(whole, results=[r for r in whole["results"] if r["task"] == "vqa"]
                 + [r for r in whole["results"] if r["task"] == "grounding"])
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    assert bench.merge([tmp_path / "mixed.json"])["results"] == whole["results"]

    with pytest.raises(NarvlError, match=r"whole\.json: task 'grounding' is also in .*grounding\.json"):
        bench.merge([tmp_path / "grounding.json", tmp_path / "whole.json"])
    other = read_json(tmp_path / "vqa.json")
    other["decode"]["beam_size"] = 7
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(NarvlError, match=r"other\.json: 'decode' is .* must be timed alike .*--forcerun bench_decode_task"):
        bench.merge([tmp_path / "grounding.json", tmp_path / "other.json"])
    (tmp_path / "rowless.json").write_text(json.dumps({"results": [{"batch": 1}]}))
    with pytest.raises(NarvlError, match=r"rowless\.json: results\[0\] has no 'task' and 'device' names"):
        bench.merge([tmp_path / "rowless.json"])
    (tmp_path / "empty.json").write_text(json.dumps({"results": []}))
    with pytest.raises(NarvlError, match=r"empty\.json: not a `narvl bench decode` file"):
        bench.merge([tmp_path / "empty.json"])
    with pytest.raises(NarvlError, match="--models and --preset need --params"):
        bench.main(parser.parse_args(["--preset", "cpu", "--out", str(tmp_path / "x.json")]))
