"""Grounding Acc@0.5: IoU on hand-computed boxes, refer-toolkit and shard references, per-sentence keys, bad input."""

import io
import json
import pickle
import tarfile

import pytest

from narvl import params
from narvl.cli import main as cli_main
from narvl.errors import NarvlError
from narvl.eval import grounding

P = params.load("params/score.yaml")


@pytest.mark.parametrize("pred, gt, iou, hit", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 100 / (100 + 1e-6), True),       # identical
    ([0, 0, 10, 10], [0, 0, 10, 6], 60 / (100 + 1e-6), True),          # inside: 60/100
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / (150 + 1e-6), False),        # 50/150 = 1/3
    ([0, 0, 2, 1], [0, 0, 1, 1], 1 / (2 + 1e-6), False),               # exactly 1/2: OFA's +1e-6 makes it a miss
    ([0, 0, 3, 2], [0, 0, 2, 2], 4 / (6 + 1e-6), True),                # 2/3
    ([0.5, 0.5, 10.5, 10.5], [0, 0, 10, 10], 90.25 / (109.75 + 1e-6), True),  # continuous, no +1
    ([10, 10, 20, 20], [0, 0, 10, 10], 0.0, False),                    # touching corner
])
def test_iou_hand_computed(pred, gt, iou, hit):
    value, _, _ = grounding.iou(pred, gt)
    assert value == pytest.approx(iou, rel=1e-12)
    assert grounding.is_hit(pred, gt, 0.5) is hit


def test_disjoint_and_inverted_boxes_never_hit():
    # disjoint on both axes: the raw product of two negative sides is positive (1 / 1 here), still a miss
    assert grounding.iou([0, 0, 1, 1], [2, 2, 3, 3])[0] > 0.5
    assert not grounding.is_hit([0, 0, 1, 1], [2, 2, 3, 3], 0.5)
    assert not grounding.is_hit([10, 10, 0, 0], [0, 0, 10, 10], 0.5)  # x1 < x0


