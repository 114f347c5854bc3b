"""``dataset.yaml``: a dataset described by a file instead of Python code.

    name: roofs                       # optional; default: the folder's name
    classes:                          # train ids are the positions in this list
      - {id: 0, name: background, color: [0, 0, 0]}
      - {id: 1, name: roof, color: [200, 0, 0]}
    ignore_index: 255                 # label value (ids) that is ignored; optional
    ignore_color: [255, 255, 255]     # label colour (rgb) that is ignored; optional
    label_encoding: ids               # ids: label pixels hold class ids; rgb: class colours
    images: images/{split}/*.png      # glob under the root; {split} = the split's folder name
    labels: labels/{split}/{stem}.png # the label of each image; {stem} = image name without extension
    splits: {train: train, val: val.txt}  # a folder name for {split}, or a list file of image paths
    mean: [0.485, 0.456, 0.406]       # optional, RGB on a 0..1 scale; default: dataset_stats.json's
    std: [0.229, 0.224, 0.225]        # (python -m datasets.check --write_stats), else ImageNet's
    raster:                           # optional: images are GeoTIFFs with N bands, labels one band
      bands: [0, 1, 2, 3, 4, 5]       # zero-based bands to use (the model takes len(bands) channels)
      mean: [...]                     # per band, raster units (python -m datasets.check --write_stats)
      std: [...]
      tile: 512                       # training samples per raster: one per tile x tile cell

Every problem is one :class:`DatasetConfigError` line naming the file and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.errors import DatasetConfigError
from datasets.info import IMAGENET_MEAN, IMAGENET_STD, ClassInfo, DatasetInfo, register_info

CONFIG_NAME = "dataset.yaml"
STATS_NAME = "dataset_stats.json"  # written by `python -m datasets.check --write_stats`
ENCODINGS = ("ids", "rgb")
KEYS = ("name", "classes", "ignore_index", "ignore_color", "label_encoding", "images", "labels",
        "splits", "mean", "std", "raster")
RASTER_KEYS = ("bands", "mean", "std", "tile")


@dataclass(frozen=True)
class RasterSpec:
    bands: tuple[int, ...]
    mean: tuple[float, ...] | None  # raster units; None until measured
    std: tuple[float, ...] | None
    tile: int = 512


@dataclass(frozen=True)
class DatasetSpec:
    """A validated ``dataset.yaml``; paths resolved against ``root``."""

    root: Path
    path: Path  # the yaml file
    name: str
    classes: tuple[ClassInfo, ...]  # ids as in the label files; train ids are the positions
    ignore_value: int | None
    ignore_color: tuple[int, int, int] | None
    encoding: str
    images: str
    labels: str
    splits: dict[str, str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    raster: RasterSpec | None

    def info(self) -> DatasetInfo:
        """The :class:`DatasetInfo` that travels in checkpoints (mean/std in raster units for rasters)."""
        r = self.raster
        mean = self.mean if r is None else r.mean or (0.0,) * len(r.bands)
        std = self.std if r is None else r.std or (1.0,) * len(r.bands)
        classes = tuple(ClassInfo(i, c.name, c.color) for i, c in enumerate(self.classes))  # train ids
        return DatasetInfo(self.name, classes, 255, None, tuple(mean), tuple(std), None if r is None else r.bands)

    def split_source(self, split: str) -> str:
        if split not in self.splits:
            raise DatasetConfigError(f"{self.path}: field 'splits' has no split {split!r} (it has "
                                     f"{', '.join(self.splits) or 'none'}); add it, e.g. {split}: {split}")
        return self.splits[split]


def find_config(root: str | os.PathLike | None, config: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(root, yaml path)`` from ``--dataset_root`` and/or ``--dataset_config``."""
    if config is not None:
        path = Path(config).expanduser()
        if not path.is_file():
            raise DatasetConfigError(f"--dataset_config {path}: no such file")
        return (Path(root).expanduser() if root else path.parent), path
    if root is None:
        raise DatasetConfigError("--dataset custom needs --dataset_root DIR (holding dataset.yaml) "
                                 "or --dataset_config FILE")
    root = Path(root).expanduser()
    if not (root / CONFIG_NAME).is_file():
        raise DatasetConfigError(f"--dataset_root {root}: no {CONFIG_NAME} there; write one (see README, "
                                 "'Your own data') or pass --dataset_config FILE")
    return root, root / CONFIG_NAME


