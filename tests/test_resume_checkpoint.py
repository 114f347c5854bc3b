"""Checkpoint files: atomic replacement, and clear failures for corrupt or foreign files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from config import parse_config
from network import CheckpointError, get_model
from network import checkpoint as ckpt_io
from train import load_weights
from utils.dist import DistInfo

WRITER = r"""
import sys, time, pathlib
sys.path.insert(0, sys.argv[1])
from network.checkpoint import save_checkpoint

class Stall:  # pickling it signals the parent, then hangs: the process dies mid-write
    def __reduce__(self):
        pathlib.Path(sys.argv[3]).write_text("writing")
        time.sleep(120)
        return (int, (0,))

import torch
save_checkpoint({"format": "hmsa-ckpt/1", "version": 1, "w": torch.ones(1000)}, sys.argv[2])
save_checkpoint({"format": "hmsa-ckpt/1", "version": 2, "w": torch.zeros(1000), "x": Stall()}, sys.argv[2])
"""


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, repo_root):
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(repo_root), str(tmp_path), str(marker)])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.time() < deadline, "writer never reached the second save"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # a real crash in the middle of torch.save
    finally:
        proc.wait(timeout=30)
    ckpt = torch.load(tmp_path / ckpt_io.LAST, weights_only=True)
    assert ckpt["version"] == 1 and torch.equal(ckpt["w"], torch.ones(1000))
    leftovers = ckpt_io.remove_stale_temps(tmp_path)
    assert all(p.name.startswith(".last.pth.") for p in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "marker"]


@pytest.fixture(scope="module")
def tiny_model():
    return get_model("ocrnet.HRNet_w18s", num_classes=19)


def _cfg(tmp_path, *extra):
    return parse_config(["--arch", "ocrnet.HRNet_w18s", "--result_dir", str(tmp_path), *extra])


def test_corrupt_checkpoint_fails_clearly(tmp_path, tiny_model):
    (tmp_path / "last.pth").write_bytes(b"\x00garbage, not a torch file" * 10)
    with pytest.raises(CheckpointError, match="last.pth"):
        load_weights(_cfg(tmp_path), tiny_model, DistInfo())


def test_foreign_checkpoint_is_not_resumed(tmp_path, tiny_model):
    torch.save({"state_dict": tiny_model.state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint.*--snapshot"):
        load_weights(_cfg(tmp_path, "--resume", str(tmp_path / "weights.pth")), tiny_model, DistInfo())


def test_snapshot_of_other_class_count_names_keys(tmp_path, tiny_model):
    other = get_model("ocrnet.HRNet_w18s", num_classes=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "ref.pth")
    # evaluation loads strictly: a class-count mismatch is an error naming the keys
    with pytest.raises(CheckpointError, match="cls_head"):
        load_weights(_cfg(tmp_path, "--eval", "val", "--snapshot", str(tmp_path / "ref.pth")), tiny_model,
                     DistInfo())


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt_io.capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt_io.restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
