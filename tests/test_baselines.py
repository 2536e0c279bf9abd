"""Trivial baselines (`narvl baselines`) on tiny hand-made datasets whose scores are known by hand."""

import json
import pickle

import pytest

from narvl.cli import main as cli_main


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _vqa_files(tmp_path):
    def ann(qid, qtype, mc, answers, atype="other"):
        return {"question_id": qid, "image_id": qid // 1000, "question_type": qtype, "answer_type": atype,
                "multiple_choice_answer": mc,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}

    # training majorities: "what color is the" -> red (2 of 3), "is there a" -> no (2 of 3)
    train = [ann(1000, "what color is the", "red", ["red"] * 10), ann(1001, "what color is the", "red", ["red"] * 10),
             ann(1002, "what color is the", "blue", ["blue"] * 10), ann(2000, "is there a", "no", ["no"] * 10, "yes/no"),
             ann(2001, "is there a", "no", ["no"] * 10, "yes/no"), ann(2002, "is there a", "yes", ["yes"] * 10, "yes/no")]
    val = [ann(5000, "what color is the", "red", ["red"] * 10),                     # red: 1.0
           ann(5001, "what color is the", "blue", ["blue"] * 8 + ["red"] * 2),     # red by 2 humans: 2/3 -> 0.6
           ann(6000, "is there a", "yes", ["yes"] * 10, "yes/no"),                 # no: 0
           ann(6001, "is there a", "no", ["no"] * 10, "yes/no")]                   # no: 1.0
    # a question type never seen in training falls back to the overall majority ("red": 2 votes, "no": 2 -> "no"
    # wins the alphabetical tie-break)
    val.append(ann(7000, "how many", "no", ["no"] * 10, "number"))                  # no: 1.0
    a_train = _write(tmp_path / "a_train.json", {"annotations": train})
    a_val = _write(tmp_path / "a_val.json", {"annotations": val})
    q_val = _write(tmp_path / "q_val.json", {"questions": [{"question_id": a["question_id"], "image_id": a["image_id"],
                                                             "question": "?"} for a in val]})
    return a_train, q_val, a_val


def test_vqa_majority_answer_per_question_type(tmp_path):
    a_train, q_val, a_val = _vqa_files(tmp_path)
    out, preds = tmp_path / "m.json", tmp_path / "p.json"
    assert cli_main(["baselines", "vqa-majority", "--params", "params", "--train-annotations", str(a_train),
                     "--questions", str(q_val), "--annotations", str(a_val), "--split", "val",
                     "--predictions", str(preds), "--out", str(out)]) == 0
    answers = {p["question_id"]: p["answer"] for p in json.loads(preds.read_text())}
    assert answers == {5000: "red", 5001: "red", 6000: "no", 6001: "no", 7000: "no"}
    m = json.loads(out.read_text())
    assert (m["task"], m["split"], m["model"], m["decoder"]) == ("vqa", "val", "baseline-majority", "none")
    # official accuracy of 0.6 is (sum over 10 leave-one-out subsets of min(1, 2/3 or 1/3)) / 10 = 0.6
    assert m["metrics"]["accuracy"] == pytest.approx(100 * (1 + 0.6 + 0 + 1 + 1) / 5, abs=0.01)
    assert m["metrics"]["accuracy_yes/no"] == pytest.approx(50.0)
    assert m["provenance"]["baseline"]["majority_answer"] == {"is there a": "no", "what color is the": "red"}


def _refer_files(tmp_path, objects_per_image, images):
    """Image i has `objects_per_image` objects; object k of image i is 10 * (k + 1) px wide (the last is largest).
    One ref per image, on object 0 (the smallest), with 2 sentences; the ref split is val."""
    anns, refs, sent = [], [], 0
    for i in range(1, images + 1):
        for k in range(objects_per_image):
            w = 10 * (k + 1)
            anns.append({"id": i * 100 + k, "image_id": i, "category_id": 1, "bbox": [100 * k, 0, w, w],
                         "area": w * w, "iscrowd": 0, "segmentation": []})
        refs.append({"ref_id": i, "ann_id": i * 100, "image_id": i, "split": "val", "category_id": 1,
                     "sent_ids": [sent, sent + 1], "file_name": f"x_{i}.jpg",
                     "sentences": [{"sent_id": sent + j, "tokens": ["x"], "raw": "x", "sent": "x"} for j in (0, 1)]})
        sent += 2
    refs_path = tmp_path / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    inst = _write(tmp_path / "instances.json", {"images": [{"id": i} for i in range(1, images + 1)], "annotations": anns,
                                                "categories": [{"id": 1, "name": "circle"}]})
    return refs_path, inst


