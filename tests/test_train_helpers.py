"""Shared helpers (no tests) for the train.py tests: tiny runs on the 64x128 synthetic data."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def tiny_args(root: Path, result_dir: Path, *extra: str, arch: str = "ocrnet.HRNet_w18s") -> list[str]:
    """A few CPU iterations of a small model: 64x64 crops, no workers, no class-uniform cache."""
    return ["--dataset", "synthetic", "--dataset_root", str(root), "--arch", arch,
            "--crop_size", "64,64", "--scale_min", "0.75", "--scale_max", "1.25", "--bs_trn", "2",
            "--num_workers", "0", "--class_uniform_pct", "0", "--optimizer", "adamw", "--lr", "0.002",
            "--log_freq", "1", "--result_dir", str(result_dir), "--dump_num_images", "2", *extra]


def run_train(args: list[str], timeout: int = 900, env: dict | None = None,
              launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(REPO / "train.py"), *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def model_state(result_dir: Path, name: str = "last.pth") -> dict[str, torch.Tensor]:
    return torch.load(result_dir / name, map_location="cpu", weights_only=True)["model"]


def scalars(result_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a TensorBoard scalar, read back from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: list[tuple[int, float]] = []
    for path in sorted(glob.glob(str(result_dir / "events.out.tfevents.*"))):
        acc = EventAccumulator(path)
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out += [(e.step, e.value) for e in acc.Scalars(tag)]
    return sorted(out)
