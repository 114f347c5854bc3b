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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from deploy.meta import ModelInfo, inference_settings, load_model

log = logging.getLogger(__name__)


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

    The inference configuration is the one every door uses (``inference/settings.py``):
    ``scales`` as given, else the scales the checkpoint was validated with, else 0.5,1.0 for
    multi-scale models and 1.0 for single-scale ones; ``flip``: average with the mirrored image;
    ``precision``: ``auto`` (bf16 where the device computes it natively, fp16 on older GPUs, else
    fp32), ``fp32``, ``bf16`` or ``fp16``; ``short_side``: resize the shorter side to this before
    the model (``None``: the image's size, rounded to a multiple of 32); the result is always at the
    input's size. ``seg.settings`` holds them resolved (``seg.settings.to_dict()`` to record them).
    """

    def __init__(self, model: nn.Module, info: ModelInfo, scales: Sequence[float] | str | None = None,
                 flip: bool = False, device: str | torch.device | None = None,
                 short_side: int | None = None, optimize: bool = True, precision: str = "auto") -> None:
        from inference.settings import is_multiscale
        from network import optimize_for_inference

        self.info = info
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.settings = inference_settings(info, is_multiscale(model), scales, flip=flip, precision=precision,
                                           short_side=short_side).resolve(self.device)
        log.info("Segmenter: inference: %s", self.settings.describe())
        model = model.eval().to(self.device)
        self.model = optimize_for_inference(model, channels_last=True) if optimize else model

    @property
    def scales(self) -> tuple[float, ...]:
        return self.settings.scales

    @property
    def flip(self) -> bool:
        return self.settings.flip

    @property
    def short_side(self) -> int | None:
        return self.settings.short_side

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
        from network.tiling import memory_plan

        rgb, st = self.read(image), self.settings
        x = self.preprocess(rgb).unsqueeze(0).to(self.device)
        with torch.inference_mode(), st.run_precision.autocast():
            out = predict(self.model, to_input(x, self.model), scales=st.scales, flip=st.flip,
                          memory=memory_plan(self.device, st.memory_gb))["pred"]
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

        st = self.settings
        size = inference_size(rgb.shape[0], rgb.shape[1], st.short_side, st.size_divisor)
        return to_model_input(rgb, size, st.mean, st.std)
