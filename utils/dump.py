"""Prediction pictures: input, colourised ground truth and prediction, overlay, attention per scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.io import atomic_imwrite
from utils.vis import colorize, heatmap, overlay

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) ImageNet-normalised float tensor -> (H, W, 3) uint8 RGB.

    N-band rasters (standardised per band): bands 0-2 (or band 0 in grey), -2.5..2.5 std -> 0..255.
    """
    x = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    if x.shape[2] != 3:
        x = x[..., :3] if x.shape[2] >= 3 else np.repeat(x[..., :1], 3, axis=2)
        return np.clip((x + 2.5) * (255.0 / 5.0) + 0.5, 0, 255).astype(np.uint8)
    x = x * STD + MEAN
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    atomic_imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))


class ImageDumper:
    """Writes pictures for the first ``limit`` images (``None``: all) under ``out_dir``."""

    def __init__(self, out_dir: str | Path, palette: np.ndarray, limit: int | None,
                 attention: bool, ignore_index: int = 255):
        self.out_dir = Path(out_dir)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.limit = limit
        self.attention = attention
        self.ignore_index = ignore_index
        self.count = 0
        self.panels: list[np.ndarray] = []  # a few input|gt|pred strips for TensorBoard

    def done(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    def dump(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        for i in range(pred.shape[0]):
            if self.done():
                return
            name = Path(str(batch["name"][i])).stem
            self._dump_one(name, batch["image"][i], batch.get("mask"), i, outputs, pred[i])
            self.count += 1

    def _dump_one(self, name: str, image: torch.Tensor, masks: Any, i: int,
                  outputs: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        rgb = denormalize(image)
        color = colorize(pred.cpu().numpy(), self.palette, self.ignore_index)
        _write_rgb(self.out_dir / f"{name}_input.png", rgb)
        _write_rgb(self.out_dir / f"{name}_prediction.png", color)
        _write_rgb(self.out_dir / f"{name}_overlay.png", overlay(rgb, color))
        strip = [rgb, color]
        if masks is not None:
            gt = colorize(masks[i].cpu().numpy(), self.palette, self.ignore_index)
            _write_rgb(self.out_dir / f"{name}_gt.png", gt)
            strip = [rgb, gt, color]
        if self.attention:
            for key, attn in outputs.items():
                if key.startswith("attn"):
                    _write_rgb(self.out_dir / f"{name}_{key}.png", heatmap(attn[i, 0].float().cpu().numpy()))
        if len(self.panels) < 4:
            self.panels.append(np.concatenate(strip, axis=1))
