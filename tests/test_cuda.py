"""The GPU path: the same models on CUDA compute what they compute on the CPU (run by scripts/gpu_check.sh on a
machine with an NVIDIA GPU; skipped, and reported as skipped, everywhere else)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from narvl.decode.ctc import greedy_decode
from narvl.model import build_model
from narvl.params import PRESETS

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (torch.cuda.is_available())")]

SPECIAL = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "blank": 4}
VOCAB = 64


def models():
    torch.manual_seed(0)
    arch = dataclasses.replace(PRESETS["cpu"], dropout=0.0)
    nar = build_model("nar", arch, VOCAB, 6, SPECIAL).eval()
    ar = build_model("ar", arch, VOCAB, 6, SPECIAL).eval()
    ar.encoder.load_state_dict(nar.encoder.state_dict())
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(3, 3, 64, 64, generator=g), torch.randint(5, VOCAB, (3, 8), generator=g),
              torch.zeros(3, 8, dtype=torch.bool))
    return nar, ar, inputs


def test_nar_logits_and_greedy_decode_match_the_cpu():
    nar, _, inputs = models()
    with torch.inference_mode():
        cpu = nar(*inputs)
        gpu = nar.cuda()(*(t.cuda() for t in inputs))
    assert (gpu.float().cpu() - cpu).abs().max().item() <= 1e-3
    assert greedy_decode(gpu, SPECIAL["blank"]) == greedy_decode(cpu, SPECIAL["blank"])


@pytest.mark.parametrize("beam", [1, 3])
def test_ar_generation_matches_the_cpu(beam):
    _, ar, inputs = models()
    with torch.inference_mode():
        cpu = ar.generate(*inputs, 5, beam)
        gpu = ar.cuda().generate(*(t.cuda() for t in inputs), 5, beam)
    assert gpu == cpu


def test_bf16_forward_is_close_to_fp32():
    nar, _, inputs = models()
    nar = nar.cuda()
    inputs = tuple(t.cuda() for t in inputs)
    with torch.inference_mode():
        fp32 = nar(*inputs)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = nar(*inputs)
    assert torch.isfinite(bf16).all()
    assert (bf16.float() - fp32).abs().max().item() <= 0.1 * fp32.abs().max().item()
