"""Similarity logits stay fp32 under mixed precision (the original computed them in fp32 under fp16 AMP)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from salsa_lib.correspondences import ensemble_logits
from salsa_lib.model import DualEncoder


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_student_logits_are_fp32_under_cpu_autocast(dtype):
    audio, captions = _unit(8, 64), _unit(8, 64, seed=1)
    model = SimpleNamespace(tau=torch.tensor(0.05))
    reference = DualEncoder.logits(model, audio, captions)
    with torch.autocast("cpu", dtype=dtype):
        logits = DualEncoder.logits(model, audio, captions)
        low = DualEncoder.logits(model, audio.to(dtype), captions.to(dtype))  # embeddings already in bf16
    assert logits.dtype == torch.float32 and torch.equal(logits, reference)
    assert low.dtype == torch.float32
    # what fp32 buys: at |S| ~ 20 bf16 would round to steps of 0.125
    assert (reference - reference.to(dtype).float()).abs().max() > 1e-3


def test_teacher_logits_are_fp32_under_cpu_autocast():
    audio, captions = _unit(3, 8, 64), _unit(3, 8, 64, seed=1)
    reference = ensemble_logits(audio, captions, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = ensemble_logits(audio, captions, 0.05)
    assert logits.dtype == torch.float32 and torch.equal(logits, reference)