def _refer_files(tmp_path):
    """Two refs in val (one with two sentences, one with one) and one in testA, as the refer toolkit stores them."""
    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 5, "split": "val", "category_id": 1,
         "sentences": [{"sent_id": 101, "sent": "left man", "raw": "left man", "tokens": ["left", "man"]},
                       {"sent_id": 102, "sent": "man on left", "raw": "man on left", "tokens": []}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 5, "split": "val", "category_id": 1,
         "sentences": [{"sent_id": 103, "sent": "right dog", "raw": "right dog", "tokens": []}]},
        {"ref_id": 3, "ann_id": 13, "image_id": 6, "split": "testA", "category_id": 1,
         "sentences": [{"sent_id": 104, "sent": "woman", "raw": "woman", "tokens": []}]},
    ]
    instances = {"images": [{"id": 5, "width": 100, "height": 80}, {"id": 6, "width": 50, "height": 50}],
                 "annotations": [{"id": 11, "image_id": 5, "bbox": [10, 20, 30, 40], "category_id": 1},
                                 {"id": 12, "image_id": 5, "bbox": [50.5, 10, 20, 20], "category_id": 1},
                                 {"id": 13, "image_id": 6, "bbox": [0, 0, 10, 10], "category_id": 1}],
                 "categories": [{"id": 1, "name": "person"}]}
    refs_path = tmp_path / "refs(unc).p"
    with open(refs_path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    inst_path = tmp_path / "instances.json"
    inst_path.write_text(json.dumps(instances))
    return refs_path, inst_path


def _preds(tmp_path, records, name="grounding-val-nar-greedy.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_refer_references_and_per_sentence_predictions(tmp_path):
    refs, inst = _refer_files(tmp_path)
    items = grounding.load_refer(refs, inst, "val")
    assert [(i.sent_id, i.ref_id, i.box) for i in items] == [
        (101, 1, (10.0, 20.0, 40.0, 60.0)), (102, 1, (10.0, 20.0, 40.0, 60.0)), (103, 2, (50.5, 10.0, 70.5, 30.0))]
    preds = _preds(tmp_path, [
        {"ref_id": 1, "sent_id": 101, "box": [10, 20, 40, 60]},       # exact: hit
        {"ref_id": 1, "sent_id": 102, "box": [25, 20, 55, 60]},       # half shifted: 15*40 / (2400-600) = 1/3, miss
        {"ref_id": 2, "box": [50.5, 10, 70.5, 28]},                   # ref with one sentence: 0.9, hit
    ])
    out = tmp_path / "m.json"
    rc = cli_main(["score", "grounding", "--params", "params", "--refs", str(refs), "--instances", str(inst),
                   "--split", "val", "--predictions", str(preds), "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["metrics"] == {"Acc@0.5": pytest.approx(200 / 3, abs=1e-12)}
    assert (m["details"]["correct"], m["details"]["total"]) == (2, 3)
    assert (m["task"], m["split"], m["model"], m["decoder"]) == ("grounding", "val", "nar", "greedy")


def test_missing_sentence_is_a_miss_and_listed(tmp_path):
    refs, inst = _refer_files(tmp_path)
    items = grounding.load_refer(refs, inst, "val")
    m = grounding.score(items, _preds(tmp_path, [{"sent_id": 103, "box": [50.5, 10, 70.5, 30]}]), P, "refs")
    assert m["metrics"]["Acc@0.5"] == pytest.approx(100 / 3)
    assert m["coverage"]["missing_ids"] == [101, 102]


@pytest.mark.parametrize("records, message", [
    ([{"ref_id": 1, "box": [0, 0, 1, 1]}], r"ref_id 1 has 2 sentences and predictions are per sentence"),
    ([{"ref_id": 2, "sent_id": 101, "box": [0, 0, 1, 1]}], r"ref_id 2 but sentence 101 belongs to ref 1"),
    ([{"sent_id": 104, "box": [0, 0, 1, 1]}], r"sent_id 104 not in the references .* \(wrong split\?\)"),
    ([{"sample_id": "val_00000000", "box": [0, 0, 1, 1]}], r"score against the shards"),
    ([{"sent_id": 101, "box": [0, 0, 1]}], r"bad value for 'box'"),
    ([{"sent_id": 101, "box": [0, 0, 1, float("nan")]}], r"bad value for 'box'"),
    ([{"sent_id": 101, "box": [0, 0, 1, 1]}, {"ref_id": 1, "sent_id": 101, "box": [0, 0, 2, 2]}],
     r"1 duplicate sentences"),
    ([{"box": [0, 0, 1, 1]}], r"needs sent_id, sample_id or ref_id"),
])
def test_bad_predictions(tmp_path, records, message):
    refs, inst = _refer_files(tmp_path)
    items = grounding.load_refer(refs, inst, "val")
    with pytest.raises(NarvlError, match=message):
        grounding.score(items, _preds(tmp_path, records), P, "refs")


def test_unknown_split_lists_the_splits(tmp_path):
    refs, inst = _refer_files(tmp_path)
    with pytest.raises(NarvlError, match=r"no refs in split 'testB' \(splits present: testA, val\)"):
        grounding.load_refer(refs, inst, "testB")


def _shards(tmp_path):
    """A grounding shard folder as `narvl shard` writes it (design.md): sizes.json + tar of key.jpg/key.json."""
    folder = tmp_path / "shards"
    folder.mkdir()
    samples = [
        {"id": "val_00000000", "task": "grounding", "split": "val", "image_id": 5, "orig_size": [100, 80],
         "size": [50, 40], "ref_id": 1, "sent_id": 101, "box": [5, 10, 20, 30], "orig_box": [10, 20, 40, 60],
         "prompt": 'which region does the text " the red star " describe?', "target": "<bin_2> <bin_4> <bin_8> <bin_12>"},
        {"id": "val_00000001", "task": "grounding", "split": "val", "image_id": 5, "orig_size": [100, 80],
         "size": [50, 40], "ref_id": 1, "sent_id": 102, "box": [5, 10, 20, 30], "orig_box": [10, 20, 40, 60],
         "prompt": 'which region does the text " the red star " describe?', "target": "<bin_2> <bin_4> <bin_8> <bin_12>"},
    ]
    with tarfile.open(folder / "grounding-val-000000.tar", "w") as tar:
        for s in samples:
            for ext, data in (("jpg", b"\xff\xd8notreallyajpeg"), ("json", json.dumps(s).encode())):
                info = tarfile.TarInfo(f"{s['id']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (folder / "sizes.json").write_text(json.dumps({"val": {"shards": ["grounding-val-000000.tar"], "samples": 2,
                                                           "skipped": 1, "skipped_ids": ["x"]}}))
    return folder


def test_shard_references_with_sample_ids(tmp_path):
    folder = _shards(tmp_path)
    preds = _preds(tmp_path, [{"sample_id": "val_00000000", "ref_id": 1, "sent_id": 101, "box": [10, 20, 40, 60]},
                              {"sample_id": "val_00000001", "box": [0, 0, 5, 5]}])
    out = tmp_path / "grounding-val-ar-beam.json"
    rc = cli_main(["score", "grounding", "--params", "params", "--references", str(folder),
                   "--split", "val", "--predictions", str(preds), "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["metrics"]["Acc@0.5"] == 50.0
    assert m["coverage"]["skipped_when_sharding"] == 1
    bad = _preds(tmp_path, [{"sample_id": "val_00000000", "sent_id": 102, "box": [10, 20, 40, 60]}], "bad.json")
    items, entry = grounding.load_shards(folder, "val")
    with pytest.raises(NarvlError, match=r"sample_id 'val_00000000' but sentence 102 is sample 'val_00000001'"):
        grounding.score(items, bad, P, str(folder), entry)


def test_provenance_reads_the_decode_sidecar_and_hashes_inputs(tmp_path):
    refs, inst = _refer_files(tmp_path)
    preds = _preds(tmp_path, [{"sent_id": s, "box": [0, 0, 1, 1]} for s in (101, 102, 103)])
    import hashlib

    meta = {"model_file": "runs/grounding-nar/model.pt", "step": 42, "model_params_hash": "abc",
            "predictions_sha256": hashlib.sha256(preds.read_bytes()).hexdigest()}
    (tmp_path / "grounding-val-nar-greedy.meta.json").write_text(json.dumps(meta))
    out = tmp_path / "out.json"
    assert cli_main(["score", "grounding", "--params", "params", "--refs", str(refs), "--instances",
                     str(inst), "--split", "val", "--predictions", str(preds), "--out", str(out)]) == 0
    prov = json.loads(out.read_text())["provenance"]
    assert prov["decode"] == meta
    assert prov["inputs"]["predictions"]["sha256"] == hashlib.sha256(preds.read_bytes()).hexdigest()
    assert set(prov["inputs"]) == {"refs", "instances", "predictions"}
    # an explicit --provenance wins; the cell comes from the predictions' name when --out has none
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"step": 7}))
    assert cli_main(["score", "grounding", "--params", "params", "--refs", str(refs), "--instances",
                     str(inst), "--split", "val", "--predictions", str(preds), "--out", str(out),
                     "--provenance", str(other)]) == 0
    m = json.loads(out.read_text())
    assert m["provenance"]["decode"] == {"step": 7}
    assert (m["model"], m["decoder"]) == ("nar", "greedy")


def test_real_refcoco_records_give_their_coco_boxes_and_score_100_with_them(tmp_path):
    """The real refer-toolkit records of tests/fixtures/refcoco (via the data room's fixture writer)."""
    from tests.fixtures.data import make

    refs, inst = make.refer(tmp_path)
    records = [r for r in make.refcoco_records() if r["split"] == "testA"]
    items = grounding.load_refer(refs, inst, "testA")
    assert sorted(i.sent_id for i in items) == sorted(s["sent_id"] for r in records for s in r["sentences"])
    for r in records:
        x, y, w, h = r["ann"]["bbox"]
        for it in (i for i in items if i.ref_id == r["ref_id"]):
            assert it.box == (x, y, x + w, y + h)
    preds = _preds(tmp_path, [{"ref_id": r["ref_id"], "sent_id": s["sent_id"],
                               "box": [r["ann"]["bbox"][0], r["ann"]["bbox"][1],
                                       r["ann"]["bbox"][0] + r["ann"]["bbox"][2],
                                       r["ann"]["bbox"][1] + r["ann"]["bbox"][3]]}
                              for r in records for s in r["sentences"]])
    assert grounding.score(items, preds, P, str(refs))["metrics"]["Acc@0.5"] == 100.0
