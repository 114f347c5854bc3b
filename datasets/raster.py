"""GeoTIFF inference: band selection, normalisation, blended sliding windows, georeferenced output.

A raster is processed one strip of tiles at a time: a strip of rows is read, its
tiles go through the model in batches, their logits are accumulated with a blending
weight that falls off towards each tile's edge, and every row that no later strip
overlaps is finalised (argmax, probabilities) and written to the output GeoTIFF.
Memory therefore scales with ``tile x width x classes``, not with the raster.

``rasterio`` is imported inside the functions so that the rest of the project runs
without it (it is the optional ``geo`` extra).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datasets.info import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError
from utils.io import atomic_path

IMAGENET_MEAN_255 = tuple(round(255.0 * v, 6) for v in IMAGENET_MEAN)  # (123.675, 116.28, 103.53)
IMAGENET_STD_255 = tuple(round(255.0 * v, 6) for v in IMAGENET_STD)  # (58.395, 57.12, 57.375)
LABEL_NODATA = 255

# (N, 3, h, w) normalised float tiles -> (N, K, h, w) float32 logits on the CPU
LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class GeoError(UserError, ValueError):
    """A raster or raster option that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class RasterOptions:
    bands: tuple[int, ...] | None = None  # zero-based; None: the first three (or the only one)
    band_mean: tuple[float, ...] | None = None  # in the raster's own units
    band_std: tuple[float, ...] | None = None
    tile: int = 1024
    overlap: int = 128
    batch_size: int = 4
    size_divisor: int = 32
    write_probs: bool = False
    in_channels: int = 3  # the model's input bands (N-band models: exactly N bands)


@dataclass(frozen=True)
class RasterOutputs:
    label: Path
    probs: Path | None = None


def select_bands(count: int, bands: Sequence[int] | None, in_channels: int = 3) -> list[int]:
    """Zero-based band indices to read; for an RGB model one band is repeated to its three channels."""
    if bands is None:
        bands = list(range(in_channels)) if in_channels != 3 else [0, 1, 2] if count >= 3 else [0]
    bands = list(bands)
    bad = [b for b in bands if not 0 <= b < count]
    if bad:
        raise GeoError(f"--bands {bad} out of range: the raster has {count} band(s), 0..{count - 1}")
    if in_channels != 3:
        if len(bands) != in_channels:
            raise GeoError(f"--bands selects {len(bands)} bands; the model takes {in_channels}")
        return bands
    if len(bands) not in (1, 3):
        raise GeoError(f"--bands selects {len(bands)} bands; the model takes 3 (or 1, repeated)")
    return bands * 3 if len(bands) == 1 else bands


