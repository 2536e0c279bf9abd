"""narvl predict: one image and one prompt through a model file.

- the batch it builds from a raw image is bit for bit the evaluation loader's batch of the shard sample made from
  that image, and its prediction is `narvl decode`'s for that sample (caption, VQA, grounding; AR and NAR; greedy
  and beam), with the prompt built from --text as the shards build it
- models come from `narvl export` (of DeepSpeed stage-0 fp32 checkpoint folders written here) and carry their
  tokenizer; a file without one needs --tokenizer, which must be the one the model was trained with
- grounding draws the box on the original image as a PNG, never over the input
- models imported from OFA with a tokenizer work; without one the error says what to do
- bad inputs are errors naming the file and the problem
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from narvl import params
from narvl.cli import main as cli_main
from narvl.data.loader import eval_loader, iter_samples
from narvl.data.tokenizer import Tokenizer
from narvl.model import build_model, load, save
from narvl.train import checkpoint as ck
from tests.fixtures.data import make

ROOT = Path(__file__).resolve().parents[1]
SPLIT = {"caption": "test", "vqa": "val", "grounding": "testA"}
SUBSET = {"caption": "val2014", "vqa": "val2014", "grounding": "train2014"}  # where the split's raw images are
QUERIES = {"caption": 20, "vqa": 6, "grounding": 5}


def write_run(run: Path, task: str, kind: str, tok_path: Path, seed: int) -> Path:
    """A training run folder as `narvl train` leaves it, with one DeepSpeed stage-0 fp32 checkpoint of a tiny
    random model (what `narvl export` reads: run.json, step_*/mp_rank_00_model_states.pt, COMPLETE.json)."""
    tok = Tokenizer.load(tok_path)
    arch = dataclasses.replace(params.PRESETS["cpu"], d_model=32, heads=2, encoder_layers=2, decoder_layers=2,
                               ffn_dim=64, resnet_width=8, dropout=0.0)
    special = {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id, "unk": tok.unk_id, "blank": tok.blank_id}
    torch.manual_seed(seed)
    model = build_model(kind, arch, tok.vocab_size, QUERIES[task], special)
    with torch.no_grad():  # at initialisation the outputs hardly depend on the input: make them (decode == predict
        for p in model.parameters():  # must then hold sample by sample, not by a constant output)
            if p.dim() > 1:
                p.mul_(10.0)
    sha = hashlib.sha256(tok_path.read_bytes()).hexdigest()
    identity = {"kind": kind, "task": task, "arch": dataclasses.asdict(arch), "vocab_size": tok.vocab_size,
                "num_queries": QUERIES[task], "special_ids": special, "tokenizer_sha256": sha, "init": None}
    info = {"format": "narvl-run-v1", "identity": identity, "identity_hash": ck.identity_hash(identity),
            "zero_stage": 0, "world_size": 1, "precision": "fp32", "tokenizer": {"path": str(tok_path), "sha256": sha}}
    tag = run / "checkpoints" / ck.tag_for(3)
    tag.mkdir(parents=True)
    (run / "checkpoints" / ck.RUN_INFO).write_text(json.dumps(info))
    torch.save({"module": model.state_dict()}, tag / "mp_rank_00_model_states.pt")
    (tag / ck.MARKER).write_text(json.dumps({"step": 3}))
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Raw data in the real formats, shards, a tokenizer, a params folder decoding one sample per batch, and an
    exported tiny random AR and NAR model per task, each with its decode of the evaluation split."""
    root = tmp_path_factory.mktemp("predict")
    data = make.sharded(root)
    raw, shards, tok_path = data["raw"], data["shards"], data["tokenizer"]
    # the repository's parameters, decoding one sample per batch (no padding beside other samples)
    prm = root / "params"
    prm.mkdir()
    for f in (ROOT / "params").glob("*.yaml"):
        shutil.copy(f, prm / f.name)
    doc = yaml.safe_load((prm / "decode.yaml").read_text())
    doc["decode"]["batch_size"] = 1
    (prm / "decode.yaml").write_text(yaml.safe_dump(doc))

    models, decoded = {}, {}
    for seed, task in enumerate(SPLIT):
        for kind in ("ar", "nar"):
            run = write_run(root / "runs" / f"{task}-{kind}", task, kind, tok_path, seed)
            assert cli_main(["export", "--run", str(run), "--out", str(run / "model.pt")]) == 0
            models[task, kind] = run / "model.pt"
    for task, kind, decoder in CASES:
        out = root / "predictions" / f"{task}-{SPLIT[task]}-{kind}-{decoder}.json"
        assert cli_main(["decode", "--params", str(prm), "--model", str(models[task, kind]),
                         "--shards", str(shards / task), "--split", SPLIT[task], "--tokenizer", str(tok_path),
                         "--decoder", decoder, "--out", str(out)]) == 0
        decoded[task, kind, decoder] = json.loads(out.read_text())
    return {"root": root, "raw": raw, "shards": shards, "tok_path": tok_path, "params": prm, "models": models,
            "decoded": decoded}


