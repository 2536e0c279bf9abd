"""Distance-aware location targets and per-slot NAR targets, against direct per-position sums."""

import math

import pytest
import torch
import torch.nn.functional as F

from narvl.loss.ar import ar_loss, slot_targets, teacher_forcing
from narvl.loss.location import LocationTargets, soft_bins
from narvl.train.engine import Objective, forward_loss

BOS, EOS, PAD, BLANK = 1, 2, 0, 3
START, K = 5, 4  # <bin_0>..<bin_3> are ids 5..8; vocabulary of 10


def test_soft_bins_gaussian_and_one_hot():
    q = soft_bins(torch.tensor([0, 2]), 4, 1.0)
    w = [math.exp(-d * d / 2) for d in (0, 1, 2, 3)]
    assert q[0].tolist() == pytest.approx([x / sum(w) for x in w], rel=1e-6)
    w2 = [math.exp(-d * d / 2) for d in (2, 1, 0, 1)]
    assert q[1].tolist() == pytest.approx([x / sum(w2) for x in w2], rel=1e-6)
    assert soft_bins(torch.tensor([1]), 4, 0.0).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_location_terms_replace_the_nll_of_bin_positions_only():
    torch.manual_seed(0)
    tgt = torch.tensor([[5, 8, 7, 6]])  # a box: bins 0, 3, 2, 1
    prev, gold = teacher_forcing(tgt, torch.tensor([4]), BOS, EOS, PAD)
    logits = torch.randn(1, 5, 10)
    sigma, lam = 0.8, 0.5
    loss, stats = ar_loss(logits, gold, torch.tensor([5]), loc=LocationTargets(START, K, sigma, lam))
    logp = F.log_softmax(logits, -1)[0]
    total, errs = 0.0, []
    for t in range(5):
        y = int(gold[0, t])
        if START <= y < START + K:
            g = y - START
            w = [math.exp(-(k - g) ** 2 / (2 * sigma * sigma)) for k in range(K)]
            soft = -sum(w[k] / sum(w) * logp[t, START + k].item() for k in range(K))
            pb = torch.softmax(logits[0, t, START:START + K], -1)
            e = abs(sum(k * pb[k].item() for k in range(K)) - g)
            errs.append(e)
            total += soft + lam * e / (K - 1)
        else:  # EOS keeps its cross-entropy
            total += -logp[t, y].item()
    assert loss.item() == pytest.approx(total / 5, rel=1e-6)
    assert stats["loc_err"] == pytest.approx(sum(errs) / 4, rel=1e-6)


def test_inactive_location_targets_are_the_plain_cross_entropy():
    torch.manual_seed(1)
    gold = torch.tensor([[5, 8, 7, 6, EOS]])
    logits = torch.randn(1, 5, 10)
    plain, _ = ar_loss(logits, gold, torch.tensor([5]))
    same, stats = ar_loss(logits, gold, torch.tensor([5]), loc=LocationTargets(START, K, 0.0, 0.0))
    assert same.item() == plain.item() and "loc_err" not in stats
    # a one-hot target with only the L1 term: the L1 of a model sure of the right bin is 0
    sure = torch.full((1, 5, 10), -20.0)
    for t, y in enumerate(gold[0].tolist()):
        sure[0, t, y] = 20.0
    _, stats = ar_loss(sure, gold, torch.tensor([5]), loc=LocationTargets(START, K, 0.0, 1.0))
    assert stats["loc_err"] == pytest.approx(0.0, abs=1e-6)
    # uniform over the bins: expected bin (K - 1) / 2, whatever the rest of the vocabulary holds
    flat = torch.zeros(1, 5, 10)
    _, stats = ar_loss(flat, gold, torch.tensor([5]), loc=LocationTargets(START, K, 0.0, 1.0))
    assert stats["loc_err"] == pytest.approx((1.5 + 1.5 + 0.5 + 0.5) / 4, rel=1e-6)


def test_slot_targets_identity_alignment():
    tgt = torch.tensor([[5, 8, 7, 6], [5, 6, 0, 0]])
    assert slot_targets(tgt, torch.tensor([4, 2]), 5, EOS, BLANK).tolist() == [[5, 8, 7, 6, EOS],
                                                                               [5, 6, EOS, BLANK, BLANK]]
    with pytest.raises(ValueError, match="target length"):
        slot_targets(tgt, torch.tensor([4, 2]), 4, EOS, BLANK)


def test_nar_forward_loss_with_slot_targets_is_per_slot_cross_entropy():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 10)
    batch = {"images": None, "src_tokens": None, "src_mask": None, "weights": torch.ones(2),
             "tgt_tokens": torch.tensor([[5, 5, 8, 8], [6, 7, 8, 5]]), "tgt_lengths": torch.tensor([4, 4])}
    special = {"pad": PAD, "bos": BOS, "eos": EOS, "unk": 4, "blank": BLANK}
    obj = Objective(kind="nar", special_ids=special, label_smoothing=0.0, use_weights=False, slot_targets=True)
    loss, stats = forward_loss(lambda *a: logits, batch, obj)
    gold = torch.tensor([[5, 5, 8, 8, EOS], [6, 7, 8, 5, EOS]])
    ce = F.cross_entropy(logits.reshape(-1, 10), gold.reshape(-1))
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6)
    assert "infeasible" not in stats  # repeated bins (5, 5) are fine: no CTC collapse in the loss
    ctc_obj = Objective(kind="nar", special_ids=special, label_smoothing=0.0, use_weights=False)
    _, ctc_stats = forward_loss(lambda *a: logits, batch, ctc_obj)
    assert ctc_stats["infeasible"] == 1  # 4 tokens with 2 repeats need 6 CTC slots
