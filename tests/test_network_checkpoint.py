"""Checkpoint loading: reference layout (from the published key list), project format, errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from network import CheckpointError, get_model, load_checkpoint

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
NUM_CLASSES = 5


def _reference_json(num_classes: int) -> dict:
    return json.loads((REFERENCE / f"state_dict_ocrnet.HRNet_Mscale_{num_classes}.json").read_text())


def _random_state(shapes: dict[str, tuple[list[int], str]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for a key list; BN variances positive, counters int64."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in shapes.items():
        if dtype == "int64":
            state[key] = torch.tensor(7, dtype=torch.int64).reshape(shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


def test_w48_matches_reference_key_list_and_loads_reference_layout():
    """Every key and shape of the reference ocrnet.HRNet_Mscale maps one to one; a
    {'state_dict': {'module.…'}} dict built from the published key list loads strictly."""
    info = _reference_json(19)
    shapes = {e["key"]: (e["shape"], e["dtype"]) for e in info["state_dict"]}
    model = get_model("ocrnet.HRNet_Mscale", 19).eval()
    own = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert own == shapes
    assert sum(p.numel() for p in model.parameters()) == info["num_params"]
    source = _random_state(shapes)
    ckpt = {"state_dict": {"module." + k: v for k, v in source.items()}, "epoch": 3}
    assert load_checkpoint(model, ckpt)["epoch"] == 3
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in source)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), scales=(1.0,))
    assert out["pred"].shape == (1, 19, 32, 32) and torch.isfinite(out["pred"]).all()
    single = get_model("ocrnet.HRNet", 19)
    with pytest.raises(CheckpointError, match="scale_attn"):
        load_checkpoint(single, ckpt)


def test_65_class_key_list_differs_only_in_class_heads():
    info19, info65 = _reference_json(19), _reference_json(65)
    diff = {e["key"] for e in info65["state_dict"]} ^ {e["key"] for e in info19["state_dict"]}
    assert diff == set()
    heads = [e["key"] for e in info65["state_dict"] if e["shape"][:1] == [65]]
    assert sorted(heads) == ["ocr.aux_head.2.bias", "ocr.aux_head.2.weight",
                             "ocr.cls_head.bias", "ocr.cls_head.weight"]


def test_reference_file_with_pickled_objects_gives_identical_outputs(tmp_path):
    """A reference-style .pth (module. prefix, non-tensor objects) == loading the weights directly."""
    torch.manual_seed(0)
    source_model = get_model("ocrnet.HRNet_Mscale_w18s", NUM_CLASSES)
    shapes = {k: (list(v.shape), str(v.dtype).removeprefix("torch."))
              for k, v in source_model.state_dict().items()}
    source = _random_state(shapes, seed=1)
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.items()},
                "args": argparse.Namespace(arch="ocrnet.HRNet_Mscale"), "epoch": 5}, path)
    via_file = get_model("ocrnet.HRNet_Mscale_w18s", NUM_CLASSES).eval()
    assert load_checkpoint(via_file, path)["epoch"] == 5  # allow-listed: no full unpickle
    direct = get_model("ocrnet.HRNet_Mscale_w18s", NUM_CLASSES).eval()
    direct.load_state_dict(source, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = via_file(x), direct(x)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_project_checkpoint_roundtrip(tmp_path):
    from utils.io import atomic_torch_save

    torch.manual_seed(0)
    model = get_model("ocrnet.HRNet_w18s", NUM_CLASSES)
    path = tmp_path / "last.pth"
    atomic_torch_save({"format": "hmsa-ckpt/1", "arch": model.arch, "num_classes": NUM_CLASSES,
                       "model": model.state_dict(), "epoch": 2, "best_miou": 0.5}, path)
    other = get_model("ocrnet.HRNet_w18s", NUM_CLASSES)
    ckpt = load_checkpoint(other, path)
    assert ckpt["epoch"] == 2
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())


def test_wrong_class_count_names_keys_and_fix(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ckpt.pth"
    model = get_model("ocrnet.HRNet_Mscale_w18s", NUM_CLASSES)
    torch.save({"format": "hmsa-ckpt/1", "arch": model.arch, "num_classes": NUM_CLASSES,
                "model": model.state_dict()}, path)
    target = get_model("ocrnet.HRNet_Mscale_w18s", 7)
    before = target.ocr.cls_head.weight.clone()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(target, path)
    message = str(err.value)
    assert "ocr.cls_head.weight: checkpoint (5, 128, 1, 1) vs model (7, 128, 1, 1)" in message
    assert str(path) in message and "5 classes" in message and "class count" in message
    assert "\n" not in message and len(message) < 600  # one line (it listed 8 keys of each kind: 1.5 kB)
    assert torch.equal(target.ocr.cls_head.weight, before), "nothing is loaded on failure"
    with pytest.warns(UserWarning, match="skipped 4"):
        load_checkpoint(target, path, strict=False)
    assert torch.equal(target.backbone.conv1.weight, model.backbone.conv1.weight)


def test_other_architecture_fails_clearly(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": get_model("ocrnet.HRNet_w18s", NUM_CLASSES).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"missing \(e.g. scale_attn"):
        load_checkpoint(get_model("ocrnet.HRNet_Mscale_w18s", NUM_CLASSES), path)
    with pytest.raises(CheckpointError, match="tensors 42 of another shape"):
        load_checkpoint(get_model("ocrnet.HRNet_w18", NUM_CLASSES), path)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04garbage"])
def test_corrupt_file_names_the_path(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_checkpoint(get_model("ocrnet.HRNet_w18s", NUM_CLASSES), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(get_model("ocrnet.HRNet_w18s", NUM_CLASSES), tmp_path / "missing.pth")


def test_trunk_weights_from_local_file(tmp_path):
    """ImageNet classification weights (timm layout, with head keys) load into the trunk."""
    import timm

    torch.manual_seed(0)
    classifier = timm.create_model("hrnet_w18_small_v2", pretrained=False)
    path = tmp_path / "hrnet_w18_small_v2.pth"
    torch.save(classifier.state_dict(), path)
    model = get_model("ocrnet.HRNet_w18s", NUM_CLASSES, trunk_weights=str(path))
    assert torch.equal(model.backbone.stage4[0].fuse_layers[0][1][0].weight,
                       classifier.stage4[0].fuse_layers[0][1][0].weight)
    torch.save({"state_dict": timm.create_model("hrnet_w18", pretrained=False).state_dict()}, path)
    with pytest.raises(CheckpointError, match="966 unexpected keys .*layer1.2"):
        get_model("ocrnet.HRNet_w18s", NUM_CLASSES, trunk_weights=str(path))