CASES = [("caption", "nar", "greedy"), ("caption", "ar", "beam"), ("vqa", "nar", "beam"), ("vqa", "ar", "greedy"),
         ("grounding", "nar", "greedy"), ("grounding", "ar", "greedy")]


def split_samples(world, task):
    sizes = json.loads((world["shards"] / task / "sizes.json").read_text())
    return list(iter_samples([world["shards"] / task / n for n in sizes[SPLIT[task]]["shards"]]))


def raw_image(world, task, meta) -> Path:
    subset = SUBSET[task]
    path = world["raw"] / "images" / subset / f"COCO_{subset}_{meta['image_id']:012d}.jpg"
    assert path.is_file()
    return path


def text_of(task, meta) -> list[str]:
    """The --text a user gives for the sample: nothing (caption), the question, the referring expression."""
    return {"caption": [], "vqa": ["--text", meta["prompt"]],
            "grounding": ["--text", meta.get("expression", "")]}[task]


def predict(world, *args, params_dir=None):
    return cli_main(["predict", "--params", str(params_dir or world["params"]), *map(str, args)])


def predict_json(world, capsys, *args, **kw) -> dict:
    capsys.readouterr()
    assert predict(world, *args, "--json", **kw) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------ same as shards + decode
@pytest.mark.parametrize("task", list(SPLIT))
def test_the_batch_is_the_loaders_batch_of_the_shard_sample(world, task):
    """A raw image through predict's preparation gives the very tensors the evaluation loader gives for the shard
    sample made from that image (resize, JPEG re-encoding, canvas, normalisation, prompt ids)."""
    from narvl.predict import build_prompt, make_batch

    tok = Tokenizer.load(world["tok_path"])
    data = params.load(world["params"] / "data.yaml")
    loader = eval_loader(world["shards"] / task, SPLIT[task], tok, data, task, 1, 0, 1)
    checked, samples = 0, split_samples(world, task)
    for sample, expected in zip(samples, loader):
        meta = sample["meta"]
        text = text_of(task, meta)
        prompt = build_prompt(task, text[1] if text else None, None)
        assert prompt == meta["prompt"]  # --text builds the prompt the shards hold
        batch = make_batch(raw_image(world, task, meta), prompt, task, tok, data)
        for key in ("images", "src_tokens", "src_mask"):
            assert batch[key].dtype == expected[key].dtype and torch.equal(batch[key], expected[key]), key
        got = batch["meta"][0]
        assert (got["size"], got["orig_size"]) == (meta["size"], meta["orig_size"])
        checked += 1
    assert checked == len(samples) >= 1
    if task == "grounding":
        assert meta["orig_size"] == [640, 480] and meta["size"] != meta["orig_size"]  # a resize was checked


