"""GeoTIFF in -> GeoTIFF out: georeference kept, bands and nodata, sliding windows vs whole image."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

rasterio = pytest.importorskip("rasterio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from datasets.folder import default_palette  # noqa: E402
from datasets.raster import (  # noqa: E402
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    GeoError,
    RasterOptions,
    RasterOutputs,
    blend_weights,
    predict_raster,
    select_bands,
    tile_origins,
)
from predict import PredictOptions, predict_folder  # noqa: E402

K = 4


class ConvSeg(nn.Module):
    """One 3x3 conv: a receptive field of 3 pixels.

    With it a tile's logits equal the whole image's everywhere except the one-pixel
    ring along the tile's inner edges (where the tile zero-pads but the whole image
    has neighbours), so the stitching and blending arithmetic can be checked exactly.
    An HRNet sees far beyond a small tile, and its tiles would legitimately differ.
    """

    arch = "test.ConvSeg"
    multiscale = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, K, 3, padding=1)
        self.num_classes = K

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": self.conv(x)}


def write_raster(path: Path, data: np.ndarray, nodata=None, crs: str = "EPSG:32632") -> None:
    count, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=count, dtype=data.dtype,
                       crs=CRS.from_string(crs), transform=from_origin(500000.0, 4200000.0, 0.5, 0.5),
                       nodata=nodata) as dst:
        dst.write(data)


def smooth(rng, shape, lo=0, hi=256, dtype=np.uint8) -> np.ndarray:
    import cv2

    c, h, w = shape
    coarse = rng.uniform(lo, hi, (h // 8 + 1, w // 8 + 1, c)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c).transpose(2, 0, 1).astype(dtype)


def test_geotiff_in_geotiff_out_keeps_crs_transform_size_and_nodata(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = smooth(rng, (3, 70, 90), 1, 256)
    data[:, :10, :20] = 0  # nodata block
    (tmp_path / "in" / "tiles").mkdir(parents=True)
    write_raster(tmp_path / "in" / "tiles" / "scene.tif", data, nodata=0)
    opts = PredictOptions(eval_folder=str(tmp_path / "in"), result_dir=str(tmp_path / "out"), tile=32,
                          overlap=8, workers=0, probs=True, progress=False)
    s = predict_folder(ConvSeg(), opts)
    assert (s.done, s.failed) == (1, 0)
    with rasterio.open(tmp_path / "in" / "tiles" / "scene.tif") as src, \
            rasterio.open(tmp_path / "out" / "label" / "tiles" / "scene.tif") as lab, \
            rasterio.open(tmp_path / "out" / "prob" / "tiles" / "scene.tif") as prob:
        assert (lab.crs, lab.transform, lab.width, lab.height) == (src.crs, src.transform, src.width, src.height)
        assert (prob.crs, prob.transform, prob.count) == (src.crs, src.transform, K)
        assert lab.nodata == 255 and lab.dtypes[0] == "uint8"
        assert [lab.colormap(1)[i][:3] for i in range(K)] == [tuple(c) for c in default_palette(K).tolist()]
        label = lab.read(1)
    assert (label[:10, :20] == 255).all() and (label[10:, 20:] < K).all()
    counted = sum(s.class_pixels.values())  # the report's classes: every labelled pixel, nodata not a class
    assert counted == int((label < K).sum()) == 70 * 90 - 10 * 20
    again = predict_folder(ConvSeg(), opts)  # resumable like photos
    assert (again.done, again.skipped) == (0, 1)
    good = (tmp_path / "in" / "tiles" / "scene.tif").read_bytes()
    (tmp_path / "in" / "tiles" / "cut.tif").write_bytes(good[: len(good) // 2])
    third = predict_folder(ConvSeg(), replace(opts, max_fail_ratio=0.6))
    assert (third.done, third.skipped, third.failed) == (0, 1, 1)
    assert third.failures[0][0] == "tiles/cut.tif" and third.failures[0][1].startswith("raster:")
    assert not (tmp_path / "out" / "label" / "tiles" / "cut.tif").exists()  # no partial output


def _whole_image_probs(data: np.ndarray, model: nn.Module) -> np.ndarray:
    mean = np.array(IMAGENET_MEAN_255, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD_255, np.float32)[:, None, None]
    x = torch.from_numpy((data.astype(np.float32) - mean) / std)[None]
    with torch.no_grad():
        return torch.softmax(model(x)["pred"][0], 0).numpy()


def _tile_edge_ring(h: int, w: int, tile: int, overlap: int) -> np.ndarray:
    """Pixels on an inner edge of any tile: where a 3x3 conv's tile output may differ."""
    ring = np.zeros((h, w), bool)
    for y in tile_origins(h, tile, overlap):
        for x in tile_origins(w, tile, overlap):
            ye, xe = y + min(tile, h), x + min(tile, w)
            for row in (y, ye - 1):
                if 0 < row < h - 1:
                    ring[row, x:xe] = True
            for col in (x, xe - 1):
                if 0 < col < w - 1:
                    ring[y:ye, col] = True
    return ring


