"""The paper's AR baselines beyond free generation (OFA's inference modes), as decoders of `narvl decode`:

    trie      VQA: beam search (decode.beam_size) whose every step may only continue a candidate answer: OFA's
              constraint trie over its answer list (`val_inference_type: beamsearch`)
    allcand   VQA: every candidate answer scored under teacher forcing, the most probable one taken: OFA's
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

AR_DECODERS = {"vqa": ("trie", "allcand"), "grounding": ("bins",)}  # task -> its AR-only decoders
log = logging.getLogger(__name__)


def check_decoder(task: str, kind: str, decoder: str) -> None:
    """greedy and beam suit every model; the constrained decoders only the AR model of their task."""
    if decoder in ("greedy", "beam"):
        return
    tasks = [t for t, names in AR_DECODERS.items() if decoder in names]
    if not tasks:
        raise NarvlError(f"decoder '{decoder}' is not one of greedy, beam, "
                         f"{', '.join(d for names in AR_DECODERS.values() for d in names)}")
    if kind != "ar" or task not in tasks:
        raise NarvlError(f"decoder '{decoder}' decodes {' or '.join(tasks)} with an AR model, "
                         f"not a {task} {kind.upper()} model")


def training_answers(shard_dir: Path, top: int, split: str = "train") -> list[str]:
    """The `top` most frequent `target`s of the split's samples (count descending, then alphabetical)."""
    from narvl.data.loader import iter_metas
    from narvl.data.shard_folder import read_sizes

    sizes = read_sizes(shard_dir, "vqa")
    if split not in sizes:
        raise NarvlError(f"{Path(shard_dir) / 'sizes.json'}: no '{split}' split to take the candidate answers from")
    counts = Counter(m["target"] for m in iter_metas([Path(shard_dir) / n for n in sizes[split]["shards"]]))
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


def ar_decoder(decoder: str, task: str, tokenizer, decode_params, shard_dir: Path | None = None,
               min_len: int = 0, max_len: int | None = None):
    """-> fn(model, images, src_tokens, src_mask) -> token ids per item, for an AR model and any AR decoder
    (greedy, beam, trie, allcand, bins). trie and allcand read the candidate answers from shard_dir's training
    split; `max_len` defaults to decode.max_len[task], `min_len` (the benchmark's forced length) to 0."""
    check_decoder(task, "ar", decoder)
    max_len = decode_params.max_len[task] if max_len is None else max_len
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
    answers = [ids for ids in (tokenizer.encode(a) for a in training_answers(shard_dir, decode_params.answer_candidates))
               if ids]
    fit = [ids for ids in answers if len(ids) <= max_len - 1]  # EOS is forced at step max_len - 1
    if len(fit) < len(answers):
        log.warning("%s: %d of %d candidate answers are longer than decode.max_len.%s - 1 = %d tokens and are left "
                    "out", shard_dir, len(answers) - len(fit), len(answers), task, max_len - 1)
    if not fit:
        raise NarvlError(f"{shard_dir}: no candidate answer fits decode.max_len.{task} = {max_len}")
    answers = fit
    if decoder == "trie":
        trie = AnswerTrie(answers, tokenizer.eos_id, tokenizer.vocab_size)
        return lambda m, images, src, mask: m.generate(images, src, mask, max_len, k, lp, constraint=trie)
    cands = candidate_tensor(answers, tokenizer.pad_id)

    def allcand(m, images, src, mask):
        best = m.score_candidates(images, src, mask, cands).argmax(-1).tolist()  # (B,)
        return [answers[i] for i in best]

    return allcand
