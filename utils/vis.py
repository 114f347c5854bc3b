"""Pictures people look at: colourised label maps and overlays (labelled figures: utils/figures.py)."""

from __future__ import annotations

import numpy as np

IGNORE_COLOR = (0, 0, 0)


def colorize(mask: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Map an (H, W) integer label map to an (H, W, 3) uint8 RGB image.

    ``palette`` is (num_classes, 3) uint8 RGB; labels outside it (the ignore
    label included) are drawn black.
    """
    palette = np.asarray(palette, dtype=np.uint8)
    lut = np.zeros((256, 3), dtype=np.uint8)
    n = min(len(palette), 256)
    lut[:n] = palette[:n]
    if 0 <= ignore_index < 256:
        lut[ignore_index] = IGNORE_COLOR
    mask = np.asarray(mask)
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
        mask = np.where((mask < 0) | (mask > 255), ignore_index if 0 <= ignore_index < 256 else 0, mask)
    return lut[mask.astype(np.uint8)]


def overlay(image_rgb: np.ndarray, color_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised prediction over the input image (both (H, W, 3) uint8 RGB)."""
    if image_rgb.shape != color_rgb.shape:
        raise ValueError(f"overlay needs equal shapes, got {image_rgb.shape} and {color_rgb.shape}")
    out = image_rgb.astype(np.float32) * (1.0 - alpha) + color_rgb.astype(np.float32) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
