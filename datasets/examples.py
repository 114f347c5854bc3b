"""Small generated datasets in the described layouts: for the tests, the bench and the README.

    python -m datasets.examples folder /tmp/mydata      # 5 classes, RGB-coded label PNGs
    python -m datasets.examples raster /tmp/myraster    # 6-band uint16 GeoTIFF + mask
    python -m datasets.examples cvat /tmp/cvat_export   # a CVAT "Segmentation mask 1.1" export

Each scene is a background with a few rectangles and ellipses; every class has its own
colour (per band for rasters) plus noise, so a tiny model learns something in a few steps.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from datasets.errors import DatasetError
from utils.errors import is_disk_full, run_cli
from utils.io import atomic_imwrite, atomic_write_text

PROG = "python -m datasets.examples"

CLASSES = (("background", (0, 0, 0)), ("building", (220, 40, 40)), ("road", (128, 128, 128)),
           ("tree", (30, 160, 60)), ("water", (40, 90, 220)))


def scene(h: int, w: int, rng: np.random.Generator, num_classes: int = 5) -> np.ndarray:
    """An ``(h, w)`` uint8 class-id map: background plus shapes of every other class."""
    label = np.zeros((h, w), np.uint8)
    for c in range(1, num_classes):
        for _ in range(int(rng.integers(1, 3))):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            a, b = int(rng.integers(w // 16 + 2, w // 5 + 3)), int(rng.integers(h // 16 + 2, h // 5 + 3))
            if rng.random() < 0.5:
                cv2.rectangle(label, (x - a, y - b), (x + a, y + b), c, -1)
            else:
                cv2.ellipse(label, (x, y), (a, b), 0, 0, 360, c, -1)
    return label


def render_rgb(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    colors = np.array([c for _, c in CLASSES], np.float32)
    img = colors[label] * 0.6 + 50 + rng.normal(0, 12, (*label.shape, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def yaml_classes(encoding: str) -> str:
    lines = [f"  - {{id: {i}, name: {n}, color: [{c[0]}, {c[1]}, {c[2]}]}}" for i, (n, c) in enumerate(CLASSES)]
    return f"label_encoding: {encoding}\nclasses:\n" + "\n".join(lines) + "\n"


def write_folder_dataset(root: str | os.PathLike, num_train: int = 6, num_val: int = 2,
                         size: tuple[int, int] = (64, 96), seed: int = 0) -> Path:
    """``images/{split}/*.jpg`` + RGB-coded ``labels/{split}/*.png`` + dataset.yaml."""
    root = Path(root)
    colors = np.array([c for _, c in CLASSES], np.uint8)
    for split, n in (("train", num_train), ("val", num_val)):
        for i in range(n):
            rng = np.random.default_rng([seed, len(split), i])
            label = scene(*size, rng)
            atomic_imwrite(root / "images" / split / f"{split}_{i:03d}.jpg", render_rgb(label, rng)[..., ::-1])
            atomic_imwrite(root / "labels" / split / f"{split}_{i:03d}.png", colors[label][..., ::-1])
    atomic_write_text(root / "dataset.yaml", f"name: {root.name}\n" + yaml_classes("rgb") +
                      "images: images/{split}/*.jpg\nlabels: labels/{split}/{stem}.png\n"
                      "splits: {train: train, val: val}\n")
    return root


def write_raster_pair(image: Path, mask: Path, size: tuple[int, int], bands: int = 6, seed: int = 0,
                      strip: int = 512) -> None:
    """A ``bands``-band uint16 GeoTIFF and its one-band uint8 mask (EPSG:32632), written by strips."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    h, w = size
    common = {"driver": "GTiff", "height": h, "width": w, "crs": "EPSG:32632", "compress": "deflate",
              "transform": from_origin(500000.0, 5300000.0, 10.0, 10.0)}
    if h >= 256 and w >= 256:
        common.update(tiled=True, blockxsize=256, blockysize=256)
    base = np.random.default_rng([seed, 99]).uniform(800, 6000, (len(CLASSES), bands))
    image.parent.mkdir(parents=True, exist_ok=True)
    mask.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(image, "w", count=bands, dtype="uint16", **common) as dst, \
            rasterio.open(mask, "w", count=1, dtype="uint8", **common) as dm:
        for y in range(0, h, strip):
            rng = np.random.default_rng([seed, y])
            label = scene(min(strip, h - y), w, rng)
            values = base[label] + rng.normal(0, 150, (*label.shape, bands))
            win = Window(0, y, w, label.shape[0])
            dst.write(np.clip(values, 0, 65535).astype(np.uint16).transpose(2, 0, 1), window=win)
            dm.write(label[None], window=win)


def write_raster_dataset(root: str | os.PathLike, size: tuple[int, int] = (128, 160), bands: int = 6,
                         tile: int = 64, seed: int = 0) -> Path:
    """One training and one validation raster pair, plus dataset.yaml (statistics not yet measured)."""
    root = Path(root)
    for k, split in enumerate(("train", "val")):
        write_raster_pair(root / "images" / split / f"scene_{split}.tif",
                          root / "labels" / split / f"scene_{split}.tif", size, bands, seed + k)
    atomic_write_text(root / "dataset.yaml", f"name: {root.name}\n" + yaml_classes("ids") +
                      "splits: {train: train, val: val}\n"
                      f"raster:\n  bands: {list(range(bands))}\n  tile: {tile}\n")
    return root


def write_cvat_export(out: str | os.PathLike, num_train: int = 6, num_val: int = 2,
                      size: tuple[int, int] = (64, 96), seed: int = 0) -> Path:
    """A CVAT "Segmentation mask 1.1" export: labelmap.txt, JPEGImages/, SegmentationClass/, ImageSets/."""
    out = Path(out)
    colors = np.array([c for _, c in CLASSES], np.uint8)
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{c[0]},{c[1]},{c[2]}::" for n, c in CLASSES]
    atomic_write_text(out / "labelmap.txt", "\n".join(lines) + "\n")
    for split, n in (("train", num_train), ("val", num_val)):
        stems = [f"frame_{split}_{i:04d}" for i in range(n)]
        for i, stem in enumerate(stems):
            rng = np.random.default_rng([seed, len(split), i])
            label = scene(*size, rng)
            atomic_imwrite(out / "JPEGImages" / f"{stem}.jpg", render_rgb(label, rng)[..., ::-1])
            atomic_imwrite(out / "SegmentationClass" / f"{stem}.png", colors[label][..., ::-1])
        atomic_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(stems) + "\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n")[0])
    p.add_argument("kind", choices=("folder", "raster", "cvat"))
    p.add_argument("out", type=Path)
    return p


def run(args: argparse.Namespace) -> int:
    """Write one example; a folder that cannot be written is the user's to fix (one line, exit 2)."""
    writers: dict[str, Callable[[Path], Path]] = {"folder": write_folder_dataset, "raster": write_raster_dataset,
                                                  "cvat": write_cvat_export}
    try:
        writers[args.kind](args.out)
    except OSError as e:
        if is_disk_full(e):
            raise
        raise DatasetError(f"{args.out}: cannot write the example there ({e.strerror or e}): "
                           "pass a writable directory") from e
    print(f"wrote a {args.kind} example to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)  # --debug: tracebacks too
    return run_cli(PROG, lambda: run(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    raise SystemExit(main())
