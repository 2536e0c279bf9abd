"""The tasks as rooms (narvl/tasks/): no stage branches on a task's name, every task object is complete, and the
typed objects that cross the stage boundaries (Sample, ShardFolder, CellName)."""

from __future__ import annotations

import io
import json
import re
import tarfile
import typing
from pathlib import Path

import pytest

from narvl import params, tasks
from narvl.cli import main as cli_main
from narvl.data.shard_folder import ShardFolder
from narvl.errors import NarvlError
from tests.fixtures.data import make

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def caption_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    make.karpathy(root)
    out = tmp_path_factory.mktemp("shards") / "caption"
    assert cli_main(["shard", "--params", "params", "--task", "caption", "--format", "karpathy", "--annotations",
                     str(root / "captions/dataset_coco.json"), "--images", str(root / "images"),
                     "--out", str(out)]) == 0
    return out


# -------------------------------------------------------------------------------------------------- the rooms
def test_no_stage_branches_on_a_task_name():
    """Every stage asks the task object: `task ==`, `meta["task"] != "grounding"` and the like appear only inside
    narvl/tasks/."""
    found = []
    names = "|".join(tasks.NAMES)
    for path in sorted((ROOT / "narvl").rglob("*.py")):
        if "tasks" in path.relative_to(ROOT / "narvl").parts[:1]:
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"task\s*(==|!=)|task\s+(not\s+)?in\s*[\(\[{]\s*['\"]", line) or "task" in line and re.search(
                    rf"(==|!=|\bin)\s*[\(\[{{]?\s*['\"]({names})['\"]|['\"]({names})['\"]\s*(==|!=)", line):
                found.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_task_is_complete_and_consistent():
    assert tasks.NAMES == params.TASKS and typing.get_args(params.Task) == tasks.NAMES  # per-task mapping keys
    seen_formats = set()
    for task in tasks.all_tasks():
        assert task.name and task.title and task.headline and task.scale and task.split_order
        assert task.formats and not seen_formats & set(task.formats)
        seen_formats |= set(task.formats)
        assert len(task.tsv_columns) > 3 and "image base64" == task.tsv_columns[task.tsv_image_column]
        assert task.prediction_fields and task.score_help
        cols = task.columns(list(task.split_order[:1]))
        assert any(c.metric == task.headline for c in cols)
        assert all(m.startswith("baseline-") for m, _ in task.baselines)
    with pytest.raises(NarvlError, match="unknown task 'captoin'"):
        tasks.get("captoin")
    for task in tasks.all_tasks():
        assert all(tasks.with_format(fmt) is task for fmt in task.formats)
    assert tasks.with_format("ofa-tsv") is None


def test_nar_slots_must_hold_the_longest_target():
    """The one length budget (data.loader.max_target_len) against the NAR slots, checked before training."""
    train = params.load("params/train.yaml")
    tasks.get("vqa").check_train("nar", 6, 6, train, "params")
    tasks.get("vqa").check_train("ar", 1, 6, train, "params")  # AR has no slots
    with pytest.raises(NarvlError, match=r"params: model.num_queries.caption = 4 < data.loader.max_target_len.caption"):
        tasks.get("caption").check_train("nar", 4, 20, train, "params")
    with pytest.raises(NarvlError, match="grounding_slot_targets needs a slot per box token and one for EOS"):
        tasks.get("grounding").check_train("nar", 4, 4, train, "params")
    data = params.load("params/data.yaml")
    assert params.ar_max_len(data, "grounding") == 5 == params.ar_max_len(data, "grounding", 5)  # 4 box tokens + EOS
    with pytest.raises(NarvlError, match=r"max_target_len.caption = 20 \(\+1 for EOS\) exceeds the model's 16 decoder"):
        params.ar_max_len(data, "caption", 16)  # decode/predict with data params the model was not trained with


# ------------------------------------------------------------------------------------------ typed boundaries
def test_a_sample_without_a_common_field_stops_the_reader_naming_shard_and_key(caption_shards, tmp_path):
    from narvl.data.sample import Sample

    folder = ShardFolder(caption_shards, "caption")
    first = next(folder.samples("val"))
    sample = Sample.from_json(first["meta"], "here")
    assert sample.to_json() == first["meta"] and sample.prompt == "what does the image describe?"
    assert set(sample.fields) == {"references"}
    # the same folder with the json of one sample missing its target
    bad = tmp_path / "caption"
    bad.mkdir()
    (bad / "sizes.json").write_text((caption_shards / "sizes.json").read_text())
    for shard in caption_shards.glob("*.tar"):
        with tarfile.open(shard) as src, tarfile.open(bad / shard.name, "w", format=tarfile.USTAR_FORMAT) as dst:
            for member in src:
                data = src.extractfile(member).read()
                if member.name == f"{first['key']}.json":
                    meta = json.loads(data)
                    del meta["target"]
                    data = json.dumps(meta).encode()
                    member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
    for read in (lambda f: list(f.samples("val")), lambda f: list(f.metas("val"))):
        with pytest.raises(NarvlError, match=rf"caption-val-000000\.tar: .*{first['key']}.*lacks 'target'"):
            read(ShardFolder(bad, "caption"))


def test_cell_names_round_trip_in_one_place():
    from narvl.cell import CellName

    for stem in ("caption-test-nar-kd-beam", "grounding-testA-ar-seed2-bins", "vqa-val-baseline-blind-greedy",
                 "caption-test-baseline-constant-none"):
        cell = CellName.parse(stem)
        assert cell is not None and cell.stem == stem
    assert CellName.parse("vqa-val-nar-greedy") == CellName("vqa", "val", "nar", "greedy")
    for stem in ("snli-dev-nar-greedy", "vqa-val-nar-sampling", "vqa-val-teacher-greedy", "vqa.val-nar-greedy"):
        assert CellName.parse(stem) is None
