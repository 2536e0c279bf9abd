"""NAR and AR models: shapes for every preset, gradients to every parameter, padding masks, KV-cached generation
equal to full recomputation, save/load round trips, and the package's import boundary."""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from narvl import model as narvl_model
from narvl.errors import NarvlError
from narvl.model import build_model
from narvl.model.resnet import ResNet
from narvl.params import PRESETS

SPECIAL = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "blank": 4}
V = 40
TINY = dataclasses.replace(PRESETS["cpu"], d_model=32, heads=2, encoder_layers=2, decoder_layers=2, ffn_dim=64,
                           resnet_width=4, dropout=0.0, max_source_len=16, max_target_len=12)


def inputs(b=2, s=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, size, size, generator=g)
    src = torch.randint(5, V, (b, s), generator=g)
    mask = torch.zeros(b, s, dtype=torch.bool)
    mask[1:, s - 2:] = True  # second item: 2 padding positions
    src = src.masked_fill(mask, SPECIAL["pad"])
    return images, src, mask


def spread(model: nn.Module, seed: int = 0, std: float = 1.0) -> nn.Module:
    """Re-draw every weight except the norms' so that an untrained model's outputs vary from step to step (a
    freshly initialised tied decoder tends to repeat one token, which would make generation tests vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d)):
                continue
            for p in mod.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.mark.parametrize("kind", ["nar", "ar"])
def test_gradients_reach_every_parameter(kind):
    torch.manual_seed(0)
    m = build_model(kind, TINY, V, 5, SPECIAL).train()
    images, src, mask = inputs()
    if kind == "nar":
        logits = m(images, src, mask)
        assert logits.shape == (2, 5, V)
    else:
        prev = torch.randint(5, V, (2, 7))
        logits = m(images, src, mask, prev)
        assert logits.shape == (2, 7, V)
    logits.float().logsumexp(-1).sum().add(logits.float().pow(2).mean()).backward()
    missing = [name for name, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


@pytest.mark.parametrize("kind", ["nar", "ar"])
def test_padding_positions_do_not_matter(kind):
    m = spread(build_model(kind, TINY, V, 5, SPECIAL)).eval()
    images, src, mask = inputs()
    other = src.clone()
    other[mask] = 17  # change the padded token ids only
    extra = () if kind == "nar" else (torch.randint(5, V, (2, 4)),)
    with torch.no_grad():
        a, b = m(images, src, mask, *extra), m(images, other, mask, *extra)
    assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():  # and unmasked text does matter
        c = m(images, other, torch.zeros_like(mask), *extra)
    assert not torch.allclose(a[1], c[1], atol=1e-3)


def test_ar_is_causal():
    m = spread(build_model("ar", TINY, V, 5, SPECIAL)).eval()
    images, src, mask = inputs()
    prev = torch.randint(5, V, (2, 6))
    changed = prev.clone()
    changed[:, 4:] = 9
    with torch.no_grad():
        a, b = m(images, src, mask, prev), m(images, src, mask, changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_kv_cached_generation_equals_full_recomputation(beam_size):
    m = spread(build_model("ar", TINY, V, 5, SPECIAL), seed=1).eval()
    images, src, mask = inputs(b=3, seed=2)
    cached = m.generate(images, src, mask, max_len=8, beam_size=beam_size, length_penalty=1.0)
    full = m.generate(images, src, mask, max_len=8, beam_size=beam_size, length_penalty=1.0, use_cache=False)
    assert cached == full
    tokens = [t for row in cached for t in row]
    assert len(set(tokens)) > 3, cached  # outputs vary: the comparison is not vacuous
    assert all(t not in (SPECIAL["pad"], SPECIAL["bos"], SPECIAL["blank"], SPECIAL["eos"]) for t in tokens)
    assert all(len(row) <= 7 for row in cached)  # max_len counts EOS


def test_greedy_generation_follows_forward_argmax_and_stops_at_eos():
    m = spread(build_model("ar", TINY, V, 5, SPECIAL), seed=3).eval()
    eos = SPECIAL["eos"]
    images, src, mask = inputs(b=2, seed=4)
    out = m.generate(images, src, mask, max_len=10)
    for i, row in enumerate(out):
        prev = torch.tensor([[SPECIAL["bos"]] + row])
        with torch.no_grad():
            logits = m(images[i:i + 1], src[i:i + 1], mask[i:i + 1], prev)[0].float()
        for name in ("pad", "bos", "blank"):
            logits[:, SPECIAL[name]] = -torch.inf
        if len(row) < 9:  # ended by a real EOS, not by the length limit
            assert logits[-1].argmax().item() == eos
        assert logits[:-1].argmax(-1).tolist() == row
    # forcing full length: EOS suppressed until the last step
    full = m.generate(images, src, mask, max_len=10, min_len=10)
    assert all(len(row) == 9 for row in full)
    beams = m.generate(images, src, mask, max_len=10, beam_size=4, min_len=10)
    assert all(len(row) == 9 for row in beams)


def teacher_forced_scores(m, images, src, mask, rows, length_penalty):
    """Length-normalised log-probability of each row + EOS (the model's own log-softmax, as fairseq scores)."""
    out = []
    for i, row in rows:
        prev = torch.tensor([[SPECIAL["bos"]] + row])
        with torch.no_grad():
            lp = m(images[i:i + 1], src[i:i + 1], mask[i:i + 1], prev)[0].float().log_softmax(-1)
        gold = row + [SPECIAL["eos"]]
        out.append(sum(lp[t, g].item() for t, g in enumerate(gold)) / len(gold) ** length_penalty)
    return out


def test_beam_search_is_exact_when_nothing_is_pruned():
    """max_len 2 (at most one token, then EOS) and a beam as wide as the vocabulary: the result is the best of all
    candidate outputs, scored independently by teacher forcing."""
    m = spread(build_model("ar", TINY, V, 5, SPECIAL), seed=5).eval()
    images, src, mask = inputs(b=2, seed=6)
    out = m.generate(images, src, mask, max_len=2, beam_size=V, length_penalty=1.0)
    allowed = [t for t in range(V) if t not in (SPECIAL["pad"], SPECIAL["bos"], SPECIAL["blank"], SPECIAL["eos"])]
    eos = SPECIAL["eos"]
    for i in range(2):
        prev = torch.tensor([[SPECIAL["bos"], t] for t in allowed])  # every one-token output at once
        n = len(allowed)
        with torch.no_grad():
            lp = m(images[i:i + 1].expand(n, -1, -1, -1), src[i:i + 1].expand(n, -1), mask[i:i + 1].expand(n, -1),
                   prev).float().log_softmax(-1)  # (n, 2, V)
        scores = {(): lp[0, 0, eos].item()}  # the empty output: EOS first, length 1
        for j, t in enumerate(allowed):
            scores[(t,)] = (lp[j, 0, t] + lp[j, 1, eos]).item() / 2
        assert tuple(out[i]) == max(scores, key=scores.get)
        # the independent per-sequence scorer agrees on the winner's score
        assert teacher_forced_scores(m, images, src, mask, [(i, out[i])], 1.0)[0] == pytest.approx(
            scores[tuple(out[i])], rel=1e-4)


def test_beam_of_one_is_greedy_and_items_are_independent():
    m = spread(build_model("ar", TINY, V, 5, SPECIAL), seed=8).eval()
    images, src, mask = inputs(b=3, seed=9)
    with torch.no_grad():
        banned = torch.zeros(V, dtype=torch.bool)
        banned[[SPECIAL["pad"], SPECIAL["bos"], SPECIAL["blank"]]] = True
        assert m._beam(m.encode(images, src, mask), 10, 1, 1.0, 0, True, banned, None) == m.generate(images, src, mask,
                                                                                              max_len=10)
    batched = m.generate(images, src, mask, max_len=10, beam_size=4, length_penalty=0.5)
    single = [m.generate(images[i:i + 1], src[i:i + 1], mask[i:i + 1], max_len=10, beam_size=4,
                         length_penalty=0.5)[0] for i in range(3)]
    assert batched == single
    assert len({tuple(r) for r in batched}) > 1


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_with_the_paper_trunk(preset):
    arch = PRESETS[preset]
    with torch.device("meta"):
        m = build_model("nar", arch, 1200, 20, SPECIAL).eval()
        images = torch.empty(2, 3, 64, 64)
        src = torch.zeros(2, 5, dtype=torch.long)
        logits = m(images, src, torch.zeros(2, 5, dtype=torch.bool))
        ar = build_model("ar", arch, 1200, 20, SPECIAL).eval()
        ar_logits = ar(images, src, torch.zeros(2, 5, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 20, 1200) and ar_logits.shape == (2, 3, 1200)
    if preset != "cpu":  # ResNet-50/101/152 cut after stage 3, as torchvision builds them
        ref = {"tiny": torchvision.models.resnet50, "medium": torchvision.models.resnet101,
               "base": torchvision.models.resnet101, "large": torchvision.models.resnet152,
               "huge": torchvision.models.resnet152}[preset]
        with torch.device("meta"):
            tv = ref()
        expected = sum(p.numel() for mod in (tv.conv1, tv.bn1, tv.layer1, tv.layer2, tv.layer3)
                       for p in mod.parameters())
        assert sum(p.numel() for p in m.encoder.embed_images.parameters()) == expected
        assert m.encoder.embed_images.out_channels == 1024


def test_trunk_has_stride_16():
    trunk = ResNet([1, 1, 1], 8).eval()
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 64, 96)).shape == (1, 128, 4, 6)


