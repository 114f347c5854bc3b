"""Multi-band GeoTIFF image/mask pairs as training data, read window by window.

A raster is never read whole. Each raster is cut into ``tile x tile`` cells (``raster.tile`` in
dataset.yaml); every cell is one sample of an epoch. A training sample reads one window of
``ceil(crop / scale_min)`` pixels around a random point of its cell (or around a class centroid
from the class-uniform sampler), so the random scale-and-crop of :class:`TrainTransform` always
has the pixels it needs; memory depends on the crop, not on the raster. Evaluation reads the
cells themselves (edge cells padded with the ignore label).

Bands are normalised here with the per-band mean/std of dataset.yaml (raster units, measured by
``python -m datasets.check --write_stats``); nodata pixels become 0 and are ignored in the loss.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.base import Item, unpack_key
from datasets.custom import IGNORE, LabelDecoder, find_items, labelled
from datasets.errors import DatasetConfigError, DatasetError
from datasets.spec import DatasetSpec, RasterSpec


@dataclass(frozen=True)
class RasterPair:
    item: Item
    height: int
    width: int
    nodata: float | None


GDAL_CACHE_MB = "64"  # GDAL's block cache defaults to 5% of RAM per process (and per loader worker)


def limit_gdal_cache() -> None:
    """Cap GDAL's block cache unless the user set ``GDAL_CACHEMAX`` (read when GDAL first caches)."""
    os.environ.setdefault("GDAL_CACHEMAX", GDAL_CACHE_MB)


def _open(path: Path):
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as e:
        raise DatasetError(f"cannot open raster {path}: {e}; fix or remove it") from e


def inspect_pair(item: Item, bands: tuple[int, ...]) -> RasterPair:
    """Header checks of one image/mask pair: bands present, sizes equal, mask has one band."""
    with _open(item.image) as src, _open(labelled(item)) as msk:
        if max(bands) >= src.count:
            raise DatasetConfigError(f"field 'raster.bands' {list(bands)}: {item.image} has only "
                                     f"{src.count} band(s) (0..{src.count - 1})")
        if (msk.height, msk.width) != (src.height, src.width) or msk.count != 1:
            raise DatasetError(f"size mismatch: image {item.image} is {src.width}x{src.height} but mask "
                               f"{item.label} is {msk.width}x{msk.height} with {msk.count} band(s); "
                               "masks must be one band of the image's size")
        return RasterPair(item, src.height, src.width, src.nodata)


def require_stats(spec: DatasetSpec) -> RasterSpec:
    r = spec.raster
    assert r is not None
    if r.mean is None or r.std is None:
        raise DatasetConfigError(f"{spec.path}: field 'raster.mean'/'raster.std' missing: measure them with "
                                 f"python -m datasets.check --dataset_root {spec.root} --write_stats")
    return r


@dataclass(frozen=True)
class RasterCentroids:
    """Class centroids of a mask raster, read strip by strip (one ``tile`` of rows at a time)."""

    decoder: LabelDecoder

    def cache_key(self) -> str:
        return "raster|" + self.decoder.cache_key()

    def __call__(self, path: str, num_classes: int, tile: int) -> np.ndarray:
        from rasterio.windows import Window

        from datasets.centroids import class_centroids

        rows = []
        with _open(Path(path)) as msk:
            for y in range(0, msk.height, tile):
                h = min(tile, msk.height - y)
                strip = self.decoder.decode(msk.read(1, window=Window(0, y, msk.width, h)), Path(path))
                c = class_centroids(strip, num_classes, tile).astype(np.int64)
                c[:, 2] += y
                rows.append(c)
        return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 3), np.int32)


