"""Parameter files: every stage loads; unknown, missing and mistyped keys fail naming the file and the key."""

import dataclasses
import textwrap

import pytest

from narvl import params
from narvl.cli import main as cli_main
from narvl.errors import NarvlError


def test_every_stage_loads_from_params_dir():
    loaded = params.load_all("params")
    assert set(loaded) == set(params.STAGES)
    assert loaded["model"].arch().d_model == 64
    for p in loaded.values():
        assert dataclasses.is_dataclass(p)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(p, dataclasses.fields(p)[0].name, None)


@pytest.mark.parametrize(
    "preset, d, heads, enc, dec, depth",
    [("tiny", 256, 4, 4, 4, [3, 4, 6]), ("medium", 512, 8, 4, 4, [3, 4, 23]), ("base", 768, 12, 6, 6, [3, 4, 23]),
     ("large", 1024, 16, 12, 12, [3, 8, 36]), ("huge", 1280, 16, 24, 12, [3, 8, 36])],
)
def test_presets_match_the_paper_scales(preset, d, heads, enc, dec, depth):
    arch = params.PRESETS[preset]
    assert (arch.d_model, arch.heads, arch.encoder_layers, arch.decoder_layers, arch.resnet_layers) == (
        d, heads, enc, dec, depth)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_unknown_key_names_file_and_key_and_suggests(tmp_path):
    path = write(tmp_path, "score.yaml", """
        score:
          meteor: true
          spice: true
          iou_treshold: 0.5
    """)
    with pytest.raises(NarvlError, match=r"score\.yaml: score\.iou_treshold: unknown key \(did you mean 'iou_threshold'\?\)"):
        params.load(path)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "score.yaml", """
        score: {meteor: yes please, spice: true, iou_threshold: 0.5}
    """)
    with pytest.raises(NarvlError, match=r"score\.yaml: score\.meteor: expected bool"):
        params.load(path)


def test_nested_wrong_type_and_bool_is_not_int(tmp_path):
    text = (params_dir := __import__("pathlib").Path("params")).joinpath("data.yaml").read_text()
    path = write(tmp_path, "data.yaml", text.replace("samples_per_shard: 1000", "samples_per_shard: true"))
    with pytest.raises(NarvlError, match=r"data\.shard\.samples_per_shard: expected an integer"):
        params.load(path)


def test_missing_key_and_wrong_top_level(tmp_path):
    with pytest.raises(NarvlError, match=r"score: missing keys spice, iou_threshold"):
        params.load(write(tmp_path, "score.yaml", "score: {meteor: true}\n"))
    with pytest.raises(NarvlError, match=r"expected exactly one top-level key 'score'"):
        params.load(write(tmp_path, "score.yaml", "decode: {}\n"))
    with pytest.raises(NarvlError, match=r"no such parameter file"):
        params.load(tmp_path / "model.yaml")


def test_literal_and_override_checks(tmp_path):
    with pytest.raises(NarvlError, match=r"model\.preset: 'gigantic' is not one of"):
        params.load(write(tmp_path, "model.yaml", "model: {preset: gigantic, overrides: {}, num_queries: {}}\n"))
    model = params.load(write(tmp_path, "model.yaml", "model: {preset: cpu, overrides: {dropot: 0.0}, num_queries: {}}\n"))
    with pytest.raises(NarvlError, match=r"model\.overrides\.dropot: unknown architecture field \(did you mean 'dropout'\?\)"):
        model.arch()


def test_cli_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("synth", "shard", "tokenizer", "train", "decode", "score", "report", "bench"):
        assert name in out


def test_bench_imports_only_the_chosen_benchmark(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "data", "--help"])
    assert exit_info.value.code == 0
    assert "--shards" in capsys.readouterr().out


def test_task_overrides_apply_to_one_task_and_are_checked():
    train = params.load("params/real/train.yaml")
    assert train.for_task("vqa").lr == 5.0e-5 and train.for_task("vqa").global_batch == 512
    assert train.for_task("caption").lr == 1.0e-5 and train.lr == 1.0e-4
    assert train.for_task("vqa").task_overrides == {}
    bad = dataclasses.replace(train, task_overrides={"vqa": {"lrr": 1.0}})
    with pytest.raises(NarvlError, match=r"task_overrides\.vqa\.lrr: not a per-task train field \(did you mean 'lr'"):
        bad.for_task("vqa")
    with pytest.raises(NarvlError, match=r"expected a number"):
        dataclasses.replace(train, task_overrides={"vqa": {"lr": "fast"}}).for_task("vqa")


def test_task_kind_overrides_apply_to_one_kind_after_the_task_s():
    train = params.load("params/train.yaml")
    over = {"vqa": {"lr": 2.0e-3}, "vqa-nar": {"steps": {"vqa": 3000}, "warmup_steps": 50}}
    t = dataclasses.replace(train, task_overrides=over)
    nar, ar = t.for_task("vqa", kind="nar"), t.for_task("vqa", kind="ar")
    assert (nar.steps["vqa"], nar.warmup_steps, nar.lr) == (3000, 50, 2.0e-3)
    assert nar.steps["caption"] == train.steps["caption"]  # a mapping is updated entry by entry, not replaced
    assert (ar.steps["vqa"], ar.warmup_steps, ar.lr) == (train.steps["vqa"], train.warmup_steps, 2.0e-3)
    assert t.for_task("vqa").steps == ar.steps  # without a kind: the task's overrides only
    assert t.for_task("caption", kind="nar").steps == train.steps
    with pytest.raises(NarvlError, match=r"task_overrides\.vqa-nar\.step: not a per-task train field"):
        dataclasses.replace(train, task_overrides={"vqa-nar": {"step": 1}}).for_task("vqa", kind="nar")
    with pytest.raises(NarvlError, match=r"task_overrides\.vqa-nat: not a task, 'pretrain' or '<task>-<kind>'.*"
                                         r"did you mean 'vqa-nar'"):
        dataclasses.replace(train, task_overrides={"vqa-nat": {"lr": 1.0}}).for_task("caption")
    with pytest.raises(NarvlError, match=r"task_overrides\.vqa-nar\.steps\.vqa: expected an integer"):
        dataclasses.replace(train, task_overrides={"vqa-nar": {"steps": {"vqa": "many"}}}).for_task("vqa", kind="nar")
