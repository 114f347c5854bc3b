"""What a dataset's classes are: names, colours, ignore index, root variable, normalisation.

The one place that answers "how many classes, called what, drawn in which colours" for a
dataset name or a checkpoint, so that nothing outside ``datasets/`` decides class counts or
palettes by dataset name. A new dataset registers its facts here with :func:`register_info`.

    info = dataset_info("cityscapes")          # 19 classes, CITYSCAPES_ROOT
    info = info_for_checkpoint(ckpt)           # what a checkpoint was trained on
    ckpt["dataset_info"] = info.to_dict()      # plain JSON-able dict; DatasetInfo.from_dict(d)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from datasets import cityscapes_labels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DATASET = "cityscapes"  # what a checkpoint without recorded classes is assumed to be (the reference's)
MAPILLARY_NUM_CLASSES = 65  # Vistas v1.2's evaluated classes, when its config.json is not at hand


@dataclass(frozen=True)
class ClassInfo:
    id: int  # train id: the value in label maps and the model's output channel
    name: str
    color: tuple[int, int, int]  # RGB


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's class table and input conventions (see module docstring)."""

    name: str
    classes: tuple[ClassInfo, ...]
    ignore_index: int = 255
    root_env: str | None = None  # e.g. "CITYSCAPES_ROOT"
    mean: tuple[float, ...] = IMAGENET_MEAN  # per input band, 0..1 scale (bands set: raster units)
    std: tuple[float, ...] = IMAGENET_STD
    bands: tuple[int, ...] | None = None  # raster bands used (0-based); None = RGB

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def palette(self) -> np.ndarray:
        """``(num_classes, 3)`` uint8 RGB."""
        return np.array([c.color for c in self.classes], np.uint8).reshape(-1, 3)

    @property
    def in_channels(self) -> int:
        return len(self.bands) if self.bands is not None else 3

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "classes": [[c.id, c.name, list(c.color)] for c in self.classes],
                "ignore_index": self.ignore_index, "root_env": self.root_env, "mean": list(self.mean),
                "std": list(self.std), "bands": None if self.bands is None else list(self.bands)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetInfo:
        classes = tuple(ClassInfo(int(i), str(n), _rgb(c)) for i, n, c in d["classes"])
        bands = d.get("bands")
        return cls(str(d["name"]), classes, int(d.get("ignore_index", 255)), d.get("root_env"),
                   tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
                   tuple(float(v) for v in d.get("std", IMAGENET_STD)),
                   None if bands is None else tuple(int(b) for b in bands))

    @classmethod
    def from_table(cls, name: str, names: tuple[str, ...] | list[str], palette: np.ndarray,
                   **fields: Any) -> DatasetInfo:
        classes = tuple(ClassInfo(i, n, _rgb(c)) for i, (n, c) in enumerate(zip(names, palette.tolist(), strict=True)))
        return cls(name, classes, **fields)

    @classmethod
    def generic(cls, num_classes: int, name: str = "unknown") -> DatasetInfo:
        """Classes ``class_0..`` in generated colours (19 classes: Cityscapes', as the reference)."""
        return cls.from_table(name, default_class_names(num_classes), default_palette(num_classes))


def _rgb(color: Any) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in color)
    return (r, g, b)


# ----------------------------------------------------------------------------- registry

_INFOS: dict[str, Callable[..., DatasetInfo]] = {}
_ROOT_ENVS: dict[str, str] = {}


def register_info(name: str, root_env: str | None = None
                  ) -> Callable[[Callable[..., DatasetInfo]], Callable[..., DatasetInfo]]:
    """Decorator: ``fn(root, **opts) -> DatasetInfo`` answers for dataset ``name``; ``root_env`` is
    the environment variable holding its root (declared here, so that reading it stays cheap)."""

    def wrap(fn: Callable[..., DatasetInfo]) -> Callable[..., DatasetInfo]:
        _INFOS[name] = fn
        if root_env:
            _ROOT_ENVS[name] = root_env
        return fn

    return wrap


