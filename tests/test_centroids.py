"""Centroids match a straightforward per-class, per-tile center_of_mass; the cache is safe."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from datasets.centroids import (
    CacheSpec,
    _centroids_dense,
    class_centroids,
    load_or_build,
    read_cache,
)


def reference_centroids(mask: np.ndarray, num_classes: int, tile: int) -> np.ndarray:
    """The reference's loop: every tile (remainder tiles included), every class, center_of_mass."""
    h, w = mask.shape
    rows = []
    for ty in range(-(-h // tile)):
        for tx in range(-(-w // tile)):
            patch = mask[ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile]
            for c in range(num_classes):
                if c in patch:
                    cy, cx = ndimage.center_of_mass((patch == c).astype(int))
                    rows.append((c, int(cx) + tx * tile, int(cy) + ty * tile))
    return np.array(rows, np.int32).reshape(-1, 3)


def _maps(n=40, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = rng.integers(1, 50, 2)
        k = int(rng.integers(1, 8))
        m = rng.integers(0, k + 2, (h, w)).astype(np.uint8)
        m[m == k + 1] = 255
        if rng.random() < 0.5:  # piecewise constant, like real labels
            m = np.repeat(m[:, ::5], 5, axis=1)[:, :w].copy()
        yield m, k, int(rng.integers(1, 30))


def test_centroids_equal_center_of_mass():
    for mask, k, tile in _maps():
        expected = reference_centroids(mask, k, tile)
        np.testing.assert_array_equal(class_centroids(mask, k, tile), expected)
        np.testing.assert_array_equal(_centroids_dense(mask, k, tile), expected)


def test_centroids_on_a_known_map():
    mask = np.full((4, 8), 255, np.uint8)
    mask[0:2, 0:3] = 1  # tile (0, 0): centre (1.0, 0.5) -> (1, 0)
    mask[3, 5:8] = 1  # tile (0, 1): centre x 6.0 (local 2.0), y 3 -> (6, 3)
    mask[1, 4] = 0
    got = class_centroids(mask, 2, tile=4)
    np.testing.assert_array_equal(got, [[1, 1, 0], [0, 4, 1], [1, 6, 3]])


def _label_files(root: Path, n: int, size=(24, 40)) -> list[str]:
    rng = np.random.default_rng(n)
    files = []
    for i in range(n):
        p = root / f"lab{i:03d}.png"
        cv2.imwrite(str(p), np.repeat(rng.integers(0, 6, (size[0], size[1] // 4)), 4, axis=1).astype(np.uint8))
        files.append(str(p))
    return files


SPEC = CacheSpec(tile=16, num_classes=5, lut=None)


def test_cache_reused_rebuilt_on_change_and_extended(tmp_path):
    files = _label_files(tmp_path, 6)
    cache = tmp_path / "cache" / "c.npz"
    first, rep = load_or_build(files, SPEC, cache, progress=False)
    assert rep.computed == 6 and cache.exists()
    again, rep = load_or_build(files, SPEC, cache, progress=False)
    assert rep.computed == 0
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # a label changes (content and mtime): only it is recomputed, and the result follows it
    cv2.imwrite(files[2], np.full((24, 40), 3, np.uint8))
    st = os.stat(files[2])
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed, rep = load_or_build(files, SPEC, cache, progress=False)
    assert rep.computed == 1
    np.testing.assert_array_equal(changed[2], [[3, 7, 7], [3, 23, 7], [3, 35, 7], [3, 7, 19], [3, 23, 19], [3, 35, 19]])
    # files added: only the new ones are computed; a subset is served from the same cache
    (tmp_path / "more").mkdir()
    more = files + _label_files(tmp_path / "more", 2)
    _, rep = load_or_build(more, SPEC, cache, progress=False)
    assert rep.computed == 2
    _, rep = load_or_build(files[:3], SPEC, cache, progress=False)
    assert rep.computed == 0


def test_other_settings_do_not_reuse_the_cache(tmp_path):
    files = _label_files(tmp_path, 3)
    cache = tmp_path / "c.npz"
    load_or_build(files, SPEC, cache, progress=False)
    assert read_cache(cache, CacheSpec(tile=8, num_classes=5, lut=None)) is None
    lut = np.arange(256, dtype=np.uint8)
    assert read_cache(cache, CacheSpec(tile=16, num_classes=5, lut=lut)) is None


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip_byte"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, caplog, damage):
    files = _label_files(tmp_path, 4)
    cache = tmp_path / "c.npz"
    good, _ = load_or_build(files, SPEC, cache, progress=False)
    data = bytearray(cache.read_bytes())
    if damage == "garbage":
        data = bytearray(b"\x00garbage")
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:  # a flipped byte inside the stored arrays (zip CRC or our checksum catches it)
        data[len(data) // 3] ^= 0xFF
    cache.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="datasets.centroids"):
        again, rep = load_or_build(files, SPEC, cache, progress=False)
    assert rep.computed == 4 and "rebuilding" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(good, again, strict=True))


def test_parallel_build_matches_serial(tmp_path):
    files = _label_files(tmp_path, 20)
    par, rep = load_or_build(files, SPEC, tmp_path / "p.npz", workers=2, progress=False)
    assert rep.computed == 20
    for f, cents in zip(files, par, strict=True):
        np.testing.assert_array_equal(cents, class_centroids(cv2.imread(f, cv2.IMREAD_UNCHANGED), 5, 16))


def _build(files, cache, barrier, queue):
    barrier.wait()
    result, rep = load_or_build(files, SPEC, Path(cache), workers=1, progress=False)
    queue.put((rep.computed, [r.tolist() for r in result]))


def test_two_processes_build_one_cache(tmp_path):
    files = _label_files(tmp_path, 30, size=(96, 160))
    cache = tmp_path / "shared" / "c.npz"
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(files, str(cache), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(r[0] for r in results) == [0, 30]  # one built, the other waited and read
    assert results[0][1] == results[1][1]
    cached = read_cache(cache, SPEC)
    assert cached is not None and len(cached) == 30
    assert not [p for p in cache.parent.iterdir() if ".tmp" in p.name]


def test_unwritable_cache_dir_still_computes(tmp_path, caplog):
    files = _label_files(tmp_path, 2)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="datasets.centroids"):
        result, rep = load_or_build(files, SPEC, blocker / "c.npz", progress=False)
    assert rep.computed == 2 and len(result) == 2 and "not writable" in caplog.text
