"""Mapillary Vistas v1.2: ``{training,validation,testing}/images/*.jpg``, ``.../labels/*.png``.

The class table comes from the dataset's ``config.json`` (``labels``: name,
readable, color, evaluate). Every label with ``evaluate`` true (all but
"Unlabeled" in v1.2: 65 classes) gets a train id in file order; the others
map to the ignore label 255. Labels are 8-bit index PNGs. The v2.0 package's
v1.2 view (``config_v1.2.json``, ``<split>/v1.2/labels``) is accepted too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from datasets.base import Item, SegmentationDataset, Transform, env_root, missing_labels_error
from datasets.errors import DatasetError

_SPLIT_DIRS = {"train": "training", "val": "validation", "test": "testing"}
_CONFIGS = ("config.json", "config_v1.2.json")
_LABEL_DIRS = ("labels", "v1.2/labels")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _known_ids(root: Path) -> range:
    """Every label id of config.json (evaluated or not) may appear in a label PNG."""
    path = next((root / c for c in _CONFIGS if (root / c).is_file()), root / _CONFIGS[0])
    return range(len(json.loads(path.read_text())["labels"]))


def load_config(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse ``config.json``: ``(class_names, palette (K, 3) uint8, lut (256,) uint8)``."""
    path = next((root / c for c in _CONFIGS if (root / c).is_file()), root / _CONFIGS[0])
    try:
        labels = json.loads(path.read_text())["labels"]
        entries = [(str(lb.get("readable", lb["name"])), tuple(lb["color"]), bool(lb.get("evaluate", True)))
                   for lb in labels]
    except FileNotFoundError as e:
        raise DatasetError(f"Mapillary class table not found: {path}; the dataset root must hold "
                           f"config.json from the Mapillary Vistas download") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"cannot parse Mapillary class table {path} ({e!r}); expected "
                           f'{{"labels": [{{"name", "readable", "color", "evaluate"}}, ...]}}') from e
    if len(entries) > 256:
        raise DatasetError(f"{path} lists {len(entries)} labels; index PNGs hold at most 256")
    lut = np.full(256, 255, np.uint8)
    names: list[str] = []
    colors: list[tuple[int, ...]] = []
    for label_id, (name, color, evaluate) in enumerate(entries):
        if evaluate:
            lut[label_id] = len(names)
            names.append(name)
            colors.append(color)
    return names, np.array(colors, np.uint8).reshape(-1, 3), lut


def _find_items(root: Path, split: str) -> list[Item]:
    split_dir = root / _SPLIT_DIRS[split]
    img_dir = split_dir / "images"
    if not img_dir.is_dir():
        raise DatasetError(f"Mapillary images not found: {img_dir}; point root (or $MAPILLARY_ROOT) at "
                           f"the directory holding config.json, training/ and validation/")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if split == "test":
        return [Item(p, None, p.stem) for p in images]
    label_dir = next((split_dir / d for d in _LABEL_DIRS if (split_dir / d).is_dir()), None)
    if label_dir is None:
        raise DatasetError(f"Mapillary labels not found: {split_dir / 'labels'}; unpack the labels of "
                           f"the {_SPLIT_DIRS[split]} split next to its images")
    items, missing = [], []
    for img in images:
        label = label_dir / f"{img.stem}.png"
        if label.is_file():
            items.append(Item(img, label, img.stem))
        else:
            missing.append((img, label))
    if missing:
        raise missing_labels_error(missing, "unpack the complete Mapillary label archive, or remove "
                                            "the images without labels")
    return items


class Mapillary(SegmentationDataset):
    """Mapillary Vistas v1.2 (65 evaluated classes, "Unlabeled" ignored).

    ``pre_size`` (used only when ``transform`` is None) resizes the long edge for
    evaluation, as the reference does (it evaluates at 2177).
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 transform: Transform | None = None, pre_size: int | None = None) -> None:
        from datasets.transforms import build_eval_transform

        if split not in _SPLIT_DIRS:
            raise DatasetError(f"unknown Mapillary split {split!r}; use one of {tuple(_SPLIT_DIRS)}")
        root = env_root(root, "MAPILLARY_ROOT", "mapillary")
        names, palette, lut = load_config(root)
        if transform is None:
            transform = build_eval_transform(pre_size)
        super().__init__(_find_items(root, split), num_classes=len(names), class_names=names,
                         palette=palette, label_lut=lut, transform=transform, root=root, split=split,
                         name="mapillary", known_ids=_known_ids(root))
