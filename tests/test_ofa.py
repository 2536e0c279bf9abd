"""narvl's OFA against OFA's own outputs (tests/fixtures/ofa*/, README.md there), `narvl import-ofa`, and the key
map of the real OFA checkpoints.

Every folder tests/fixtures/ofa*/ holding the reference files is one parametrisation (the test id names it): a
random-weight OFA in fairseq's fp16 checkpoint layout, fixed inputs and the float32 outputs of OFA's code. Nothing
here reads the fixture's sizes from anywhere but its checkpoint and tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from narvl import model as narvl_model
from narvl.cli import main as cli
from narvl.errors import NarvlError
from narvl.ofa_import import (IGNORED, NEW_KEYS, OFA_SPECIAL, arch_from_checkpoint, build_from_checkpoint,
                              ignored_reason, map_state, read_checkpoint)
from narvl.params import PRESETS

ROOT = Path(__file__).parent / "fixtures"
FILES = ("ofa_tiny_random.pt", "inputs.pt", "expected.pt")
FOLDERS = sorted(p for p in ROOT.glob("ofa*") if p.is_dir() and all((p / f).is_file() for f in FILES))
TOL = 1e-4


def test_a_fixture_folder_exists():
    assert ROOT / "ofa" in FOLDERS


@pytest.fixture(scope="module", params=FOLDERS, ids=lambda p: p.name)
def ref(request):
    torch.set_num_threads(1)
    folder = request.param
    inputs = torch.load(folder / "inputs.pt", weights_only=True)
    expected = torch.load(folder / "expected.pt", weights_only=True)
    model, ignored, arch = build_from_checkpoint(folder / "ofa_tiny_random.pt", "ar", num_queries=4)
    return folder, model, inputs, expected, ignored


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def run_encoder(model, inputs, patch_masks, images=True):
    src = inputs["src_tokens"]
    trace: dict = {}
    with torch.no_grad():
        enc = model.encoder(inputs["patch_images"] if images else None, src, src.eq(OFA_SPECIAL["pad"]),
                            patch_masks, trace=trace)
    return enc, trace


def test_encoder_matches_ofa(ref):
    _, model, inputs, exp, _ = ref
    enc, trace = run_encoder(model, inputs, inputs["patch_masks"])
    assert diff(trace["image_features"], exp["image_features"]) <= TOL
    assert torch.equal(enc.padding, exp["encoder_padding_mask"])
    assert diff(enc.pos, exp["encoder_position_embedding"]) <= TOL
    assert diff(trace["layer0_bias"], exp["encoder_layer0_attn_bias"]) <= TOL
    assert diff(torch.stack(trace["states"]), exp["encoder_hidden_states"]) <= TOL
    assert diff(enc.memory, exp["encoder_last_hidden_state"]) <= TOL


@pytest.mark.parametrize("case", ["main", "alt_patchmask", "textonly"])
def test_teacher_forced_logits_match_ofa(ref, case):
    _, model, inputs, exp, _ = ref
    masks = inputs["patch_masks_alt"] if case == "alt_patchmask" else inputs["patch_masks"]
    enc, _ = run_encoder(model, inputs, masks, images=case != "textonly")
    prefix = "" if case == "main" else f"{case}_"
    assert diff(enc.memory, exp[f"{prefix}encoder_last_hidden_state"]) <= TOL
    prev = inputs["prev_output_tokens"]
    emb = model.encoder.embed_tokens
    trace: dict = {}
    with torch.no_grad():
        logits = model.decoder(emb(prev), enc, emb, causal=True, self_padding=prev.eq(OFA_SPECIAL["pad"]),
                               trace=trace)
        forward = model(inputs["patch_images"] if case != "textonly" else None, inputs["src_tokens"],
                        inputs["src_tokens"].eq(OFA_SPECIAL["pad"]), prev, masks)
    v = exp["logits"].size(-1)  # narvl's vocabulary has one more row: the CTC blank
    assert logits.size(-1) == v + 1
    assert diff(logits[..., :v], exp[f"{prefix}logits"]) <= TOL
    assert torch.equal(forward, logits)
    if case == "main":
        want = exp["decoder_layer0_self_attn_bias"]  # the same for every item: narvl keeps one copy
        assert diff(trace["self_bias0"].expand_as(want), want) <= TOL
        assert diff(trace["cross_bias"], exp["decoder_cross_attn_bias"]) <= TOL
        assert diff(torch.stack(trace["states"]), exp["decoder_hidden_states"]) <= TOL


def test_greedy_steps_match_ofa_with_the_kv_cache(ref):
    """OFA's reference recomputes the whole prefix each step; narvl's cached decoding must give the same logits."""
    _, model, inputs, exp, _ = ref
    enc, _ = run_encoder(model, inputs, inputs["patch_masks"])
    v = exp["logits"].size(-1)
    steps = exp["greedy_step_logits"].size(1)
    tokens = exp["greedy_tokens"][:, :1].clone()  # [bos]
    caches = [{} for _ in model.decoder.layers]
    got = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model.decode(tokens, enc, caches)[:, -1, :v]
            got.append(logits)
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert diff(torch.stack(got, 1), exp["greedy_step_logits"]) <= TOL
    assert torch.equal(tokens, exp["greedy_tokens"])


def test_every_checkpoint_key_is_used_or_ignored_with_a_reason(ref):
    folder, model, _, _, ignored = ref
    state, _ = read_checkpoint(folder / "ofa_tiny_random.pt")
    narvl_keys = set(model.state_dict())
    for key in state:
        assert key in narvl_keys or key in ignored, key
    assert all(ignored.values())
    assert set(narvl_keys) - set(state) <= set(NEW_KEYS)
    # the used tensors arrive unchanged (fp16 values upcast), the vocabulary gains one row
    for key in narvl_keys & set(state):
        if key != "encoder.embed_tokens.weight":
            assert torch.equal(model.state_dict()[key], state[key]), key
    emb = model.state_dict()["encoder.embed_tokens.weight"]
    assert torch.equal(emb[:-1], state["encoder.embed_tokens.weight"])
    assert model.special_ids == {**OFA_SPECIAL, "blank": emb.size(0) - 1}


@pytest.mark.parametrize("folder", [p for p in FOLDERS if (p / "key_map.json").is_file()], ids=lambda p: p.name)
def test_derived_buffers_recomputed_match_ofa_hashes(folder):
    """The relative-position indices narvl computes equal OFA's stored buffers (sha256 from key_map.json), at the
    sizes of the fixture's config and buffer shapes."""
    import hashlib

    from narvl.model.layers import image_rel_index, token_rel_buckets

    derived = json.loads((folder / "key_map.json").read_text())["omitted_derived_buffers"]["fairseq"]
    path = folder / "ofa_tiny_random.pt"
    cfg = arch_from_checkpoint(*read_checkpoint(path), path)[0]
    positions = derived["encoder.token_rp_bucket"]["shape"][0]
    tokens = token_rel_buckets(positions, positions, cfg.token_bucket_size)
    assert hashlib.sha256(tokens.numpy().astype("<i8").tobytes()).hexdigest() == \
        derived["encoder.token_rp_bucket"]["sha256_int64_le"]
    # OFA's image buffer is indexed by position id (row * grid + col + 1; id 0 unused by patches)
    grid = cfg.image_bucket_size
    size = derived["encoder.image_rp_bucket"]["shape"][0]
    assert size == grid * grid + 1
    full = torch.full((size, size), -1, dtype=torch.long)
    full[1:, 1:] = image_rel_index(grid, grid, grid)
    n = (2 * grid - 1) ** 2 + 3
    full[0, :], full[:, 0] = n - 3, n - 2
    full[0, 0] = n - 1
    assert hashlib.sha256(full.numpy().astype("<i8").tobytes()).hexdigest() == \
        derived["encoder.image_rp_bucket"]["sha256_int64_le"]