def test_sliding_windows_match_whole_image_away_from_tile_borders(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (3, 80, 100), dtype=np.uint8)  # noise: every pixel matters
    write_raster(tmp_path / "r.tif", data)
    model = ConvSeg().eval()
    out = RasterOutputs(tmp_path / "label.tif", tmp_path / "prob.tif")
    tile, overlap = 32, 8
    opts = RasterOptions(tile=tile, overlap=overlap, batch_size=3, size_divisor=1)

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)["pred"]

    assert predict_raster(tmp_path / "r.tif", out, logits_fn, K, np.eye(K, 3, dtype=np.uint8) * 255,
                          opts) == (80, 100)
    expected = _whole_image_probs(data, model)
    with rasterio.open(out.label) as lab, rasterio.open(out.probs) as prob:
        label, probs = lab.read(1), prob.read().astype(np.float32) / 255.0
    ring = _tile_edge_ring(80, 100, tile, overlap)
    away = ~ring
    assert 0.5 < away.mean() < 0.98
    assert np.abs(probs - expected)[:, away].max() <= 1.0 / 255 + 1e-6
    assert (label[away] == expected.argmax(0)[away]).mean() > 0.999
    # and the blend is doing something at the borders: seams differ from the whole image there
    assert np.abs(probs - expected)[:, ring].max() > 2.0 / 255


def test_band_selection_and_16bit_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = smooth(rng, (5, 40, 40), 1000, 20000, np.uint16)
    (tmp_path / "in").mkdir()
    write_raster(tmp_path / "in" / "ms.tiff", data)
    opts = PredictOptions(eval_folder=str(tmp_path / "in"), result_dir=str(tmp_path / "out"),
                          bands=(3, 2, 1), tile=64, overlap=8, workers=0, progress=False)
    assert predict_folder(ConvSeg(), opts).done == 1
    with rasterio.open(tmp_path / "out" / "label" / "ms.tif") as lab:
        assert lab.read(1).shape == (40, 40)
    with pytest.raises(GeoError, match="out of range"):
        select_bands(5, [0, 1, 7])
    with pytest.raises(GeoError, match="takes 3"):
        select_bands(5, [0, 1])


def test_tiles_cover_every_pixel_and_weights_are_positive() -> None:
    for length, tile, overlap in [(100, 32, 8), (32, 32, 8), (20, 32, 8), (1000, 256, 64)]:
        starts = tile_origins(length, tile, overlap)
        size = min(tile, length)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + size] = True
        assert covered.all() and starts[-1] + size == length and starts == sorted(set(starts))
    w = blend_weights(32, 32, 8)
    assert w.min() > 0 and w[16, 16] == 1.0 and w[0, 0] < w[4, 4]
    with pytest.raises(GeoError):
        tile_origins(100, 8, 8)
