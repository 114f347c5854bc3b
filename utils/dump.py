"""Prediction pictures: input, colourised ground truth and prediction, overlay, attention per scale.

Besides the raw images (for tools), each image gets ``<name>_panel.png``: input, ground truth and
prediction with titles and a legend of the classes in them; attention maps carry a colour bar."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.figures import attention_figure, labelled_panel, write_png
from utils.io import atomic_imwrite
from utils.vis import colorize, overlay

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
                 attention: bool, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        self.out_dir = Path(out_dir)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.class_names = list(class_names or [f"class_{i}" for i in range(len(self.palette))])
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
        labels = pred.cpu().numpy()
        color = colorize(labels, self.palette, self.ignore_index)
        _write_rgb(self.out_dir / f"{name}_input.png", rgb)
        _write_rgb(self.out_dir / f"{name}_prediction.png", color)
        _write_rgb(self.out_dir / f"{name}_overlay.png", overlay(rgb, color))
        strip, titled, present = [rgb, color], [("input", rgb), ("prediction", color)], [labels]
        if masks is not None:
            gt_labels = masks[i].cpu().numpy()
            gt = colorize(gt_labels, self.palette, self.ignore_index)
            _write_rgb(self.out_dir / f"{name}_gt.png", gt)
            strip, present = [rgb, gt, color], [labels, gt_labels]
            titled.insert(1, ("ground truth (black: ignored)", gt))
        write_png(self.out_dir / f"{name}_panel.png",
                  labelled_panel(titled, self._classes_in(present), self.class_names, self.palette))
        if self.attention:
            for key, attn in outputs.items():
                if key.startswith("attn"):
                    title = f"{name}\n{key}: weight of the {key.removeprefix('attn_')} scale's prediction"
                    picture = attention_figure(attn[i, 0].float().cpu().numpy(), title)
                    write_png(self.out_dir / f"{name}_{key}.png", picture)
        if len(self.panels) < 4:
            self.panels.append(np.concatenate(strip, axis=1))

    def _classes_in(self, label_maps: Sequence[np.ndarray]) -> list[int]:
        ids = set()
        for m in label_maps:
            ids |= {int(c) for c in np.unique(m) if 0 <= c < len(self.palette) and c != self.ignore_index}
        return sorted(ids)
