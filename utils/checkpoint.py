"""Training checkpoints: what goes in, atomic writes, RNG state capture and restore.

Format (docs/INTERFACES.md): ``format: "hmsa-ckpt/1"``, ``arch``, ``num_classes``, ``model``,
``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``iteration``, ``sampler``, ``rng``,
``config``, ``best_miou``. Everything in it is a tensor or a plain Python value, so it loads
with ``torch.load(weights_only=True)``. Two files only (``last.pth``, ``best.pth``), each
replaced atomically, so they never pile up and a crash never leaves a half-written one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.io import atomic_torch_save

FORMAT = "hmsa-ckpt/1"
LAST = "last.pth"
BEST = "best.pth"


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG state the training loop touches, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def build_checkpoint(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: Any, epoch: int, iteration: int,
                     sampler: dict[str, Any], config: dict[str, Any], best_miou: float,
                     device: torch.device | None = None) -> dict[str, Any]:
    """The checkpoint dict; ``model`` must be the unwrapped model (no ``module.`` prefix)."""
    return {
        "format": FORMAT,
        "arch": getattr(model, "arch", type(model).__name__),
        "num_classes": getattr(model, "num_classes", None),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "iteration": int(iteration),
        "sampler": sampler,
        "rng": capture_rng(device),
        "config": config,
        "best_miou": float(best_miou),
    }


def save_checkpoint(ckpt: dict[str, Any], result_dir: str | Path, name: str = LAST) -> Path:
    """Write ``ckpt`` to ``result_dir/name`` through a temporary file and a rename."""
    dest = Path(result_dir) / name
    atomic_torch_save(ckpt, dest)
    return dest


def remove_stale_temps(result_dir: str | Path) -> list[Path]:
    """Delete temporary files left by a writer that was killed mid-write (only rank 0 writes)."""
    stale = [p for name in (LAST, BEST) for p in Path(result_dir).glob(f".{name}.*.tmp*")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def is_training_checkpoint(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == FORMAT and "optimizer" in ckpt and "iteration" in ckpt
