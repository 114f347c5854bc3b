"""The apex opt levels mapped onto torch.amp (--amp_dtype: bf16 where supported, fp16 on older GPUs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils.amp import prepare_model, resolve_precision


@pytest.mark.parametrize("level, device, dtype, autocast", [
    ("O0", "cpu", torch.float32, False),
    ("O1", "cpu", torch.bfloat16, True),
    ("O2", "cpu", torch.bfloat16, True),
    ("O3", "cpu", torch.bfloat16, True),
    ("O1", "cuda", torch.bfloat16, True),
    ("O3", "cuda", torch.bfloat16, True),
])
def test_levels(level, device, dtype, autocast, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_a, **_k: True)  # no GPU needed
    p = resolve_precision(level, torch.device(device))
    assert p.dtype == dtype and p.autocast_enabled == autocast
    assert p.half_model == (level == "O3")


@pytest.mark.parametrize("bf16_gpu, amp_dtype, dtype, scaler", [
    (True, "auto", torch.bfloat16, False),   # Ampere and newer: bf16, no GradScaler
    (False, "auto", torch.float16, True),    # older GPUs: fp16 with a GradScaler
    (True, "fp16", torch.float16, True),     # the reference's fp16, one flag away
    (False, "bf16", torch.bfloat16, False),
])
def test_amp_dtype_on_cuda(bf16_gpu, amp_dtype, dtype, scaler, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_a, **_k: bf16_gpu)
    for level in ("O1", "O3"):  # O3 follows the dtype too
        p = resolve_precision(level, torch.device("cuda"), amp_dtype)
        assert p.dtype == dtype
    p = resolve_precision("O1", torch.device("cuda"), amp_dtype)
    assert (p.make_scaler() is not None) == scaler


def test_scaler_only_for_fp16_autocast():
    assert resolve_precision("O1", torch.device("cpu")).make_scaler() is None  # bf16 needs none
    assert resolve_precision("O3", torch.device("cpu")).make_scaler() is None


def test_o3_keeps_batchnorm_in_fp32_and_runs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    p = resolve_precision("O3", torch.device("cpu"))
    prepare_model(model, p)
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32
    model.eval()
    with torch.no_grad(), p.autocast():
        out = model(p.cast_input(torch.randn(1, 3, 8, 8)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