@pytest.mark.parametrize("task, kind, decoder", CASES)
def test_prediction_equals_narvl_decode_for_the_same_sample(world, capsys, task, kind, decoder):
    records = world["decoded"][task, kind, decoder]
    samples = split_samples(world, task)
    key = {"caption": "caption", "vqa": "answer", "grounding": "box"}[task]
    assert len(records) == len(samples)
    if len(samples) > 1:  # the model's output depends on the sample
        assert len({json.dumps(r[key]) for r in records}) > 1
    for sample, record in zip(samples, records):
        meta = sample["meta"]
        image = raw_image(world, task, meta)
        extra = ["--box-png", world["root"] / "png" / f"{meta['id']}-{kind}.png"] if task == "grounding" else []
        out = predict_json(world, capsys, "--model", world["models"][task, kind], "--image", image,
                           *text_of(task, meta), "--decoder", decoder, *extra)
        assert (out["task"], out["kind"], out["decoder"], out["prompt"]) == (task, kind, decoder, meta["prompt"])
        assert out["prediction"] == record[key]
        if task == "grounding":
            assert record["sample_id"] == meta["id"] and len(out["prediction"]) == 4
            assert Path(out["box_png"]).is_file()


def test_plain_output_and_the_default_params_folder(world, capsys):
    """Plain text is the caption alone; without --params the checkout's params/ is read: the shards' data settings,
    and a single sample decodes the same with any decode.batch_size."""
    meta = split_samples(world, "caption")[0]["meta"]
    image = raw_image(world, "caption", meta)
    capsys.readouterr()
    assert cli_main(["predict", "--model", str(world["models"]["caption", "ar"]), "--image", str(image)]) == 0
    out = capsys.readouterr().out
    assert out == predict_json(world, capsys, "--model", world["models"]["caption", "ar"], "--image",
                               image)["prediction"] + "\n"


# ------------------------------------------------------------------------------------------------ grounding PNG
def test_grounding_draws_the_box_on_the_original_image(world, capsys, tmp_path, monkeypatch):
    meta = split_samples(world, "grounding")[0]["meta"]
    image = tmp_path / "in" / "street.jpg"
    image.parent.mkdir()
    shutil.copy(raw_image(world, "grounding", meta), image)
    before = image.read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert predict(world, "--model", world["models"]["grounding", "nar"], "--image", image,
                   "--text", meta["expression"]) == 0
    lines = capsys.readouterr().out.splitlines()
    png = work / "street.box.png"  # the default: <image stem>.box.png in the current folder
    assert lines[1] == "box drawn on street.box.png" and png.is_file()
    box = [float(v) for v in lines[0].split()]
    exact = world["decoded"]["grounding", "nar", "greedy"][0]["box"]
    assert box == pytest.approx(exact, abs=0.051)  # printed with one decimal
    assert image.read_bytes() == before

    drawn = Image.open(png)
    assert drawn.format == "PNG" and drawn.size == (640, 480) == tuple(meta["orig_size"])
    a = np.asarray(drawn.convert("RGB")).astype(int)
    b = np.asarray(Image.open(image).convert("RGB")).astype(int)
    w, h = drawn.size
    x0, x1 = sorted(min(max(round(exact[i]), 0), w - 1) for i in (0, 2))
    y0, y1 = sorted(min(max(round(exact[i]), 0), h - 1) for i in (1, 3))
    for x, y in ((x0, y0), (x1, y1), (x0, y1), (x1, y0)):
        assert tuple(a[y, x]) == (255, 0, 0), (x, y)
    # every changed pixel lies on the rectangle's outline: 3 px wide on a 640-px image, drawn inwards (PIL widens
    # a box thinner than the line by up to 2 px: a random model's boxes can be)
    ys, xs = np.nonzero((a != b).any(-1))
    on_outline = (x0 - 2 <= xs) & (xs <= x1 + 2) & (y0 - 2 <= ys) & (ys <= y1 + 2) & \
        ~((x0 + 3 <= xs) & (xs <= x1 - 3) & (y0 + 3 <= ys) & (ys <= y1 - 3))
    assert len(xs) > 0 and on_outline.all()
    assert (a[ys, xs] == (255, 0, 0)).all()

    # the input image is never the output
    assert predict(world, "--model", world["models"]["grounding", "nar"], "--image", image, "--text", "a thing",
                   "--box-png", image) == 2
    assert "would replace the input" in capsys.readouterr().err and image.read_bytes() == before


