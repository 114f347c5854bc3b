"""The labelled-image dataset every concrete dataset builds on."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from datasets.errors import DatasetError

Transform = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class Item:
    """One image and its label file (``None`` for unlabelled splits)."""

    image: Path
    label: Path | None
    name: str


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, or :class:`DatasetError` naming the file."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        fix = "it is missing" if not path.exists() else "it is empty, truncated or not an image"
        raise DatasetError(f"cannot read image {path}: {fix}; re-download or regenerate this file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """(H, W) label values as stored (palette PNGs give their indices), via PIL."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read label {path}: {e}; re-download or regenerate this file") from e
    if arr.ndim != 2:
        raise DatasetError(f"label {path} has shape {arr.shape}, expected one channel of class ids "
                           f"(an RGB colour label?); use the *_labelIds.png / index PNG files")
    return arr


def missing_labels_error(missing: Sequence[tuple[Path, Path]], fix: str) -> DatasetError:
    shown = "\n".join(f"  {img} -> expected {lab}" for img, lab in missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return DatasetError(f"{len(missing)} image(s) have no label file:\n{shown}{more}\n{fix}")


def require_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path} does not exist or is not a directory; {fix}")
    return path


class SegmentationDataset(torch.utils.data.Dataset):
    """Items of (image, label) files; labels are mapped to train ids through ``label_lut``.

    ``ds[i]`` or ``ds[(i, (x, y))]`` (a class-uniform centroid in label pixels)
    returns ``{"image", "mask", "name"}``.
    """

    ignore_index = 255

    def __init__(self, items: Sequence[Item], *, num_classes: int, class_names: Sequence[str],
                 palette: np.ndarray, label_lut: np.ndarray | None, transform: Transform | None,
                 root: Path, split: str, name: str, known_ids: Sequence[int] | None = None) -> None:
        from datasets.transforms import build_eval_transform

        if not items:
            raise DatasetError(f"no images found for {name} split {split!r} under {root}; "
                               f"check the root and the split name")
        self.items = list(items)
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.palette = np.asarray(palette, np.uint8)
        self.label_lut = label_lut
        # raw label ids a label file may hold: those the LUT maps (known_ids), else the train
        # ids themselves; 255 (ignore) always
        self.known_ids = np.zeros(256, bool)
        self.known_ids[list(known_ids) if known_ids is not None else list(range(min(num_classes, 255)))] = True
        self.known_ids[self.ignore_index] = True
        self.transform = transform if transform is not None else build_eval_transform()
        self.root, self.split, self.name = Path(root), split, name
        # Items [num_primary:] (Cityscapes coarse boost) are drawn only class-uniformly, and only
        # for the classes in ``boost_classes``, whenever class-uniform sampling is on.
        self.num_primary = len(self.items)
        self.boost_classes: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def label_paths(self) -> list[Path | None]:
        return [it.label for it in self.items]

    def load_label(self, index: int) -> np.ndarray | None:
        """Train-id mask (uint8, 255 ignored) of item ``index``, or ``None`` if unlabelled."""
        path = self.items[index].label
        if path is None:
            return None
        raw = read_label(path)
        self.check_ids(raw, path)
        return apply_lut(raw, self.label_lut, path)

    def check_ids(self, raw: np.ndarray, path: Path) -> None:
        """Refuse a label holding ids this dataset does not define (they would train as nothing)."""
        if raw.dtype.kind not in "iu" or not raw.size or raw.min() < 0 or raw.max() > 255:
            return  # not 8-bit values: apply_lut names the problem
        present = np.bincount(raw.astype(np.uint8, copy=False).ravel(), minlength=256) > 0
        bad = np.flatnonzero(present & ~self.known_ids)
        if bad.size:
            known = np.flatnonzero(self.known_ids)
            raise DatasetError(f"label {path} holds ids {bad[:8].tolist()}{' ...' if bad.size > 8 else ''} that "
                               f"{self.name} does not define (it knows {known.min()}..{known[-2]} and 255); "
                               f"wrong label files (e.g. colour or train-id PNGs) or the wrong --dataset?")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        item = self.items[index]
        image = read_image(item.image)
        mask = self.load_label(index)
        if mask is not None and mask.shape != image.shape[:2]:
            raise DatasetError(f"size mismatch: image {item.image} is {image.shape[1]}x{image.shape[0]} "
                               f"but label {item.label} is {mask.shape[1]}x{mask.shape[0]} (WxH); "
                               f"the pair does not belong together, fix or remove it")
        return image, mask

    def __getitem__(self, key) -> dict:
        index, centroid = unpack_key(key)
        image, mask = self.load(index)
        image_t, mask_t = self.transform(image, mask, centroid)
        out = {"image": image_t, "name": self.items[index].name}
        if mask_t is not None:
            out["mask"] = mask_t
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={str(self.root)!r})"


def check_label_sample(dataset: SegmentationDataset, count: int = 16) -> None:
    """At start-up: ``count`` labels spread over the dataset (all of them in a split of at most
    ``count`` images) must hold some class, not only ignored pixels (labels of another dataset map
    to nothing and train on a loss of 0)."""
    paths = [p for p in dataset.label_paths if p is not None]
    if not paths:
        return
    n = len(dataset)
    picks = list(range(n)) if n <= count else sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
    labelled = [i for i in picks if dataset.items[i].label is not None]
    if labelled and all(np.all(dataset.load_label(i) == dataset.ignore_index) for i in labelled):
        raise DatasetError(f"the {len(labelled)} labels sampled from {dataset.name} {dataset.split!r} under "
                           f"{dataset.root} hold only the ignore label {dataset.ignore_index}: no pixel maps to "
                           f"one of its {dataset.num_classes} classes; wrong label files or the wrong --dataset?")


def unpack_key(key) -> tuple[int, tuple[int, int] | None]:
    """``i`` or ``(i, centroid)`` (centroid ``(x, y)`` or ``None``) from the class-uniform sampler."""
    if isinstance(key, (tuple, list)):
        index, centroid = key
        if centroid is not None:
            centroid = (int(centroid[0]), int(centroid[1]))
        return int(index), centroid
    return int(key), None


def apply_lut(raw: np.ndarray, lut: np.ndarray | None, path: Path | None = None) -> np.ndarray:
    if lut is None:
        if raw.dtype != np.uint8:
            raise DatasetError(f"label {path} has dtype {raw.dtype}, expected uint8 class ids")
        return raw
    if raw.dtype != np.uint8:
        if raw.size and (int(raw.max()) >= len(lut) or int(raw.min()) < 0):
            raise DatasetError(f"label {path} holds ids outside 0..{len(lut) - 1}; wrong label files?")
        raw = raw.astype(np.intp)
    return lut[raw]


def env_root(root: str | os.PathLike | None, env: str, what: str) -> Path:
    """``root`` if given, else ``$env``; a clear error when neither is set."""
    if root is None:
        value = os.environ.get(env)
        if not value:
            raise DatasetError(f"no {what} root given: pass --dataset_root DIR or set the "
                               f"environment variable {env} to the dataset directory")
        root = value
    return require_dir(Path(root).expanduser(), f"{what} root", f"pass --dataset_root DIR or set {env}")