def load_spec(root: str | os.PathLike | None = None, config: str | os.PathLike | None = None) -> DatasetSpec:
    """Read and validate ``dataset.yaml`` (plus the measured band statistics, if any)."""
    import yaml

    root, path = find_config(root, config)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DatasetConfigError(f"{path}: not readable YAML ({' '.join(str(e).split())})") from e
    if not isinstance(data, dict):
        raise DatasetConfigError(f"{path}: expected a mapping of fields ({', '.join(KEYS)}), got "
                                 f"{type(data).__name__}")
    return _Reader(path).spec(root, data, _read_stats(path))


@register_info("custom")
def _custom_info(root: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                 **_: Any) -> DatasetInfo:
    """Described by ``root/dataset.yaml`` (or ``config``): the class table of :func:`load_spec`."""
    return load_spec(root, config).info()


def _read_stats(path: Path) -> dict[str, Any]:
    stats = path.with_name(STATS_NAME)
    if not stats.is_file():
        return {}
    try:
        return dict(json.loads(stats.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise DatasetConfigError(f"{stats}: unreadable ({e}); rerun python -m datasets.check "
                                 "--write_stats or delete it") from e


class _Reader:
    """Field readers: each failure names ``file: field``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, must: str, value: Any) -> DatasetConfigError:
        return DatasetConfigError(f"{self.path}: field '{field}' must be {must}, got {value!r}")

    def unknown(self, data: dict, keys: tuple[str, ...], where: str) -> None:
        extra = sorted(str(k) for k in data if k not in keys)
        if extra:
            raise DatasetConfigError(f"{self.path}: unknown field '{where}{extra[0]}'; valid fields: "
                                     f"{', '.join(keys)}")

    def get(self, data: dict, field: str, check: Callable[[Any], Any], must: str, default: Any = ...) -> Any:
        if field.split(".")[-1] not in data:
            if default is ...:
                raise DatasetConfigError(f"{self.path}: missing field '{field}' ({must})")
            return default
        value = data[field.split(".")[-1]]
        try:
            return check(value)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
            raise self.fail(field, must, value) from e

    def spec(self, root: Path, data: dict, stats: dict[str, Any]) -> DatasetSpec:
        self.unknown(data, KEYS, "")
        classes = self.classes(data)
        encoding = self.get(data, "label_encoding", lambda v: _choice(v, ENCODINGS), "ids or rgb", "ids")
        raster = self.raster(data["raster"], stats) if "raster" in data else None
        if raster is not None and encoding != "ids":
            raise self.fail("label_encoding", "ids for rasters (one band of class ids)", encoding)
        ext = ".tif" if raster else ".png"
        mean, std = self.rgb_stats(data, stats if raster is None else {})
        return DatasetSpec(
            root=root, path=self.path, name=self.get(data, "name", _name, "a non-empty name", root.resolve().name),
            classes=classes,
            ignore_value=self.get(data, "ignore_index", lambda v: _int(v, 0, 65535), "an integer 0..65535", 255),
            ignore_color=self.get(data, "ignore_color", _color, "[r, g, b] integers 0..255", None),
            encoding=encoding,
            images=self.get(data, "images", _pattern, "a glob under the root", f"images/{{split}}/*{ext}"),
            labels=self.get(data, "labels", _label_pattern, "a path pattern with {stem}",
                            f"labels/{{split}}/{{stem}}{'.tif' if raster else '.png'}"),
            splits=self.get(data, "splits", _splits, "a mapping split: folder name or list file",
                            {"train": "train", "val": "val"}),
            mean=mean, std=std, raster=raster)

    def rgb_stats(self, data: dict, stats: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Photos' mean/std: dataset.yaml's; else those ``datasets.check --write_stats`` measured
        (when neither is in dataset.yaml); else ImageNet's."""
        measured = stats.get("unit") == "rgb 0..1" and stats.get("bands") == [0, 1, 2]
        if measured and "mean" not in data and "std" not in data:
            return tuple(float(v) for v in stats["mean"]), tuple(float(v) for v in stats["std"])
        return (self.get(data, "mean", lambda v: _floats(v, 3), "three numbers (0..1 scale)", IMAGENET_MEAN),
                self.get(data, "std", lambda v: _floats(v, 3, positive=True), "three positive numbers",
                         IMAGENET_STD))

    def classes(self, data: dict) -> tuple[ClassInfo, ...]:
        items = self.get(data, "classes", _list, "a list of {id, name, color}")
        if not items or len(items) > 255:
            raise self.fail("classes", "a list of 1..255 {id, name, color} entries", items)
        out = []
        for i, item in enumerate(items):
            f = f"classes[{i}]"
            if not isinstance(item, dict):
                raise self.fail(f, "a mapping {id, name, color}", item)
            self.unknown(item, ("id", "name", "color"), f"{f}.")
            out.append(ClassInfo(self.get(item, f"{f}.id", lambda v: _int(v, 0, 65535), "an integer 0..65535", i),
                                 self.get(item, f"{f}.name", _name, "a non-empty name"),
                                 self.get(item, f"{f}.color", _color, "[r, g, b] integers 0..255")))
        self.distinct(out)
        return tuple(out)

    def distinct(self, classes: list[ClassInfo]) -> None:
        for what in ("id", "name", "color"):
            seen: dict[Any, int] = {}
            for i, c in enumerate(classes):
                v = getattr(c, what)
                if v in seen:
                    raise self.fail(f"classes[{i}].{what}", f"unique (classes[{seen[v]}] has it too)", v)
                seen[v] = i

    def raster(self, data: Any, stats: dict[str, Any]) -> RasterSpec:
        if not isinstance(data, dict):
            raise self.fail("raster", "a mapping with bands, mean, std, tile", data)
        self.unknown(data, RASTER_KEYS, "raster.")
        bands = self.get(data, "raster.bands", _bands, "a list of distinct zero-based band indices")
        n = len(bands)
        mean = self.get(data, "raster.mean", lambda v: _floats(v, n), f"{n} numbers (one per band)", None)
        std = self.get(data, "raster.std", lambda v: _floats(v, n, positive=True), f"{n} positive numbers", None)
        if mean is None and std is None and stats.get("bands") == list(bands):
            mean, std = tuple(stats["mean"]), tuple(stats["std"])
        tile = self.get(data, "raster.tile", lambda v: _int(v, 16, 1 << 20), "an integer >= 16", 512)
        return RasterSpec(bands, mean, std, tile)


def _choice(v: Any, options: tuple[str, ...]) -> str:
    if v not in options:
        raise ValueError(v)
    return str(v)


def _int(v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(v)
    return int(v)


def _name(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(v)
    return v.strip()


def _list(v: Any) -> list:
    if not isinstance(v, list):
        raise TypeError(v)
    return v


def _color(v: Any) -> tuple[int, int, int]:
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise ValueError(v)
    r, g, b = (_int(c, 0, 255) for c in v)
    return r, g, b


def _floats(v: Any, n: int, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise ValueError(v)
    out = tuple(float(x) for x in v if not isinstance(x, (bool, str)))
    if len(out) != n or (positive and any(x <= 0 for x in out)):
        raise ValueError(v)
    return out


def _bands(v: Any) -> tuple[int, ...]:
    out = tuple(_int(b, 0, 1 << 16) for b in _list(v))
    if not out or len(set(out)) != len(out):
        raise ValueError(v)
    return out


def _pattern(v: Any) -> str:
    if not isinstance(v, str) or not v or Path(v).is_absolute() or ".." in Path(v).parts:
        raise ValueError(v)
    return v


def _label_pattern(v: Any) -> str:
    if "{stem}" not in _pattern(v):
        raise ValueError(v)
    v.format(stem="x", split="y")  # only {stem} and {split}
    return v


def _splits(v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not v:
        raise ValueError(v)
    return {_name(k): _pattern(s) for k, s in v.items()}