class RasterDataset(torch.utils.data.Dataset):
    """Windows of GeoTIFF pairs; ``ds[i]`` / ``ds[(i, (x, y))]`` -> ``{"image", "mask", "name"}``."""

    ignore_index = IGNORE

    def __init__(self, spec: DatasetSpec, split: str = "train", transform: Any = None) -> None:
        from datasets.transforms import TrainTransform, build_eval_transform

        r = require_stats(spec)
        limit_gdal_cache()
        info = spec.info()
        self.spec, self.split, self.name, self.root = spec, split, spec.name, spec.root
        self.num_classes, self.class_names, self.palette = info.num_classes, info.class_names, info.palette
        self.bands, self.tile = r.bands, r.tile
        self.mean = np.asarray(r.mean, np.float32)[:, None, None]
        self.std = np.asarray(r.std, np.float32)[:, None, None]
        self.pairs = [inspect_pair(it, r.bands) for it in find_items(spec, split)]
        self.cells = [(k, y, x) for k, p in enumerate(self.pairs)
                      for y in range(0, p.height, r.tile) for x in range(0, p.width, r.tile)]
        self.transform = transform if transform is not None else build_eval_transform()
        self.train = isinstance(transform, TrainTransform)
        self.window = self._window_size(transform) if self.train else r.tile
        self.decoder = LabelDecoder.from_spec(spec)
        self.centroid_fn = RasterCentroids(self.decoder)
        self._handles: dict[Path, Any] = {}
        self._pid = os.getpid()

    @staticmethod
    def _window_size(transform: Any) -> int:
        return math.ceil(max(transform.crop_size) / transform.scale_min)

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def label_paths(self) -> list[Path]:
        """One per sample (cells of a raster share its mask: its centroids serve all of them)."""
        return [labelled(self.pairs[k].item) for k, _, _ in self.cells]

    @property
    def items(self) -> list[Item]:
        """One per sample: the raster pair its cell belongs to."""
        return [self.pairs[k].item for k, _, _ in self.cells]

    def load_label(self, index: int) -> np.ndarray:
        """Train ids of sample ``index``'s cell (one window of the mask)."""
        return self._cell(index)[1]

    def _cell(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        k, y, x = self.cells[index]
        p = self.pairs[k]
        return self.read_window(k, y, x, min(self.tile, p.height - y), min(self.tile, p.width - x))

    def __repr__(self) -> str:
        return f"RasterDataset(split={self.split!r}, rasters={len(self.pairs)}, samples={len(self)})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # open files never cross a process boundary
        return state

    def _handle(self, path: Path):
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own files
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            self._handles[path] = _open(path)
        return self._handles[path]

    def read_window(self, k: int, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 ``(h, w, C)`` bands and uint8 train ids of one window (clipped to the raster)."""
        from rasterio.windows import Window

        pair = self.pairs[k]
        win = Window(x0, y0, w, h)
        raw = self._handle(pair.item.image).read([b + 1 for b in self.bands], window=win)
        mask = self.decoder.decode(self._handle(labelled(pair.item)).read(1, window=win), pair.item.label)
        x = raw.astype(np.float32)
        invalid = ~np.isfinite(x).all(axis=0)
        if pair.nodata is not None and not np.isnan(pair.nodata):
            invalid |= (raw == pair.nodata).any(axis=0)
        x = (x - self.mean) / self.std
        x[:, invalid] = 0.0
        mask[invalid] = IGNORE
        return np.ascontiguousarray(np.nan_to_num(x).transpose(1, 2, 0)), mask

    def __getitem__(self, key) -> dict:
        index, centroid = unpack_key(key)
        k, cy, cx = self.cells[index]
        pair = self.pairs[k]
        name = f"{pair.item.name}_y{cy}_x{cx}"
        if not self.train:
            image, mask = _pad_to(*self._cell(index), self.tile)
            image_t, mask_t = self.transform(image, mask, None)
            return {"image": image_t, "mask": mask_t, "name": name}
        if centroid is None:  # a random point of this sample's cell
            centroid = (cx + int(torch.randint(min(self.tile, pair.width - cx), ())),
                        cy + int(torch.randint(min(self.tile, pair.height - cy), ())))
        h, w = min(self.window, pair.height), min(self.window, pair.width)
        y0 = min(max(centroid[1] - h // 2, 0), pair.height - h)
        x0 = min(max(centroid[0] - w // 2, 0), pair.width - w)
        image, mask = self.read_window(k, y0, x0, h, w)
        image_t, mask_t = self.transform(image, mask, (centroid[0] - x0, centroid[1] - y0))
        return {"image": image_t, "mask": mask_t, "name": name}


def _pad_to(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Edge cells padded to ``size x size`` (image 0 = the mean, mask ignored): batches stack."""
    ph, pw = size - image.shape[0], size - image.shape[1]
    if ph == 0 and pw == 0:
        return image, mask
    return (np.pad(image, ((0, ph), (0, pw), (0, 0))),
            np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE))
