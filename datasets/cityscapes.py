"""Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``.

The packaged layout (``leftImg8bit_trainvaltest/leftImg8bit``, ``gtFine_trainvaltest/gtFine``)
is accepted too. Cross-validation follows the reference: the cities of val
and train (each sorted) are concatenated as ``val + train``; split ``cv`` takes
as val the ``len(val cities)`` consecutive cities starting at
``cv * n_cities // 3``, so ``cv=0`` is the official train/val; ``cv=3`` (or
``split="trainval"``) uses every city for training.

Coarse data (``leftImg8bit/train_extra`` + ``gtCoarse/train_extra``, or the
packaged ``leftImg8bit_trainextra``/``gtCoarse/gtCoarse``): ``coarse=True`` adds
every coarse image to training; ``coarse_boost_classes=(...)`` follows the
reference: with class-uniform sampling the coarse images only supply centroids
of those classes (the uniform share and the epoch length stay fine-only);
without it they are ordinary training images.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets.base import Item, SegmentationDataset, Transform, env_root, missing_labels_error
from datasets.cityscapes_labels import (
    CLASS_NAMES,
    ID_TO_TRAINID,
    NUM_CLASSES,
    PALETTE,
    id_to_trainid_lut,
)
from datasets.errors import DatasetError

CV_SPLITS = 3
_IMG_DIRS = ("leftImg8bit", "leftImg8bit_trainvaltest/leftImg8bit")
_FINE_DIRS = ("gtFine", "gtFine_trainvaltest/gtFine")
_COARSE_IMG_DIRS = ("leftImg8bit", "leftImg8bit_trainextra/leftImg8bit")
_COARSE_GT_DIRS = ("gtCoarse", "gtCoarse/gtCoarse")
_SPLITS = ("train", "val", "test", "trainval")


def _first_dir(root: Path, candidates: tuple[str, ...], sub: str, what: str) -> Path:
    for cand in candidates:
        if (root / cand / sub).is_dir():
            return root / cand
    tried = ", ".join(str(root / c / sub) for c in candidates)
    raise DatasetError(f"Cityscapes {what} not found under {root} (tried {tried}); point "
                       f"--dataset_root (or $CITYSCAPES_ROOT) at the directory that holds leftImg8bit/ and gtFine/")


def _cities(base: Path, split: str) -> list[str]:
    return sorted(f"{split}/{d.name}" for d in (base / split).iterdir() if d.is_dir())


def cv_cities(img_base: Path, split: str, cv: int) -> list[str]:
    """The ``split/city`` directories of ``split`` ("train" or "val") in cross-validation fold ``cv``."""
    if not 0 <= cv <= CV_SPLITS:
        raise DatasetError(f"cv must be 0..{CV_SPLITS - 1} (or {CV_SPLITS} = train+val), got {cv}")
    val, trn = _cities(img_base, "val"), _cities(img_base, "train")
    everything = val + trn
    if cv == CV_SPLITS:
        return everything if split == "train" else []
    start = cv * len(everything) // CV_SPLITS
    in_val = [start <= j < start + len(val) for j in range(len(everything))]
    want_val = split == "val"
    return [c for c, v in zip(everything, in_val, strict=True) if v == want_val]


def find_items(img_base: Path, gt_base: Path, cities: list[str], gt_suffix: str,
               labels_required: bool = True) -> list[Item]:
    items, missing = [], []
    for city in cities:
        for img in sorted((img_base / city).glob("*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            label: Path | None = gt_base / city / f"{stem}{gt_suffix}"
            if label is not None and not label.is_file():
                if labels_required:
                    missing.append((img, label))
                label = None
            items.append(Item(img, label, stem))
    if missing:
        raise missing_labels_error(missing, "download/unpack the matching gtFine (or gtCoarse) archive, "
                                            "or remove the images without labels")
    return items


class Cityscapes(SegmentationDataset):
    """The 19-class Cityscapes benchmark (label ids mapped to train ids, 255 ignored)."""

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", cv: int = 0,
                 transform: Transform | None = None, coarse: bool = False,
                 coarse_boost_classes: tuple[int, ...] | list[int] | None = None,
                 custom_coarse_prob: float | None = None, custom_coarse_dropout_classes=None,
                 mask_out_cityscapes: bool = False,
                 env: str = "CITYSCAPES_ROOT", name: str = "cityscapes") -> None:
        if custom_coarse_prob is not None or custom_coarse_dropout_classes or mask_out_cityscapes:
            raise DatasetError("the reference's custom (auto-labelled) coarse data is not supported: drop "
                               "custom_coarse_prob / custom_coarse_dropout_classes / mask_out_cityscapes")
        if split not in _SPLITS:
            raise DatasetError(f"unknown Cityscapes split {split!r}; use one of {_SPLITS}")
        root = env_root(root, env, name)
        img_base = _first_dir(root, _IMG_DIRS, "train" if split != "test" else "test", "images")
        if split == "test":
            gt_base = next((root / c for c in _FINE_DIRS if (root / c / "test").is_dir()), root / "gtFine")
            items = find_items(img_base, gt_base, _cities(img_base, "test"), "_gtFine_labelIds.png",
                               labels_required=False)
        else:
            gt_base = _first_dir(root, _FINE_DIRS, "train", "fine labels (gtFine)")
            if split == "trainval":
                cities = cv_cities(img_base, "train", CV_SPLITS)
            else:
                cities = cv_cities(img_base, split, cv)
            items = find_items(img_base, gt_base, cities, "_gtFine_labelIds.png")
        boost_ids = tuple(coarse_boost_classes or ())
        boost = split in ("train", "trainval") and bool(boost_ids)
        num_fine = len(items)
        if boost or (coarse and split in ("train", "trainval")):
            items += _coarse_items(root)
        super().__init__(items, num_classes=NUM_CLASSES, class_names=CLASS_NAMES, palette=PALETTE,
                         label_lut=id_to_trainid_lut(), transform=transform, root=root, split=split, name=name,
                         known_ids=sorted(ID_TO_TRAINID))
        self.cv = cv
        if boost and not coarse:  # the reference's COARSE_BOOST_CLASSES
            bad = [c for c in boost_ids if not 0 <= int(c) < NUM_CLASSES]
            if bad:
                raise DatasetError(f"coarse_boost_classes must be train ids 0..{NUM_CLASSES - 1}, got {bad}")
            self.num_primary = num_fine
            self.boost_classes = tuple(int(c) for c in boost_ids)


def _coarse_items(root: Path) -> list[Item]:
    img_base = _first_dir(root, _COARSE_IMG_DIRS, "train_extra", "coarse images (leftImg8bit/train_extra)")
    gt_base = _first_dir(root, _COARSE_GT_DIRS, "train_extra", "coarse labels (gtCoarse/train_extra)")
    return find_items(img_base, gt_base, _cities(img_base, "train_extra"), "_gtCoarse_labelIds.png")