def dataset_info(name: str, root: str | os.PathLike | None = None, **opts: Any) -> DatasetInfo:
    """The class table of dataset ``name`` (``root`` only where classes are read from the data)."""
    try:
        fn = _INFOS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(_INFOS))}") from None
    info = fn(root, **opts)
    return replace(info, root_env=_ROOT_ENVS[name]) if info.root_env is None and name in _ROOT_ENVS else info


def root_env_vars() -> tuple[str, ...]:
    """Every dataset's root environment variable (what a job must inherit). Reads the
    registrations only: no class table is loaded, so ``python -m sbatch`` never imports torch."""
    return tuple(_ROOT_ENVS[name] for name in sorted(_ROOT_ENVS))


def info_for_checkpoint(ckpt: Mapping[str, Any] | None, dataset: str | None = None,
                        num_classes: int | None = None) -> DatasetInfo:
    """The class table to use with a checkpoint: the one class-count rule.

    In order: an explicit ``num_classes`` (with ``dataset``'s names when the counts agree); the
    checkpoint's recorded ``dataset_info``; its ``num_classes``; ``dataset``; else Cityscapes.
    """
    ckpt = ckpt or {}
    if num_classes is None and ckpt.get("dataset_info"):
        return DatasetInfo.from_dict(ckpt["dataset_info"])
    n = num_classes or ckpt.get("num_classes")
    info = dataset_info(dataset or DEFAULT_DATASET)
    if n is None or int(n) == info.num_classes:
        return info
    return DatasetInfo.generic(int(n), dataset or "unknown")


# ----------------------------------------------------------------------------- datasets

def _cityscapes_like(name: str) -> DatasetInfo:
    return DatasetInfo.from_table(name, cityscapes_labels.CLASS_NAMES, cityscapes_labels.PALETTE)


@register_info("cityscapes", root_env="CITYSCAPES_ROOT")
def _cityscapes(root: str | os.PathLike | None = None, **_: Any) -> DatasetInfo:
    del root  # the class table is the official one, whatever the root
    return _cityscapes_like("cityscapes")


@register_info("synthetic", root_env="SYNTHETIC_ROOT")
def _synthetic(root: str | os.PathLike | None = None, **_: Any) -> DatasetInfo:
    del root
    return _cityscapes_like("synthetic")


@register_info("mapillary", root_env="MAPILLARY_ROOT")
def _mapillary(root: str | os.PathLike | None = None, **_: Any) -> DatasetInfo:
    """Classes from the dataset's ``config.json`` when the root is known, else 65 generic ones."""
    from datasets.mapillary import load_config

    where = Path(root if root is not None else os.environ.get("MAPILLARY_ROOT") or "/nonexistent").expanduser()
    if root is None and not any((where / c).is_file() for c in ("config.json", "config_v1.2.json")):
        return DatasetInfo.generic(MAPILLARY_NUM_CLASSES, "mapillary")
    names, colors, _lut = load_config(where)
    return DatasetInfo.from_table("mapillary", names, colors)


@register_info("folder")
def _folder(root: str | os.PathLike | None = None, num_classes: int = 19, **_: Any) -> DatasetInfo:
    """Unlabelled images: as many generic classes as the model has."""
    del root
    return DatasetInfo.generic(num_classes, "folder")


# ----------------------------------------------------------------------------- generic tables

def default_palette(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 RGB: Cityscapes' colours for 19 classes, else a generated one."""
    if num_classes == len(cityscapes_labels.PALETTE):
        return np.asarray(cityscapes_labels.PALETTE, dtype=np.uint8).copy()
    return _bit_palette(num_classes)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes == len(cityscapes_labels.CLASS_NAMES):
        return tuple(cityscapes_labels.CLASS_NAMES)
    return tuple(f"class_{i}" for i in range(num_classes))


def _bit_palette(num_classes: int) -> np.ndarray:
    """Distinct colours by spreading the bits of the class id over R, G and B (PASCAL VOC's scheme)."""
    out = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        cid, rgb = c, [0, 0, 0]
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((cid >> ch) & 1) << shift
            cid >>= 3
        out[c] = rgb
    return out
