"""Caption metrics against the official coco-caption "fakecap" demo (tests/fixtures/coco_caption, see its README)."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from narvl import params
from narvl.cli import main as cli_main
from narvl.errors import NarvlError
from narvl.eval import caption

FIX = Path(__file__).parent / "fixtures" / "coco_caption"
REFS = FIX / "captions_val2014_fakecap_gt_subset.json"
RESULTS = FIX / "captions_val2014_fakecap_results.json"
EXPECTED = json.loads((FIX / "expected_scores.json").read_text())
NOTEBOOK = EXPECTED["official_notebook_output"]
FULL = EXPECTED["full_precision_reproduction"]
METRICS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


def score_params(**changes):
    return dataclasses.replace(params.load("params/score.yaml"), **changes)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The whole command on the demo files, once (PTB tokenizer and METEOR in Java: ~20 s)."""
    out = tmp_path_factory.mktemp("caption") / "caption-val-ar-greedy.json"
    rc = cli_main(["score", "caption", "--params", "params", "--references", str(REFS),
                   "--predictions", str(RESULTS), "--out", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_full_run_reproduces_the_official_notebook(full_run):
    m = full_run["metrics"]
    for name in METRICS:
        assert f"{m[name]:.3f}" == f"{NOTEBOOK[name]:.3f}", name
        assert m[name] == pytest.approx(FULL[name], abs=1e-9), name
    stats = full_run["details"]["bleu_stats"]
    for key in ("reflen", "testlen", "guess", "correct"):
        assert stats[key] == NOTEBOOK["bleu_stats"][key]
    assert stats["ratio"] == pytest.approx(NOTEBOOK["bleu_ratio"], abs=1e-10)
    assert (full_run["task"], full_run["split"], full_run["model"], full_run["decoder"]) == (
        "caption", "val", "ar", "greedy")
    assert full_run["coverage"]["missing"] == 0 and full_run["coverage"]["references"] == 1000


@pytest.mark.slow
def test_spice_is_a_number_or_unavailable_with_the_reason(full_run):
    lib = caption._package_dir("spice") / "lib"
    if all((lib / j).is_file() for j in caption.CORENLP_JARS):
        assert f"{full_run['metrics']['SPICE']:.3f}" == f"{NOTEBOOK['SPICE']:.3f}"
    else:
        assert full_run["metrics"]["SPICE"] is None
        assert "Stanford CoreNLP 3.6.0 is not installed" in full_run["unavailable"]["SPICE"]


def _load_tokenized(name):
    return {int(k): v for k, v in json.loads((FIX / name).read_text()).items()}


def test_scorers_on_the_tokenized_files_give_exact_bleu_stats():
    gts = _load_tokenized("fakecap_references_ptb_tokenized.json")
    res = _load_tokenized("fakecap_results_ptb_tokenized.json")
    res = {k: res[k] for k in gts}
    bleu, stats = caption._bleu(gts, res)
    assert {k: stats[k] for k in NOTEBOOK["bleu_stats"]} == NOTEBOOK["bleu_stats"]
    for n in range(4):
        assert bleu[n] == pytest.approx(FULL[f"Bleu_{n + 1}"], abs=1e-6)
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    assert Rouge().compute_score(gts, res)[0] == pytest.approx(FULL["ROUGE_L"], abs=1e-6)
    assert Cider().compute_score(gts, res)[0] == pytest.approx(FULL["CIDEr"], abs=1e-6)


def test_ptb_tokenizer_matches_the_official_tokenized_files():
    refs = caption.load_references(REFS)
    results = {r["image_id"]: [r["caption"]] for r in json.loads(RESULTS.read_text())}
    both = caption.ptb_tokenize({**{("g", k): v for k, v in refs.items()}, **{("r", k): v for k, v in results.items()}})
    assert {k: v for (s, k), v in both.items() if s == "g"} == _load_tokenized("fakecap_references_ptb_tokenized.json")
    assert {k: v for (s, k), v in both.items() if s == "r"} == _load_tokenized("fakecap_results_ptb_tokenized.json")


def test_ptb_tokenizer_equals_pycocoevalcap_on_awkward_text(tmp_path, monkeypatch):
    """Same output as pycocoevalcap's own PTBTokenizer (run on a copy of its folder, which it writes into)."""
    src = caption._package_dir("tokenizer")
    copy = tmp_path / "tokenizer"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("ptb_copy", copy / "ptbtokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    texts = {1: ["A man -- riding (a) horse!!", "", "  Two dogs' toys; \"quoted\" ...", "line\nbreak"],
             2: ["Café au lait, naïve?", "..."], 3: ["x"]}
    official = mod.PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in texts.items()})
    assert caption.ptb_tokenize(texts) == official


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def small(tmp_path):
    """20 images of the demo: references and results."""
    gt = json.loads(REFS.read_text())
    ids = sorted({a["image_id"] for a in gt["annotations"]})[:20]
    refs = _write(tmp_path / "refs.json", {"annotations": [a for a in gt["annotations"] if a["image_id"] in ids]})
    results = [r for r in json.loads(RESULTS.read_text()) if r["image_id"] in ids]
    return refs, results, ids


