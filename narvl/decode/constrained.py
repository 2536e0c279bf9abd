"""The paper's AR baselines beyond free generation (OFA's inference modes), as decoders of `narvl decode`:

    trie      VQA, entailment: beam search (decode.beam_size) whose every step may only continue a candidate
              answer: OFA's constraint trie over its answer list (`val_inference_type: beamsearch`)
    allcand   VQA, entailment: every candidate answer scored under teacher forcing, the most probable one taken: OFA's
              all-candidate inference (`val_inference_type: allcand`)
    bins      grounding: greedy generation restricted to the <bin> location tokens (and EOS), as OFA decodes boxes

The candidate answers are the decode.answer_candidates most frequent targets of the training split (OFA: the 3,129
most frequent VQAv2 answers, trainval_ans2label.pkl); ties go alphabetically.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from narvl.errors import NarvlError

log = logging.getLogger(__name__)


def check_decoder(task: str, kind: str, decoder: str) -> None:
    """greedy and beam suit every model; the constrained decoders only the AR model of a task that has them
    (`Task.ar_decoders`)."""
    from narvl import tasks as tasks_mod

    if decoder in ("greedy", "beam"):
        return
    tasks = [t.name for t in tasks_mod.all_tasks() if decoder in t.ar_decoders]
    if not tasks:
        known = sorted({d for t in tasks_mod.all_tasks() for d in t.ar_decoders})
        raise NarvlError(f"decoder '{decoder}' is not one of greedy, beam, {', '.join(known)}")
    if kind != "ar" or task not in tasks:
        raise NarvlError(f"decoder '{decoder}' decodes {' or '.join(tasks)} with an AR model, "
                         f"not a {task} {kind.upper()} model")


def training_answers(shard_dir: Path, top: int, split: str = "train", task: str | None = None) -> list[str]:
    """The `top` most frequent `target`s of the split's samples (count descending, then alphabetical)."""
    from narvl.data.shard_folder import ShardFolder

    folder = ShardFolder(shard_dir, task)
    if split not in folder.sizes:
        raise NarvlError(f"{Path(shard_dir) / 'sizes.json'}: no '{split}' split to take the candidate answers from")
    counts = Counter(m["target"] for m in folder.metas(split))
    if not counts:
        raise NarvlError(f"{shard_dir}: split '{split}' has no answers")
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def candidate_tensor(answers: list[list[int]], pad: int) -> Tensor:
    """Token ids per answer -> (C, L) right-padded with pad."""
    width = max(len(a) for a in answers)
    return torch.tensor([a + [pad] * (width - len(a)) for a in answers], dtype=torch.long)


class AnswerTrie:
    """A prefix tree of the candidate answers' token ids. Called on the hypotheses' tokens (B', 1 + t) [bos, ...],
    it gives each its allowed next tokens (B', V) bool: the children of its prefix, and EOS where the prefix is a
    whole answer. A prefix outside the tree (a finished hypothesis) may only take EOS."""

    def __init__(self, answers: list[list[int]], eos: int, vocab_size: int):
        if not answers or any(not a for a in answers):
            raise NarvlError("the candidate answers must be non-empty token sequences")
        self.eos, self.vocab_size = eos, vocab_size
        self.children: dict[tuple[int, ...], set[int]] = {}
        for ids in answers:
            for i in range(len(ids)):
                self.children.setdefault(tuple(ids[:i]), set()).add(ids[i])
            self.children.setdefault(tuple(ids), set()).add(eos)
        self._rows: dict[tuple[int, ...], Tensor] = {}

    def _row(self, prefix: tuple[int, ...]) -> Tensor:
        row = self._rows.get(prefix)
        if row is None:
            row = torch.zeros(self.vocab_size, dtype=torch.bool)
            row[sorted(self.children.get(prefix, {self.eos}))] = True
            self._rows[prefix] = row
        return row

    def __call__(self, tokens: Tensor) -> Tensor:
        rows = [self._row(tuple(r)) for r in tokens[:, 1:].tolist()]
        return torch.stack(rows).to(tokens.device)


def bin_mask(vocab_size: int, bin_offset: int, num_bins: int) -> Tensor:
    """(V,) bool: the location tokens <bin_0> .. <bin_{n-1}>."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[bin_offset:bin_offset + num_bins] = True
    return allowed


def ar_decoder(decoder: str, task: str, tokenizer, decode_params, max_len: int, shard_dir: Path | None = None,
               min_len: int = 0):
    """-> fn(model, images, src_tokens, src_mask) -> token ids per item, for an AR model and any AR decoder
    (greedy, beam, trie, allcand, bins). `max_len`: tokens generated at most, EOS included
    (`narvl.params.ar_max_len`); trie and allcand read the candidate answers from shard_dir's training split;
    `min_len` (the benchmark's forced length) defaults to 0."""
    check_decoder(task, "ar", decoder)
    k, lp = decode_params.beam_size, decode_params.length_penalty
    if decoder in ("greedy", "beam"):
        beam = 1 if decoder == "greedy" else k
        return lambda m, images, src, mask: m.generate(images, src, mask, max_len, beam, lp, min_len=min_len)
    if decoder == "bins":
        allowed = bin_mask(tokenizer.vocab_size, tokenizer.bin_offset, tokenizer.num_bins)
        return lambda m, images, src, mask: m.generate(images, src, mask, max_len, 1, lp, min_len=min_len,
                                                       allowed=allowed)
    if shard_dir is None:
        raise NarvlError(f"decoder '{decoder}' needs the task's shard folder (its training answers)")
    top = training_answers(shard_dir, decode_params.answer_candidates, task=task)
    answers = [ids for ids in (tokenizer.encode(a) for a in top) if ids]
    fit = [ids for ids in answers if len(ids) <= max_len - 1]  # EOS is forced at step max_len - 1
    if len(fit) < len(answers):
        log.warning("%s: %d of %d candidate answers are longer than data.loader.max_target_len.%s = %d tokens and are "
                    "left out", shard_dir, len(answers) - len(fit), len(answers), task, max_len - 1)
    if not fit:
        raise NarvlError(f"{shard_dir}: no candidate answer fits data.loader.max_target_len.{task} = {max_len - 1}")
    answers = fit
    if decoder == "trie":
        trie = AnswerTrie(answers, tokenizer.eos_id, tokenizer.vocab_size)
        return lambda m, images, src, mask: m.generate(images, src, mask, max_len, k, lp, constraint=trie)
    cands = candidate_tensor(answers, tokenizer.pad_id)

    def allcand(m, images, src, mask):
        best = m.score_candidates(images, src, mask, cands).argmax(-1).tolist()  # (B,)
        return [answers[i] for i in best]

    return allcand