def _ground(tmp_path, rule, refs, inst, *extra):
    out, preds = tmp_path / f"{rule}.json", tmp_path / f"{rule}-p.json"
    assert cli_main(["baselines", f"grounding-{rule}", "--params", "params", "--refs", str(refs),
                     "--instances", str(inst), "--split", "val", "--predictions", str(preds), "--out", str(out),
                     *extra]) == 0
    return json.loads(out.read_text()), json.loads(preds.read_text())


def test_largest_object(tmp_path):
    refs, inst = _refer_files(tmp_path, objects_per_image=3, images=4)
    m, preds = _ground(tmp_path, "largest", refs, inst)
    assert all(p["box"] == [200.0, 0.0, 230.0, 30.0] for p in preds)  # the 30 px object of every image
    assert m["metrics"]["Acc@0.5"] == 0.0 and m["model"] == "baseline-largest-object"
    refs, inst = _refer_files(tmp_path, objects_per_image=1, images=4)
    m, _ = _ground(tmp_path, "largest", refs, inst)
    assert m["metrics"]["Acc@0.5"] == 100.0


def test_random_object_is_seeded_and_hits_one_in_n(tmp_path):
    refs, inst = _refer_files(tmp_path, objects_per_image=1, images=3)
    m, _ = _ground(tmp_path, "random", refs, inst)
    assert m["metrics"]["Acc@0.5"] == 100.0  # the only object
    refs, inst = _refer_files(tmp_path, objects_per_image=2, images=300)  # 600 sentences, 1 in 2 right
    m, preds = _ground(tmp_path, "random", refs, inst)
    assert 40.0 < m["metrics"]["Acc@0.5"] < 60.0
    assert m["model"] == "baseline-random-object" and m["provenance"]["baseline"]["seed"] == 0
    boxes = {(p["sent_id"]) % 2 for p in preds}
    assert boxes == {0, 1}  # both sentences of a ref are drawn
    again, preds_again = _ground(tmp_path, "random", refs, inst)
    assert preds_again == preds
    other, preds_other = _ground(tmp_path, "random", refs, inst, "--seed", "1")
    assert preds_other != preds


def test_constant_caption_is_the_most_frequent_training_caption(tmp_path):
    def image(i, split, captions):
        return {"imgid": i, "cocoid": i, "split": split, "filepath": "val2014", "filename": f"{i}.jpg",
                "sentences": [{"tokens": c.split(), "raw": c, "imgid": i, "sentid": 10 * i + j}
                              for j, c in enumerate(captions)]}

    common = "a red circle and a blue square"
    karpathy = _write(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        image(1, "train", [common, "a green star"]), image(2, "restval", [common.upper(), "a big green star"]),
        image(3, "train", ["a green star on a gray background"]),
        image(4, "test", ["a green star", "a green star", "a green star"])]})  # test captions do not count
    refs = _write(tmp_path / "refs.json", {
        "info": {}, "licenses": [], "type": "captions",
        "images": [{"id": 4, "file_name": "4.jpg", "width": 96, "height": 96}, {"id": 5, "file_name": "5.jpg",
                                                                                "width": 96, "height": 96}],
        "annotations": [{"image_id": 4, "id": 1, "caption": common}, {"image_id": 5, "id": 2, "caption": common}]})
    out, preds = tmp_path / "m.json", tmp_path / "p.json"
    assert cli_main(["baselines", "caption-constant", "--params", "params", "--train-captions",
                     str(karpathy), "--references", str(refs), "--split", "test", "--predictions", str(preds),
                     "--out", str(out)]) == 0
    assert json.loads(preds.read_text()) == [{"image_id": 4, "caption": common}, {"image_id": 5, "caption": common}]
    m = json.loads(out.read_text())
    assert m["model"] == "baseline-constant" and m["provenance"]["baseline"]["caption"] == common
    assert m["metrics"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)  # the references are that caption


def test_bad_training_file_names_the_record(tmp_path, capsys):
    a_train, q_val, a_val = _vqa_files(tmp_path)
    _write(a_train, {"annotations": [{"question_type": "x"}]})
    rc = cli_main(["baselines", "vqa-majority", "--params", "params", "--train-annotations", str(a_train),
                   "--questions", str(q_val), "--annotations", str(a_val), "--split", "val",
                   "--predictions", str(tmp_path / "p.json"), "--out", str(tmp_path / "m.json")])
    assert rc == 2
    assert "a_train.json: annotations[0]" in capsys.readouterr().err
