"""The tokenizer: special ids, location tokens and box round trips, training on shards, OFA's GPT-2 BPE."""

from __future__ import annotations

import json
import random

import pytest

from narvl import params

from narvl.cli import main as cli_main
from narvl.data.tokenizer import SPECIALS, Tokenizer
from narvl.errors import NarvlError
from tests.fixtures.data import make

TEXTS = ["a man riding a horse on a beach", "what color is the horse?", "two dogs playing in the snow",
         "which region does the text \" man on left \" describe?"] * 5


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, vocab_size=300, num_bins=50, lowercase=True)


def test_special_and_location_ids_follow_the_design(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.blank_id) == (0, 1, 2, 3, 4)
    assert [tok.id_to_token(i) for i in range(5)] == list(SPECIALS)
    assert tok.num_bins == 50
    assert [tok.id_to_token(5 + k) for k in (0, 1, 49)] == ["<bin_0>", "<bin_1>", "<bin_49>"]
    assert tok.vocab_size == 5 + 50 + 300


def test_encode_decode_round_trip_drops_specials(tok):
    for text in ["a man riding a horse", "what color is the dog?", "zebra! unseen words 42"]:
        assert tok.decode(tok.encode(text)) == text
    ids = [tok.bos_id, *tok.encode("two dogs"), tok.blank_id, 5 + 7, tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "two dogs"
    assert tok.decode(tok.encode("A Man")) == "a man"  # lowercase
    assert all(i >= 5 + 50 for i in tok.encode("a man riding"))  # text never maps to special or bin ids


def test_box_bins_round_trip_within_one_bin(tok):
    rng = random.Random(0)
    size = 96
    step = size / (tok.num_bins - 1)
    for _ in range(500):
        x0, x1 = sorted(rng.uniform(0, size) for _ in range(2))
        y0, y1 = sorted(rng.uniform(0, size) for _ in range(2))
        ids = tok.box_to_tokens([x0, y0, x1, y1], size)
        assert len(ids) == 4 and all(tok.is_bin(i) for i in ids)
        back = tok.tokens_to_box(ids, size)
        assert all(abs(a - b) <= step / 2 + 1e-9 for a, b in zip(back, [x0, y0, x1, y1]))
    # the rule c -> round(c / size * (B - 1)), ends included
    expected = [5 + 0, 5 + round(48 / 96 * 49), 5 + 49, 5 + round(95.1 / 96 * 49)]
    assert tok.box_to_tokens([0, 48, 96, 95.1], 96) == expected
    assert tok.tokens_to_box([tok.eos_id, 5, 5 + 49], 96) is None  # fewer than 4 location tokens
    assert tok.tokens_to_box([tok.bos_id, 5, 99, 5 + 10, 5 + 20, 5 + 49, 5 + 3], 98) == [0.0, 20.0, 40.0, 98.0]


def test_save_load_and_training_are_deterministic(tok, tmp_path):
    tok.save(tmp_path / "a.json")
    Tokenizer.train(TEXTS, vocab_size=300, num_bins=50, lowercase=True).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    loaded = Tokenizer.load(tmp_path / "a.json")
    assert loaded.encode("a horse on a beach") == tok.encode("a horse on a beach")
    assert Tokenizer.from_str(tok.to_str()).vocab_size == tok.vocab_size
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(NarvlError, match=r"bad\.json: not a tokenizer file"):
        Tokenizer.load(tmp_path / "bad.json")


def test_tokenizer_command_trains_on_the_train_split_of_shard_folders(tmp_path):
    raw = tmp_path / "raw"
    make.karpathy(raw)
    qs, ans = make.vqav2(raw)
    base = ["shard", "--params", "params"]
    assert cli_main([*base, "--task", "caption", "--format", "karpathy", "--annotations",
                     str(raw / "captions/dataset_coco.json"), "--images", str(raw / "images"),
                     "--out", str(tmp_path / "caption")]) == 0
    assert cli_main([*base, "--task", "vqa", "--format", "vqav2", "--questions", *map(str, qs), "--annotations",
                     *map(str, ans), "--images", str(raw / "images"), "--out", str(tmp_path / "vqa")]) == 0
    out = tmp_path / "tokenizer.json"
    assert cli_main(["tokenizer", "--params", "params", "--shards", str(tmp_path / "caption"),
                     str(tmp_path / "vqa"), "--out", str(out)]) == 0
    tok = Tokenizer.load(out)
    assert tok.num_bins == params.load("params/data.yaml").tokenizer.num_bins and tok.blank_id == 4
    vocab = json.loads(out.read_text())["model"]["vocab"]
    # words of the train split's captions and questions became single tokens; a test-split-only word did not
    assert "Ġsquare" in vocab and "Ġboxes" in vocab
    assert "Ġreference" not in vocab


def test_from_gpt2_tiny_vocab_and_merges(tmp_path):
    """A hand-made GPT-2 style byte-level BPE: 'Ġ' marks a leading space, merges apply in file order."""
    alphabet = ["a", "b", "c", "Ġ", "<|endoftext|>"]
    merged = ["Ġa", "Ġab", "bc", "Ġabc"]
    vocab = {tok: i for i, tok in enumerate(alphabet + merged)}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ a\nĠa b\nb c\nĠab c\n", encoding="utf-8")
    tok = Tokenizer.from_gpt2(tmp_path / "vocab.json", tmp_path / "merges.txt", num_bins=8)
    assert (tok.pad_id, tok.blank_id, tok.num_bins) == (0, 4, 8)
    offset = 5 + 8
    # "abc" -> Ġ a b c -> Ġa b c -> Ġab c -> Ġabc ; "bc" -> Ġ b c -> Ġ bc (Ġb is not a merge)
    assert tok.encode("abc") == [offset + vocab["Ġabc"]]
    assert tok.encode("abc bc") == [offset + vocab["Ġabc"], offset + vocab["Ġ"], offset + vocab["bc"]]
    assert tok.decode(tok.encode("abc bc")) == "abc bc"
    assert tok.vocab_size == 5 + 8 + len(vocab)
    assert tok.box_to_tokens([0, 0, 10, 10], 10) == [5, 5, 12, 12]
    out = tmp_path / "tokenizer.json"
    assert cli_main(["tokenizer", "--params", "params", "--gpt2", str(tmp_path / "vocab.json"),
                     str(tmp_path / "merges.txt"), "--out", str(out)]) == 0
    converted = Tokenizer.load(out)
    bins = params.load("params/data.yaml").tokenizer.num_bins
    assert converted.num_bins == bins and converted.encode("abc") == [5 + bins + vocab["Ġabc"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ a\nx y\n", encoding="utf-8")
    with pytest.raises(NarvlError, match=r"merges\.txt: line 3: token 'x' is not in"):
        Tokenizer.from_gpt2(tmp_path / "vocab.json", tmp_path / "merges.txt", num_bins=8)


def test_a_tokenizer_embeds_in_a_model_file_reference(tok, tmp_path):
    """Tokenizer.embed: the file's exact text under its path and sha256; Tokenizer.embedded reads it back, refuses
    text that does not hash to the recorded sha256, and says None for references that carry no tokenizer."""
    import hashlib

    path = tmp_path / "tok.json"
    tok.save(path)
    ref = Tokenizer.embed(path)
    assert ref == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "json": path.read_text(encoding="utf-8")}
    back = Tokenizer.embedded(json.loads(json.dumps(ref)), "model.pt")  # survives being stored as plain data
    assert back.vocab_size == tok.vocab_size and back.num_bins == tok.num_bins
    assert back.encode("a man riding a horse") == tok.encode("a man riding a horse")
    assert back.to_str() == tok.to_str()
    damaged = dict(ref, json=ref["json"].replace("horse", "house"))
    with pytest.raises(NarvlError, match=r"model\.pt: the embedded tokenizer's sha256 .* is not the recorded"):
        Tokenizer.embedded(damaged, "model.pt")
    assert Tokenizer.embedded({"path": str(path), "sha256": ref["sha256"]}, "model.pt") is None
    assert Tokenizer.embedded(None, "model.pt") is None
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(NarvlError, match=r"bad\.json: not a tokenizer"):
        Tokenizer.embed(tmp_path / "bad.json")
    with pytest.raises(NarvlError, match=r"gone\.json: no such tokenizer file"):
        Tokenizer.embed(tmp_path / "gone.json")