def band_statistics(src, bands: Sequence[int], max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std (raster units) from a decimated read, ignoring nodata and NaN.

    8-bit rasters use ImageNet's statistics (what the model was trained with), since
    they hold ordinary RGB; other types (e.g. 16-bit reflectance) are standardised
    with their own statistics.
    """
    if src.dtypes[bands[0]] == "uint8":
        uniq = list(dict.fromkeys(bands))
        if len(uniq) == 3:
            return np.array(IMAGENET_MEAN_255), np.array(IMAGENET_STD_255)
        return np.full(3, np.mean(IMAGENET_MEAN_255)), np.full(3, np.mean(IMAGENET_STD_255))
    f = max(1.0, max(src.height, src.width) / max_side)
    shape = (len(bands), max(1, int(src.height / f)), max(1, int(src.width / f)))
    data = src.read([b + 1 for b in bands], out_shape=shape).astype(np.float64)
    mean, std = np.zeros(len(bands)), np.ones(len(bands))
    for i, band in enumerate(data):
        valid = band[_valid_mask(band, src.nodata)]
        if valid.size:
            mean[i], std[i] = valid.mean(), max(valid.std(), 1e-6)
    return mean, std


def _valid_mask(band: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(band)
    if nodata is not None and not np.isnan(nodata):
        valid &= band != nodata
    return valid


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``min(tile, length)`` covering ``[0, length)``, the last flush with the end."""
    if tile <= overlap:
        raise GeoError(f"--tile {tile} must be larger than --overlap {overlap}")
    size = min(tile, length)
    if size == length:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def blend_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """``(h, w)`` weights rising linearly over ``overlap`` pixels from each edge (never zero).

    Where tiles overlap, each one's logits count less near its own border, where
    the model sees least context, so seams vanish.
    """
    def ramp(n: int) -> np.ndarray:
        if overlap <= 0:
            return np.ones(n, dtype=np.float32)
        i = np.arange(n, dtype=np.float32)
        edge = np.minimum(i + 1, n - i) / (overlap + 1)
        return np.clip(edge, 1.0 / (overlap + 1), 1.0)

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def _pad(x: torch.Tensor, divisor: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return torch.nn.functional.pad(x, (0, pw, 0, ph)) if ph or pw else x


class _StripAccumulator:
    """Blended logits for the rows not yet written, as a sliding band over the raster."""

    def __init__(self, num_classes: int, width: int) -> None:
        self.y0 = 0
        self.logits = np.zeros((num_classes, 0, width), dtype=np.float32)
        self.weight = np.zeros((0, width), dtype=np.float32)

    def extend_to(self, y_end: int) -> None:
        grow = y_end - (self.y0 + self.weight.shape[0])
        if grow > 0:
            k, _, w = self.logits.shape
            self.logits = np.concatenate([self.logits, np.zeros((k, grow, w), np.float32)], axis=1)
            self.weight = np.concatenate([self.weight, np.zeros((grow, w), np.float32)], axis=0)

    def add(self, y: int, x: int, logits: np.ndarray, weight: np.ndarray) -> None:
        h, w = weight.shape
        self.logits[:, y - self.y0:y - self.y0 + h, x:x + w] += logits * weight
        self.weight[y - self.y0:y - self.y0 + h, x:x + w] += weight

    def pop_until(self, y_end: int) -> np.ndarray:
        """Blended ``(K, rows, W)`` logits of rows ``[y0, y_end)``, which are then dropped."""
        n = y_end - self.y0
        out = self.logits[:, :n] / self.weight[:n]
        self.logits, self.weight = self.logits[:, n:], self.weight[n:]
        self.y0 = y_end
        return out


def _normalise(raw: np.ndarray, mean: np.ndarray, std: np.ndarray,
               nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``(B, h, w)`` raw bands -> normalised float32 and the ``(h, w)`` nodata mask."""
    raw = raw.astype(np.float32)
    invalid = ~np.all([_valid_mask(b, nodata) for b in raw], axis=0)
    x = (raw - mean[:, None, None].astype(np.float32)) / std[:, None, None].astype(np.float32)
    x[:, invalid] = 0.0
    return np.nan_to_num(x, copy=False), invalid


def _predict_strip(strip: np.ndarray, xs: list[int], tw: int, logits_fn: LogitsFn,
                   opts: RasterOptions) -> list[tuple[int, np.ndarray]]:
    out: list[tuple[int, np.ndarray]] = []
    for i in range(0, len(xs), opts.batch_size):
        chunk = xs[i:i + opts.batch_size]
        batch = torch.from_numpy(np.stack([strip[:, :, x:x + tw] for x in chunk]))
        h, w = batch.shape[-2:]
        logits = logits_fn(_pad(batch, opts.size_divisor))[..., :h, :w].float().cpu().numpy()
        out.extend(zip(chunk, logits, strict=True))
    return out


def _output_profile(src, count: int, nodata: int | None) -> dict:
    profile = {"driver": "GTiff", "height": src.height, "width": src.width, "count": count,
               "dtype": "uint8", "crs": src.crs, "transform": src.transform, "nodata": nodata,
               "compress": "deflate"}
    if src.height >= 256 and src.width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    return profile


def predict_raster(src_path: str | os.PathLike, outputs: RasterOutputs, logits_fn: LogitsFn,
                   num_classes: int, palette: np.ndarray, opts: RasterOptions,
                   class_names: Sequence[str] | None = None) -> tuple[int, int]:
    """Segment one raster into ``outputs`` (written atomically); returns its ``(height, width)``.

    The label raster (uint8 train ids, 255 = nodata, with a colour map) and the
    optional probability raster (one uint8 band per class, probability x 255) keep
    the input's CRS and transform.
    """
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    with warnings.catch_warnings(), rasterio.open(src_path) as src:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain TIFF stays a plain TIFF
        bands = select_bands(src.count, opts.bands, opts.in_channels)
        mean, std = _resolve_stats(src, bands, opts)
        th, tw = min(opts.tile, src.height), min(opts.tile, src.width)
        ys, xs = tile_origins(src.height, opts.tile, opts.overlap), tile_origins(src.width, opts.tile, opts.overlap)
        weight = blend_weights(th, tw, opts.overlap)
        acc = _StripAccumulator(num_classes, src.width)
        with _open_outputs(src, outputs, num_classes, palette, class_names) as (dst_label, dst_prob):
            for r, y in enumerate(ys):
                raw = src.read([b + 1 for b in bands], window=Window(0, y, src.width, th))
                strip, invalid = _normalise(raw, mean, std, src.nodata)
                acc.extend_to(y + th)
                for x, logits in _predict_strip(strip, xs, tw, logits_fn, opts):
                    acc.add(y, x, logits, weight)
                y_end = ys[r + 1] if r + 1 < len(ys) else src.height
                # rows before the next strip are final (acc.y0 == y here)
                _write_rows(y, acc.pop_until(y_end), invalid[:y_end - y], dst_label, dst_prob)
        return src.height, src.width


def _resolve_stats(src, bands: list[int], opts: RasterOptions) -> tuple[np.ndarray, np.ndarray]:
    if opts.band_mean is None and opts.band_std is None:
        return band_statistics(src, bands)
    if opts.band_mean is None or opts.band_std is None:
        raise GeoError("give both --band_mean and --band_std (one value per selected band), or neither")
    uniq = len(dict.fromkeys(bands))
    if len(opts.band_mean) != uniq or len(opts.band_std) != uniq:
        raise GeoError(f"--band_mean/--band_std need {uniq} value(s), one per selected band")
    reps = 3 if uniq == 1 else 1
    return np.array(opts.band_mean * reps, float), np.array(opts.band_std * reps, float)


def _write_rows(y0: int, logits: np.ndarray, invalid: np.ndarray, dst_label, dst_prob) -> None:
    from rasterio.windows import Window

    k, n, w = logits.shape
    if n == 0:
        return
    label = logits.argmax(axis=0).astype(np.uint8)
    label[invalid] = LABEL_NODATA
    window = Window(0, y0, w, n)
    dst_label.write(label[None], window=window)
    if dst_prob is not None:
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        prob = e / e.sum(axis=0, keepdims=True)
        dst_prob.write(np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8), window=window)


@contextlib.contextmanager
def _open_outputs(src, outputs: RasterOutputs, num_classes: int, palette: np.ndarray,
                  class_names: Sequence[str] | None) -> Iterator[tuple]:
    """Open the label (and probability) GeoTIFFs on temporary paths; rename them only on success."""
    import rasterio

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(outputs.label))
        dst_label = stack.enter_context(rasterio.open(tmp, "w", **_output_profile(src, 1, LABEL_NODATA)))
        dst_label.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(palette)})
        dst_prob = None
        if outputs.probs is not None:
            tmp_p = stack.enter_context(atomic_path(outputs.probs))
            dst_prob = stack.enter_context(rasterio.open(tmp_p, "w", **_output_profile(src, num_classes, None)))
            for i, name in enumerate(class_names or ()):
                dst_prob.set_band_description(i + 1, str(name))
        yield dst_label, dst_prob
