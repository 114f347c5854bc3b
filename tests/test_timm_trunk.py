"""timm trunks under the OCR heads (``ocrnet.timm.<timm_name>[_Mscale]``, network/timm_trunk.py).

One small model per family with random weights (nothing is downloaded): ResNet (resnet18),
ConvNeXt (convnext_atto), MobileNetV3 (mobilenetv3_small_050), EfficientNet-lite
(efficientnet_lite0 with ``_fuse64``, the low-power recipe's model) and a hierarchical
transformer (pvt_v2_b0); Swin (NHWC features, padded input) and a plain ViT (stride 16 only)
for the fuse rule's corners. MobileNetV3 is not exported here: its squeeze-excite means become
ReduceMean nodes that torch's exporter cannot write at opset 17 (export.py's default; --opset 18 works).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from network import get_model, list_families, list_models, optimize_for_inference
from network.checkpoint import CheckpointError
from network.ops import resize_to
from network.registry import UnknownModelError
from network.timm_trunk import PATTERN, TimmArch, UnsupportedTrunkError, create_timm_trunk, head_widths, parse_arch

FAMILIES = {"resnet": "resnet18", "convnext": "convnext_atto", "mobilenetv3": "mobilenetv3_small_050",
            "efficientnet": "efficientnet_lite0_fuse64", "transformer": "pvt_v2_b0"}
EXPORTED = ["convnext", "efficientnet", "resnet", "transformer"]
NUM_CLASSES = 5
# ONNX ops these trunks add to the graph beyond HRNet's, all implemented by TensorRT's ONNX parser (MaxPool:
# ResNet's stem; Clip: ReLU6; HardSigmoid/HardSwish: MobileNetV3; LayerNormalization (TensorRT >= 8.6), Erf
# (GELU), Pow/Sqrt: ConvNeXt and the transformers); deploy/onnx_export.TENSORRT_OPS lists them.
EXTRA_TRT_OPS = frozenset({"MaxPool", "Clip", "HardSigmoid", "HardSwish", "LayerNormalization", "Erf", "Pow",
                           "Sqrt", "ReduceMean", "Tanh"})


def _randomize_bn(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so that eval outputs depend on them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- names


def test_family_names_resolve_and_bad_names_are_one_line():
    assert PATTERN in list_families() and not any(n.startswith("ocrnet.timm.") for n in list_models())
    with pytest.raises(UnknownModelError, match="close matches: convnext_tiny") as e:
        get_model("ocrnet.timm.convnext_tiyn_Mscale", NUM_CLASSES)
    assert isinstance(e.value, KeyError) and "\n" not in str(e.value)
    with pytest.raises(UnknownModelError, match=r"drop the pretrained tag \(\.a1_in1k\)"):
        get_model("ocrnet.timm.resnet18.a1_in1k", NUM_CLASSES)
    with pytest.raises(UnknownModelError, match="ocrnet.timm.<timm_name>"):
        get_model("ocrnet.timm.", NUM_CLASSES)
    with pytest.raises(KeyError, match="did you mean ocrnet.HRNet_Mscale"):
        get_model("ocrnet.HRNet_Mscal", NUM_CLASSES)
    assert parse_arch("ocrnet.timm.efficientnet_lite0_fuse64_Mscale") == TimmArch("efficientnet_lite0", 64, True)
    assert parse_arch("ocrnet.timm.resnet18") == TimmArch("resnet18", None, False)


def test_model_with_fixed_size_attention_is_refused_in_one_line():
    with pytest.raises(UnsupportedTrunkError, match="levit_128s cannot serve as a segmentation trunk") as e:
        get_model("ocrnet.timm.levit_128s_Mscale", NUM_CLASSES)
    assert "\n" not in str(e.value)


def test_head_widths_follow_fused_channels():
    assert (head_widths(496).mid, head_widths(960).mid, head_widths(1440).mid) == (128, 256, 512)


# ----------------------------------------------------------------------------- the fuse rule


def test_fuse_drops_stride_2_and_concatenates_levels_upsampled_to_the_finest():
    trunk = create_timm_trunk("resnet18").eval()
    assert (trunk.levels, trunk.strides, trunk.out_channels, trunk.pad_to) == ((1, 2, 3, 4), (4, 8, 16, 32), 960, 1)
    x = _x(1, 3, 66, 98)
    with torch.no_grad():
        outs = trunk.body(x)
        want = torch.cat([resize_to(o, outs[1].shape[-2:], False) for o in outs[1:]], dim=1)
        got = trunk(x)
    assert got.shape == (1, 960, 17, 25)
    assert torch.equal(got, want)


def test_fuse_width_projects_wider_levels_at_their_own_resolution():
    trunk = create_timm_trunk("resnet18", fuse_width=128).eval()
    assert trunk.out_channels == 64 + 128 * 3
    assert [type(p).__name__ for p in trunk.proj] == ["Identity", "Identity", "Sequential", "Sequential"]
    x = _x(1, 3, 64, 96)
    with torch.no_grad():
        outs = trunk.body(x)
        levels = zip(trunk.proj, outs[1:], strict=True)
        want = torch.cat([resize_to(p(o), outs[1].shape[-2:], False) for p, o in levels], 1)
        assert torch.equal(trunk(x), want)


def test_stride_16_trunk_is_fused_at_stride_4_of_the_input():
    trunk = create_timm_trunk("vit_tiny_patch16_224").eval()  # dynamic_img_size, padded to the patch
    assert trunk.strides == (16, 16, 16) and trunk.pad_to == 16 and not trunk.nhwc
    with torch.no_grad():
        assert trunk(_x(1, 3, 66, 98)).shape == (1, 3 * 192, 17, 25)
        model = get_model("ocrnet.timm.vit_tiny_patch16_224", NUM_CLASSES).eval()
        assert model(_x(1, 3, 66, 98))["pred"].shape == (1, NUM_CLASSES, 66, 98)


@pytest.mark.slow
def test_swin_nhwc_features_padded_input_train_and_eval():
    torch.manual_seed(0)
    model = get_model("ocrnet.timm.swin_tiny_patch4_window7_224_Mscale", NUM_CLASSES, eval_scales=(0.5, 1.0))
    trunk = model.backbone
    assert trunk.nhwc and trunk.strides == (4, 8, 16, 32) and trunk.pad_to > 1
    out = model.train()(_x(2, 3, 64, 128))
    assert out["pred"].shape == (2, NUM_CLASSES, 64, 128) and out["attn_lo"].shape == (2, 1, 64, 128)
    with torch.no_grad():
        assert trunk.eval()(_x(1, 3, 66, 98)).shape == (1, trunk.out_channels, 17, 25)
        assert model.eval()(_x(1, 3, 66, 98))["pred"].shape == (1, NUM_CLASSES, 66, 98)


# ----------------------------------------------------------------------------- each family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_shapes_and_one_training_step(family):
    from loss import SegLoss

    arch = f"ocrnet.timm.{FAMILIES[family]}_Mscale"
    torch.manual_seed(0)
    model = get_model(arch, NUM_CLASSES, eval_scales=(0.5, 1.0)).train()
    for m in model.modules():  # timm's ResNet zero-initialises each block's last BN: no gradient behind it
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    assert (model.arch, model.multiscale, model.in_channels) == (arch, True, 3)
    x, target = _x(2, 3, 64, 128), torch.randint(0, NUM_CLASSES, (2, 64, 128))
    out = model(x)
    assert set(out) == {"pred", "aux", "pred_lo", "pred_hi", "attn_lo"}
    assert all(v.shape == ((2, 1, 64, 128) if k == "attn_lo" else (2, NUM_CLASSES, 64, 128)) for k, v in out.items())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = SegLoss(NUM_CLASSES, mscale_weight=0.05)(out, target)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert torch.isfinite(loss) and no_grad == []
    opt.step()
    trunk = [(n, p) for n, p in model.named_parameters() if n.startswith("backbone.")]
    changed = [n for n, p in trunk if not torch.equal(before[n], p)]
    assert changed[0] == trunk[0][0] and len(changed) > 0.8 * len(trunk)  # layer-scaled norms move by < 1 ulp
    with torch.no_grad():
        ev = model.eval()(_x(1, 3, 72, 100))  # non-square, not a multiple of 32
    assert set(ev) == {"pred", "attn_0.5x"} and ev["pred"].shape == (1, NUM_CLASSES, 72, 100)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prepared_copy_equals_eval_model(family):
    """optimize_for_inference folds the trunk's BatchNorms too (timm's BatchNormAct2d keeps its activation)."""
    torch.manual_seed(0)
    model = _randomize_bn(get_model(f"ocrnet.timm.{FAMILIES[family]}", NUM_CLASSES)).eval()
    fast = optimize_for_inference(model, channels_last=True)
    x = _x(1, 3, 64, 96)
    with torch.no_grad():
        want, got = model(x)["pred"], fast(x)["pred"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * max(1.0, float(want.abs().max())))
    left = [n for n, m in fast.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert left == []


def test_six_bands_extend_the_rgb_first_conv_of_trunk_weights(tmp_path, capsys):
    import timm

    from network.first_conv import expand_rgb_weight

    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save({"state_dict": source}, tmp_path / "resnet18.pth")
    model = get_model("ocrnet.timm.resnet18_Mscale", NUM_CLASSES, in_channels=6,
                      trunk_weights=str(tmp_path / "resnet18.pth"))
    assert model.in_channels == 6
    assert torch.equal(model.backbone.body.conv1.weight, expand_rgb_weight(source["conv1.weight"], 6))
    assert torch.equal(model.backbone.body.layer4[1].bn2.running_var, source["layer4.1.bn2.running_var"])
    said = capsys.readouterr().out
    assert re.search(r"120 of 120 tensors loaded \(100\.0%.*2 classifier/unused tensors ignored", said)
    out = model.train()(_x(2, 6, 64, 128))
    assert out["pred"].shape == (2, NUM_CLASSES, 64, 128)


# ----------------------------------------------------------------------------- trunk weights


def test_trunk_weights_map_to_timm_feature_wrappers(tmp_path, capsys):
    """safetensors, FeatureListNet's flattened names (stages.0 -> stages_0), FeatureGetterNet's model.*"""
    import timm
    from safetensors.torch import save_file

    for name in ("convnext_atto", "vit_tiny_patch16_224"):
        torch.manual_seed(1)
        source = timm.create_model(name, pretrained=False).state_dict()
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
        trunk = create_timm_trunk(name, weights=path)
        own = trunk.body.state_dict()
        assert "100.0%" in capsys.readouterr().out
        first = "stem_0.weight" if name == "convnext_atto" else "model.patch_embed.proj.weight"
        src = "stem.0.weight" if name == "convnext_atto" else "patch_embed.proj.weight"
        assert torch.equal(own[first], source[src])


def test_trunk_weights_of_another_model_are_refused_unless_partial(tmp_path, capsys):
    import timm

    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(CheckpointError, match=r"resnet18: 96 tensors this model does not have \(e.g. layer1.2"):
        create_timm_trunk("resnet18", weights=tmp_path / "resnet34.pth")
    convnext = {k: v for k, v in timm.create_model("convnext_atto", pretrained=False).state_dict().items()}
    torch.save(convnext, tmp_path / "convnext.pth")
    with pytest.raises(CheckpointError, match="no tensor fits"):
        create_timm_trunk("resnet18", weights=tmp_path / "convnext.pth", weights_partial=True)
    capsys.readouterr()
    create_timm_trunk("resnet18", weights=tmp_path / "resnet34.pth", weights_partial=True)
    loaded = re.search(r"(\d+) of (\d+) tensors loaded", capsys.readouterr().out)
    assert loaded and 0 < int(loaded[1]) <= int(loaded[2]) == 120


# ----------------------------------------------------------------------------- the doors, unchanged


def _checkpoint(arch: str, path: Path) -> tuple[torch.nn.Module, Path]:
    """A project checkpoint (format, arch, classes, weights): what train.py writes, minus the optimizer."""
    from datasets.info import DatasetInfo

    torch.manual_seed(0)
    model = _randomize_bn(get_model(arch, NUM_CLASSES, eval_scales=(0.5, 1.0))).eval()
    palette = np.array([[40 * i, 255 - 40 * i, 20 * i] for i in range(NUM_CLASSES)], np.uint8)
    info = DatasetInfo.from_table("toy", [f"c{i}" for i in range(NUM_CLASSES)], palette).to_dict()
    torch.save({"format": "hmsa-ckpt/1", "arch": arch, "num_classes": NUM_CLASSES, "model": model.state_dict(),
                "dataset_info": info}, path)
    return model, path


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoint_alone_rebuilds_the_model_for_predict_and_the_hub(family, tmp_path, repo_root):
    import predict
    from deploy.meta import load_model
    from network.checkpoint import build_model, read_checkpoint

    arch = f"ocrnet.timm.{FAMILIES[family]}_Mscale"
    model, path = _checkpoint(arch, tmp_path / "best.pth")
    ckpt = read_checkpoint(path)
    rebuilt = build_model(ckpt["arch"], ckpt["num_classes"], ckpt, eval_scales=(0.5, 1.0)).eval()
    deployed, info = load_model(path, eval_scales=(0.5, 1.0))  # no --arch: the checkpoint's
    assert info.arch == arch
    x = _x(1, 3, 64, 96)
    with torch.no_grad():
        want = model(x)["pred"]
        assert torch.equal(rebuilt(x)["pred"], want) and torch.equal(deployed(x)["pred"], want)

    (tmp_path / "in").mkdir()
    for i, (h, w) in enumerate([(40, 60), (52, 36)]):
        cv2.imwrite(str(tmp_path / "in" / f"img{i}.png"), np.full((h, w, 3), 60 * i + 30, np.uint8))
    rc = predict.main(["--snapshot", str(path), "--eval_folder", str(tmp_path / "in"),  # --arch: the checkpoint's
                       "--result_dir", str(tmp_path / "out"), "--infer_short_side", "64", "--workers", "0",
                       "--no_progress", "--n_scales", "0.5,1.0"])
    assert rc == 0
    labels = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.png")
                    if "color" not in p.parts)
    # label PNGs are palette images (class ids + colours): PIL reads the ids, OpenCV would expand the palette
    assert [np.asarray(Image.open(tmp_path / "out" / p)).shape for p in labels] == [(40, 60), (52, 36)]

    seg = torch.hub.load(str(repo_root), "segmenter", source="local", snapshot=str(path), scales=(0.5, 1.0))
    assert seg.info.arch == arch and seg(np.zeros((64, 80, 3), np.uint8)).label.shape == (64, 80)
    hub_model = torch.hub.load(str(repo_root), "ocrnet", source="local", snapshot=str(path), eval_scales=(0.5, 1.0))
    with torch.inference_mode():  # a family name has no per-architecture entry point: "ocrnet" takes any
        assert hub_model.info.arch == arch and torch.equal(hub_model(x)["pred"], want)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("family", EXPORTED)
def test_export_to_onnx_agrees_with_onnxruntime(family, tmp_path):
    import export

    _, path = _checkpoint(f"ocrnet.timm.{FAMILIES[family]}_Mscale", tmp_path / "best.pth")
    out = tmp_path / "m.onnx"
    rc = export.main(["--snapshot", str(path), "--out", str(out), "--check-count", "1", "--check-short-side", "64"])
    assert rc == 0 and out.is_file()


def test_door_op_set_covers_the_timm_trunks():
    from deploy.onnx_export import TENSORRT_OPS

    assert EXTRA_TRT_OPS <= TENSORRT_OPS


def test_hrnet_trunk_weights_load_partially_on_request_too(tmp_path, capsys):
    """The same keyword for every trunk, so train.py can pass one flag whatever --arch is."""
    import timm

    torch.save(timm.create_model("hrnet_w18_small", pretrained=False).state_dict(), tmp_path / "w18small_v1.pth")
    with pytest.raises(CheckpointError, match="trunk_weights_partial=True"):
        get_model("ocrnet.HRNet_w18s", NUM_CLASSES, trunk_weights=str(tmp_path / "w18small_v1.pth"))
    capsys.readouterr()
    get_model("ocrnet.HRNet_w18s", NUM_CLASSES, trunk_weights=str(tmp_path / "w18small_v1.pth"),
              trunk_weights_partial=True)
    loaded = re.search(r"(\d+) of (\d+) tensors loaded", capsys.readouterr().out)
    assert loaded and 0 < int(loaded[1]) < int(loaded[2])


@pytest.mark.parametrize("arch", ["ocrnet.timm.resnet18_Mscale", "ocrnet.HRNet_Mscale_w18s"])
def test_six_band_checkpoint_loads_through_the_deploy_doors(arch, tmp_path):
    """deploy.meta.load_model (export.py, Segmenter, torch.hub) built every model with 3 input channels: a
    6-band GeoTIFF checkpoint failed with a first-conv shape mismatch, HRNet's too."""
    from datasets.info import DatasetInfo
    from deploy.meta import load_model

    torch.manual_seed(0)
    model = get_model(arch, NUM_CLASSES, in_channels=6, eval_scales=(0.5, 1.0)).eval()
    palette = np.array([[40 * i, 255 - 40 * i, 20 * i] for i in range(NUM_CLASSES)], np.uint8)
    info = DatasetInfo.from_table("geo", [f"c{i}" for i in range(NUM_CLASSES)], palette, bands=(1, 2, 3, 4, 5, 6),
                                  mean=(0.1,) * 6, std=(0.2,) * 6).to_dict()
    path = tmp_path / "best.pth"
    torch.save({"format": "hmsa-ckpt/1", "arch": arch, "num_classes": NUM_CLASSES, "model": model.state_dict(),
                "dataset_info": info}, path)
    loaded, minfo = load_model(path)
    assert minfo.in_channels == 6 and loaded.in_channels == 6
    x = torch.randn(1, 6, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(loaded(x)["pred"], model(x)["pred"])


def test_syncbn_conversion_keeps_timm_activations():
    """--syncbn used torch's converter, which turns timm's BatchNormAct2d (BN + activation in one module) into
    a plain SyncBatchNorm: the activations of EfficientNet/MobileNet trunks vanished (features off by ~1e5)."""
    from timm.layers import BatchNormAct2d

    from utils.dist import convert_sync_batchnorm

    model = get_model("ocrnet.timm.efficientnet_lite0_Mscale", NUM_CLASSES)
    acts = [type(m.act) for m in model.modules() if isinstance(m, BatchNormAct2d)]
    assert acts and any(a is not torch.nn.Identity for a in acts)
    synced = convert_sync_batchnorm(model)
    assert not any(type(m) in (torch.nn.BatchNorm2d, BatchNormAct2d) for m in synced.modules())
    assert [type(m.act) for m in synced.modules() if hasattr(m, "act") and isinstance(m, torch.nn.SyncBatchNorm)] \
        == acts


def test_grad_ckpt_reaches_timm_trunks_and_keeps_the_gradients():
    """--grad_ckpt only knew HRNet trunks: for ocrnet.timm.* it did nothing and said nothing."""
    from network.hrnet import set_grad_checkpointing

    torch.manual_seed(0)
    model = get_model("ocrnet.timm.resnet18", NUM_CLASSES).train()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))

    def grads() -> list[torch.Tensor]:
        torch.manual_seed(4)  # the head's dropout draws the same mask in both passes
        model.zero_grad()
        model(x)["pred"].square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = grads()
    model.load_state_dict(state)  # BatchNorm running stats as before
    assert set_grad_checkpointing(model, True) == 1
    checkpointed = grads()
    assert len(plain) == len(checkpointed)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(plain, checkpointed, strict=True))


def test_train_py_passes_trunk_weights_partial(tmp_path, capsys):
    """The refusal named get_model's keyword only: train.py had no flag to ask for a partial trunk load."""
    import timm

    import train
    from config import parse_config

    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "resnet34.pth")
    argv = ["--arch", "ocrnet.timm.resnet18", "--trunk_weights", str(tmp_path / "resnet34.pth")]
    with pytest.raises(CheckpointError, match="--trunk_weights_partial"):
        train.build_model(parse_config(argv), NUM_CLASSES)
    capsys.readouterr()
    train.build_model(parse_config([*argv, "--trunk_weights_partial"]), NUM_CLASSES)
    assert re.search(r"\d+ of 120 tensors loaded", capsys.readouterr().out)