# ------------------------------------------------------------------------------------------- import-ofa CLI
PARAMS = Path(__file__).parents[1] / "params"


@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_import_ofa_writes_a_model_file_that_reproduces_ofa(ref, tmp_path, kind):
    folder, _, inputs, exp, _ = ref
    out = tmp_path / f"{kind}.pt"
    assert cli(["import-ofa", "--checkpoint", str(folder / "ofa_tiny_random.pt"), "--kind", kind, "--task",
                "caption", "--params", str(PARAMS), "--out", str(out)]) == 0
    model, meta = narvl_model.load(out)
    v = exp["logits"].size(-1)
    assert meta["kind"] == kind and meta["task"] == "caption" and meta["vocab_size"] == v + 1
    src, prev = inputs["src_tokens"], inputs["prev_output_tokens"]
    if kind == "ar":
        with torch.no_grad():
            logits = model(inputs["patch_images"], src, src.eq(1), prev, inputs["patch_masks"])
        assert diff(logits[..., :v], exp["logits"]) <= TOL
        return
    # nar: OFA's decoder layers under N new queries; the encoder reproduces OFA, the decoder weights are OFA's
    from narvl.params import load

    n = load(PARAMS / "model.yaml").num_queries["caption"]
    assert model.queries.shape == (n, model.arch.d_model)
    state, _ = read_checkpoint(folder / "ofa_tiny_random.pt")
    for key, value in model.state_dict().items():
        if key.startswith("decoder."):
            assert torch.equal(value, state[key]), key
    with torch.no_grad():
        enc = model.encode(inputs["patch_images"], src, src.eq(1), inputs["patch_masks"])
        logits = model.decode(enc)
    assert diff(enc.memory, exp["encoder_last_hidden_state"]) <= TOL
    assert logits.shape == (src.size(0), n, v + 1)


