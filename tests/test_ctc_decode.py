"""CTC greedy and prefix beam search against TF / PaddleSpeech / torchaudio reference decodes and brute force;
grounding's 4-location-token selection."""

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from narvl.decode.ctc import beam_search, box_tokens, collapse, greedy_decode

FIXTURES = Path(__file__).parent / "fixtures" / "ctc"


def load(name):
    return json.loads((FIXTURES / name).read_text())


def test_greedy_matches_tensorflow_with_input_lengths():
    ref = load("tf_ctc_decoders.json")["greedy"]
    blank = ref["conventions"]["blank_index"]
    with torch.no_grad():
        lp = torch.tensor([case["probs"] for case in ref["batch"]]).log()  # zeros -> -inf, as the test
    lengths = [case["input_length"] for case in ref["batch"]]
    assert greedy_decode(lp, blank, lengths=lengths) == [case["expected_decoded"] for case in ref["batch"]]
    # the same decodes with the blank column moved to index 2 (the TF test's variant)
    order = [0, 1, 3, 2]
    assert greedy_decode(lp[..., order], 2, lengths=lengths) == [[0, 1], [1, 1, 0]]
    # one item as (T, V) returns a single list
    assert greedy_decode(lp[1, :5], blank) == [1, 1, 0]


def test_greedy_and_beam_match_paddlespeech_ctcdecode():
    ref = load("ctc_beam_vectors_paddlespeech_ctcdecode.json")
    vocab, blank = ref["conventions"]["vocab"], ref["conventions"]["blank_index"]
    lp = torch.tensor([case["probs"] for case in ref["cases"]], dtype=torch.float64).log()
    greedy = greedy_decode(lp, blank)
    beams = beam_search(lp, blank, beam_size=20)
    for case, g, b in zip(ref["cases"], greedy, beams):
        assert "".join(vocab[i] for i in g) == case["expected_greedy"]
        assert "".join(vocab[i] for i in b[0][0]) == case["expected_beam_top1"]
        assert [s for _, s in b] == sorted((s for _, s in b), reverse=True)


def test_collapse_matches_torchaudio():
    ref = load("ctc_small_vectors_warpctc_torchaudio.json")["torchaudio_ctc_collapse"]
    assert collapse(ref["frame_argmax_ids"], ref["blank_index"]) == ref["expected_collapsed_ids"]


def test_greedy_stops_at_eos():
    frames = [5, 5, 0, 6, 2, 7, 2]
    lp = torch.nn.functional.one_hot(torch.tensor(frames), 8).float().log()
    assert greedy_decode(lp, blank=0) == [5, 6, 2, 7, 2]
    assert greedy_decode(lp, blank=0, eos=2) == [5, 6]


def test_beam_width_two_reproduces_tensorflow():
    ref = load("tf_ctc_decoders.json")["beam_search"]
    logits = torch.tensor(ref["probs"]) + 2.0  # the test's logits: softmax(probs) is the distribution
    out = beam_search(logits.log_softmax(-1), ref["conventions"]["blank_index"], beam_size=2)
    assert len(out) == 2
    for (ids, score), expected in zip(out, ref["expected"]):
        assert ids == expected["decoded"]
        assert score == pytest.approx(expected["log_prob"], abs=1e-5)


def exact_marginals(lp: torch.Tensor, blank: int) -> dict[tuple, float]:
    t, v = lp.shape
    probs = defaultdict(float)
    p = lp.double().exp()
    for path in itertools.product(range(v), repeat=t):
        probs[tuple(collapse(list(path), blank))] += math.prod(p[i, c].item() for i, c in enumerate(path))
    return {k: math.log(x) for k, x in probs.items()}


@pytest.mark.parametrize("seed, blank", [(0, 0), (1, 2), (2, 3)])
def test_wide_beam_finds_the_most_probable_collapsed_sequence(seed, blank):
    torch.manual_seed(seed)
    lp = (torch.randn(5, 4) * 1.5).log_softmax(-1)
    exact = exact_marginals(lp, blank)
    best = max(exact, key=exact.get)
    out = beam_search(lp, blank, beam_size=len(exact))  # wide enough that nothing is pruned
    assert tuple(out[0][0]) == best
    assert out[0][1] == pytest.approx(exact[best], abs=1e-9)
    for ids, score in out:  # every kept prefix carries its exact marginal
        assert score == pytest.approx(exact[tuple(ids)], abs=1e-9)
    # batched call, with a shorter second item, gives the per-item results
    both = beam_search(torch.stack([lp, lp]), blank, beam_size=len(exact), lengths=[5, 3])
    assert both[0] == out
    short = exact_marginals(lp[:3], blank)
    assert tuple(both[1][0][0]) == max(short, key=short.get)


