"""Model contract: registry, output dicts, gradients, multi-scale/flip semantics, trunk fuse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from network import get_model, list_models, optimize_for_inference, predict
from network.ops import scale_as

SMALL = ["ocrnet.HRNet_Mscale_w18s", "ocrnet.HRNet_w18s", "ocrnet.HRNet_Mscale_w18", "ocrnet.HRNet_w18"]
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def mscale() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(get_model("ocrnet.HRNet_Mscale_w18s", NUM_CLASSES)).eval()


def _randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics so that eval outputs depend on them."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def test_registry_lists_reference_names_and_rejects_unknown():
    names = list_models()
    for name in ["ocrnet.HRNet_Mscale", "ocrnet.HRNet", *SMALL]:
        assert name in names
    with pytest.raises(KeyError, match="ocrnet.HRNet_Mscale"):
        get_model("ocrnet.HRNet_Mscale_w99", NUM_CLASSES)


@pytest.mark.parametrize("name", SMALL)
def test_output_keys_and_shapes_train_and_eval(name):
    torch.manual_seed(0)
    model = get_model(name, NUM_CLASSES)
    assert (model.arch, model.num_classes, model.multiscale) == (name, NUM_CLASSES, "Mscale" in name)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    expected = {"pred", "aux"} | ({"pred_lo", "pred_hi", "attn_lo"} if model.multiscale else set())
    assert set(out) == expected
    for key, value in out.items():
        assert value.shape == ((2, 1, 64, 64) if key.startswith("attn") else (2, NUM_CLASSES, 64, 64))
    with torch.no_grad():
        out = model.eval()(x)
    # No attn_2x: the largest scale's attention is unused (and not computed) in eval.
    expected = {"pred"} | ({"attn_0.5x", "attn_1x"} if model.multiscale else set())
    assert set(out) == expected
    assert out["pred"].shape == (2, NUM_CLASSES, 64, 64)
    if model.multiscale:
        assert all(((out[k] >= 0) & (out[k] <= 1)).all() for k in out if k.startswith("attn"))


@pytest.mark.parametrize("name", ["ocrnet.HRNet_Mscale_w18s", "ocrnet.HRNet_w18s"])
def test_every_parameter_gets_a_gradient(name):
    from loss import SegLoss

    torch.manual_seed(0)
    model = get_model(name, NUM_CLASSES).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    SegLoss(NUM_CLASSES, rmi=True, mscale_weight=0.05)(model(x), target).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_scale_one_equals_single_scale_model(mscale):
    """Mscale with scales (1.0,) is the plain OCR network with the same weights."""
    single = get_model("ocrnet.HRNet_w18s", NUM_CLASSES).eval()
    state = {k: v for k, v in mscale.state_dict().items() if not k.startswith("scale_attn.")}
    single.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ms = mscale(x, scales=(1.0,))
        assert torch.equal(ms["pred"], single(x)["pred"])
        assert set(ms) == {"pred"}
        assert torch.equal(predict(mscale, x, scales=[1.0])["pred"], ms["pred"])


def test_nscale_combines_hierarchically_as_the_paper(mscale):
    """p = up(a_.5 p_.5) + (1 - up(a_.5)) [a_1 p_1 + (1 - a_1) down(p_2)]."""
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = mscale(x, scales=(1.0, 2.0, 0.5))["pred"]
        s2 = mscale._fwd(F.interpolate(x, scale_factor=2.0, mode="bilinear"), False)
        s1 = mscale._fwd(x, False)
        s05 = mscale._fwd(F.interpolate(x, scale_factor=0.5, mode="bilinear"), False)
    p = s1["attn"] * s1["cls"] + (1 - s1["attn"]) * scale_as(s2["cls"], x, False)
    p = scale_as(s05["attn"] * s05["cls"], x, False) + (1 - scale_as(s05["attn"], x, False)) * p
    torch.testing.assert_close(got, p, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="1.0"):
        mscale(x, scales=(0.5, 2.0))


def test_two_scale_forward_semantics(mscale):
    """joint = up(a_lo * p_lo) + (1 - up(a_lo)) * p_hi; pred_lo/attn_lo are upsampled to the input."""
    x = torch.randn(2, 3, 64, 64)
    mscale.eval_scales = None  # eval then takes the training path's two-scale combination
    try:
        with torch.no_grad():
            out = mscale(x)
            lo = mscale._fwd(F.interpolate(x, scale_factor=0.5, mode="bilinear"), False)
            hi = mscale._fwd(x, False)
    finally:
        mscale.eval_scales = (0.5, 1.0, 2.0)
    assert set(out) == {"pred", "pred_lo", "pred_hi", "attn_lo"}
    want = scale_as(lo["attn"] * lo["cls"], x, False) + (1 - scale_as(lo["attn"], x, False)) * hi["cls"]
    torch.testing.assert_close(out["pred"], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["pred_lo"], scale_as(lo["cls"], x, False), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["attn_lo"], scale_as(lo["attn"], x, False), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["pred_hi"], hi["cls"], rtol=0, atol=1e-6)


def test_flip_averaging(mscale):
    import copy

    # float64: predict batches the flipped pass with the unflipped one, a different conv blocking
    # whose float32 round-off this random, saturated model amplifies to ~1e-3
    mscale = copy.deepcopy(mscale).double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        plain = mscale(x)["pred"]
        flipped = mscale(x.flip(3))["pred"].flip(3)
    got = predict(mscale, x, flip=True)
    torch.testing.assert_close(got["pred"], (plain + flipped) / 2, rtol=0, atol=1e-6)
    assert not torch.allclose(plain, flipped, atol=1e-4), "the test needs a flip-sensitive model"
    sym = torch.cat([x[..., :32], x[..., :32].flip(3)], dim=3)
    pred = predict(mscale, sym, flip=True)["pred"]
    torch.testing.assert_close(pred, pred.flip(3), rtol=0, atol=1e-5)
    assert not mscale.training


def test_single_scale_model_averages_scales_in_predict():
    torch.manual_seed(0)
    model = _randomize_bn(get_model("ocrnet.HRNet_w18s", NUM_CLASSES)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        p1 = model(x)["pred"]
        p05 = scale_as(model(F.interpolate(x, size=(32, 32), mode="bilinear"))["pred"], x, False)
    torch.testing.assert_close(predict(model, x, scales=(1.0, 0.5))["pred"], (p1 + p05) / 2)
    with pytest.raises(ValueError, match="predict"):
        model(x, scales=(0.5, 1.0))


def test_odd_input_size_keeps_size(mscale):
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        out = mscale(x, scales=(0.5, 1.0))
    assert out["pred"].shape == (1, NUM_CLASSES, 70, 90)
    assert torch.isfinite(out["pred"]).all()


def test_trunk_fuses_bilinearly_not_nearest():
    """The reference's fuse upsampling (bilinear) differs from timm's stock nearest."""
    torch.manual_seed(0)
    ref = get_model("ocrnet.HRNet_w18s", NUM_CLASSES).eval()
    torch.manual_seed(0)
    timm_like = get_model("ocrnet.HRNet_w18s", NUM_CLASSES, fuse_upsample="nearest").eval()
    timm_like.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ref.backbone(x), timm_like.backbone(x)
    assert a.shape == b.shape == (1, 270, 16, 16)
    assert not torch.allclose(a, b, atol=1e-3)
    # Branch 0 of the last stage includes bilinear fusion; check one fuse step by hand.
    module = ref.backbone.stage2[0]
    xs = [torch.randn(1, 18, 16, 16), torch.randn(1, 36, 8, 8)]
    with torch.no_grad():
        got = module([t.clone() for t in xs])[0]
        branches = [module.branches[i](xs[i]) for i in range(2)]
        up = F.interpolate(module.fuse_layers[0][1](branches[1]), size=(16, 16), mode="bilinear",
                           align_corners=False)
        torch.testing.assert_close(got, F.relu(branches[0] + up))


def test_optimize_for_inference_matches(mscale):
    """Folded BN + channels_last computes the same function (checked in float64: a random,
    untrained float32 HRNet amplifies round-off through its saturated OCR softmax)."""
    import copy

    model = copy.deepcopy(mscale).double()
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-9, atol=1e-9)


def test_trunk_is_injectable():
    """OCRNet/MscaleOCR take any feature extractor with `out_channels` (1/4-resolution features)."""
    from network.ocrnet import MscaleOCR, OCRNet, OCRWidths
    from network.registry import build_trunk, list_trunks

    class Tiny(torch.nn.Module):
        out_channels = 8

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)

        def forward(self, x):
            return self.conv(x)

    widths = OCRWidths(mid=16, key=8, attn_bottleneck=8)
    x = torch.randn(2, 3, 64, 64)
    single = OCRNet("tiny", 4, Tiny(), widths).train()
    assert {k: tuple(v.shape) for k, v in single(x).items()} == {"pred": (2, 4, 64, 64), "aux": (2, 4, 64, 64)}
    mscale = MscaleOCR("tiny_mscale", 4, Tiny(), widths, eval_scales=(0.5, 1.0)).eval()
    assert mscale(x)["pred"].shape == (2, 4, 64, 64)
    assert {"hrnetv2_w48", "hrnetv2_w18", "hrnetv2_w18s"} <= set(list_trunks())
    assert build_trunk("hrnetv2_w18s").out_channels == 270
    with pytest.raises(KeyError, match="hrnetv2_w18s"):
        build_trunk("resnet_nope")
