"""Joint image/mask transforms built on OpenCV.

A transform is a callable ``t(image, mask, centroid=None) -> (image, mask)``:
``image`` is an (H, W, 3) uint8 RGB array, ``mask`` an (H, W) uint8 train-id
array or ``None`` (inference), ``centroid`` an optional ``(x, y)`` pixel of the
*input* that the training crop must contain (class-uniform sampling). It
returns a float ``(3, h, w)`` tensor normalised with the ImageNet mean/std and
a long ``(h, w)`` tensor (or ``None``).

Geometry follows the reference's ``RandomSizeAndCrop``: scale by a random
factor (times the ``pre_size`` factor), pad to the crop size with the ignore
label (black image), crop at random or so that it contains the centroid, then
flip. Scale, pad and crop are one ``cv2.warpAffine`` that computes only the
crop window, so a 2x upscale of a 1024x2048 image costs a 1024x1024 crop. Masks always use
nearest-neighbour interpolation. Randomness comes from
``torch``'s generator, which the DataLoader seeds per worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from datasets.info import IMAGENET_MEAN, IMAGENET_STD

MEAN = np.array(IMAGENET_MEAN, np.float32)  # the one definition is datasets.info's
STD = np.array(IMAGENET_STD, np.float32)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _randint(lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]`` (both ends included)."""
    return int(torch.randint(lo, hi + 1, ()))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


# per channel: uint8 value -> ImageNet-normalised float32 (a lookup beats three float passes)
_NORM_LUT = ((np.arange(256, dtype=np.float32)[None, :] / 255.0 - MEAN[:, None]) / STD[:, None]).astype(np.float32)


