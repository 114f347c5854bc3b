"""Slim safetensors weights (+ sha256), the Segmenter API and the torch.hub entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ARCH = "ocrnet.HRNet_Mscale_w18s"
CLASSES = [("road", [128, 64, 128]), ("sky", [70, 130, 180]), ("car", [0, 0, 142])]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def _dataset_info() -> dict:
    """What train.py records: ``DatasetInfo.to_dict()``."""
    from datasets.info import DatasetInfo

    return DatasetInfo.from_table("toy", [n for n, _ in CLASSES], np.array([c for _, c in CLASSES], np.uint8),
                                  mean=tuple(MEAN), std=tuple(STD)).to_dict()


@pytest.fixture(scope="module")
def model():
    from network import get_model

    torch.manual_seed(0)
    return get_model(ARCH, num_classes=len(CLASSES)).eval()


@pytest.fixture(scope="module")
def train_ckpt(model, tmp_path_factory) -> Path:
    """A training checkpoint shaped like train.py's, optimizer state included."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # momentum buffers: the state a slim file drops
    opt.zero_grad(set_to_none=True)
    torch.save({"format": "hmsa-ckpt/1", "arch": ARCH, "num_classes": len(CLASSES), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "epoch": 3, "iteration": 12, "best_miou": 0.5,
                "dataset_info": _dataset_info()}, path)
    return path


@pytest.fixture(scope="module")
def slim(train_ckpt) -> Path:
    from deploy.slim import main

    out = train_ckpt.with_name("best.safetensors")
    assert main(["--snapshot", str(train_ckpt), "--out", str(out)]) == 0
    return out


def test_slim_round_trip_keeps_weights_and_metadata(model, train_ckpt, slim):
    from deploy.meta import model_info
    from network import get_model, load_checkpoint
    from network.checkpoint import read_checkpoint
    from network.weights import sha256_file, sha256_path

    assert slim.stat().st_size < 0.7 * train_ckpt.stat().st_size  # optimizer state dropped
    digest, name = sha256_path(slim).read_text().split()
    assert (digest, name) == (sha256_file(slim), slim.name)  # `sha256sum -c` format
    fresh = get_model(ARCH, num_classes=len(CLASSES))
    ckpt = load_checkpoint(fresh, str(slim))  # the --snapshot path: suffix picks the reader
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert "optimizer" not in ckpt and ckpt["iteration"] == 12
    info = model_info(read_checkpoint(slim))
    assert info.arch == ARCH and info.class_names == ("road", "sky", "car")
    assert info.mean == tuple(MEAN) and info.palette[2] == (0, 0, 142)


def test_sha256_mismatch_is_one_line_exit_2(slim, tmp_path, capsys):
    from deploy.slim import main
    from network import get_model, load_checkpoint
    from network.checkpoint import CheckpointError

    bad = tmp_path / "w.safetensors"
    data = bytearray(slim.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor
    bad.write_bytes(bytes(data))
    (tmp_path / "w.safetensors.sha256").write_text(slim.with_name(slim.name + ".sha256").read_text())
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(get_model(ARCH, num_classes=len(CLASSES)), str(bad))
    assert main(["--snapshot", str(bad), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256" in err[0] and "does not match" in err[0]
    (tmp_path / "w.safetensors.sha256").unlink()  # no digest file: nothing to check, loads
    load_checkpoint(get_model(ARCH, num_classes=len(CLASSES)), str(bad))


def test_segmenter_uses_checkpoint_preprocessing(model, slim):
    """Label == argmax of network.predict on the input normalised with the checkpoint's mean/std."""
    from deploy import Segmenter
    from network import predict

    rgb = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    seg = Segmenter.from_checkpoint(slim, scales=(0.5, 1.0), device="cpu")
    out = seg(rgb, probs=True)
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) \
        / torch.tensor(STD).view(3, 1, 1)
    ref = predict(model, x[None], scales=(0.5, 1.0))["pred"]
    agree = (ref.argmax(1)[0].numpy() == out.label).mean()
    assert agree > 0.999 and out.probs.shape == (3, 64, 96)
    np.testing.assert_allclose(out.probs.sum(0), 1.0, atol=1e-4)
    assert seg.class_names == ("road", "sky", "car") and out.color().shape == (64, 96, 3)


def test_segmenter_reference_checkpoint_falls_back(model, tmp_path):
    """A reference-style .pth (module. prefix, no arch/dataset_info): --arch needed, default classes."""
    from deploy import Segmenter
    from network.checkpoint import CheckpointError

    path = tmp_path / "ref.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match="--arch"):
        Segmenter.from_checkpoint(path)
    seg = Segmenter.from_checkpoint(path, arch=ARCH, scales=(1.0,), device="cpu")
    assert seg.info.num_classes == 3 and seg.class_names == ("class_0", "class_1", "class_2")
    assert seg.info.mean == (0.485, 0.456, 0.406) and "defaults" in seg.info.source
    assert seg(np.zeros((40, 50, 3), np.uint8)).label.shape == (40, 50)


HUB_SCRIPT = """
import json, sys, numpy as np, torch, cv2
repo, snapshot = sys.argv[1], sys.argv[2]
model = torch.hub.load(repo, "ocrnet_hrnet_mscale_w18s", source="local", snapshot=snapshot)
seg = torch.hub.load(repo, "segmenter", source="local", snapshot=snapshot, scales="0.5,1.0", flip=True)
cv2.imwrite("img.png", np.full((45, 70, 3), 120, np.uint8))
out = seg("img.png")
print(json.dumps({"type": type(model).__name__, "training": model.training, "names": model.info.class_names,
                  "shape": list(out.label.shape), "seg_names": list(seg.class_names),
                  "cwd_has_network": __import__("os").path.exists("network")}))
"""


@pytest.mark.slow
def test_hub_loads_from_outside_checkout(slim, repo_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("HMSA_")}
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(repo_root), str(slim)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["type"] == "MscaleOCR" and got["training"] is False and not got["cwd_has_network"]
    assert got["names"] == ["road", "sky", "car"] == got["seg_names"]
    assert got["shape"] == [45, 70]  # original size, not the /32 inference size
