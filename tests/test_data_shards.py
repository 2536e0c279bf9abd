"""Readers of the real formats -> webdataset shards: fields, resizing, boxes, determinism, bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from narvl import params
from narvl.cli import main as cli_main
from narvl.data.loader import iter_samples
from narvl.data.vqa import answer_score, soft_scores
from narvl.errors import NarvlError
from tests.fixtures.data import make

PARAMS = Path("params")  # the parameter folder that --params takes
FIXTURES = Path(__file__).parent / "fixtures" / "data"


def shard(*argv) -> int:
    return cli_main(["shard", "--params", str(PARAMS), *map(str, argv)])


def read_split(folder: Path, split: str) -> list[dict]:
    sizes = json.loads((folder / "sizes.json").read_text())
    return list(iter_samples([folder / s for s in sizes[split]["shards"]]))


def image_size_of(jpg: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(jpg)).size


LONGEST = params.load_stage(PARAMS, "data").shard.image_size


# ----------------------------------------------------------------------------------------------------- karpathy
@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    make.karpathy(root)
    make.vqav2(root)
    make.refer(root)
    return root


@pytest.fixture(scope="module")
def caption_shards(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "caption"
    assert shard("--task", "caption", "--format", "karpathy", "--annotations", raw / "captions/dataset_coco.json",
                 "--images", raw / "images", "--out", out) == 0
    return out


def test_karpathy_splits_one_sample_per_caption_for_train_and_per_image_for_eval(caption_shards):
    sizes = json.loads((caption_shards / "sizes.json").read_text())
    assert set(sizes) == {"train", "val", "test"}
    # train + restval: 2 + 3 + 1 captions; val and test: one sample per image
    assert [sizes[s]["samples"] for s in ("train", "val", "test")] == [6, 1, 1]
    assert sizes["train"]["shards"] == ["caption-train-000000.tar"] and sizes["train"]["skipped"] == 0
    train = read_split(caption_shards, "train")
    assert [s["meta"]["image_id"] for s in train] == [9, 9, 25, 25, 25, 30]
    assert [s["key"] for s in train] == [f"train_{i:08d}" for i in range(6)]
    assert train[2]["meta"]["target"] == "a tall image of colour"
    assert train[2]["meta"]["references"] == ["A tall image, of colour!"]
    assert all(s["meta"]["prompt"] == "what does the image describe?" for s in train)
    (test,) = read_split(caption_shards, "test")
    assert test["meta"]["references"] == ["a square test image", "test reference two"]
    assert test["meta"]["image_id"] == 73 and test["meta"]["id"] == test["key"] == "test_00000000"


def test_images_resized_to_the_longest_side_keeping_aspect(caption_shards):
    for split in ("train", "val", "test"):
        for s in read_split(caption_shards, split):
            meta = s["meta"]
            w, h = meta["orig_size"]
            assert image_size_of(s["jpg"]) == tuple(meta["size"])
            assert max(meta["size"]) == LONGEST["caption"]
            assert abs(meta["size"][0] / meta["size"][1] - w / h) < 0.03
            assert "." not in s["key"]


# -------------------------------------------------------------------------------------------------------- vqav2
def test_vqa_soft_scores_match_the_official_accuracy_vectors():
    cases = json.loads((FIXTURES / "vqa_accuracy_vectors_axlearn.json").read_text())["accuracy_cases"]["cases"]
    assert len(cases) == 15
    for case in cases:
        assert answer_score(case["answer"], case["gt_answers"]) == pytest.approx(case["expected"]), case["name"]
        assert soft_scores(case["gt_answers"])[case["answer"]] == pytest.approx(case["expected"]), case["name"]


def test_vqa_soft_scores_brute_force():
    """min(#humans/3, 1) averaged over the 10 ways of choosing 9 of the 10 humans, enumerated."""
    import itertools

    answers = ["a", "a", "b", "a", "c", "b", "a", "d", "a", "b"]
    for cand, score in soft_scores(answers).items():
        subsets = list(itertools.combinations(range(10), 9))
        expected = sum(min(1.0, sum(answers[i] == cand for i in sub) / 3) for sub in subsets) / len(subsets)
        assert score == pytest.approx(expected)


def test_vqav2_questions_answers_splits_and_target(raw, tmp_path):
    out = tmp_path / "vqa"
    assert shard("--task", "vqa", "--format", "vqav2", "--questions", *sorted((raw / "vqa").glob("*questions.json")),
                 "--annotations", *sorted((raw / "vqa").glob("*annotations.json")), "--images", raw / "images",
                 "--out", out) == 0
    train, val = read_split(out, "train"), read_split(out, "val")
    assert [s["meta"]["question_id"] for s in train] == [9000, 9001, 25000]
    assert [s["meta"]["question_id"] for s in val] == [42000, 42001]
    m = val[0]["meta"]
    assert m["prompt"] == "What is on the wall?" and m["answer_type"] == "other" and len(m["answers"]) == 10
    assert m["scores"] == pytest.approx({"square": 1.0, "box": 0.9, "picture": 0.3, "frame": 0.3,
                                         "toilet paper": 0.3})
    assert m["target"] == "square"
    # "1" said by 7 humans, "one" by 1, "2" by 2: the target is the best-scoring answer
    assert train[2]["meta"]["target"] == "1" and train[2]["meta"]["scores"]["2"] == pytest.approx(0.6)
    assert val[0]["meta"]["image_id"] == 42 and val[0]["meta"]["orig_size"] == [320, 240]


def test_vqav2_question_without_annotation_names_file_and_record(raw, tmp_path):
    q = json.loads((raw / "vqa/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    q["questions"].append({"image_id": 42, "question": "Why?", "question_id": 42999})
    qpath = tmp_path / "q.json"
    qpath.write_text(json.dumps(q))
    with pytest.raises(NarvlError, match=r"q\.json: questions\[2\] \(question_id 42999\): no annotation"):
        from narvl.tasks.vqa import read_vqav2

        read_vqav2([qpath], [raw / "vqa/v2_mscoco_val2014_annotations.json"], raw / "images")


# -------------------------------------------------------------------------------------------------------- refer
def test_refer_real_records_one_sample_per_sentence_with_instance_box(raw, tmp_path):
    out = tmp_path / "grounding"
    assert shard("--task", "grounding", "--format", "refer", "--refs", raw / "refcoco/refs(unc).p",
                 "--instances", raw / "refcoco/instances.json", "--images", raw / "images", "--out", out) == 0
    sizes = json.loads((out / "sizes.json").read_text())
    assert {s: v["samples"] for s, v in sizes.items()} == {"testA": 6, "testB": 6}
    records = {r["ref_id"]: r for r in make.refcoco_records()}
    seen = set()
    for split in ("testA", "testB"):
        for s in read_split(out, split):
            m = s["meta"]
            ref = records[m["ref_id"]]
            assert m["split"] == ref["split"] == split and m["image_id"] == ref["image_id"]
            sent = next(x for x in ref["sentences"] if x["sent_id"] == m["sent_id"])
            assert m["prompt"] == f'which region does the text " {sent["sent"]} " describe?'
            x, y, w, h = ref["ann"]["bbox"]
            assert m["orig_box"] == pytest.approx([x, y, min(640, x + w), min(480, y + h)])
            assert m["orig_size"] == [640, 480] and m["size"] == [96, 72]
            sx, sy = 96 / 640, 72 / 480
            assert m["box"] == pytest.approx([x * sx, y * sy, min(640, x + w) * sx, min(480, y + h) * sy], abs=1e-3)
            assert m["target"].count("<bin_") == 4
            assert m["category"] == f"category {ref['ann']['category_id']}"  # instances.json's categories
            seen.add(m["sent_id"])
    assert seen == {sid for r in records.values() for sid in r["sent_ids"]}


def test_refer_categories_are_optional_but_checked(raw, tmp_path):
    """A sample's `category` (the pretraining's region samples) comes from instances.json's categories: without
    them the samples have none; an annotation whose category_id is not listed is an error naming it."""
    from narvl.tasks.grounding import read_refer

    inst = json.loads((raw / "refcoco/instances.json").read_text())
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({k: v for k, v in inst.items() if k != "categories"}))
    records = read_refer(raw / "refcoco/refs(unc).p", plain, raw / "images")
    assert records and not any("category" in r.fields for r in records)
    inst["annotations"][1]["category_id"] = 999
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(inst))
    with pytest.raises(NarvlError, match=r"bad\.json: annotations\[1\]: category_id 999 is not among its categories"):
        read_refer(raw / "refcoco/refs(unc).p", bad, raw / "images")


def test_refer_uses_the_instances_file_name_not_the_refs(raw, tmp_path):
    """The refs' file_name (COCO_train2014_000000495169_4.jpg) has an _<annid> suffix and does not exist."""
    refs = pickle.loads((raw / "refcoco/refs(unc).p").read_bytes())
    assert refs[0]["file_name"].endswith("_4.jpg") and not (raw / "images/train2014" / refs[0]["file_name"]).exists()


def test_refer_pickle_with_code_is_refused(raw, tmp_path, capsys):
    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(pickle.dumps([{"ref_id": 1, "x": Path("/")}], protocol=2))
    assert shard("--task", "grounding", "--format", "refer", "--refs", bad, "--instances",
                 raw / "refcoco/instances.json", "--images", raw / "images", "--out", tmp_path / "g") == 2
    assert "refs(unc).p: not a readable refs pickle" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_refer_missing_key_names_file_and_record(raw, tmp_path):
    refs = pickle.loads((raw / "refcoco/refs(unc).p").read_bytes())
    del refs[1]["sentences"]
    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(NarvlError, match=r"refs\(unc\)\.p: refs\[1\] \(ref_id 7572\): missing key 'sentences'"):
        from narvl.tasks.grounding import read_refer

        read_refer(bad, raw / "refcoco/instances.json", raw / "images")


# ------------------------------------------------------------------------------------------ determinism, bad input
def test_same_inputs_give_identical_shard_bytes(raw, tmp_path):
    outs = [tmp_path / "a" / "caption", tmp_path / "b" / "caption"]
    for out in outs:
        assert shard("--task", "caption", "--format", "karpathy", "--annotations",
                     raw / "captions/dataset_coco.json", "--images", raw / "images", "--out", out) == 0
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir())
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_image_worker_processes_give_the_same_bytes(raw, tmp_path):
    """data.shard.workers only changes speed: 2 worker processes write what the main process alone writes."""
    base = params.load_stage(PARAMS, "data")
    from narvl.tasks.grounding import read_refer
    from narvl.data.shard import write_shards

    images = tmp_path / "images"
    import shutil

    shutil.copytree(raw / "images", images)
    (images / "train2014/COCO_train2014_000000510027.jpg").write_bytes(b"not a jpeg")  # skipped in both
    outs = {}
    for workers in (0, 2):
        p = dataclasses.replace(base, shard=dataclasses.replace(base.shard, workers=workers, samples_per_shard=4))
        outs[workers] = tmp_path / f"w{workers}"
        records = read_refer(raw / "refcoco/refs(unc).p", raw / "refcoco/instances.json", images)
        sizes = write_shards(records, "grounding", p, outs[workers])
    assert sizes["testB"]["skipped"] == 6 and sizes["testA"]["samples"] == 6
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[2].iterdir()) and len(names) == 4  # 2 tars, sizes.json, marker
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[2] / name).read_bytes(), name


