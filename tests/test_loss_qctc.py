"""Q-CTC against brute force over all alignments, the TF / warp-ctc reference vectors, and its documented
label smoothing, weights and infeasible-target accounting."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from narvl.decode.ctc import collapse
from narvl.loss.qctc import qctc_loss, required_slots

FIXTURES = Path(__file__).parent / "fixtures" / "ctc"


def brute_force_nll(log_probs: torch.Tensor, target: list[int], blank: int) -> float:
    """-log sum over every length-N alignment that collapses to target of prod_t p_t(a_t), in float64."""
    lp = log_probs.double()
    n, v = lp.shape
    total = -math.inf
    for path in itertools.product(range(v), repeat=n):
        if collapse(list(path), blank) == target:
            s = sum(lp[t, c].item() for t, c in enumerate(path))
            total = max(total, s) + math.log1p(math.exp(-abs(total - s))) if total > -math.inf else s
    return -total


def pad(targets: list[list[int]], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(t) for t in targets))
    out = torch.full((len(targets), width), value, dtype=torch.long)
    for i, t in enumerate(targets):
        out[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    return out, torch.tensor([len(t) for t in targets])


@pytest.mark.parametrize("blank", [0, 3])
def test_equals_brute_force_over_alignments(blank):
    torch.manual_seed(1)
    n, v = 5, 4
    symbols = [c for c in range(v) if c != blank]
    targets = [[], [symbols[0]], [symbols[1], symbols[1]], [symbols[0], symbols[2], symbols[1]],
               [symbols[2], symbols[2], symbols[0], symbols[0]]]  # last one needs 6 slots: infeasible, skipped here
    feasible = targets[:4]
    log_probs = torch.randn(len(feasible), n, v).log_softmax(-1)
    tgt, lens = pad(feasible)
    for i, target in enumerate(feasible):
        loss, stats = qctc_loss(log_probs[i:i + 1], tgt[i:i + 1], lens[i:i + 1], blank=blank)
        expected = brute_force_nll(log_probs[i], target, blank) / max(len(target), 1)
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert stats["infeasible"] == 0
    # the batch loss is the mean of the per-sample per-token losses (torch reduction='mean')
    batch_loss, _ = qctc_loss(log_probs, tgt, lens, blank=blank)
    per = [brute_force_nll(log_probs[i], t, blank) / max(len(t), 1) for i, t in enumerate(feasible)]
    assert batch_loss.item() == pytest.approx(sum(per) / len(per), rel=1e-5)
    reference = F.ctc_loss(log_probs.transpose(0, 1), tgt, torch.full((4,), n), lens, blank=blank, reduction="mean")
    assert batch_loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_tensorflow_loss_and_gradients():
    ref = json.loads((FIXTURES / "tf_ctc_loss_basic.json").read_text())
    blank = ref["conventions"]["blank_index"]
    for case in ref["batch"]:
        logits = torch.tensor(case["probs"], dtype=torch.float64).log().float()[None].requires_grad_()  # (1, 5, 6)
        tgt, lens = pad([case["targets"]])
        loss, _ = qctc_loss(logits.log_softmax(-1), tgt, lens, blank=blank)
        total = loss * len(case["targets"])  # undo the per-token mean: the sequence's NLL
        assert total.item() == pytest.approx(case["expected_loss"], abs=1e-5)
        total.backward()
        assert torch.allclose(logits.grad[0], torch.tensor(case["expected_grad_wrt_logits"]), atol=1e-5)


def test_warpctc_small_case_blank_zero():
    ref = json.loads((FIXTURES / "ctc_small_vectors_warpctc_torchaudio.json").read_text())["warpctc_small_test"]
    log_probs = torch.tensor(ref["activations"]).log_softmax(-1)[None]  # (1, 2, 5)
    tgt, lens = pad([ref["labels"]])
    loss, stats = qctc_loss(log_probs, tgt, lens, blank=ref["conventions"]["blank_index"])
    assert loss.item() * 2 == pytest.approx(ref["expected_loss_value"], abs=1e-5)
    assert stats["feasible"] == 1


def test_label_smoothing_is_the_documented_mixture():
    torch.manual_seed(2)
    log_probs = torch.randn(3, 6, 7).log_softmax(-1)
    tgt, lens = pad([[1, 2], [3], [4, 4, 5]])
    plain, _ = qctc_loss(log_probs, tgt, lens, blank=0)
    eps = 0.1
    smoothed, stats = qctc_loss(log_probs, tgt, lens, blank=0, label_smoothing=eps)
    uniform = (-log_probs.mean(dim=(1, 2))).mean()  # mean over slots and vocabulary of -log p
    assert smoothed.item() == pytest.approx((1 - eps) * plain.item() + eps * uniform.item(), rel=1e-6)
    assert stats["smooth"] == pytest.approx(uniform.item(), rel=1e-6)
    # with eps = 1 only the uniform term is left: a uniform distribution is then optimal
    flat = torch.full((1, 6, 7), -math.log(7.0))
    sharp = torch.tensor([[0.0] + [-9.0] * 6] * 6)[None].log_softmax(-1)
    assert qctc_loss(flat, tgt[:1], lens[:1], 0, 1.0)[0] < qctc_loss(sharp, tgt[:1], lens[:1], 0, 1.0)[0]


def test_weights_scale_each_sample_and_normalise_by_count():
    torch.manual_seed(3)
    log_probs = torch.randn(2, 5, 6).log_softmax(-1).requires_grad_()
    tgt, lens = pad([[1, 2], [3, 1]])
    each = [qctc_loss(log_probs[i:i + 1], tgt[i:i + 1], lens[i:i + 1], 0, 0.1)[0].item() for i in range(2)]
    w = torch.tensor([0.3, 1.0])
    loss, stats = qctc_loss(log_probs, tgt, lens, 0, 0.1, weights=w)
    assert loss.item() == pytest.approx((0.3 * each[0] + 1.0 * each[1]) / 2, rel=1e-6)
    assert stats["weight"] == pytest.approx(1.3)
    # a zero weight removes the sample's gradient
    loss, _ = qctc_loss(log_probs, tgt, lens, 0, 0.1, weights=torch.tensor([0.0, 1.0]))
    loss.backward()
    assert log_probs.grad[0].abs().max() == 0 and log_probs.grad[1].abs().max() > 0


def test_required_slots_counts_repeats():
    tgt, lens = pad([[5, 5, 5], [1, 2, 3], [7, 7], [], [4, 4, 9]])
    lens[4] = 1  # the repeat lies past the length: not counted
    assert required_slots(tgt, lens).tolist() == [5, 3, 3, 0, 1]


def test_infeasible_targets_are_counted_and_contribute_nothing():
    torch.manual_seed(4)
    n = 4
    log_probs = torch.randn(3, n, 6).log_softmax(-1).requires_grad_()
    tgt, lens = pad([[1, 2], [3, 3, 3], [1, 2, 3, 4, 5]])  # needs 2, 5 (> 4), 5 (> 4) slots
    loss, stats = qctc_loss(log_probs, tgt, lens, blank=0, label_smoothing=0.1)
    assert (stats["feasible"], stats["infeasible"], stats["samples"]) == (1, 2, 3)
    alone, _ = qctc_loss(log_probs[:1], tgt[:1], lens[:1], blank=0, label_smoothing=0.1)
    assert loss.item() == pytest.approx(alone.item(), rel=1e-6)
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(log_probs.grad).all()
    assert log_probs.grad[1:].abs().max() == 0
    # a batch with only infeasible targets: zero loss, a graph, zero gradients, all counted
    lp2 = log_probs.detach().clone().requires_grad_()
    loss, stats = qctc_loss(lp2[1:], tgt[1:], lens[1:], blank=0)
    assert loss.item() == 0 and stats["infeasible"] == 2
    loss.backward()
    assert lp2.grad.abs().max() == 0


def test_runs_in_float32_from_half_inputs_and_rejects_blank_in_targets():
    torch.manual_seed(5)
    lp = torch.randn(2, 5, 6).log_softmax(-1)
    tgt, lens = pad([[1, 2], [3]])
    ref, _ = qctc_loss(lp, tgt, lens, blank=0)
    half, _ = qctc_loss(lp.bfloat16(), tgt, lens, blank=0)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(ref.item(), rel=2e-2)
    with pytest.raises(ValueError, match="blank"):
        qctc_loss(lp, tgt, lens, blank=1)
