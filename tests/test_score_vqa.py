"""VQA accuracy against the official-algorithm vectors (tests/fixtures/vqa, see its README)."""

import dataclasses
import json
from pathlib import Path

import pytest

from narvl import params
from narvl.cli import main as cli_main
from narvl.errors import NarvlError
from narvl.eval import vqa

VECTORS = json.loads((Path(__file__).parent / "fixtures" / "vqa" / "vqa_accuracy_vectors_axlearn.json").read_text())
NORMALIZER = VECTORS["normalizer_cases"]["cases"]
ACCURACY = VECTORS["accuracy_cases"]["cases"]


@pytest.mark.parametrize("case", NORMALIZER, ids=[c["name"] for c in NORMALIZER])
def test_normalisation_vectors(case):
    assert vqa.normalize(case["answer"]) == case["expected"]


@pytest.mark.parametrize("case", ACCURACY, ids=[c["name"] for c in ACCURACY])
def test_accuracy_vectors(case):
    acc = vqa.question_accuracy(case["answer"], case["gt_answers"])
    assert acc == pytest.approx(case["expected"], abs=1e-12)
    assert vqa.official_round(100 * acc, 2) == round(100 * case["expected"], 2)


def test_official_quirks():
    # periods: removed unless a digit follows, at most 32 of them (re.UNICODE passed as sub's count)
    assert vqa.process_punctuation("3.5 m.") == "3.5 m"
    assert vqa.process_punctuation("." * 40) == "." * 8
    # a punctuation mark next to a space is deleted, else replaced by a space; a digit,digit anywhere deletes all
    assert vqa.process_punctuation("yes, no") == "yes no"
    assert vqa.process_punctuation("yes,no") == "yes no"
    assert vqa.process_punctuation("1,000 red-blue") == "1000 redblue"
    assert vqa.normalize("Dont know") == "don't know"
    assert vqa.normalize("the Two") == "2"
    # answers all identical: nothing is normalised, so "Two" does not match "2"
    assert vqa.question_accuracy("Two", ["2"] * 10) == 0.0
    assert vqa.question_accuracy("two", ["2"] * 9 + ["3"]) == 1.0
    # \n and \t become spaces and the ends are stripped before anything else
    assert vqa.question_accuracy(" red\tcar\n", ["red car"] * 10) == 1.0


def test_python2_rounding():
    assert vqa.official_round(12.125, 2) == 12.13  # exact tie: away from zero (Python 3 round gives 12.12)
    assert round(12.125, 2) == 12.12
    assert vqa.official_round(2.675, 2) == 2.67  # the float is below the tie
    assert vqa.official_round(75.33333333333333, 2) == 75.33


def _files(tmp_path, cases, answer_types=None, drop=(), extra=()):
    answer_types = answer_types or ["other"] * len(cases)
    questions = {"questions": [{"question_id": 100 + i, "image_id": i, "question": f"q{i}?"}
                               for i in range(len(cases))]}
    annotations = {"annotations": [
        {"question_id": 100 + i, "image_id": i, "question_type": "what", "answer_type": answer_types[i],
         "multiple_choice_answer": c["gt_answers"][0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in
                     enumerate(c["gt_answers"])]} for i, c in enumerate(cases)]}
    preds = [{"question_id": 100 + i, "answer": c["answer"]} for i, c in enumerate(cases) if i not in drop]
    preds += list(extra)
    paths = {}
    for name, obj in (("q", questions), ("a", annotations), ("p", preds)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(obj))
    return paths


def run_cli(paths, out, *extra):
    return cli_main(["score", "vqa", "--params", "params", "--questions", str(paths["q"]),
                     "--annotations", str(paths["a"]), "--predictions", str(paths["p"]), "--out", str(out), *extra])