def test_box_tokens_selection_and_fallbacks():
    start, bins = 10, 20  # location tokens 10..29
    assert box_tokens([5, 12, 13, 6, 14, 15, 16], start, bins) == [12, 13, 14, 15]
    # fewer than 4 with slot log-probs: the best bin per slot, the 4 most confident slots in slot order
    lp = torch.full((5, 40), -10.0)
    for slot, (bin_id, score) in enumerate([(11, -1.0), (27, -0.5), (12, -3.0), (20, -0.2), (25, -0.1)]):
        lp[slot, bin_id] = score
    lp[:, 4] = 0.0  # the blank dominates every slot; the fallback ignores non-bin tokens
    assert box_tokens([12, 7], start, bins, lp) == [11, 27, 20, 25]
    # no slot log-probs (AR output): missing coordinates come from the whole-image box
    assert box_tokens([12, 7], start, bins) == [12, 10, 29, 29]
    assert box_tokens([], start, bins) == [10, 10, 29, 29]


def textbook_prefix_beam(lp: torch.Tensor, blank: int, beam: int) -> list[tuple[list[int], float]]:
    """Plain prefix beam search over the whole vocabulary, in probabilities (float64), for comparison."""
    p = lp.double().exp().tolist()
    beams = {(): (1.0, 0.0)}
    for frame in p:
        new = defaultdict(lambda: [0.0, 0.0])
        for prefix, (pb, pnb) in beams.items():
            new[prefix][0] += (pb + pnb) * frame[blank]
            if prefix:
                new[prefix][1] += pnb * frame[prefix[-1]]
            for c, pc in enumerate(frame):
                if c == blank:
                    continue
                ext = prefix + (c,)
                new[ext][1] += (pb if prefix and prefix[-1] == c else pb + pnb) * pc
        beams = dict(sorted(new.items(), key=lambda kv: -sum(kv[1]))[:beam])
    return [(list(k), math.log(sum(v))) for k, v in sorted(beams.items(), key=lambda kv: -sum(kv[1]))]


@pytest.mark.parametrize("seed", range(4))
def test_beam_over_candidate_symbols_equals_full_vocabulary_search(seed):
    torch.manual_seed(seed)
    lp = (torch.randn(7, 15) * 2).log_softmax(-1)
    lp[:, 3] += 1.0  # a likely blank, as CTC outputs have
    lp = lp.log_softmax(-1)
    for beam in (1, 2, 4):
        got = beam_search(lp, 3, beam)
        want = textbook_prefix_beam(lp, 3, beam)
        assert [ids for ids, _ in got] == [ids for ids, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_beam_on_a_batch_equals_per_item_textbook_search(seed):
    """One call over a batch of items of different lengths gives each item its own full-vocabulary search."""
    torch.manual_seed(seed)
    lp = (torch.randn(6, 8, 12) * 2).log_softmax(-1)
    lp[..., 0] += 1.0
    lp = lp.log_softmax(-1)
    lengths = [8, 1, 5, 8, 0, 3]
    for beam in (1, 3, 5):
        got = beam_search(lp, 0, beam, lengths=lengths)
        for i, n in enumerate(lengths):
            want = textbook_prefix_beam(lp[i, :n], 0, beam) if n else [([], 0.0)]
            assert [ids for ids, _ in got[i]] == [ids for ids, _ in want]
            assert [s for _, s in got[i]] == pytest.approx([s for _, s in want], abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_greedy_equals_collapse_per_item(seed):
    """Logits or log-probabilities, lengths and EOS: the batch pass equals collapsing each item's argmax."""
    torch.manual_seed(seed)
    logits = torch.randn(16, 10, 6) * 3
    lengths = torch.randint(0, 11, (16,))
    for eos in (None, 2):
        got = greedy_decode(logits, blank=0, eos=eos, lengths=lengths)
        assert got == greedy_decode(logits.log_softmax(-1), blank=0, eos=eos, lengths=lengths)
        best = logits.argmax(-1).tolist()
        assert got == [collapse(row[:n], 0, eos) for row, n in zip(best, lengths.tolist())]


@pytest.mark.parametrize("seed", range(3))
def test_batched_and_per_item_beam_searches_agree(seed):
    """beam_search takes the array search from BATCHED_FROM items and the per-item one below: the same prefixes
    and scores either way, on items of different lengths, with ties of probability (repeated frames) included."""
    from narvl.decode import ctc

    torch.manual_seed(seed)
    lp = (torch.randn(12, 16, 60) * 3)
    lp[..., 4] += 3.0
    lp[3, 5:9] = lp[3, 4]  # repeated frames
    lp = lp.log_softmax(-1)
    lengths = torch.randint(0, 17, (12,)).tolist()
    assert len(lengths) >= ctc.BATCHED_FROM
    for beam in (1, 2, 5):
        batched = beam_search(lp, 4, beam, lengths=lengths)
        for i, n in enumerate(lengths):
            alone = beam_search(lp[i:i + 1], 4, beam, lengths=[n])[0]  # one item: the per-item search
            assert [ids for ids, _ in batched[i]] == [ids for ids, _ in alone]
            assert [s for _, s in batched[i]] == pytest.approx([s for _, s in alone], abs=1e-9)
