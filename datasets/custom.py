"""``--dataset custom``: images + label files found through ``dataset.yaml`` (see datasets/spec.py).

Labels hold class ids (mapped to train ids through the class table) or RGB colours
(mapped through the class colours). Values outside the table become the ignore label
(``python -m datasets.check`` lists them). Rasters (a ``raster:`` section) go to
:mod:`datasets.raster_pairs`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.base import Item, SegmentationDataset, Transform, missing_labels_error, read_label
from datasets.errors import DatasetConfigError, DatasetError
from datasets.info import IMAGENET_MEAN, IMAGENET_STD
from datasets.spec import DatasetSpec

IGNORE = 255


@dataclass(frozen=True)
class LabelDecoder:
    """A label file -> uint8 train ids (255 ignored). Picklable: centroid workers use it too."""

    encoding: str  # "ids" or "rgb"
    ids: tuple[int, ...]  # the label value (ids) of each train id
    colors: tuple[tuple[int, int, int], ...]
    ignore_value: int | None = None
    ignore_color: tuple[int, int, int] | None = None

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> LabelDecoder:
        return cls(spec.encoding, tuple(c.id for c in spec.classes), tuple(c.color for c in spec.classes),
                   spec.ignore_value, spec.ignore_color)

    def cache_key(self) -> str:
        return repr(self)

    def read_raw(self, path: Path) -> np.ndarray:
        if self.encoding == "ids":
            return read_label(path)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"cannot read label {path}: {e}; re-export or remove this file") from e

    def decode(self, raw: np.ndarray, path: Path | None = None) -> np.ndarray:
        """Train ids of a raw label array (ids: (H, W) integers; rgb: (H, W, 3) uint8)."""
        if self.encoding == "rgb":
            if raw.ndim != 3 or raw.shape[2] != 3:
                raise DatasetError(f"label {path} has shape {raw.shape}; label_encoding rgb needs RGB images")
            code = rgb_code(raw)
            return _lookup(code, [rgb_int(c) for c in self.colors])
        if raw.ndim != 2:
            raise DatasetError(f"label {path} has shape {raw.shape}, expected one channel of class ids; "
                               "set label_encoding: rgb in dataset.yaml for colour labels")
        out = _lookup(raw, self.ids)
        if self.ignore_value is not None:
            out[raw == self.ignore_value] = IGNORE
        return out

    def __call__(self, path: Path) -> np.ndarray:
        return self.decode(self.read_raw(Path(path)), path)


def rgb_code(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int32 ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def rgb_int(color: tuple[int, int, int]) -> int:
    return (color[0] << 16) | (color[1] << 8) | color[2]


def _lookup(values: np.ndarray, keys: list[int] | tuple[int, ...]) -> np.ndarray:
    """Position of each value in ``keys`` (uint8), 255 where it is not a key."""
    order = np.argsort(keys)
    sorted_keys = np.asarray(keys, np.int64)[order]
    idx = np.searchsorted(sorted_keys, values).clip(0, len(keys) - 1)
    found = sorted_keys[idx] == values
    return np.where(found, order[idx], IGNORE).astype(np.uint8)


@dataclass(frozen=True)
class CentroidFn:
    """Class centroids of one label file, for the class-uniform sampler's cache."""

    decoder: LabelDecoder

    def cache_key(self) -> str:
        return self.decoder.cache_key()

    def __call__(self, path: str, num_classes: int, tile: int) -> np.ndarray:
        from datasets.centroids import class_centroids

        return class_centroids(self.decoder(Path(path)), num_classes, tile)


def find_items(spec: DatasetSpec, split: str, labels_required: bool = True) -> list[Item]:
    """The split's (image, label) pairs, from a folder glob or a list file."""
    source = spec.split_source(split)
    if source.endswith(".txt"):
        images = _list_file(spec, source)
        folder = split
    else:
        pattern = spec.images.format(split=source)
        images = sorted(p for p in spec.root.glob(pattern) if p.is_file())
        folder = source
        if not images:
            raise DatasetError(f"no images match {spec.root / pattern} (split {split!r}); check 'images' "
                               f"and 'splits' in {spec.path}")
    items, missing = [], []
    for img in images:
        label = spec.root / spec.labels.format(split=folder, stem=img.stem)
        if not label.is_file():
            missing.append((img, label))
        items.append(Item(img, label if label.is_file() else None, img.stem))
    if missing and labels_required:
        raise missing_labels_error(missing, f"add the label files, or fix 'labels' in {spec.path}")
    return items


def labelled(item: Item) -> Path:
    """The label path of an item that must have one."""
    if item.label is None:
        raise DatasetError(f"{item.image} has no label file")
    return item.label


def _list_file(spec: DatasetSpec, source: str) -> list[Path]:
    path = spec.root / source
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetConfigError(f"{spec.path}: field 'splits': cannot read list file {path} ({e})") from e
    images = [spec.root / ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    absent = [str(p) for p in images if not p.is_file()]
    if absent:
        raise DatasetError(f"{len(absent)} image(s) listed in {path} do not exist (e.g. {absent[0]}); "
                           "list paths relative to the dataset root")
    if not images:
        raise DatasetError(f"list file {path} names no images")
    return images


class CustomDataset(SegmentationDataset):
    """Image files with class-id or colour labels, described by ``dataset.yaml``."""

    def __init__(self, spec: DatasetSpec, split: str = "train", transform: Transform | None = None,
                 labels_required: bool = True) -> None:
        self.spec = spec
        info = spec.info()
        super().__init__(find_items(spec, split, labels_required), num_classes=info.num_classes,
                         class_names=info.class_names, palette=info.palette, label_lut=None,
                         transform=_with_stats(transform, spec), root=spec.root, split=split, name=spec.name)
        self.decoder = LabelDecoder.from_spec(spec)
        self.centroid_fn = CentroidFn(self.decoder)

    def load_label(self, index: int) -> np.ndarray | None:
        path = self.items[index].label
        return None if path is None else self.decoder(path)


def _with_stats(transform: Transform | None, spec: DatasetSpec) -> Transform | None:
    """The transform normalising with the dataset's mean/std (when they are not ImageNet's)."""
    if (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD) or transform is None:
        return transform
    if dataclasses.is_dataclass(transform) and hasattr(transform, "mean"):
        return dataclasses.replace(transform, mean=spec.mean, std=spec.std)
    return transform