def _norm_lut(mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    if mean is None or std is None:
        return _NORM_LUT
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((np.arange(256, dtype=np.float32)[None, :] / 255.0 - m[:, None]) / s[:, None]).astype(np.float32)


def to_tensors(image: np.ndarray, mask: np.ndarray | None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 RGB -> normalised float (3, H, W) (ImageNet mean/std unless given); uint8 mask -> long.

    A float (H, W, C) image (multi-band rasters, normalised by their dataset) is only transposed.
    """
    mask_t = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
    if image.dtype != np.uint8:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32)), mask_t
    lut = _norm_lut(mean, std)
    img = np.empty((3, *image.shape[:2]), np.float32)
    for c in range(3):
        np.take(lut[c], image[..., c], out=img[c])
    return torch.from_numpy(img), mask_t


def resize_long_edge(image: np.ndarray, mask: np.ndarray | None, long_edge: int):
    """Resize so that the longer side equals ``long_edge`` (the reference's eval ``Scale``)."""
    h, w = image.shape[:2]
    scale = long_edge / max(h, w)
    if scale == 1.0:
        return image, mask
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    return image, mask


@dataclass
class ColorJitter:
    """Brightness, contrast, saturation and hue jitter in random order (torchvision's
    ``ColorJitter`` semantics on uint8 images: each step rounds and saturates), with
    OpenCV lookup tables and colour conversions."""

    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.25

    def __call__(self, image: np.ndarray) -> np.ndarray:
        ops = [self._brightness, self._contrast, self._saturation, self._hue]
        img = np.ascontiguousarray(image, dtype=np.uint8)
        for i in torch.randperm(4).tolist():
            img = ops[i](img)
        return img

    @staticmethod
    def _factor(amount: float) -> float:
        return _uniform(max(0.0, 1.0 - amount), 1.0 + amount)

    @staticmethod
    def _affine(img: np.ndarray, gain: float, offset: float) -> np.ndarray:
        lut = np.clip(np.arange(256) * gain + offset + 0.5, 0, 255).astype(np.uint8)
        return cv2.LUT(img, lut)

    def _brightness(self, img: np.ndarray) -> np.ndarray:
        return self._affine(img, self._factor(self.brightness), 0.0) if self.brightness else img

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        if not self.contrast:
            return img
        mean = float(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean())
        f = self._factor(self.contrast)
        return self._affine(img, f, mean * (1.0 - f))

    def _saturation(self, img: np.ndarray) -> np.ndarray:
        if not self.saturation:
            return img
        gray = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        f = self._factor(self.saturation)
        return cv2.addWeighted(img, f, gray, 1.0 - f, 0.0)

    def _hue(self, img: np.ndarray) -> np.ndarray:
        if not self.hue:
            return img
        shift = _uniform(-min(self.hue, 0.5), min(self.hue, 0.5))
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)  # hue over 0..255
        lut = ((np.arange(256) + round(shift * 256)) % 256).astype(np.uint8)
        hsv[..., 0] = cv2.LUT(hsv[..., 0], lut)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


@dataclass
class TrainTransform:
    """Random scale, pad with ignore, crop (around a centroid if given), flip, colour, blur."""

    crop_size: tuple[int, int]
    scale_min: float = 0.5
    scale_max: float = 2.0
    ignore_index: int = 255
    color_aug: float = 0.25
    gblur: bool = False
    pre_size: int | None = None
    flip: bool = True
    mean: tuple[float, ...] | None = None  # None: ImageNet's (uint8 RGB only)
    std: tuple[float, ...] | None = None

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, centroid=None):
        image, mask = self.scale_and_crop(image, mask, centroid)
        if self.flip and float(torch.rand(())) < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
            mask = None if mask is None else np.ascontiguousarray(mask[:, ::-1])
        if self.color_aug > 0 and image.dtype == np.uint8:  # RGB photos; not normalised rasters
            a = self.color_aug
            image = ColorJitter(a, a, a, a)(image)
        if self.gblur:
            image = cv2.GaussianBlur(image, (0, 0), _uniform(0.15, 1.3))
        return to_tensors(image, mask, self.mean, self.std)

    def scale_and_crop(self, image: np.ndarray, mask: np.ndarray | None, centroid=None):
        """Scale, pad and crop in one ``cv2.warpAffine`` per array, computing only the crop.

        Equivalent to resizing the whole image to ``int(size * s)``, padding it
        centrally to the crop size (black / ignore) and cutting the crop, but the
        cost depends on the crop size only.
        """
        h, w = image.shape[:2]
        s = _uniform(self.scale_min, self.scale_max)
        if self.pre_size is not None:
            s *= self.pre_size / max(h, w)
        sw, sh = max(1, int(w * s)), max(1, int(h * s))
        if centroid is not None:
            centroid = (min(int(centroid[0] * s), sw - 1), min(int(centroid[1] * s), sh - 1))
        th, tw = self.crop_size
        x0 = _offset(sw, tw, None if centroid is None else centroid[0])
        y0 = _offset(sh, th, None if centroid is None else centroid[1])
        fx, fy = sw / w, sh / h  # half-pixel centred, as cv2.resize maps pixels
        m = np.array([[fx, 0.0, 0.5 * fx - 0.5 - x0], [0.0, fy, 0.5 * fy - 0.5 - y0]])
        if fx == 1.0 and fy == 1.0:
            m[:, 2] = (-x0, -y0)
        image = cv2.warpAffine(image, m, (tw, th), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if mask is not None:
            mask = cv2.warpAffine(mask, m, (tw, th), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_index)
        return image, mask


def _offset(size: int, crop: int, centre: int | None) -> int:
    """Crop start along one axis of the scaled image (negative: centred padding)."""
    if size <= crop:
        return -((crop - size) // 2)
    if centre is None:
        return _randint(0, size - crop)
    # any crop that contains the centroid and lies inside the image
    return min(max(_randint(centre - crop + 1, centre), 0), size - crop)


@dataclass
class EvalTransform:
    """Optional resize of the long edge to ``pre_size`` (mask nearest), then to tensors."""

    pre_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, centroid=None):
        del centroid  # the transform protocol passes it; evaluation never crops
        if self.pre_size is not None:
            image, mask = resize_long_edge(image, mask, self.pre_size)
        return to_tensors(image, mask, self.mean, self.std)


def build_train_transform(crop_size: int | Sequence[int], scale_min: float = 0.5, scale_max: float = 2.0,
                          ignore_index: int = 255, color_aug: float = 0.25, gblur: bool = False,
                          pre_size: int | None = None) -> TrainTransform:
    """The reference's training augmentation; ``crop_size`` is an int or ``(h, w)``."""
    if not 0 < scale_min <= scale_max:
        raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
    return TrainTransform(_pair(crop_size), scale_min, scale_max, ignore_index, color_aug, gblur, pre_size)


def build_eval_transform(pre_size: int | None = None) -> EvalTransform:
    """Evaluation: optional long-edge resize to ``pre_size``; no randomness."""
    return EvalTransform(pre_size)
