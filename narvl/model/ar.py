"""The AR baseline (OFA): OFA's encoder and decoder, teacher forcing, KV-cached generation.

    forward: prev_tokens (B, T) = [bos, y_1 .. y_{T-1}] --embed, causal decoder (pad keys masked)--> logits (B, T, V)
    generate: greedy (beam_size 1) or beam search with a per-layer key/value cache; returns token ids
              without bos/eos. `max_len` counts generated tokens, EOS included: at step max_len EOS is forced.
              `allowed` (V,) bool restricts the output tokens (OFA's constraint to <bin> tokens for grounding);
              `constraint` maps each hypothesis's tokens so far to its allowed next tokens (OFA's answer trie).
    score_candidates: the log-probability of every candidate answer under teacher forcing (OFA's all-candidate
              VQA inference); the encoder runs once per item.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from narvl.model.decoder import Decoder
from narvl.model.encoder import Encoder, EncoderOut
from narvl.params import ArchParams

# tokens the AR decoder never emits: padding, the start token and the CTC blank (NAR only)
BANNED = ("pad", "bos", "blank")


class ARModel(nn.Module):
    kind = "ar"

    def __init__(self, arch: ArchParams, vocab_size: int, num_queries: int, special_ids: dict[str, int]):
        super().__init__()
        self.arch, self.vocab_size, self.num_queries = arch, vocab_size, num_queries  # num_queries: unused here
        self.special_ids = dict(special_ids)
        self.encoder = Encoder(arch, vocab_size)
        self.decoder = Decoder(arch)

    def encode(self, images: Tensor | None, src_tokens: Tensor, src_mask: Tensor,
               patch_masks: Tensor | None = None) -> EncoderOut:
        return self.encoder(images, src_tokens, src_mask, patch_masks)

    def decode(self, tokens: Tensor, enc: EncoderOut, caches: list[dict[str, Tensor]] | None = None) -> Tensor:
        """tokens (B, T) the whole prefix [bos, ...] -> logits (B, L, V) of its last L positions: all T without a
        cache, only the newest (L = 1) with `caches` (earlier keys/values come from the cache)."""
        emb = self.encoder.embed_tokens
        padding = tokens.eq(self.special_ids["pad"])  # (B, T): pad keys are masked, as OFA does
        if caches is not None and "k" in caches[0]:
            offset = tokens.size(1) - 1
            return self.decoder(emb(tokens[:, offset:]), enc, emb, causal=True, offset=offset, self_padding=padding,
                                caches=caches)
        return self.decoder(emb(tokens), enc, emb, causal=True, self_padding=padding, caches=caches)

    def forward(self, images: Tensor | None, src_tokens: Tensor, src_mask: Tensor, prev_tokens: Tensor,
                patch_masks: Tensor | None = None) -> Tensor:
        """prev_tokens (B, T) starting with bos -> logits (B, T, V) predicting the next token at each position."""
        return self.decode(prev_tokens, self.encode(images, src_tokens, src_mask, patch_masks))

    # ------------------------------------------------------------------------------------------- generation
    def _next_log_probs(self, tokens: Tensor, enc: EncoderOut, caches, step: int, max_len: int,
                        min_len: int, banned: Tensor, constraint=None) -> Tensor:
        """Log-probabilities (B', V) float32 of the token at position `step` (0-based, after bos)."""
        logits = self.decode(tokens, enc, caches)[:, -1]  # full recomputation, or the newest token with a cache
        logp = F.log_softmax(logits.float(), dim=-1).masked_fill(banned, -torch.inf)  # (B', V)
        if constraint is not None:
            logp = logp.masked_fill(~constraint(tokens), -torch.inf)
        eos = self.special_ids["eos"]
        if step == max_len - 1:  # the last allowed position: EOS only
            forced = torch.full_like(logp, -torch.inf)
            forced[:, eos] = logp[:, eos]
            return forced
        if step < min_len:
            logp[:, eos] = -torch.inf
        return logp

    @torch.no_grad()
    def generate(self, images: Tensor | None, src_tokens: Tensor, src_mask: Tensor, max_len: int, beam_size: int = 1,
                 length_penalty: float = 1.0, min_len: int = 0, use_cache: bool = True,
                 allowed: Tensor | None = None, patch_masks: Tensor | None = None,
                 constraint: Callable[[Tensor], Tensor] | None = None) -> list[list[int]]:
        """Token ids per item (no bos/eos). beam_size 1 is greedy.

        Finished beam hypotheses are ranked by sum log p / length ** length_penalty (length counts EOS), as in
        fairseq. `min_len` suppresses EOS at steps before it (min_len >= max_len forces full-length generation,
        EOS at step max_len, as the benchmark does). `use_cache=False` recomputes every position at every step (for
        tests). `allowed` (V,) bool: only these tokens (and EOS, always) may be generated, e.g. the <bin> tokens
        for grounding as OFA constrains it; pad, bos and the blank stay banned whatever it says. `constraint`
        maps the hypotheses' tokens (B', 1 + step) [bos, ...] to their allowed next tokens (B', V) bool, e.g.
        narvl.decode.constrained.AnswerTrie (OFA's trie over the candidate answers); EOS is allowed only where it
        says so, except at step max_len - 1, where EOS is forced.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        if max_len > self.arch.max_target_len:
            raise ValueError(f"max_len {max_len} exceeds max_target_len {self.arch.max_target_len}")
        enc = self.encode(images, src_tokens, src_mask, patch_masks)
        banned = torch.zeros(self.vocab_size, dtype=torch.bool, device=src_tokens.device)
        if allowed is not None:
            if allowed.shape != (self.vocab_size,) or allowed.dtype != torch.bool:
                raise ValueError(f"allowed must be a bool tensor of shape ({self.vocab_size},), "
                                 f"got {allowed.dtype} {tuple(allowed.shape)}")
            banned |= ~allowed.to(banned.device)
            banned[self.special_ids["eos"]] = False
        for name in BANNED:
            banned[self.special_ids[name]] = True
        if bool(banned.all()):
            raise ValueError("allowed leaves no token to generate")
        if beam_size == 1:
            return self._greedy(enc, max_len, min_len, use_cache, banned, constraint)
        return self._beam(enc, max_len, beam_size, length_penalty, min_len, use_cache, banned, constraint)

    @torch.no_grad()
    def score_candidates(self, images: Tensor | None, src_tokens: Tensor, src_mask: Tensor, candidates: Tensor,
                         rows: int = 1024) -> Tensor:
        """candidates (C, L) token ids without bos/eos, right-padded with pad -> (B, C) float32: sum of log p of
        each candidate's tokens and its EOS under teacher forcing, for every item. The encoder runs once; the
        decoder scores about `rows` (item, candidate) pairs at a time (the encoder output is copied per pair, so
        this bounds the memory: OFA-base at 480 px with 3,129 answers would need ~100 GB in one pass)."""
        pad, bos, eos = (self.special_ids[k] for k in ("pad", "bos", "eos"))
        if candidates.dim() != 2 or candidates.size(0) == 0:
            raise ValueError(f"candidates must be a non-empty (C, L) tensor, got {tuple(candidates.shape)}")
        enc = self.encode(images, src_tokens, src_mask)
        b, dev = src_tokens.size(0), src_tokens.device
        lengths = candidates.ne(pad).sum(1)  # (C,)
        targets = torch.cat([candidates, torch.full_like(candidates[:, :1], pad)], 1)  # (C, L + 1)
        targets[torch.arange(targets.size(0)), lengths] = eos
        prev = torch.cat([torch.full_like(candidates[:, :1], bos), candidates], 1)  # (C, L + 1)
        out = []
        chunk = max(1, rows // b)  # candidates per pass
        for start in range(0, candidates.size(0), chunk):
            tgt, prv = targets[start:start + chunk].to(dev), prev[start:start + chunk].to(dev)
            c = tgt.size(0)
            rep = EncoderOut(*(t.repeat_interleave(c, dim=0) for t in enc))  # (B*c, ...) item-major
            logp = F.log_softmax(self.decode(prv.repeat(b, 1), rep).float(), dim=-1)  # (B*c, L + 1, V)
            tok = logp.gather(-1, tgt.repeat(b, 1)[..., None])[..., 0].masked_fill(tgt.repeat(b, 1).eq(pad), 0.0)
            out.append(tok.sum(-1).view(b, c))
        return torch.cat(out, 1)

    def _new_caches(self, use_cache: bool):
        return [{} for _ in self.decoder.layers] if use_cache else None

    def _greedy(self, enc: EncoderOut, max_len, min_len, use_cache, banned, constraint) -> list[list[int]]:
        memory = enc.memory
        b = memory.size(0)
        bos, eos, pad = (self.special_ids[k] for k in ("bos", "eos", "pad"))
        tokens = torch.full((b, 1), bos, dtype=torch.long, device=memory.device)  # (B, 1 + step)
        finished = torch.zeros(b, dtype=torch.bool, device=memory.device)
        caches = self._new_caches(use_cache)
        for step in range(max_len):
            nxt = self._next_log_probs(tokens, enc, caches, step, max_len, min_len, banned,
                                       constraint).argmax(-1)  # (B,)
            nxt = nxt.masked_fill(finished, pad)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            finished |= nxt == eos
            if bool(finished.all()):
                break
        out = []
        for row in tokens[:, 1:].tolist():
            out.append(row[:row.index(eos)] if eos in row else row)
        return out

    def _beam(self, enc: EncoderOut, max_len, k, length_penalty, min_len, use_cache, banned,
              constraint) -> list[list[int]]:
        b, device = enc.memory.size(0), enc.memory.device
        bos, eos = self.special_ids["bos"], self.special_ids["eos"]
        # (B*K, S, d), beams of item i at rows i*K..i*K+K-1
        enc = EncoderOut(*(t.repeat_interleave(k, dim=0) for t in enc))
        tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)  # (B*K, 1 + step)
        scores = torch.full((b, k), -torch.inf, device=device)
        scores[:, 0] = 0.0  # all beams start identical: keep one
        finalized: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
        done = [False] * b
        caches = self._new_caches(use_cache)
        for step in range(max_len):
            logp = self._next_log_probs(tokens, enc, caches, step, max_len, min_len, banned, constraint)  # (B*K, V)
            v = logp.size(-1)
            cand = (scores[:, :, None] + logp.view(b, k, v)).view(b, k * v)  # (B, K*V)
            top_val, top_idx = cand.topk(min(2 * k, k * v), dim=-1)  # (B, 2K)
            top_val, top_idx = top_val.tolist(), top_idx.tolist()
            # next beams, built as Python lists (one transfer per step rather than per element)
            origin = list(range(b * k))  # rows to continue from
            next_tok, next_scores = [eos] * (b * k), [-torch.inf] * (b * k)
            rows = None  # the token history on the CPU, fetched when a hypothesis ends
            for i in range(b):
                if done[i]:
                    continue
                kept = 0
                for rank, (val, idx) in enumerate(zip(top_val[i], top_idx[i])):
                    if val == -torch.inf:
                        break
                    beam, tok = divmod(idx, v)
                    if tok == eos:
                        if rank < k:  # an EOS among the K best candidates ends a hypothesis
                            rows = tokens[:, 1:].tolist() if rows is None else rows
                            finalized[i].append((val / (step + 1) ** length_penalty, rows[i * k + beam]))
                        continue
                    if kept < k:
                        row = i * k + kept
                        origin[row], next_tok[row], next_scores[row] = i * k + beam, tok, val
                        kept += 1
                if len(finalized[i]) >= k or kept == 0:
                    done[i] = True
                    for row in range(i * k, i * k + k):
                        next_scores[row] = -torch.inf
            if all(done):
                break
            origin = torch.tensor(origin, device=device)
            tokens = torch.cat([tokens[origin], torch.tensor(next_tok, device=device)[:, None]], dim=1)
            scores = torch.tensor(next_scores, device=device).view(b, k)
            if caches is not None:
                for cache in caches:
                    cache["k"], cache["v"] = cache["k"][origin], cache["v"][origin]
        return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finalized]
