"""OFA's constrained AR decoding (narvl.decode.constrained, ARModel.score_candidates / constraint) and the
inference preparation every decode applies (narvl.model.inference)."""

import copy
import json
import dataclasses

import pytest
import torch

from narvl import params
from narvl.decode.constrained import AnswerTrie, bin_mask, candidate_tensor, check_decoder
from narvl.errors import NarvlError
from narvl.model import build_model
from narvl.model.inference import fold_batchnorm, prepare

SPECIAL = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "blank": 4}
VOCAB = 40
ANSWERS = [[7], [8], [9, 10], [9, 11, 12], [13, 7]]


def tiny(kind="ar", seed=0):
    torch.manual_seed(seed)
    arch = dataclasses.replace(params.PRESETS["cpu"], d_model=32, heads=2, ffn_dim=64, dropout=0.0)
    model = build_model(kind, arch, VOCAB, 6, SPECIAL).eval()
    for m in model.modules():  # BatchNorm statistics as after training, so that folding has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1.0, 0.2)
            m.bias.data.normal_(0, 0.2)
    return model


def inputs(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, 48, 48, generator=g), torch.randint(5, VOCAB, (b, 7), generator=g),
            torch.zeros(b, 7, dtype=torch.bool))


def test_trie_allows_answer_continuations_and_eos_after_whole_answers():
    trie = AnswerTrie(ANSWERS, eos=2, vocab_size=VOCAB)
    tokens = torch.tensor([[1, 1, 1], [1, 9, 1], [1, 9, 11], [1, 7, 0]])[:, :2]  # [bos, t1]
    allowed = trie(torch.tensor([[1], [1]]))
    assert allowed[0].nonzero().flatten().tolist() == [7, 8, 9, 13]
    allowed = trie(tokens)
    assert allowed[1].nonzero().flatten().tolist() == [10, 11]  # after "9": its continuations, no EOS
    assert allowed[3].nonzero().flatten().tolist() == [2]  # "7" is a whole answer: EOS only
    with pytest.raises(NarvlError, match="non-empty"):
        AnswerTrie([[7], []], eos=2, vocab_size=VOCAB)


def test_score_candidates_is_teacher_forced_log_probability():
    model, (images, src, mask) = tiny(), inputs()
    cands = candidate_tensor(ANSWERS, pad=0)
    got = model.score_candidates(images, src, mask, cands, rows=6)  # 3 items x 2 candidates per pass
    assert got.shape == (3, len(ANSWERS))
    with torch.no_grad():
        for c, ans in enumerate(ANSWERS):
            prev = torch.tensor([[1] + ans]).repeat(3, 1)
            logp = model(images, src, mask, prev).log_softmax(-1)  # (3, L + 1, V)
            want = sum(logp[:, i, tok] for i, tok in enumerate(ans + [2]))
            assert torch.allclose(got[:, c], want, atol=1e-5)


def test_exhaustive_trie_search_finds_the_all_candidate_answer():
    """With length penalty 0 (ranking by summed log-probability) and a beam as wide as the answer list, trie-
    constrained beam search is exhaustive over the answers: it returns allcand's pick, and only answers."""
    model, (images, src, mask) = tiny(seed=3), inputs(b=6, seed=4)
    trie = AnswerTrie(ANSWERS, eos=2, vocab_size=VOCAB)
    out = model.generate(images, src, mask, max_len=5, beam_size=len(ANSWERS), length_penalty=0.0, constraint=trie)
    best = model.score_candidates(images, src, mask, candidate_tensor(ANSWERS, 0)).argmax(-1).tolist()
    assert out == [ANSWERS[i] for i in best]
    greedy = model.generate(images, src, mask, max_len=5, beam_size=1, constraint=trie)
    assert all(seq in ANSWERS for seq in greedy)


def test_bins_only_generation():
    model, (images, src, mask) = tiny(), inputs()
    allowed = bin_mask(VOCAB, 30, 10)
    out = model.generate(images, src, mask, max_len=5, beam_size=1, min_len=4, allowed=allowed)
    assert all(len(seq) == 4 and all(30 <= t < 40 for t in seq) for seq in out)


def test_check_decoder():
    check_decoder("caption", "nar", "beam")
    check_decoder("vqa", "ar", "trie")
    check_decoder("grounding", "ar", "bins")
    check_decoder("entailment", "ar", "allcand")
    with pytest.raises(NarvlError, match="decodes vqa or entailment with an AR model, not a vqa NAR model"):
        check_decoder("vqa", "nar", "allcand")
    with pytest.raises(NarvlError, match="decodes grounding with an AR model, not a caption AR model"):
        check_decoder("caption", "ar", "bins")
    with pytest.raises(NarvlError, match="is not one of"):
        check_decoder("vqa", "ar", "sample")


@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_prepared_encoder_computes_the_same_function(kind):
    """BatchNorm folded (every BatchNorm2d of the ResNet gone) and channels_last give the encoder's output to float
    rounding; folding refuses a training-mode module (batch statistics)."""
    model, (images, src, mask) = tiny(kind), inputs()
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.inference_mode():
        want = model.encode(images, src, mask).memory
        for fold, cl in ((True, False), (False, True), (True, True)):
            fast = prepare(copy.deepcopy(model), fold_bn=fold, channels_last=cl)
            left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
            assert left == (0 if fold else bns)
            assert torch.allclose(fast.encode(images, src, mask).memory, want, atol=1e-4)
    assert bns == 1 + 3 * 3 + 3  # stem, 3 convs in each of 3 Bottlenecks, 3 downsample paths
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(copy.deepcopy(model).train())


def test_answer_reading_names_a_broken_shard(tmp_path):
    """The candidate answers come from the shards' json members; a shard that is no tar, or a member that is no
    JSON, is named in the error."""
    import io
    import tarfile

    from narvl.data.loader import iter_metas

    bad = tmp_path / "vqa-train-000000.tar"
    bad.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(NarvlError, match="vqa-train-000000.tar: cannot read this shard"):
        list(iter_metas([bad]))
    good = tmp_path / "vqa-train-000001.tar"
    with tarfile.open(good, "w") as tar:
        sample = {"id": "a", "task": "vqa", "split": "train", "image_id": 1, "orig_size": [4, 4], "size": [4, 4],
                  "prompt": "what colour?", "target": "red"}
        for name, data in (("a.json", json.dumps(sample).encode()), ("a.jpg", b"\xff\xd8"), ("b.json", b"{oops")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(NarvlError, match="b.json: not valid JSON"):
        list(iter_metas([good]))
