"""narvl decode: tiny random models through the command into files the scorer accepts; oracle models through the
decoding path give the references back (so coordinates, detokenisation and ids are right); bad inputs."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from narvl import params
from narvl.cli import main as cli_main
from narvl.data.loader import eval_loader
from narvl.data.tokenizer import Tokenizer
from narvl.decode import run
from narvl.errors import NarvlError
from tests.fixtures.data import make

SPLIT = {"caption": "test", "vqa": "val", "grounding": "testA"}
DATA = params.load("params/data.yaml")
DECODE = params.load("params/decode.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Raw data in the real formats (the data room's fixtures), shards, a tokenizer, tiny AR and NAR model files."""
    root = tmp_path_factory.mktemp("decode")
    data = make.sharded(root)
    raw, shards, tok_path = data["raw"], data["shards"], data["tokenizer"]
    qfiles, afiles, refs, instances = data["questions"], data["annotations"], data["refs"], data["instances"]
    tok = Tokenizer.load(tok_path)
    # COCO caption references of the test split, from the Karpathy file (what the pipeline scores against)
    karpathy = json.loads((raw / "captions" / "dataset_coco.json").read_text())
    anns = [{"image_id": im["cocoid"], "id": s["sentid"], "caption": s["raw"]}
            for im in karpathy["images"] if im["split"] == "test" for s in im["sentences"]]
    caption_refs = root / "captions_test.json"
    caption_refs.write_text(json.dumps({"images": [{"id": a["image_id"]} for a in anns], "annotations": anns}))

    arch = dataclasses.replace(params.PRESETS["cpu"], d_model=32, heads=2, encoder_layers=2, decoder_layers=2,
                               ffn_dim=64, resnet_width=8, dropout=0.0)
    from narvl.model import build_model, save

    models = {}
    special = {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id, "unk": tok.unk_id, "blank": tok.blank_id}
    tok_ref = {"path": str(tok_path), "sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest()}
    torch.manual_seed(0)
    for task, n in (("caption", 20), ("vqa", 6), ("grounding", 5)):
        for kind in ("ar", "nar"):
            model = build_model(kind, arch, tok.vocab_size, n, special)
            path = root / "runs" / f"{task}-{kind}" / "model.pt"
            save(path, model, {"task": task, "tokenizer": tok_ref, "step": 3})
            models[task, kind] = path
    return {"root": root, "raw": raw, "shards": shards, "tok_path": tok_path, "tok": tok, "models": models,
            "qfiles": qfiles, "afiles": afiles, "refs": refs, "instances": instances, "caption_refs": caption_refs}


def decode(world, task, kind, decoder, out):
    return cli_main(["decode", "--params", "params", "--model", str(world["models"][task, kind]),
                     "--shards", str(world["shards"] / task), "--split", SPLIT[task], "--tokenizer",
                     str(world["tok_path"]), "--decoder", decoder, "--out", str(out)])


def score(world, task, preds, out):
    args = ["score", task, "--params", "params", "--predictions", str(preds), "--out", str(out)]
    if task == "caption":
        args += ["--references", str(world["caption_refs"])]
    elif task == "vqa":
        args += ["--questions", str(world["qfiles"][1]), "--annotations", str(world["afiles"][1])]
    else:
        args += ["--refs", str(world["refs"]), "--instances", str(world["instances"]), "--split", SPLIT[task]]
    return cli_main(args)


@pytest.mark.slow
@pytest.mark.parametrize("task, kind, decoder", [
    ("caption", "ar", "greedy"), ("caption", "nar", "beam"), ("vqa", "ar", "beam"), ("vqa", "nar", "greedy"),
    ("grounding", "ar", "greedy"), ("grounding", "nar", "greedy"), ("grounding", "nar", "beam"),
    ("vqa", "ar", "trie"), ("vqa", "ar", "allcand"), ("grounding", "ar", "bins")])
def test_random_models_decode_into_files_the_scorer_accepts(world, task, kind, decoder, tmp_path):
    preds = tmp_path / f"{task}-{SPLIT[task]}-{kind}-{decoder}.json"
    assert decode(world, task, kind, decoder, preds) == 0
    records = json.loads(preds.read_text())
    sizes = json.loads((world["shards"] / task / "sizes.json").read_text())
    assert len(records) == sizes[SPLIT[task]]["samples"]
    keys = {"caption": {"image_id", "caption"}, "vqa": {"question_id", "answer"},
            "grounding": {"ref_id", "sent_id", "sample_id", "box"}}[task]
    assert all(set(r) == keys for r in records)
    side = json.loads(run.sidecar_path(preds).read_text())
    assert (side["task"], side["kind"], side["model"], side["decoder"], side["step"]) == (task, kind, kind, decoder, 3)
    assert side["samples"] == len(records) and side["samples_per_s"] > 0
    assert side["model_sha256"] == hashlib.sha256(world["models"][task, kind].read_bytes()).hexdigest()
    metrics = tmp_path / f"m-{task}.json"
    if task == "caption":  # METEOR's Java start is the slow part; the fixture test covers it
        shutil.copytree("params", tmp_path / "params", ignore=shutil.ignore_patterns("real"))
        score_yaml = tmp_path / "params/score.yaml"
        score_yaml.write_text(score_yaml.read_text().replace("meteor: true", "meteor: false"))
        rc = cli_main(["score", "caption", "--params", str(tmp_path / "params"), "--references",
                       str(world["caption_refs"]), "--predictions", str(preds), "--out", str(metrics)])
    else:
        rc = score(world, task, preds, metrics)
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert m["coverage"]["missing"] == 0
    assert m["provenance"]["decode"]["model_sha256"] == side["model_sha256"]  # the sidecar was picked up
    assert (m["model"], m["decoder"]) == (kind, decoder)


class Oracle(torch.nn.Module):
    """Emits the batch's targets: as N-slot CTC logits (NAR: target tokens separated by blanks) or as AR output."""

    def __init__(self, kind, vocab, blank, num_queries=64):
        super().__init__()
        self.kind, self.vocab, self.blank, self.n = kind, vocab, blank, num_queries
        self.targets = None

    def forward(self, images, src, mask):  # NAR
        logits = torch.full((len(self.targets), self.n, self.vocab), -10.0)
        logits[:, :, self.blank] = 0.0
        for i, t in enumerate(self.targets):
            for j, tok in enumerate(t):
                logits[i, 2 * j, self.blank] = -10.0
                logits[i, 2 * j, tok] = 0.0
        return logits

    def generate(self, images, src, mask, max_len, beam, length_penalty, **constraints):  # AR
        return [list(t) for t in self.targets]


@pytest.mark.parametrize("task", ["caption", "vqa", "grounding"])
@pytest.mark.parametrize("kind, decoder", [("nar", "greedy"), ("nar", "beam"), ("ar", "greedy")])
def test_oracle_predictions_score_perfectly(world, task, kind, decoder, tmp_path):
    """Targets from the loader through the decode path come back as the references: the scorer's top marks."""
    tok = world["tok"]
    oracle = Oracle(kind, tok.vocab_size, tok.blank_id)
    loader = eval_loader(world["shards"] / task, SPLIT[task], tok, DATA, task, 4, 0, 1)
    records, texts = [], []
    for batch in loader:
        oracle.targets = [t[:n].tolist() for t, n in zip(batch["tgt_tokens"], batch["tgt_lengths"])]
        preds = run.predict_batch(oracle, batch, task, tok, decoder, DECODE, max_len=params.ar_max_len(DATA, task))
        records += [run.record(task, m, p) for m, p in zip(batch["meta"], preds)]
        texts += [(m["target"], p) for m, p in zip(batch["meta"], preds)]
        if task == "grounding":
            for m, box in zip(batch["meta"], preds):
                # one bin is canvas/(B-1) resized pixels, i.e. that times orig/size original pixels
                tol = max(m["size"]) / (tok.num_bins - 1) * max(m["orig_size"][0] / m["size"][0],
                                                                 m["orig_size"][1] / m["size"][1])
                assert box == pytest.approx(m["orig_box"], abs=tol / 2 + 1e-6)
    preds_path = tmp_path / "p.json"
    preds_path.write_text(json.dumps(records))
    p = params.load("params/score.yaml")
    if task == "grounding":
        from narvl.eval import grounding

        m = grounding.score(grounding.load_refer(world["refs"], world["instances"], SPLIT[task]), preds_path, p, "r")
        assert m["metrics"]["Acc@0.5"] == 100.0
    elif task == "vqa":
        from narvl.eval import vqa

        m = vqa.score(world["qfiles"][1], world["afiles"][1], preds_path, p)
        # the target is the most frequent (highest soft score) answer: the official accuracy of that answer
        expected = []
        for a in json.loads(world["afiles"][1].read_text())["annotations"]:
            answers = [x["answer"] for x in a["answers"]]
            target = next(r["answer"] for r in records if r["question_id"] == a["question_id"])
            expected.append(vqa.question_accuracy(target, answers))
        assert m["metrics"]["accuracy"] == vqa.official_round(100 * sum(expected) / len(expected), 2)
        assert m["metrics"]["accuracy"] >= 90.0
    else:
        from narvl.eval import caption

        # the detokenised target, and it is one of the image's references (up to case and spacing)
        assert [p for _, p in texts] == [tok.decode(tok.encode(t)) for t, _ in texts]
        refs = caption.load_references(world["caption_refs"])
        squash = lambda s: "".join(s.lower().split())  # noqa: E731
        for r in records:
            assert squash(r["caption"]) in [squash(c) for c in refs[r["image_id"]]]
        m = caption.score(world["caption_refs"], preds_path, dataclasses.replace(p, meteor=False, spice=False))
        assert m["metrics"]["Bleu_1"] > 0.99


def test_wrong_tokenizer_and_task_mismatch_are_errors(world, tmp_path):
    other = tmp_path / "tok.json"
    other.write_text(world["tok_path"].read_text().replace("<unk>", "<unk>", 1) + " ")
    with pytest.raises(NarvlError, match="differs from the tokenizer the model"):
        run.main(run_args(world, "vqa", "nar", tmp_path / "vqa-val-nar-greedy.json", tokenizer=other))
    with pytest.raises(NarvlError, match="the file name says task 'caption', but .* is a vqa model"):
        run.main(run_args(world, "vqa", "nar", tmp_path / "caption-val-nar-greedy.json"))


def run_args(world, task, kind, out, tokenizer=None):
    import argparse

    return argparse.Namespace(params=Path("params"), model=world["models"][task, kind],
                              shards=world["shards"] / task, split=SPLIT[task],
                              tokenizer=tokenizer or world["tok_path"], decoder="greedy", out=out)


def test_blank_images_decode_the_blind_baseline(world, tmp_path):
    """--blank-images: every image is zero (the mean colour after normalisation); the cell is baseline-blind."""
    from narvl import model as narvl_model

    preds = tmp_path / "vqa-val-blind.json"
    assert cli_main(["decode", "--params", "params", "--model", str(world["models"]["vqa", "ar"]),
                     "--shards", str(world["shards"] / "vqa"), "--split", SPLIT["vqa"], "--tokenizer",
                     str(world["tok_path"]), "--decoder", "greedy", "--out", str(preds), "--blank-images"]) == 0
    side = json.loads(run.sidecar_path(preds).read_text())
    assert side["blank_images"] is True and side["model"] == "baseline-blind"
    model, _ = narvl_model.load(world["models"]["vqa", "ar"])
    expected = []
    for batch in eval_loader(world["shards"] / "vqa", SPLIT["vqa"], world["tok"], DATA, "vqa", 4, 0, 1):
        batch["images"] = torch.zeros_like(batch["images"])
        with torch.inference_mode():
            answers = run.predict_batch(model, batch, "vqa", world["tok"], "greedy", DECODE,
                                        max_len=params.ar_max_len(DATA, "vqa"))
        expected += [run.record("vqa", m, a) for m, a in zip(batch["meta"], answers)]
    assert json.loads(preds.read_text()) == expected
    metrics = tmp_path / "m.json"
    assert cli_main(["score", "vqa", "--params", "params", "--questions", str(world["qfiles"][1]),
                     "--annotations", str(world["afiles"][1]), "--predictions", str(preds), "--out", str(metrics),
                     "--model", "baseline-blind", "--decoder", "greedy", "--split", SPLIT["vqa"]]) == 0
    assert json.loads(metrics.read_text())["model"] == "baseline-blind"


def test_constrained_decoders_answer_from_the_training_answers(world, tmp_path, capsys):
    """trie and allcand answer only with the training split's answers; bins boxes come from <bin> tokens only;
    a constrained decoder on the wrong model or task is refused before anything is written."""
    from narvl.decode.constrained import training_answers

    answers = training_answers(world["shards"] / "vqa", DECODE.answer_candidates)
    metas = [s["meta"] for s in iter_split(world["shards"] / "vqa", "train")]
    assert set(answers) == {m["target"] for m in metas}
    counts = [sum(m["target"] == a for m in metas) for a in answers]
    assert counts == sorted(counts, reverse=True)  # most frequent first
    assert training_answers(world["shards"] / "vqa", 1) == answers[:1]
    for decoder in ("trie", "allcand"):
        preds = tmp_path / f"vqa-val-ar-{decoder}.json"
        assert decode(world, "vqa", "ar", decoder, preds) == 0
        got = {r["answer"] for r in json.loads(preds.read_text())}
        assert got <= {world["tok"].decode(world["tok"].encode(a)) for a in answers}
    for task, kind, decoder in (("vqa", "nar", "trie"), ("grounding", "ar", "allcand"), ("caption", "ar", "bins")):
        out = tmp_path / f"{task}-{SPLIT[task]}-{kind}-{decoder}.json"
        assert decode(world, task, kind, decoder, out) != 0
        assert f"decoder '{decoder}' decodes" in capsys.readouterr().err
        assert not out.exists()


def iter_split(folder, split):
    from narvl.data.loader import iter_samples

    sizes = json.loads((folder / "sizes.json").read_text())
    return list(iter_samples([folder / n for n in sizes[split]["shards"]]))
