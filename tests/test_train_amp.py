"""The apex opt levels mapped onto torch.amp through the one precision rule (inference.settings.resolve_precision:
auto = bf16 where the device computes it natively, fp16 on older GPUs, else fp32)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import inference.settings
from config import parse_config
from inference.settings import resolve_precision as resolve_rule
from utils.amp import prepare_model


def resolve_precision(level: str, device: torch.device, amp_dtype: str = "auto"):
    """train.py's training precision for ``--amp_opt_level level --amp_dtype amp_dtype``."""
    from train import training_precision

    return training_precision(parse_config(["--amp_opt_level", level, "--amp_dtype", amp_dtype]), device)


@pytest.fixture(autouse=True)
def _native_cpu_bf16(monkeypatch):
    """No test depends on this machine's instruction set: the CPU counts as bf16-native unless a test says not."""
    monkeypatch.setattr(inference.settings, "cpu_has_native_bf16", lambda: True)


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


# ---------------------------------------------------------------- evaluation / predict.py dtype


@pytest.mark.parametrize("device, bf16_gpu, native_cpu_bf16, amp_dtype, dtype", [
    ("cuda", True, False, "auto", torch.bfloat16),
    ("cuda", False, False, "auto", torch.float16),
    ("cuda", True, False, "fp16", torch.float16),
    ("cuda", True, False, "fp32", torch.float32),     # the exact path, one flag away
    ("cpu", False, False, "auto", torch.float32),     # emulated bf16 is slower than fp32 on such CPUs
    ("cpu", False, True, "auto", torch.bfloat16),     # AVX-512 BF16 / AMX
    ("cpu", False, False, "bf16", torch.bfloat16),    # asked for explicitly: any device
    ("cpu", False, True, "fp32", torch.float32),
    ("mps", False, True, "auto", torch.float32),
])
def test_one_precision_rule(device, bf16_gpu, native_cpu_bf16, amp_dtype, dtype, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_a, **_k: bf16_gpu)  # no GPU needed
    monkeypatch.setattr(inference.settings, "cpu_has_native_bf16", lambda: native_cpu_bf16)
    p = resolve_rule(amp_dtype, torch.device(device))
    assert p.dtype == dtype and p.reason


def test_training_and_inference_share_the_rule(monkeypatch):
    """half_dtype (training) gave bf16 on every CPU while inference_dtype gave fp32 on CPUs without
    native bf16: one checkpoint, two precisions. Now one rule answers both."""
    monkeypatch.setattr(inference.settings, "cpu_has_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert resolve_precision("O1", cpu).dtype == resolve_rule("auto", cpu).dtype == torch.float32
    assert not resolve_precision("O1", cpu).autocast_enabled and resolve_precision("O1", cpu).make_scaler() is None
    assert "no native bf16" in resolve_precision("O1", cpu).describe()


def test_precision_rejects_unknown_names():
    with pytest.raises(ValueError, match="--amp_dtype"):
        resolve_rule("fp8", torch.device("cpu"))


class _DtypeSpy(nn.Module):
    """Records the dtype its convolution computed in (autocast's choice)."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        self.seen.append(y.dtype)
        return {"pred": y}


@pytest.mark.parametrize("amp_dtype, amp, seen", [("bf16", True, torch.bfloat16), ("fp32", True, torch.float32),
                                                  ("bf16", False, torch.float32)])
def test_predict_autocasts_in_the_chosen_dtype_on_the_cpu(amp_dtype, amp, seen, tmp_path):
    """predict.py used fp16 on CUDA whatever was asked and nothing on the CPU; now --amp_dtype decides."""
    from predict import PredictOptions, _logits_fn, inference_settings

    spy = _DtypeSpy()
    opts = PredictOptions(eval_folder=str(tmp_path), result_dir=str(tmp_path / "out"), amp=amp, amp_dtype=amp_dtype)
    settings = inference_settings(opts, spy).resolve(torch.device("cpu"))
    out = _logits_fn(spy, torch.device("cpu"), settings)(torch.randn(1, 3, 8, 8))
    assert spy.seen == [seen] and out.dtype == torch.float32


@pytest.mark.parametrize("extra, level, amp_dtype", [([], None, "auto"),
                                                     (["--amp_opt_level", "O1", "--amp_dtype", "bf16"], "O1", "bf16"),
                                                     (["--amp_opt_level", "O3"], "O3", "auto")])
def test_train_eval_folder_passes_the_precision_to_predict(extra, level, amp_dtype, tmp_path, monkeypatch):
    """train.py --eval folder autocast in fp16 on CUDA whatever --amp_dtype said, and dropped O3; now predict
    gets the flags and builds the same settings predict.py would."""
    import predict
    import train

    seen = {}

    def fake_predict_folder(_model, opts, **kw):  # the folder inference itself is tested in test_predict.py
        seen["opts"], seen["settings"] = opts, kw["settings"]
        return predict.Summary(predict.Shard(0, 1, "test"), total=0, status="complete")

    monkeypatch.setattr(predict, "predict_folder", fake_predict_folder)
    cfg = parse_config(["--eval", "folder", "--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path),
                        "--result_dir", str(tmp_path / "out"), "--device", "cpu", *extra])
    assert train.eval_folder(cfg) == 0
    assert (seen["opts"].amp_opt_level, seen["opts"].amp_dtype) == (level, amp_dtype)
    assert seen["settings"].half_model == (level == "O3")
    assert seen["settings"].precision == amp_dtype
