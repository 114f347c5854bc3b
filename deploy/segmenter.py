"""One object for notebooks and services: load a checkpoint, segment an image at its own size.

    from deploy import Segmenter
    seg = Segmenter.from_checkpoint("best.safetensors", scales=(0.5, 1.0, 2.0), flip=True)
    out = seg("street.jpg", probs=True)        # or an (H, W, 3) uint8 RGB array
    out.label          # (H, W) class ids at the image's original size
    out.probs          # (K, H, W) float32 softmax, when asked for
    out.color()        # (H, W, 3) uint8 RGB with the checkpoint's colours
    out.class_names, out.palette, out.fractions()

Preprocessing (mean/std, bands) and class names/colours come from the checkpoint's
``dataset_info`` (``deploy.meta.model_info``); inference is ``network.predict`` (scales and
flip) on the inference-prepared model (``network.optimize_for_inference``), the same code as
``predict.py`` and evaluation. From outside the checkout use ``torch.hub.load(checkout,
"segmenter", source="local", snapshot=...)`` (hubconf.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from deploy.meta import ModelInfo, load_model, parse_scales
from inference.defaults import SIZE_DIVISOR


@dataclass
class Segmentation:
    """A segmented image: ``label`` (H, W) and optional ``probs`` (K, H, W), at the input's size."""

    label: np.ndarray
    probs: np.ndarray | None
    class_names: tuple[str, ...]
    palette: np.ndarray

    def color(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB picture of ``label`` in the model's class colours."""
        from utils.vis import colorize

        return colorize(self.label, self.palette)

    def overlay(self, image_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The colours blended over the (H, W, 3) uint8 RGB image that was segmented."""
        from utils.vis import overlay

        return overlay(image_rgb, self.color(), alpha)

    def fractions(self) -> dict[str, float]:
        """Share of the image's pixels per class present, largest first."""
        counts = np.bincount(self.label.reshape(-1), minlength=len(self.class_names))
        total = max(1, int(counts.sum()))
        order = np.argsort(-counts)
        return {self.class_names[i]: float(counts[i]) / total for i in order if counts[i]}


class Segmenter:
    """A trained model with its classes and preprocessing; ``seg(image)`` -> :class:`Segmentation`.

    ``scales``: multi-scale inference (``None``: the model's own default, single scale for
    ``ocrnet.HRNet*`` and 0.5,1,2 for Mscale models); ``flip``: average with the mirrored
    image; ``short_side``: resize the shorter side to this before the model (``None``: the
    image's size, rounded to a multiple of 32); the result is always at the input's size.
    """

    def __init__(self, model: nn.Module, info: ModelInfo, scales: Sequence[float] | str | None = None,
                 flip: bool = False, device: str | torch.device | None = None,
                 short_side: int | None = None, optimize: bool = True) -> None:
        from network import optimize_for_inference

        self.info = info
        self.scales = parse_scales(scales)
        self.flip = flip
        self.short_side = short_side
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model.eval().to(self.device)
        self.model = optimize_for_inference(model, channels_last=True) if optimize else model

    @classmethod
    def from_checkpoint(cls, snapshot: str | Path, arch: str | None = None, num_classes: int | None = None,
                        **kwargs) -> Segmenter:
        """Load ``snapshot`` (project checkpoint, slim ``.safetensors`` or reference ``.pth``)."""
        model, info = load_model(snapshot, arch, num_classes)
        return cls(model, info, **kwargs)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def palette(self) -> np.ndarray:
        return self.info.palette_array

    def __call__(self, image: str | Path | np.ndarray, probs: bool = False) -> Segmentation:
        logits = self.logits(image)
        label = logits.argmax(1)[0].to(torch.uint8 if self.info.num_classes <= 256 else torch.int32)
        prob = torch.softmax(logits, 1)[0].float().cpu().numpy() if probs else None
        return Segmentation(label.cpu().numpy(), prob, self.class_names, self.palette)

    def logits(self, image: str | Path | np.ndarray) -> torch.Tensor:
        """``(1, K, H, W)`` float logits at the image's original size (bilinear from the model's size)."""
        from network import predict
        from network.inference import to_input
        from network.ops import resize_to

        rgb = self.read(image)
        x = self.preprocess(rgb).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            out = predict(self.model, to_input(x, self.model), scales=self.scales, flip=self.flip)["pred"]
            return resize_to(out.float(), rgb.shape[:2], getattr(self.model, "align_corners", False))

    def read(self, image: str | Path | np.ndarray) -> np.ndarray:
        """An image path (decoded to RGB) or an ``(H, W[, C])`` array with the model's band count."""
        from datasets.folder import read_rgb

        if isinstance(image, (str, Path)):
            return read_rgb(image)
        arr = np.asarray(image)
        arr = arr[..., None] if arr.ndim == 2 else arr
        if arr.ndim != 3 or arr.shape[2] != self.info.in_channels:
            raise ValueError(f"image of shape {arr.shape}: expected (H, W, {self.info.in_channels}) "
                             f"({'RGB' if self.info.in_channels == 3 else 'bands'} last, as the model was trained)")
        if arr.dtype != np.uint8:
            raise ValueError(f"image dtype {arr.dtype}: pass uint8 (0..255) values, as read from an image file")
        return arr

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """Resize to the inference size (multiple of 32) and normalise with the checkpoint's mean/std."""
        from datasets.folder import inference_size, to_model_input

        size = inference_size(rgb.shape[0], rgb.shape[1], self.short_side, SIZE_DIVISOR)
        return to_model_input(rgb, size, self.info.mean, self.info.std)