def test_overall_over_the_15_vectors_through_the_cli(tmp_path):
    paths = _files(tmp_path, ACCURACY)
    out = tmp_path / "vqa-val-nar-greedy.json"
    assert run_cli(paths, out) == 0
    m = json.loads(out.read_text())
    # the README's overall for these 15 questions with the official script: 75.33
    assert m["metrics"]["accuracy"] == 75.33
    expected = 100 * sum(c["expected"] for c in ACCURACY) / len(ACCURACY)
    assert m["details"]["accuracy_unrounded"] == pytest.approx(expected, abs=1e-9)
    assert (m["task"], m["split"], m["model"], m["decoder"]) == ("vqa", "val", "nar", "greedy")
    assert m["provenance"]["score_params_hash"] == params.digest(params.load("params/score.yaml"))


def test_per_answer_type_and_missing_predictions(tmp_path):
    cases = [c for c in ACCURACY if c["name"] in ("down", "100", "lots", "1_mixed")]
    by_name = {c["name"]: c for c in cases}
    types = ["yes/no" if c["name"] == "down" else "number" if c["name"] in ("100", "1_mixed") else "other"
             for c in cases]
    idx_lots = [c["name"] for c in cases].index("lots")
    paths = _files(tmp_path, cases, types, drop=[idx_lots])
    out = tmp_path / "m.json"
    assert run_cli(paths, out, "--split", "val", "--model", "ar", "--decoder", "beam") == 0
    m = json.loads(out.read_text())
    assert m["metrics"]["accuracy_yes/no"] == 100.0
    assert m["metrics"]["accuracy_number"] == round(100 * (by_name["100"]["expected"] + 1.0) / 2, 2)  # 80.0
    assert m["metrics"]["accuracy_other"] == 0.0  # "lots" had no prediction: wrong
    assert m["metrics"]["accuracy"] == round(100 * (1.0 + 0.6 + 1.0 + 0.0) / 4, 2)
    assert m["coverage"]["missing"] == 1 and m["coverage"]["missing_ids"] == [100 + idx_lots]
    assert (m["split"], m["model"], m["decoder"]) == ("val", "ar", "beam")


@pytest.mark.parametrize("extra, message", [
    ([{"question_id": 100, "answer": "down"}], r"1 duplicate question_id values"),
    ([{"question_id": 999, "answer": "x"}], r"1 question_id values not in the references"),
    ([{"question_id": 101, "answer": None}], r"bad value for 'answer'"),
    ([{"question_id": 101}], r"missing key 'answer'"),
])
def test_bad_predictions(tmp_path, extra, message):
    paths = _files(tmp_path, ACCURACY[:3], drop=[1], extra=extra)
    p = params.load("params/score.yaml")
    with pytest.raises(NarvlError, match=message):
        vqa.score(paths["q"], paths["a"], paths["p"], p)


def test_missing_policy_error_and_mismatched_questions(tmp_path):
    paths = _files(tmp_path, ACCURACY[:3], drop=[2])
    p = dataclasses.replace(params.load("params/score.yaml"), missing_predictions="error")
    with pytest.raises(NarvlError, match=r"no prediction for 1 of 3 questions"):
        vqa.score(paths["q"], paths["a"], paths["p"], p)
    paths["q"].write_text(json.dumps({"questions": [{"question_id": 100}]}))
    with pytest.raises(NarvlError, match=r"do not hold the same questions"):
        vqa.score(paths["q"], paths["a"], paths["p"], p)


def test_empty_answers_are_scored_by_the_rules_and_counted(tmp_path):
    cases = [{"name": "e", "answer": "", "gt_answers": ["a", "an", "the", "x", "y", "z", "a", "b", "c", "d"],
              "expected": None}]
    paths = _files(tmp_path, cases)
    m = vqa.score(paths["q"], paths["a"], paths["p"], params.load("params/score.yaml"))
    # "a", "an", "the" normalise to "": 4 humans match the empty answer -> min(1, 3/3) or min(1, 4/3) -> 100
    assert m["metrics"]["accuracy"] == 100.0
    assert m["details"]["empty_answers"] == 1
