"""The inference-prepared model, batched flip, memory-budget windows, grad checkpointing, compile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from network import get_model, optimize_for_inference, predict
from network.hrnet import set_grad_checkpointing
from network.inference import EagerFallback, fuse_conv_bn, maybe_compile
from network.tiling import MemoryPlan, run_windows, tile_starts

NUM_CLASSES = 5


def _model(arch: str) -> nn.Module:
    """A tiny model in float64 with non-trivial BN statistics (eval outputs depend on them)."""
    torch.manual_seed(0)
    model = get_model(arch, NUM_CLASSES).double().eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return model


@pytest.mark.parametrize("arch", ["ocrnet.HRNet_Mscale_w18s", "ocrnet.HRNet_w18s"])
def test_prepared_copy_equals_plain_path_in_float64(arch):
    """Multi-scale + flip on the folded, channels_last copy (flip batched) = the plain path."""
    model = _model(arch).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    want = predict(model, x, scales=(0.5, 1.0, 2.0), flip=True)
    got = predict(fast, x, scales=(0.5, 1.0, 2.0), flip=True)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-9)
    # the training model is untouched: BN layers, weights, mode, gradients
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_uses_module_types_not_class_names():
    """A look-alike class named ``BasicBlock`` is not folded; a declared ``bn_fold_pairs`` is."""

    class BasicBlock(nn.Module):  # same name as timm's, different forward: must not be touched
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    class Declared(BasicBlock):
        bn_fold_pairs = (("conv1", "bn1"),)

    assert fuse_conv_bn(BasicBlock().eval()) == 0
    assert fuse_conv_bn(Declared().eval()) == 1


def test_flip_unbatched_under_a_tight_budget_gives_the_same_result():
    model = optimize_for_inference(_model("ocrnet.HRNet_Mscale_w18s"))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    batched = predict(model, x, scales=(1.0, 0.5), flip=True)
    plan = MemoryPlan(budget=10**12)
    assert plan.fits_batch(model, x, 2, (1.0, 0.5))
    plan.budget = int(1.1 * plan.estimate(plan._bpp[next(iter(plan._bpp))], 1, 64, 64, NUM_CLASSES + 1))
    assert not plan.fits_batch(model, x, 2, (1.0, 0.5))
    single = predict(model, x, scales=(1.0, 0.5), flip=True, memory=plan)
    torch.testing.assert_close(single["pred"], batched["pred"], rtol=1e-9, atol=1e-9)


def test_tile_starts_cover_with_aligned_strides():
    assert tile_starts(100, 128, 32) == [0]
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(s % 32 == 0 for s in starts[:-1])
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:], strict=False))


def test_windowed_output_equals_whole_image_for_a_local_model():
    """Stitching is exact: a model whose receptive field (radius 3) is below half the overlap
    gives the whole-image output everywhere, window borders included."""
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1) for i in range(3)]).double()

    def fn(t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cls": net(t), "attn": net(t)[:, :1].sigmoid()}

    x = torch.randn(1, 3, 150, 230, dtype=torch.float64)
    whole, tiled = fn(x), run_windows(fn, x, (64, 96), overlap=16, align=8)
    for key in whole:
        torch.testing.assert_close(tiled[key], whole[key], rtol=0, atol=1e-12)


def test_memory_plan_windows_a_scale_that_does_not_fit_and_logs_it():
    model = optimize_for_inference(_model("ocrnet.HRNet_Mscale_w18s"))
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    lines: list[str] = []
    whole = predict(model, x, scales=(0.5, 1.0, 2.0))
    unlimited = predict(model, x, scales=(0.5, 1.0, 2.0), memory=MemoryPlan(None, log=lines.append))
    torch.testing.assert_close(unlimited["pred"], whole["pred"], rtol=0, atol=0)
    plan = MemoryPlan(budget=4 * 10**6, overlap=32, probe=64, log=lines.append)
    tiled = predict(model, x, scales=(0.5, 1.0, 2.0), memory=plan)
    assert tiled["pred"].shape == whole["pred"].shape and torch.isfinite(tiled["pred"]).all()
    assert any("scale 2x 128x192 in" in line and "windows" in line for line in lines), lines
    assert any("scale 0.5x 32x48 whole image" in line for line in lines), lines


def test_grad_ckpt_gives_the_same_gradients_and_bn_statistics():
    torch.manual_seed(0)
    plain = get_model("ocrnet.HRNet_Mscale_w18s", NUM_CLASSES).double().train()
    ckpt = copy.deepcopy(plain)
    assert set_grad_checkpointing(ckpt) == 1
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for m in (plain, ckpt):
        torch.manual_seed(1)  # the OCR head's dropout
        sum(v.sum() for v in m(x).values()).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers(), strict=True):
        assert torch.equal(a, b), name  # running statistics updated once, not twice


def test_compile_failure_falls_back_to_eager_with_one_line(monkeypatch, capsys):
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("no C++ compiler found\nlong traceback text")

    monkeypatch.setattr(torch, "compile", lambda _module, **_kw: broken)
    net = nn.Conv2d(3, 2, 1)
    wrapped = maybe_compile(net, "evaluation")
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(wrapped(x), net(x))
    wrapped(x)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["--compile: torch.compile failed for evaluation (RuntimeError: no C++ compiler found); "
                   "running eager"]
    assert list(wrapped.state_dict()) == ["eager.weight", "eager.bias"] and wrapped.out_channels == 2


@pytest.mark.slow
def test_compile_real_tiny_model_matches_eager():
    """torch.compile (inductor on the CPU) of a tiny model: same outputs as eager."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    fast = optimize_for_inference(net, compile=True)
    assert isinstance(fast, EagerFallback)
    x = torch.randn(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-5)
    assert fast.__dict__["compiled"] is not None  # it compiled, no fallback


def test_speed_and_memory_flags_parse_and_round_trip():
    from config import Config, ConfigError, parse_config

    cfg = parse_config(["--amp_dtype", "fp16", "--grad_ckpt", "--no_channels_last", "--compile",
                        "--eval_memory_gb", "16"])
    assert (cfg.train.amp_dtype, cfg.train.grad_ckpt, cfg.train.no_channels_last, cfg.train.compile,
            cfg.eval.eval_memory_gb) == ("fp16", True, True, True, 16.0)
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="--eval_memory_gb"):
        parse_config(["--eval_memory_gb", "0"])
    with pytest.raises(ConfigError, match="amp_dtype"):
        parse_config(["--amp_dtype", "fp8"])
