"""datasets.folder: discovery, subdirectory ranges, sharding, decoding of bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.folder import (
    FolderDataset,
    FolderError,
    ImageLoadError,
    discover_images,
    inference_size,
    output_stems,
    parse_subdirs,
    read_rgb,
    shard,
)


def _img(path: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), rgb)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ["939/a.jpg", "939/deep/b.JPEG", "940/c.PNG", "986/d.tif", "987/e.png", "1000/f.jpg",
                "misc/g.jpg", "top.jpg", "939/.hidden.jpg", ".cache/h.jpg"]:
        _img(tmp_path / rel)
    (tmp_path / "939" / "notes.txt").write_text("not an image")
    return tmp_path


def test_discovery_is_recursive_case_insensitive_sorted_and_skips_hidden(tree: Path) -> None:
    files = discover_images(tree)
    assert files == sorted(files)
    assert files == ["1000/f.jpg", "939/a.jpg", "939/deep/b.JPEG", "940/c.PNG", "986/d.tif",
                     "987/e.png", "misc/g.jpg", "top.jpg"]


def test_subdir_ranges_select_top_level_directories_inclusively(tree: Path) -> None:
    assert discover_images(tree, "939-986") == ["939/a.jpg", "939/deep/b.JPEG", "940/c.PNG", "986/d.tif"]
    assert discover_images(tree, "987,misc") == ["987/e.png", "misc/g.jpg"]
    assert discover_images(tree, "1000") == ["1000/f.jpg"]


def test_subdir_errors_are_actionable(tree: Path) -> None:
    with pytest.raises(FolderError, match="low-high"):
        parse_subdirs("986-939")
    with pytest.raises(FolderError, match="no images"):
        discover_images(tree, "5-6")
    with pytest.raises(FolderError, match="not a directory"):
        discover_images(tree / "missing")


@pytest.mark.parametrize("count", [1, 2, 3, 7, 20])
def test_shards_partition_the_list(count: int) -> None:
    items = [f"{i:03d}.jpg" for i in range(17)]
    parts = [shard(items, i, count) for i in range(count)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == items and len(flat) == len(set(flat))
    with pytest.raises(FolderError):
        shard(items, count, count)


def test_output_stems_disambiguate_same_stem_different_extension() -> None:
    assert output_stems(["a/x.jpg", "a/x.png", "a/y.jpg", "b/x.jpg"]) == ["a/x.jpg", "a/x.png", "a/y", "b/x"]


def test_inference_size_scales_shorter_side_and_rounds() -> None:
    assert inference_size(1000, 2000, 512, 1) == (512, 1024)
    assert inference_size(2000, 1000, 512, 32) == (1024, 512)
    assert inference_size(480, 640, 512, 32) == (512, 672)  # 682.7 -> 672
    assert inference_size(50, 70, None, 1) == (50, 70)


def test_corrupt_truncated_and_too_large_files_raise_with_reasons(tmp_path: Path) -> None:
    good = _img(tmp_path / "good.jpg", 64, 64)
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    assert read_rgb(good).shape == (64, 64, 3)
    with pytest.raises(ImageLoadError, match="corrupt"):
        read_rgb(tmp_path / "trunc.jpg")
    with pytest.raises(ImageLoadError, match="unreadable"):
        read_rgb(tmp_path / "junk.png")
    with pytest.raises(ImageLoadError, match="too large"):
        read_rgb(good, max_pixels=1000)


def test_dataset_returns_error_records_instead_of_raising(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg", 40, 60)
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    ds = FolderDataset(tmp_path, short_side=20, keep_original=True)
    ok, bad = ds[0], ds[1]
    assert ok["error"] == "" and ok["size"] == (40, 60) and ok["image"].shape == (3, 20, 30)
    assert ok["original"].shape == (40, 60, 3)
    assert abs(float(ok["image"].mean())) < 3  # ImageNet-normalised, not 0..255
    assert bad["name"] == "b.jpg" and "unreadable" in bad["error"] and bad["image"].numel() == 0