def test_missing_and_corrupt_images_are_skipped_counted_and_listed(raw, tmp_path, capsys):
    images = tmp_path / "images"
    import shutil

    shutil.copytree(raw / "images", images)
    (images / "train2014/COCO_train2014_000000000025.jpg").unlink()  # 3 captions
    (images / "val2014/COCO_val2014_000000000042.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "caption"
    assert shard("--task", "caption", "--format", "karpathy", "--annotations", raw / "captions/dataset_coco.json",
                 "--images", images, "--out", out) == 0
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes["train"]["samples"] == 3 and sizes["train"]["skipped"] == 3
    assert sizes["train"]["skipped_ids"] == ["cocoid=25 sentid=2", "cocoid=25 sentid=3", "cocoid=25 sentid=4"]
    assert sizes["val"] == {"shards": [], "samples": 0, "skipped": 1, "skipped_ids": ["cocoid=42"]}
    printed = capsys.readouterr().out
    assert "train: 3 samples in 1 shards, 3 skipped" in printed and "cocoid=42" in printed
    assert [s["key"] for s in read_split(out, "train")] == ["train_00000000", "train_00000001", "train_00000002"]


def test_malformed_json_stops_and_leaves_no_output(raw, tmp_path):
    doc = json.loads((raw / "captions/dataset_coco.json").read_text())
    doc["images"][3]["split"] = "holdout"
    bad = tmp_path / "dataset_coco.json"
    bad.write_text(json.dumps(doc))
    out = tmp_path / "caption"
    assert shard("--task", "caption", "--format", "karpathy", "--annotations", bad, "--images", raw / "images",
                 "--out", out) == 2
    bad.write_text('{"images": [')
    with pytest.raises(NarvlError, match=r"dataset_coco\.json: not valid JSON"):
        from narvl.tasks.caption import read_karpathy

        read_karpathy(bad, raw / "images")
    assert list(tmp_path.iterdir()) == [bad]


def test_failure_midway_leaves_no_partial_shards(raw, tmp_path):
    """A malformed TSV row after good ones: the error names it and nothing appears under the output name."""
    jpg = make.jpeg_bytes(1, (64, 48))
    rows = [[str(i), "1", "a caption", "", make.b64(jpg)] for i in range(5)] + [["5", "1", "too few columns"]]
    tsv = make.ofa_tsv(tmp_path / "caption_train.tsv", rows)
    out = tmp_path / "out" / "caption"
    base = params.load_stage(PARAMS, "data")
    p = dataclasses.replace(base, shard=dataclasses.replace(base.shard, samples_per_shard=2))
    from narvl.data.readers import read_ofa_tsv
    from narvl.data.shard import write_shards

    with pytest.raises(NarvlError, match=r"caption_train\.tsv: line 6: expected 5 tab-separated columns"):
        write_shards(read_ofa_tsv("caption", "train", tsv), "caption", p, out)
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------------------------------------------ OFA TSV
def test_ofa_tsv_caption_vqa_grounding(tmp_path):
    jpgs = {i: make.jpeg_bytes(i, size) for i, size in ((1, (200, 100)), (2, (120, 240)))}
    cap_train = make.ofa_tsv(tmp_path / "caption_train.tsv", [
        ["162365", "1", "the sun sets over the trees beyond some docks.", "sky&&water&&dock&&pole", make.b64(jpgs[1])],
        ["162366", "2", "A dog on a sofa", "", make.b64(jpgs[2], urlsafe=True)],
    ])
    cap_test = make.ofa_tsv(tmp_path / "caption_test.tsv", [
        ["7", "1", "first reference&&second reference", "", make.b64(jpgs[1])],
    ])
    assert shard("--task", "caption", "--format", "ofa-tsv", "--tsv", f"train={cap_train}", f"test={cap_test}",
                 "--out", tmp_path / "caption") == 0
    train = read_split(tmp_path / "caption", "train")
    assert [s["meta"]["target"] for s in train] == ["the sun sets over the trees beyond some docks", "a dog on a sofa"]
    assert [s["meta"]["orig_size"] for s in train] == [[200, 100], [120, 240]]
    (test,) = read_split(tmp_path / "caption", "test")
    assert test["meta"]["references"] == ["first reference", "second reference"]

    vqa = make.ofa_tsv(tmp_path / "vqa_val.tsv", [
        ["42000", "2", "what is on the sofa?", "1.0|!+dog&&0.6|!+puppy&&0.3|!+cat", "", make.b64(jpgs[2])],
    ])
    assert shard("--task", "vqa", "--format", "ofa-tsv", "--tsv", f"val={vqa}", "--out", tmp_path / "vqa") == 0
    (s,) = read_split(tmp_path / "vqa", "val")
    assert s["meta"]["question_id"] == 42000 and s["meta"]["target"] == "dog"
    assert s["meta"]["scores"] == {"dog": 1.0, "puppy": 0.6, "cat": 0.3}

    ground = make.ofa_tsv(tmp_path / "refcoco_val.tsv", [
        ["11", "1", "the white square", "25.0,12.5,66.7,50.0", make.b64(jpgs[1])],
    ])
    assert shard("--task", "grounding", "--format", "ofa-tsv", "--tsv", f"val={ground}",
                 "--out", tmp_path / "grounding") == 0
    (s,) = read_split(tmp_path / "grounding", "val")
    m = s["meta"]
    assert m["orig_box"] == [25.0, 12.5, 66.7, 50.0] and m["size"] == [96, 48] and m["sent_id"] == 11
    assert m["box"] == pytest.approx([12.0, 6.0, 32.016, 24.0], abs=1e-3)


def test_ofa_tsv_bad_rows_name_file_and_line(tmp_path):
    from narvl.data.readers import read_ofa_tsv

    jpg = make.b64(make.jpeg_bytes(1, (32, 32)))
    cases = [
        ("vqa", ["1", "1", "q?", "yes", "", jpg],
         r"line 1 \(question-id 1\): answer 'yes' is not 'confidence\|!\+answer'"),
        ("grounding", ["1", "1", "x", "3,4,1", jpg], r"line 1 \(uniq-id 1\): region-coord '3,4,1'"),
        ("caption", ["1", "one", "c", "", jpg], r"line 1 \(uniq-id 1\): column 'image-id' should be an integer"),
    ]
    for task, row, message in cases:
        path = make.ofa_tsv(tmp_path / f"{task}.tsv", [row])
        with pytest.raises(NarvlError, match=rf"{task}\.tsv: {message}"):
            list(read_ofa_tsv(task, "val", path))


def test_ofa_tsv_bad_base64_is_a_skipped_sample(tmp_path):
    jpg = make.b64(make.jpeg_bytes(1, (32, 32)))
    path = make.ofa_tsv(tmp_path / "c.tsv", [["1", "1", "ok", "", jpg], ["2", "2", "bad", "", "@@not base64@@"]])
    assert shard("--task", "caption", "--format", "ofa-tsv", "--tsv", f"val={path}", "--out", tmp_path / "o") == 0
    sizes = json.loads((tmp_path / "o/sizes.json").read_text())
    assert sizes["val"]["samples"] == 1 and sizes["val"]["skipped_ids"] == ["c.tsv:2"]
