"""Visual entailment (SNLI-VE) below the model: the official jsonl and OFA's TSV -> shards, and the scorer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from narvl import params
from narvl.cli import main as cli_main
from narvl.data.shard_folder import ShardFolder
from narvl.errors import NarvlError
from narvl.tasks.entailment import hypothesis_prompt, read_snli_ve
from tests.fixtures.data import make

PARAMS = Path("params")  # the parameter folder that --params takes


def shard(*argv) -> int:
    return cli_main(["shard", "--params", str(PARAMS), *map(str, argv)])


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    make.snli_ve(root)
    return root


@pytest.fixture(scope="module")
def ve_shards(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "entailment"
    files = sorted((raw / "snli_ve").glob("*.jsonl"))
    assert shard("--task", "entailment", "--format", "snli-ve", "--annotations", *files,
                 "--images", raw / "images" / "flickr30k", "--out", out) == 0
    return out


# ------------------------------------------------------------------------------------------------------- reader
def test_snli_ve_jsonl_to_shards_with_ofa_prompt_and_answers(ve_shards):
    folder = ShardFolder(ve_shards, "entailment")
    assert folder.splits == ["dev", "test", "train"]
    assert [folder.samples_count(s) for s in folder.splits] == [2, 1, 4]
    train = list(folder.samples("train"))
    metas = [s["meta"] for s in train]
    # sorted by image id, then pair id; OFA's words for the labels
    assert [(m["image_id"], m["target"]) for m in metas] == [
        (2248275918, "yes"), (3416050480, "yes"), (3416050480, "no"), (3416050480, "maybe")]
    m = metas[1]
    assert m["prompt"] == 'does the image describe " a dog runs through the grass "?'
    assert m["hypothesis"] == "a dog runs through the grass" and m["premise"] == "A premise."
    assert m["pair_id"] == "3416050480.jpg#0r1e" and m["gold_label"] == "entailment"
    longest = params.load_stage(PARAMS, "data").shard.image_size["entailment"]
    assert m["orig_size"] == [500, 375] and max(m["size"]) == longest
    assert all(re.fullmatch(r"train_\d{8}", s["key"]) for s in train)


def test_snli_ve_reader_takes_the_hf_field_name_and_bare_ids(tmp_path):
    path = tmp_path / "snli_ve_dev.jsonl"
    path.write_text(json.dumps({"Flickr30K_ID": "1000092795", "pairID": "p1", "gold_label": "neutral",
                                "sentence2": "Two guys talk."}) + "\n")
    (rec,) = read_snli_ve([path], tmp_path / "flickr30k-images")
    assert rec.split == "dev" and rec.image_id == 1000092795
    assert rec.image == tmp_path / "flickr30k-images" / "1000092795.jpg"
    assert rec.fields["target"] == "maybe" and rec.fields["prompt"] == hypothesis_prompt("two guys talk")


@pytest.mark.parametrize("line, message", [
    ('{"Flikr30kID": "1.jpg", "pairID": "p", "gold_label": "-", "sentence2": "x"}',
     r"line 1 \(pairID p\): gold_label '-' is not one of entailment, contradiction, neutral"),
    ('{"Flikr30kID": "abc.jpg", "pairID": "p", "gold_label": "neutral", "sentence2": "x"}',
     r"line 1 \(pairID p\): Flickr30k image id 'abc.jpg' is not '<digits>.jpg'"),
    ('{"Flikr30kID": "1.jpg", "gold_label": "neutral", "sentence2": "x"}', r"line 1: missing key 'pairID'"),
    ('{"Flikr30kID": "1.jpg", "pairID": "p", "gold_label": "neutral", "sentence2": "!!"}',
     r"line 1 \(pairID p\): empty hypothesis"),
    ("not json", r"line 1: not valid JSON"),
])
def test_snli_ve_bad_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "snli_ve_train.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(NarvlError, match=rf"snli_ve_train\.jsonl: {message}"):
        read_snli_ve([path], tmp_path)


def test_snli_ve_file_names_give_the_split_and_a_pair_once(tmp_path):
    bad = tmp_path / "dev.jsonl"
    bad.write_text("")
    with pytest.raises(NarvlError, match=r"dev\.jsonl: an SNLI-VE file is named snli_ve_<split>\.jsonl"):
        read_snli_ve([bad], tmp_path)
    twice = tmp_path / "snli_ve_dev.jsonl"
    rec = '{"Flikr30kID": "1.jpg", "pairID": "p", "gold_label": "neutral", "sentence2": "x"}'
    twice.write_text(rec + "\n" + rec + "\n")
    with pytest.raises(NarvlError, match=r"line 2 \(pairID p\): pairID given twice"):
        read_snli_ve([twice], tmp_path)


def test_ofa_visual_entailment_tsv(tmp_path):
    jpg = make.jpeg_bytes(3, (120, 90))
    tsv = make.ofa_tsv(tmp_path / "snli_ve_dev.tsv", [
        ["17", "3416050480", make.b64(jpg), "A dog runs.", "A dog in a field.", "entailment"],
        ["18", "3416050480", make.b64(jpg), "A cat sleeps.", "A dog in a field.", "contradiction"],
    ])
    assert shard("--task", "entailment", "--format", "ofa-tsv", "--tsv", f"dev={tsv}", "--out", tmp_path / "ve") == 0
    metas = list(ShardFolder(tmp_path / "ve", "entailment").metas("dev"))
    assert [(m["pair_id"], m["target"], m["premise"]) for m in metas] == [
        ("17", "yes", "A dog in a field."), ("18", "no", "A dog in a field.")]
    assert metas[0]["prompt"] == 'does the image describe " a dog runs "?' and metas[0]["orig_size"] == [120, 90]
    bad = make.ofa_tsv(tmp_path / "bad.tsv", [["1", "2", make.b64(jpg), "h", "p", "yes"]])
    from narvl.data.readers import read_ofa_tsv

    with pytest.raises(NarvlError, match=r"bad\.tsv: line 1 \(uniq-id 1\): label 'yes' is not one of"):
        list(read_ofa_tsv("entailment", "dev", bad))


# ------------------------------------------------------------------------------------------------------- scorer
def score(*argv) -> int:
    return cli_main(["score", "entailment", "--params", str(PARAMS), *map(str, argv)])


def test_accuracy_overall_and_per_answer_against_jsonl_and_shards(raw, ve_shards, tmp_path):
    preds = tmp_path / "entailment-dev-nar-greedy.json"
    preds.write_text(json.dumps([{"pair_id": "1000092795.jpg#0r1e", "answer": "yes"},
                                 {"pair_id": "1000092795.jpg#1r1c", "answer": "maybe"}]))
    out = tmp_path / "entailment-dev-nar-greedy.metrics.json"
    assert score("--references", raw / "snli_ve" / "snli_ve_dev.jsonl", "--predictions", preds,
                 "--out", out, "--split", "dev", "--model", "nar", "--decoder", "greedy") == 0
    m = json.loads(out.read_text())
    assert (m["task"], m["split"], m["model"], m["decoder"]) == ("entailment", "dev", "nar", "greedy")
    assert m["metrics"] == {"accuracy": 50.0, "accuracy_yes": 100.0, "accuracy_no": 0.0}
    assert m["headline"] == "accuracy" and m["coverage"]["missing"] == 0
    out2 = tmp_path / "from-shards.json"
    assert score("--references", ve_shards, "--split", "dev", "--predictions", preds, "--out", out2,
                 "--model", "nar", "--decoder", "greedy") == 0
    assert json.loads(out2.read_text())["metrics"] == m["metrics"]


def test_label_words_count_as_answers_and_missing_pairs_are_wrong(raw, tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"pair_id": "1000092795.jpg#1r1c", "answer": " Contradiction "}]))
    out = tmp_path / "m.json"
    assert score("--references", raw / "snli_ve" / "snli_ve_dev.jsonl", "--predictions", preds, "--out", out,
                 "--split", "dev", "--model", "ar", "--decoder", "greedy") == 0
    m = json.loads(out.read_text())
    assert m["metrics"]["accuracy"] == 50.0 and m["coverage"]["missing"] == 1


def test_bad_predictions_are_errors_naming_the_record(raw, tmp_path, capsys):
    refs = raw / "snli_ve" / "snli_ve_dev.jsonl"
    cases = [([{"pair_id": "1000092795.jpg#0r1e"}], r"record 0: missing key 'answer'"),
             ([{"pair_id": "nope", "answer": "yes"}], r"1 pair ids not in the references"),
             ([{"pair_id": "1000092795.jpg#0r1e", "answer": "yes"}] * 2, r"1 duplicate pair ids")]
    for records, message in cases:
        preds = tmp_path / "p.json"
        preds.write_text(json.dumps(records))
        assert score("--references", refs, "--predictions", preds, "--out", tmp_path / "m.json", "--split", "dev") == 2
        assert re.search(rf"p\.json: .*{message}", capsys.readouterr().err)
        assert not (tmp_path / "m.json").exists()