@pytest.mark.parametrize("form", ["namespace", "omegaconf"])
def test_import_reads_fairseq_config_objects(ref, tmp_path, form):
    """fairseq pickles args as an argparse.Namespace, newer versions cfg as an OmegaConf container."""
    from omegaconf import OmegaConf

    folder, model, inputs, exp, _ = ref
    blob = torch.load(folder / "ofa_tiny_random.pt", weights_only=True)
    path = tmp_path / f"{form}.pt"
    if form == "namespace":
        torch.save({"model": blob["model"], "args": argparse.Namespace(**blob["cfg"]["model"]), "cfg": None}, path)
    else:
        torch.save({"model": blob["model"], "args": None, "cfg": OmegaConf.create(blob["cfg"])}, path)
    again, _, arch = build_from_checkpoint(path, "ar", 4)
    assert dataclasses.asdict(arch) == dataclasses.asdict(model.arch)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


class Planted:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['NARVL_PLANTED']}",))


def test_a_planted_pickle_is_refused(ref, tmp_path, monkeypatch):
    folder = ref[0]
    flag = tmp_path / "executed"
    monkeypatch.setenv("NARVL_PLANTED", str(flag))
    blob = torch.load(folder / "ofa_tiny_random.pt", weights_only=True)
    path = tmp_path / "evil.pt"
    torch.save({"model": blob["model"], "args": Planted(), "cfg": None}, path)
    with pytest.raises(NarvlError, match="refused") as e:
        read_checkpoint(path)
    assert str(path) in str(e.value)
    assert not flag.exists()


def test_bad_checkpoints_get_errors_naming_the_file(ref, tmp_path):
    folder = ref[0]
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((folder / "ofa_tiny_random.pt").read_bytes()[:5000])
    with pytest.raises(NarvlError, match=str(corrupt)):
        read_checkpoint(corrupt)
    with pytest.raises(NarvlError, match="no such"):
        read_checkpoint(tmp_path / "missing.pt")
    blob = torch.load(folder / "ofa_tiny_random.pt", weights_only=True)
    other = tmp_path / "vit.pt"
    torch.save({"model": blob["model"], "cfg": {"model": {**blob["cfg"]["model"], "scale_attn": False}}}, other)
    with pytest.raises(NarvlError, match="scale_attn"):
        build_from_checkpoint(other, "ar", 4)
    extra = tmp_path / "extra.pt"
    torch.save({"model": {**blob["model"], "encoder.mystery.weight": torch.zeros(3)}, "cfg": blob["cfg"]}, extra)
    with pytest.raises(NarvlError, match="encoder.mystery.weight"):
        build_from_checkpoint(extra, "ar", 4)


