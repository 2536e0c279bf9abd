"""AR teacher forcing and label-smoothed cross-entropy, against direct per-token sums."""

import pytest
import torch
import torch.nn.functional as F

from narvl.loss.ar import ar_loss, teacher_forcing

BOS, EOS, PAD = 1, 2, 0


def test_teacher_forcing_shifts_and_appends_eos():
    tgt = torch.tensor([[7, 8, 9], [5, 6, 0], [0, 0, 0]])
    prev, gold = teacher_forcing(tgt, torch.tensor([3, 2, 0]), BOS, EOS, PAD)
    assert prev.tolist() == [[1, 7, 8, 9], [1, 5, 6, 0], [1, 0, 0, 0]]
    assert gold.tolist() == [[7, 8, 9, 2], [5, 6, 2, 0], [2, 0, 0, 0]]


def test_loss_is_the_smoothed_mean_over_predicted_tokens():
    torch.manual_seed(0)
    tgt = torch.tensor([[7, 8, 9], [5, 6, 0]])
    lengths = torch.tensor([3, 2])
    prev, gold = teacher_forcing(tgt, lengths, BOS, EOS, PAD)
    logits = torch.randn(2, 4, 11)
    eps, w = 0.1, torch.tensor([0.5, 2.0])
    loss, stats = ar_loss(logits, gold, lengths + 1, label_smoothing=eps, weights=w)
    logp = F.log_softmax(logits, -1)
    total, count = 0.0, 0
    for i in range(2):
        for t in range(int(lengths[i]) + 1):
            term = (1 - eps) * -logp[i, t, gold[i, t]] + eps * -logp[i, t].mean()
            total += w[i].item() * term.item()
            count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-6)
    assert stats["tokens"] == 7
    plain, _ = ar_loss(logits, gold, lengths + 1)
    ce = F.cross_entropy(logits.view(-1, 11), gold.view(-1), ignore_index=PAD, reduction="mean")
    assert plain.item() == pytest.approx(ce.item(), rel=1e-6)  # no PAD among gold tokens: same mask
