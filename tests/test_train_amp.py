"""The apex opt levels mapped onto torch.amp (fp16 on CUDA, bf16 on the CPU)."""

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
    ("O1", "cuda", torch.float16, True),
    ("O3", "cuda", torch.float16, True),
])
def test_levels(level, device, dtype, autocast):
    p = resolve_precision(level, torch.device(device))
    assert p.dtype == dtype and p.autocast_enabled == autocast
    assert p.half_model == (level == "O3")


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
