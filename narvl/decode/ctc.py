"""CTC decoding of the NAR model's N slot distributions.

    greedy_decode(scores, blank, eos=None, lengths=None)     per-slot argmax, merge repeats, drop blanks (vectorised)
    beam_search(log_probs, blank, beam_size, lengths=None)   CTC prefix beam search, batched (blank / non-blank)
    box_tokens(ids, bin_start, num_bins, slot_log_probs)     exactly 4 location tokens for grounding

Inputs are torch log-probabilities (T, V) for one item or (B, T, V) for a batch; a (T, V) input returns one
result, a (B, T, V) input a list. `lengths` (B,) ignores frames past each item's length (default: all T).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor


def collapse(frames: list[int], blank: int, eos: int | None = None) -> list[int]:
    """Merge adjacent repeats, drop blanks; with `eos`, stop at the first EOS (not returned)."""
    out, prev = [], None
    for f in frames:
        if f != prev and f != blank:
            if eos is not None and f == eos:
                break
            out.append(f)
        prev = f
    return out


def _batched(log_probs: Tensor, lengths) -> tuple[Tensor, list[int], bool]:
    if log_probs.dim() == 2:
        log_probs, single = log_probs.unsqueeze(0), True
    elif log_probs.dim() == 3:
        single = False
    else:
        raise ValueError(f"log_probs must be (T, V) or (B, T, V), got {tuple(log_probs.shape)}")
    b, t, _ = log_probs.shape
    if lengths is None:
        lens = [t] * b
    else:
        lens = [int(x) for x in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
        if len(lens) != b or any(not 0 <= x <= t for x in lens):
            raise ValueError(f"lengths {lens} do not fit {b} items of {t} frames")
    return log_probs, lens, single


def greedy_decode(scores: Tensor, blank: int, eos: int | None = None, lengths=None):
    """-> token ids (list[int]) for a (T, V) input, list of them for (B, T, V).

    `scores` may be logits or log-probabilities: the per-slot argmax is the same, so callers skip the log-softmax.
    One vectorised pass over the batch: keep a frame when it is no blank, differs from the frame before it and lies
    within the item's length; with `eos`, drop the first kept EOS and everything after it.
    """
    scores, lens, single = _batched(scores, lengths)
    best = scores.argmax(-1)  # (B, T)
    b, t = best.shape
    keep = best != blank
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    if lengths is not None:
        keep &= torch.arange(t, device=best.device)[None, :] < torch.tensor(lens, device=best.device)[:, None]
    if eos is not None:
        keep &= (keep & (best == eos)).cumsum(1) == 0
    flat, counts = best[keep].tolist(), keep.sum(1).tolist()
    ends = list(itertools.accumulate(counts))
    out = [flat[e - n:e] for e, n in zip(ends, counts)]
    return out[0] if single else out


BATCHED_FROM = 5  # batches of at least this many items take the array search; smaller ones the per-item one


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def _beam_one(lp: np.ndarray, top: np.ndarray, blank: int, beam_size: int) -> list[tuple[list[int], float]]:
    """Prefix beam search over lp (T, V) float64 log-probs. Each prefix keeps log P(prefix, last frame blank) and
    log P(prefix, last frame non-blank); after every frame the beam_size prefixes of largest total survive.

    top (T, C) holds each frame's C = 2 * beam_size + 2 most probable symbols: a prefix's best beam_size fresh
    extensions lie among them (at most 2 + beam_size - 1 symbols per prefix are the blank, its last symbol or lead
    to a prefix already in the beam), so the search is the same as over the whole vocabulary.
    """
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (p_blank, p_nonblank)
    for t in range(lp.shape[0]):
        frame, cols = lp[t], top[t]  # (V,), (C,)
        col_of = {int(c): i for i, c in enumerate(cols)}
        prefixes = list(beams)
        pb = np.array([beams[p][0] for p in prefixes])  # (K,)
        pnb = np.array([beams[p][1] for p in prefixes])
        total = np.logaddexp(pb, pnb)  # (K,)

        def extend(j: int, c: int) -> float:  # log P of prefixes[j] + (c,) ending at this frame
            p = prefixes[j]
            # repeating the last symbol only extends a path that ended in a blank
            return float((pb[j] if p and p[-1] == c else total[j]) + frame[c])

        # fresh extensions over the candidate symbols: (K, C)
        ext = total[:, None] + frame[cols][None, :]
        for j, p in enumerate(prefixes):
            if p and p[-1] in col_of:
                ext[j, col_of[p[-1]]] = extend(j, p[-1])
        if blank in col_of:
            ext[:, col_of[blank]] = -math.inf
        # staying: a blank after anything, or the last symbol repeated (merged)
        new: dict[tuple[int, ...], list[float]] = {}
        for j, p in enumerate(prefixes):
            new[p] = [float(total[j] + frame[blank]), float(pnb[j] + frame[p[-1]]) if p else -math.inf]
        # an extension that equals a prefix already in the beam adds to it instead of competing
        index = {p: j for j, p in enumerate(prefixes)}
        for q in prefixes:
            if q and q[:-1] in index:
                j = index[q[:-1]]
                new[q][1] = _logadd(new[q][1], extend(j, q[-1]))
                if q[-1] in col_of:
                    ext[j, col_of[q[-1]]] = -math.inf
        flat = ext.ravel()
        for idx in np.argsort(-flat, kind="stable")[:beam_size]:
            val = float(flat[idx])
            if val == -math.inf:
                break
            j, i = divmod(int(idx), len(cols))
            new[prefixes[j] + (int(cols[i]),)] = [-math.inf, val]
        ranked = sorted(new.items(), key=lambda kv: _logadd(*kv[1]), reverse=True)[:beam_size]
        beams = {p: (s[0], s[1]) for p, s in ranked}
    ranked = sorted(((list(p), _logadd(*s)) for p, s in beams.items()), key=lambda x: x[1], reverse=True)
    return ranked


def _beam_batched(lp: np.ndarray, cand: np.ndarray, lens: list[int], blank: int,
                  k: int) -> list[list[tuple[list[int], float]]]:
    """The same search as _beam_one for a whole batch at once: one pass over the frames, each step a few array
    operations on (B, K, C). lp (B, T, V) float64 log-probs, cand (B, T, C) each frame's candidate symbols.

    The beam of an item is K slots (`valid` marks the used ones) holding left-aligned prefixes `seq`, their lengths
    and last symbols, p_blank and p_nonblank. An extension that equals a prefix in the beam is found through
    `parent` (beam i is beam j's prefix plus one symbol) and adds to it instead of competing. The survivors are the
    K best of the K stays and K x C extensions, stays first on ties, as in _beam_one.
    """
    b, t_max, _ = lp.shape
    ninf = -np.inf
    c = cand.shape[-1]
    rows = np.arange(b)[:, None]
    seq = np.zeros((b, k, max(t_max, 1)), dtype=np.int64)  # prefixes, left-aligned
    plen = np.zeros((b, k), dtype=np.int64)
    last = np.full((b, k), -1, dtype=np.int64)  # -1: the empty prefix
    valid = np.zeros((b, k), dtype=bool)
    valid[:, 0] = True  # the beam starts with the empty prefix only
    pb = np.full((b, k), ninf)
    pb[:, 0] = 0.0
    pnb = np.full((b, k), ninf)
    lens_a = np.array(lens)
    pos = np.arange(seq.shape[-1])
    for t in range(t_max):
        frame, cols = lp[:, t], cand[:, t]  # (B, V), (B, C)
        total = np.where(valid, np.logaddexp(pb, pnb), ninf)  # (B, K)
        f_last = np.where(last < 0, ninf, frame[rows, np.maximum(last, 0)])  # (B, K)
        # staying: a blank after anything, or the last symbol repeated (merged)
        stay_pb, stay_pnb = total + frame[:, blank, None], pnb + f_last
        # fresh extensions (B, K, C): repeating the last symbol only extends a path that ended in a blank
        same = cols[:, None, :] == last[:, :, None]  # (B, K, C)
        ext = np.where(same, pb[:, :, None], total[:, :, None]) + frame[rows, cols][:, None, :]
        ext[((cols == blank)[:, None, :]) | ~valid[:, :, None]] = ninf
        # parent[b, i, j]: beam i is beam j's prefix plus one symbol (at most one j per i: the beam holds distinct
        # prefixes). Beam i then also receives beam j's extension by last[i], which leaves the candidates.
        agree = ((seq[:, :, None, :] == seq[:, None, :, :]) | (pos >= plen[:, None, :, None])).all(-1)
        parent = (plen[:, None, :] + 1 == plen[:, :, None]) & agree & valid[:, :, None] & valid[:, None, :]
        via = np.where(last[:, None, :] == last[:, :, None], pb[:, None, :], total[:, None, :])  # (B, K_i, K_j)
        merged = np.where(parent, via + f_last[:, :, None], ninf).max(-1)  # (B, K_i): one parent at most
        stay_pnb = np.logaddexp(stay_pnb, merged)
        ext[(parent[:, :, :, None] & (last[:, :, None, None] == cols[:, None, None, :])).any(1)] = ninf
        # the K best of the K stays (valid beams) and K x C extensions (finite ones); valid ones first, then by
        # score, stays first on ties
        flat = ext.reshape(b, -1)
        ok = np.concatenate([valid, flat > ninf], 1)  # (B, K + K*C)
        score = np.concatenate([np.logaddexp(stay_pb, stay_pnb), flat], 1)
        order = np.argsort(np.where(ok, -score, np.nan), 1, kind="stable")[:, :k]  # NaN (not ok) sorts last
        is_ext = order >= k
        src = np.where(is_ext, (order - k) // c, order)  # (B, K) the beam each survivor comes from
        sym = cols[rows, np.maximum(order - k, 0) % c]
        new_seq = seq[rows, src]
        new_len = plen[rows, src]
        bi, ki = np.nonzero(is_ext)
        new_seq[bi, ki, new_len[bi, ki]] = sym[bi, ki]
        new_pb = np.where(is_ext, ninf, stay_pb[rows, src])
        new_pnb = np.where(is_ext, flat[rows, np.maximum(order - k, 0)],
                           stay_pnb[rows, src])
        active = (t < lens_a)[:, None]  # items past their length keep their beams
        seq = np.where(active[:, :, None], new_seq, seq)
        plen = np.where(active, new_len + is_ext, plen)
        last = np.where(active, np.where(is_ext, sym, last[rows, src]), last)
        pb, pnb = np.where(active, new_pb, pb), np.where(active, new_pnb, pnb)
        valid = np.where(active, ok[rows, order], valid)
    total = np.logaddexp(pb, pnb).tolist()
    seqs, plens, valids = seq.tolist(), plen.tolist(), valid.tolist()
    return [sorted(((seqs[i][j][:plens[i][j]], total[i][j]) for j in range(k) if valids[i][j]),
                   key=lambda x: x[1], reverse=True) for i in range(b)]


def beam_search(log_probs: Tensor, blank: int, beam_size: int, lengths=None):
    """-> best-first list of (token ids, log-probability) for a (T, V) input; a list of those for (B, T, V).

    CTC prefix beam search. A batch of at least BATCHED_FROM items is searched at once (_beam_batched: array
    operations over the batch, 2.7x faster than item by item at batch 32 on a CPU); a smaller one item by item
    (_beam_one: 3x faster than the array search at batch 1). Both give the same prefixes and scores (tests). The
    log-probability is the mass the beam kept for the prefix (exact when no alignment was pruned).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    log_probs, lens, single = _batched(log_probs, lengths)
    lp = log_probs.detach().to("cpu", torch.float64)
    top = lp.topk(min(2 * beam_size + 2, lp.size(-1)), dim=-1).indices.numpy()  # (B, T, C)
    lp = lp.numpy()
    if len(lens) >= BATCHED_FROM:
        out = _beam_batched(lp, top, lens, blank, beam_size)
    else:
        out = [_beam_one(lp[i, :n], top[i, :n], blank, beam_size) for i, n in enumerate(lens)]
    return out[0] if single else out


def box_tokens(ids: list[int], bin_start: int, num_bins: int, slot_log_probs: Tensor | None = None) -> list[int]:
    """Exactly 4 location-token ids [x0, y0, x1, y1] from a decoded sequence.

    1. The first 4 location tokens (ids in [bin_start, bin_start + num_bins)) of `ids`, when there are 4.
    2. Otherwise, with `slot_log_probs` (N, V) of the NAR model (N >= 4): for every slot its most probable
       location token (argmax restricted to the bins); keep the 4 slots whose best bin is most probable, in slot
       order. The collapsed output is then ignored entirely (mixing a partial decode with per-slot picks would
       misalign coordinates).
    3. Otherwise (AR output, too few slots): the found coordinates, the missing ones filled from the whole-image
       box (x0, y0 -> first bin; x1, y1 -> last bin).
    """
    found = [i for i in ids if bin_start <= i < bin_start + num_bins]
    if len(found) >= 4:
        return found[:4]
    if slot_log_probs is not None and slot_log_probs.size(0) >= 4:
        bins = slot_log_probs[:, bin_start:bin_start + num_bins]  # (N, num_bins)
        best_val, best_bin = bins.max(-1)  # (N,)
        slots = sorted(best_val.topk(4).indices.tolist())
        return [bin_start + int(best_bin[s]) for s in slots]
    whole = [bin_start, bin_start, bin_start + num_bins - 1, bin_start + num_bins - 1]
    return found + whole[len(found):]