# --------------------------------------------------------------------------------- the real OFA checkpoints
REAL = json.loads((ROOT / "ofa" / "real_ofa_fairseq_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(REAL), ids=sorted(REAL))
def test_presets_are_ofa_and_the_import_maps_every_real_key(name):
    preset = name.removeprefix("ofa_")
    entry = REAL[name]
    with torch.device("meta"):
        state = {k: torch.empty(shape, dtype=getattr(torch, dtype)) for k, (shape, dtype) in entry["keys"].items()}
    arch, vocab = arch_from_checkpoint(state, entry["args"], name)
    assert dataclasses.replace(arch, dropout=PRESETS[preset].dropout) == PRESETS[preset]
    with torch.device("meta"):
        model = narvl_model.build_model("nar", PRESETS[preset], vocab + 1, 20, {**OFA_SPECIAL, "blank": vocab})
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped, ignored = map_state(state, target, name)
    assert set(mapped) | set(NEW_KEYS) == set(target)
    assert set(mapped) | set(ignored) == set(state)
    for key, value in mapped.items():
        assert tuple(value.shape) == target[key], key
    assert all(ignored_reason(k) for k in ignored) and len(IGNORED) >= 9
    # narvl's encoder + AR decoder hold OFA's parameters minus the decoder's image-code generation parts
    with torch.device("meta"):
        ar = narvl_model.build_model("ar", PRESETS[preset], vocab, 1, {**OFA_SPECIAL, "blank": 0})
    code_only = sum(state[k].numel() for k, why in ignored.items() if "image-code generation" in why)
    assert narvl_model.count_parameters(ar) == entry["n_params_unique"] - code_only



def test_vocabulary_rows_line_up_a_gpt2_tokenizer_with_ofa(tmp_path):
    """OFA's ids: fairseq's <s> <pad> </s> <unk>, then the GPT-2 ids in dict.txt's (frequency) order, <mask>, image
    codes, <bin_k>. A narvl tokenizer from the same BPE must embed every text with OFA's rows."""
    from narvl.data.tokenizer import Tokenizer
    from narvl.ofa_import import _embedding_rows, vocabulary_rows

    vocab = {t: i for i, t in enumerate(["a", "b", "c", "Ġ", "<|endoftext|>", "Ġa", "Ġab", "bc", "Ġabc"])}
    (tmp_path / "encoder.json").write_text(json.dumps(vocab))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ a\nĠa b\nb c\nĠab c\n", encoding="utf-8")
    order = [8, 3, 0, 7, 5, 1, 6, 2, 4]  # dict.txt lists GPT-2 ids by frequency, not by id
    (tmp_path / "dict.txt").write_text("".join(f"{g} {100 - n}\n" for n, g in enumerate(order))
                                       + "madeupword0000 0\n")
    num_bins, codes = 6, 3
    ofa_vocab = 4 + len(order) + 1 + 1 + codes + num_bins  # + madeupword, <mask>
    tok = Tokenizer.from_gpt2(tmp_path / "encoder.json", tmp_path / "vocab.bpe", num_bins)
    rows = vocabulary_rows(tok, tmp_path, ofa_vocab, num_bins)
    ofa_weight = torch.arange(ofa_vocab, dtype=torch.float32)[:, None].repeat(1, 2)  # row r holds r
    narvl_weight = _embedding_rows(ofa_weight, len(rows), rows)
    got = narvl_weight[:, 0]
    assert got[[tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id]].tolist() == [0, 1, 2, 3]
    assert got[tok.blank_id] == ofa_weight[:, 0].mean()  # the new row
    assert got[tok.bin_offset:tok.bin_offset + num_bins].tolist() == list(range(ofa_vocab - num_bins, ofa_vocab))
    for text in ("abc", "abc bc", "a b c"):
        ofa_ids = [4 + order.index(vocab[t]) for t in _gpt2_tokens(text, vocab)]
        assert got[tok.encode(text)].tolist() == ofa_ids


def _gpt2_tokens(text, vocab):
    """The hand-applied BPE of the three merges above (the reference for the tokenizer's segmentation)."""
    out = []
    for word in text.split(" "):
        pieces = ["Ġ", *word]
        for a, b in (("Ġ", "a"), ("Ġa", "b"), ("b", "c"), ("Ġab", "c")):
            i = 0
            while i < len(pieces) - 1:
                if (pieces[i], pieces[i + 1]) == (a, b):
                    pieces[i:i + 2] = [a + b]
                else:
                    i += 1
        out += pieces
    return out


def test_train_init_refuses_what_does_not_fit(ref, tmp_path):
    from narvl.train.init import load_init

    folder, model, _, _, _ = ref
    ckpt = folder / "ofa_tiny_random.pt"
    same = narvl_model.build_model("nar", model.arch, model.vocab_size, 3, model.special_ids)
    with pytest.raises(NarvlError, match="init_bpe_dir"):
        load_init(ckpt, same, None, None)
    ffn = model.arch.ffn_dim // 2
    other = narvl_model.build_model("nar", dataclasses.replace(model.arch, ffn_dim=ffn), model.vocab_size, 3,
                                    model.special_ids)
    with pytest.raises(NarvlError, match=rf"ffn_dim: {model.arch.ffn_dim} .file. vs {ffn} .params."):
        load_init(ckpt, other, None, None)
    # a narvl model file of the other kind: everything but the queries transfers
    path = tmp_path / "ar.pt"
    narvl_model.save(path, model, {"task": "caption", "tokenizer": {}, "step": 0})
    assert "new: queries" in load_init(path, same, None, None)
    from narvl.train.init import blank_from_eos

    expected = blank_from_eos(model.state_dict(), model.special_ids)  # the blank's row from <eos>'s (AR -> NAR)
    assert all(torch.equal(v, expected[k]) for k, v in same.state_dict().items() if k != "queries")