# ------------------------------------------------------------------------------------------------- tokenizers
def test_models_carry_their_tokenizer_and_fall_back_to_tokenizer(world, capsys, tmp_path, caplog):
    model_path = world["models"]["vqa", "nar"]
    _, meta = load(model_path)
    assert meta["tokenizer"]["json"] == world["tok_path"].read_text(encoding="utf-8")
    assert meta["tokenizer"]["sha256"] == hashlib.sha256(world["tok_path"].read_bytes()).hexdigest()
    sample = split_samples(world, "vqa")[0]["meta"]
    args = ["--image", raw_image(world, "vqa", sample), "--text", sample["prompt"]]
    embedded = predict_json(world, capsys, "--model", model_path, *args)

    # a model file without its tokenizer (exported before narvl embedded them): --tokenizer, and only the right one
    model, meta = load(model_path)
    bare = tmp_path / "bare.pt"
    save(bare, model, {"task": "vqa", "step": 3, "tokenizer": {k: meta["tokenizer"][k] for k in ("path", "sha256")}})
    assert predict(world, "--model", bare, *args) == 2
    err = capsys.readouterr().err
    assert f"{bare}: the model file carries no tokenizer" in err and str(world["tok_path"]) in err
    assert predict_json(world, capsys, "--model", bare, *args, "--tokenizer", world["tok_path"])["prediction"] \
        == embedded["prediction"]
    other = tmp_path / "other.json"
    Tokenizer.train(["a b c d e"] * 4, vocab_size=60, num_bins=32, lowercase=True).save(other)
    assert predict(world, "--model", bare, *args, "--tokenizer", other) == 2
    assert "differs from the tokenizer the model" in capsys.readouterr().err

    # export embeds only the file the run trained with
    run = write_run(tmp_path / "run", "vqa", "nar", world["tok_path"], 0)
    assert cli_main(["export", "--run", str(run), "--out", str(tmp_path / "m.pt"), "--tokenizer", str(other)]) == 2
    assert "is not that of the tokenizer the run" in capsys.readouterr().err and not (tmp_path / "m.pt").exists()
    info = json.loads((run / "checkpoints" / ck.RUN_INFO).read_text())
    info["tokenizer"]["path"] = str(tmp_path / "moved.json")
    (run / "checkpoints" / ck.RUN_INFO).write_text(json.dumps(info))
    with caplog.at_level("WARNING"):
        assert cli_main(["export", "--run", str(run), "--out", str(tmp_path / "m.pt")]) == 0
    assert "exporting without embedding it" in caplog.text
    assert "json" not in load(tmp_path / "m.pt")[1]["tokenizer"]
    assert cli_main(["export", "--run", str(run), "--out", str(tmp_path / "m.pt"), "--tokenizer",
                     str(world["tok_path"])]) == 0
    assert load(tmp_path / "m.pt")[1]["tokenizer"]["json"] == meta["tokenizer"]["json"]