def test_missing_predictions_score_as_empty_captions_and_are_listed(tmp_path, small):
    refs, results, ids = small
    p = score_params(meteor=False, spice=False)
    dropped = [results[0]["image_id"], results[5]["image_id"]]
    partial = caption.score(refs, _write(tmp_path / "partial.json", results[1:5] + results[6:]), p)
    explicit = caption.score(refs, _write(tmp_path / "explicit.json", [
        {**r, "caption": ""} if r["image_id"] in dropped else r for r in results]), p)
    complete = caption.score(refs, _write(tmp_path / "complete.json", results), p)
    assert partial["coverage"]["missing"] == 2 and sorted(partial["coverage"]["missing_ids"]) == sorted(dropped)
    assert partial["coverage"]["missing_scored_as"] == "wrong"
    assert partial["metrics"] == explicit["metrics"]
    assert explicit["details"]["empty_captions"] == 2
    assert partial["metrics"]["CIDEr"] < complete["metrics"]["CIDEr"]
    assert partial["unavailable"] == {"METEOR": "disabled by score.meteor: false",
                                      "SPICE": "disabled by score.spice: false"}
    with pytest.raises(NarvlError, match=r"partial\.json: no prediction for 2 of 20 reference images"):
        caption.score(refs, tmp_path / "partial.json", score_params(meteor=False, spice=False,
                                                                      missing_predictions="error"))


@pytest.mark.parametrize("bad, message", [
    ("dup", r"1 duplicate image_id values"),
    ("unknown", r"1 image_id values not in the references"),
    ("nokey", r"record 0: missing key 'caption'"),
    ("notstr", r"record 0: bad value for 'caption'"),
    ("strid", r"record 0: bad value for 'image_id'"),
    ("dict", r"expected a JSON list of caption records"),
])
def test_bad_predictions_stop_with_a_clear_error(tmp_path, small, bad, message):
    refs, results, _ = small
    records = {
        "dup": results + [results[3]],
        "unknown": results + [{"image_id": 1, "caption": "a cat"}],
        "nokey": [{"image_id": results[0]["image_id"]}] + results[1:],
        "notstr": [{**results[0], "caption": ["a", "cat"]}] + results[1:],
        "strid": [{**results[0], "image_id": str(results[0]["image_id"])}] + results[1:],
        "dict": {"results": results},
    }[bad]
    with pytest.raises(NarvlError, match=message):
        caption.score(refs, _write(tmp_path / "p.json", records), score_params(meteor=False, spice=False))


def test_not_json_is_an_error_through_the_cli(tmp_path, small, capsys):
    refs, _, _ = small
    bad = tmp_path / "p.json"
    bad.write_text('[{"image_id": 1, "caption": "a"},')
    rc = cli_main(["score", "caption", "--params", "params", "--references", str(refs),
                   "--predictions", str(bad), "--out", str(tmp_path / "m.json")])
    assert rc == 2
    assert "p.json: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_line_separators_inside_captions_cannot_shift_captions_to_other_images():
    texts = {1: ["a red\rcar"], 2: ["two\u2028dogs\x0bplay", "x\x85y"], 3: ["last one\n"], 4: [""]}
    assert caption.ptb_tokenize(texts) == {1: ["a red car"], 2: ["two dogs play", "x y"], 3: ["last one"], 4: [""]}