def test_image_larger_than_position_grid_is_refused():
    m = build_model("nar", dataclasses.replace(TINY, image_bucket_size=2), V, 5, SPECIAL).eval()
    images, src, mask = inputs(size=48)
    with pytest.raises(ValueError, match="image_bucket_size"):
        m(images, src, mask)


@pytest.mark.parametrize("kind", ["nar", "ar"])
def test_save_load_round_trip(tmp_path, kind):
    m = spread(build_model(kind, TINY, V, 5, SPECIAL), seed=7).eval()
    path = tmp_path / "model.pt"
    narvl_model.save(path, m, {"task": "vqa", "tokenizer": {"path": "tok.json", "sha256": "abc"}, "step": 12})
    loaded, meta = narvl_model.load(path)
    assert type(loaded) is type(m) and not loaded.training
    assert meta["format"] == "narvl-model-v1" and meta["kind"] == kind and meta["step"] == 12
    assert meta["tokenizer"] == {"path": "tok.json", "sha256": "abc"} and meta["task"] == "vqa"
    assert meta["num_queries"] == 5 and meta["special_ids"] == SPECIAL and meta["vocab_size"] == V
    images, src, mask = inputs()
    with torch.no_grad():
        if kind == "nar":
            assert torch.equal(m(images, src, mask), loaded(images, src, mask))
        else:
            prev = torch.randint(5, V, (2, 4))
            assert torch.equal(m(images, src, mask, prev), loaded(images, src, mask, prev))
            assert m.generate(images, src, mask, 6, 2) == loaded.generate(images, src, mask, 6, 2)


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(NarvlError, match="format"):
        narvl_model.load(bad)
    with pytest.raises(NarvlError, match="no such model file"):
        narvl_model.load(tmp_path / "missing.pt")
    with pytest.raises(NarvlError, match="lacks"):
        narvl_model.save(tmp_path / "x.pt", build_model("nar", TINY, V, 5, SPECIAL), {"task": "vqa"})