# ------------------------------------------------------------------------------------------------ OFA import
def ofa_bpe(folder: Path, ofa_vocab: int, num_bins: int, codes: int) -> Path:
    """A GPT-2 style BPE (encoder.json, vocab.bpe, dict.txt) whose fairseq dictionary fills an OFA vocabulary of
    `ofa_vocab` rows: 4 specials, dict.txt's rows, <mask>, the image codes, the bins."""
    folder.mkdir()
    vocab = {t: i for i, t in enumerate(["a", "b", "c", "Ġ", "<|endoftext|>", "Ġa", "Ġab", "bc", "Ġabc"])}
    (folder / "encoder.json").write_text(json.dumps(vocab))
    (folder / "vocab.bpe").write_text("#version: 0.2\nĠ a\nĠa b\nb c\nĠab c\n", encoding="utf-8")
    rows = ofa_vocab - 4 - 1 - codes - num_bins
    order = [8, 3, 0, 7, 5, 1, 6, 2, 4]
    lines = [f"{g} {100 - n}" for n, g in enumerate(order)]
    lines += [f"madeupword{k:04d} 0" for k in range(rows - len(order))]
    (folder / "dict.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_models_imported_from_ofa(world, capsys, tmp_path):
    from narvl.ofa_import import read_checkpoint

    ckpt = ROOT / "tests" / "fixtures" / "ofa" / "ofa_tiny_random.pt"
    state, cfg = read_checkpoint(ckpt)
    num_bins, codes = cfg["_task"]["num_bins"], cfg["_task"]["code_dict_size"]
    bpe = ofa_bpe(tmp_path / "bpe", state["encoder.embed_tokens.weight"].shape[0], num_bins, codes)
    tok_path = tmp_path / "ofa-tokenizer.json"
    Tokenizer.from_gpt2(bpe / "encoder.json", bpe / "vocab.bpe", num_bins).save(tok_path)
    image = raw_image(world, "caption", split_samples(world, "caption")[0]["meta"])

    with_tok = tmp_path / "caption-ar.pt"
    assert cli_main(["import-ofa", "--checkpoint", str(ckpt), "--kind", "ar", "--task", "caption", "--params",
                     str(ROOT / "params"), "--tokenizer", str(tok_path), "--bpe-dir", str(bpe),
                     "--out", str(with_tok)]) == 0
    _, meta = load(with_tok)
    assert meta["tokenizer"]["json"] == tok_path.read_text(encoding="utf-8")
    out = predict_json(world, capsys, "--model", with_tok, "--image", image, "--prompt", "abc bc")
    assert out["prompt"] == "abc bc" and isinstance(out["prediction"], str)
    again = predict_json(world, capsys, "--model", with_tok, "--image", image, "--prompt", "abc bc",
                         "--tokenizer", tok_path)
    assert again["prediction"] == out["prediction"]

    ofa_ids = tmp_path / "caption-ar-ofa-ids.pt"
    assert cli_main(["import-ofa", "--checkpoint", str(ckpt), "--kind", "ar", "--task", "caption", "--params",
                     str(ROOT / "params"), "--out", str(ofa_ids)]) == 0
    capsys.readouterr()
    assert predict(world, "--model", ofa_ids, "--image", image, "--tokenizer", tok_path) == 2
    err = capsys.readouterr().err
    assert "with OFA's own token ids" in err and "--tokenizer" in err and "--bpe-dir" in err


# ---------------------------------------------------------------------------------------------------- errors
def test_bad_inputs_are_errors_naming_the_file(world, capsys, tmp_path):
    caption, vqa = world["models"]["caption", "nar"], world["models"]["vqa", "nar"]
    image = raw_image(world, "caption", split_samples(world, "caption")[0]["meta"])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    not_model = tmp_path / "model.pt"
    not_model.write_text("{}")
    dict_model = tmp_path / "dict.pt"
    torch.save({"model": {}}, dict_model)
    capsys.readouterr()
    cases = [
        (["--model", caption, "--image", tmp_path / "gone.jpg"], f"{tmp_path / 'gone.jpg'}: no such image file"),
        (["--model", caption, "--image", tmp_path], f"{tmp_path}: is a folder"),
        (["--model", caption, "--image", not_image], f"{not_image}: cannot decode"),
        (["--model", not_model, "--image", image], f"{not_model}: truncated or corrupt torch file"),
        (["--model", not_model, "--image", image], "--model takes a model file of `narvl export` or `narvl "
                                                    "import-ofa`"),
        (["--model", dict_model, "--image", image], f"{dict_model}: format is None, expected 'narvl-model-v1'"),
        (["--model", tmp_path / "none.pt", "--image", image], f"{tmp_path / 'none.pt'}: no such model file"),
        (["--model", caption, "--image", image, "--prompt", "  "], "--prompt is empty"),
        (["--model", vqa, "--image", image, "--text", " "], "--text ' ' is empty"),
        (["--model", world["models"]["grounding", "nar"], "--image", image, "--text", "?!"],
         "is empty after cleaning"),
        (["--model", vqa, "--image", image], "a vqa model needs --text (its question) or --prompt"),
        (["--model", caption, "--image", image, "--text", "a dog"], "a caption model takes no --text"),
        (["--model", caption, "--image", image, "--box-png", tmp_path / "b.png"],
         "--box-png is for grounding models"),
        (["--model", caption, "--image", image, "--params", tmp_path], f"{tmp_path / 'decode.yaml'}: no such"),
    ]
    for args, message in cases:
        assert predict(world, *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("narvl predict: error: ") and message in err, (args, err)
    with pytest.raises(SystemExit):  # one of --text and --prompt
        predict(world, "--model", vqa, "--image", image, "--text", "a", "--prompt", "b")
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()