def test_build_model_checks_its_arguments():
    with pytest.raises(NarvlError, match="kind"):
        build_model("rnn", TINY, V, 5, SPECIAL)
    with pytest.raises(NarvlError, match="blank"):
        build_model("nar", TINY, V, 5, {k: v for k, v in SPECIAL.items() if k != "blank"})


def narvl_imports(module: str, root: Path) -> set[str]:
    """Every narvl module `module` imports, transitively, anywhere in its source (also inside functions)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        base = root / Path(*name.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("narvl")]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("narvl"):
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]
    return seen


@pytest.mark.parametrize("module", ["narvl.model", "narvl.loss.qctc", "narvl.loss.ar", "narvl.decode.ctc"])
def test_inference_modules_do_not_import_train_data_or_eval(module):
    root = Path(__file__).parents[1]
    found = narvl_imports(module, root)
    assert "narvl.model.encoder" in found or module != "narvl.model"
    assert not [m for m in found if m.split(".")[:2] in (["narvl", "train"], ["narvl", "data"], ["narvl", "eval"])]


def test_qctc_teaches_the_nar_model_its_targets():
    """A few optimiser steps of Q-CTC (label smoothing 0.1) on 3 fixed inputs: greedy CTC decoding then returns
    each target, including a repeated token (which needs a blank slot between its copies)."""
    import torch.nn.functional as F

    from narvl.decode.ctc import greedy_decode
    from narvl.loss.qctc import qctc_loss

    torch.manual_seed(0)
    arch = dataclasses.replace(TINY, encoder_layers=1, decoder_layers=1)
    m = build_model("nar", arch, 30, 6, SPECIAL)
    images = torch.randn(3, 3, 16, 16)
    src, mask = torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.zeros(3, 2, dtype=torch.bool)
    targets = [[7, 8, 9], [9, 9], [12, 5, 6, 7]]
    tgt = torch.tensor([t + [0] * (4 - len(t)) for t in targets])
    lengths = torch.tensor([len(t) for t in targets])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss, stats = qctc_loss(F.log_softmax(m(images, src, mask).float(), -1), tgt, lengths,
                                SPECIAL["blank"], 0.1)
        first = first if first is not None else stats["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["loss"] < first / 3
    m.eval()
    with torch.no_grad():
        assert greedy_decode(F.log_softmax(m(images, src, mask), -1), SPECIAL["blank"]) == targets


@pytest.mark.parametrize("beam_size", [1, 3])
def test_generation_restricted_to_allowed_tokens(beam_size):
    """allowed (grounding: the <bin> tokens) limits every generated token; EOS stays possible; greedy under the
    constraint is the argmax over the allowed tokens of the teacher-forced logits."""
    m = spread(build_model("ar", TINY, V, 5, SPECIAL), seed=11).eval()
    images, src, mask = inputs(b=2, seed=12)
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[20:30] = True
    free = m.generate(images, src, mask, max_len=6, beam_size=beam_size, min_len=6)  # full length, EOS last
    assert any(t not in range(20, 30) for row in free for t in row)  # the constraint changes something
    out = m.generate(images, src, mask, max_len=6, beam_size=beam_size, min_len=6, allowed=allowed)
    assert all(len(row) == 5 and all(20 <= t < 30 for t in row) for row in out)
    if beam_size == 1:
        for i, row in enumerate(out):
            with torch.no_grad():
                logits = m(images[i:i + 1], src[i:i + 1], mask[i:i + 1], torch.tensor([[SPECIAL["bos"]] + row]))[0]
            logits[:, ~allowed] = -torch.inf
            assert logits[:len(row)].argmax(-1).tolist() == row
    short = m.generate(images, src, mask, max_len=6, beam_size=beam_size, allowed=allowed)  # EOS stays allowed
    assert all(len(row) <= 5 and all(20 <= t < 30 for t in row) for row in short)
    with pytest.raises(ValueError, match="allowed"):
        m.generate(images, src, mask, max_len=6, allowed=torch.ones(V - 1, dtype=torch.bool))


def test_resnet_computes_what_torchvision_computes():
    """narvl's Bottleneck is torchvision's (module names, forward): torchvision's ResNet-50 weights load by name
    and give the same features through stage 3, in training and in eval mode."""
    ours, tv = ResNet([3, 4, 6], 64), torchvision.models.resnet50()
    missing, unexpected = ours.load_state_dict(tv.state_dict(), strict=False)
    assert not missing and all(k.startswith(("layer4.", "fc.")) for k in unexpected)
    images = torch.randn(2, 3, 64, 80)
    for train in (True, False):
        ours.train(train), tv.train(train)
        with torch.no_grad():
            want = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(images)))))))
            assert torch.equal(ours(images), want)
    # and building or running a model never imports torchvision (1.5 s per process)
    code = "import sys, narvl.model, narvl.decode.run, narvl.train.export; assert 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("what", ["batchnorm", "all"])
def test_frozen_resnet_keeps_what_it_froze(what):
    """train.freeze_resnet: "batchnorm" (OFA's --freeze-resnet) fixes every BatchNorm's statistics and affine
    weights, "all" the whole ResNet; BatchNorm stays in eval mode through model.train(), and an optimizer step
    moves only what is not frozen."""
    torch.manual_seed(0)
    resnet = ResNet([1, 1, 1], 4)
    resnet.freeze(what)
    resnet.train()
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    trainable = [p for p in resnet.parameters() if p.requires_grad]
    assert bool(trainable) == (what == "batchnorm")
    if trainable:
        opt = torch.optim.SGD(trainable, lr=0.1)
        resnet(torch.randn(4, 3, 32, 32)).square().mean().backward()
        opt.step()
    else:  # nothing to train: no autograd graph through the ResNet at all
        assert not resnet(torch.randn(4, 3, 32, 32)).requires_grad
    bn = {f"{name}.{key}" for name, m in resnet.named_modules() if isinstance(m, nn.BatchNorm2d)
          for key in m.state_dict()}
    for key, value in resnet.state_dict().items():
        if what == "all" or key in bn:
            assert torch.equal(value, before[key]), key
        elif key.endswith("weight"):
            assert not torch.equal(value, before[key]), key
    assert all(not m.training for m in resnet.modules() if isinstance(m, nn.BatchNorm2d))
    resnet.freeze("none")
    assert all(p.requires_grad for p in resnet.parameters()) and resnet.training
    assert all(m.training for m in resnet.modules())
    with pytest.raises(ValueError, match="none, batchnorm or all"):
        resnet.freeze("resnet")


def test_frozen_resnet_feature_cache():
    """train.frozen_feature_cache_mb: a ResNet frozen "all" computes each image's features once, alone (a batch of
    one), and serves them by content afterwards: the same features whatever batch an image comes in, equal to the
    uncached ResNet's on that image alone; the budget caps what is kept; a ResNet that trains refuses the cache."""
    torch.manual_seed(0)
    resnet = ResNet([1, 1, 1], 4)
    resnet.freeze("all")
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        alone = torch.cat([resnet(images[i:i + 1]) for i in range(5)])
    resnet.cache_features(2 ** 20)
    first = resnet(images[:3])
    assert torch.equal(first, alone[:3]) and len(resnet._cache) == 3
    calls = []
    hook = resnet.conv1.register_forward_hook(lambda *_: calls.append(1))
    again = resnet(torch.stack([images[4], images[1], images[0], images[2]]))  # one new image, three cached
    hook.remove()
    assert len(calls) == 1 and torch.equal(again, alone[[4, 1, 0, 2]])
    assert not again.requires_grad
    # the same pixels in another shape or dtype are another image
    resnet(images[:1].reshape(1, 3, 16, 64))
    assert len(resnet._cache) == 5
    # the budget: room for two images' features, the third is computed but not kept
    per_image = alone[0].numel() * alone[0].element_size()
    resnet.cache_features(2 * per_image)
    assert torch.equal(resnet(images[:3]), alone[:3]) and len(resnet._cache) == 2
    resnet.freeze("batchnorm")  # trainable again: the cache goes
    assert resnet._cache is None
    with pytest.raises(ValueError, match="frozen 'all'"):
        resnet.cache_features(2 ** 20)
