"""Class centroids per image tile, and a safe on-disk cache of them.

Semantics follow the reference's ``datasets/uniform.py``: the label map is cut
into ``tile x tile`` tiles; for every class present in a tile, the centroid of
its pixels (``int()`` of the centre of mass inside the tile, plus the tile's
offset) is one place a class-uniform crop may be centred on. One deliberate
difference: the reference only visits *whole* tiles (``H // tile``), dropping
the bottom/right remainder and every image smaller than a tile; here the
remainder tiles count too. Results are identical whenever the image size is a
multiple of the tile (Cityscapes 1024x2048 with tile 1024).

Instead of one ``center_of_mass`` call per class per tile, the label map is
cut into horizontal runs of one value (never crossing a tile border) and
``np.bincount`` over ``tile * K + class`` sums run lengths and closed-form
coordinate sums for every (tile, class) at once.

The cache (one ``.npz`` per dataset root, tile size and class mapping) keeps,
per label file, its path, a digest of its content (BLAKE2b) and its centroids:
a file whose content changed is recomputed, even when its size and mtime were
kept. The file's size, mtime, ctime and inode are stored beside the digest only
to skip re-hashing a file that was not touched since (writing a file always
moves its ctime, which no user can set back); new files are added, vanished ones dropped;
a checksum over the stored arrays detects a corrupt file, which is rebuilt
(with a warning), never used. Writes are atomic, and a file lock makes one
process build while the others wait and then read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from datasets.errors import DatasetError

log = logging.getLogger(__name__)
FORMAT = "hmsa-centroids/2"
_PARALLEL_MIN = 16  # fewer files than this are computed in-process


def class_centroids(mask: np.ndarray, num_classes: int, tile: int) -> np.ndarray:
    """``(M, 3)`` int32 rows ``(class, x, y)`` for every class present in every tile.

    ``mask`` holds uint8 train ids; values ``>= num_classes`` (the ignore label)
    are skipped. Rows are ordered by tile (row-major), then class, as the
    reference orders them. Label maps are piecewise constant, so the work is
    done on horizontal runs (a few per row); maps with very many runs (noise)
    take a dense per-pixel histogram path instead.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    h, w = mask.shape
    change = np.empty((h, w), bool)
    np.not_equal(mask[:, 1:], mask[:, :-1], out=change[:, 1:])
    change[:, ::tile] = True  # a run never crosses a row or a tile border
    starts = np.flatnonzero(change)
    if len(starts) > h * w // 8:
        return _centroids_dense(mask, num_classes, tile)
    length = np.diff(starts, append=h * w)
    values = mask.ravel()[starts]
    keep = values < num_classes
    starts, length, values = starts[keep], length[keep].astype(np.float64), values[keep].astype(np.int64)
    y, x0 = np.divmod(starts, w)
    ty, tx = y // tile, x0 // tile
    ntx = -(-w // tile)
    key = (ty * ntx + tx) * num_classes + values
    n_bins = -(-h // tile) * ntx * num_classes
    counts = np.bincount(key, weights=length, minlength=n_bins)
    # a run of n pixels from local x0 adds n*x0 + n*(n-1)/2 to the x sum (exact in float64)
    sum_x = np.bincount(key, weights=length * (x0 - tx * tile) + length * (length - 1) / 2, minlength=n_bins)
    sum_y = np.bincount(key, weights=length * (y - ty * tile), minlength=n_bins)
    bins = np.flatnonzero(counts)
    tiles, classes = np.divmod(bins, num_classes)
    return _rows(classes, tiles // ntx, tiles % ntx, counts[bins], sum_x[bins], sum_y[bins], tile)


def _rows(classes, ty, tx, counts, sum_x, sum_y, tile: int) -> np.ndarray:
    # int() of the in-tile centre of mass, plus the tile offset (the reference's rounding)
    x = (sum_x / counts).astype(np.int64) + tx * tile
    y = (sum_y / counts).astype(np.int64) + ty * tile
    return np.stack([classes, x, y], axis=1).astype(np.int32)


@lru_cache(maxsize=4)
def _dense_bases(height: int, width: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.arange(height), np.arange(width)
    ntx = -(-width // tile)
    col_base = ((ys // tile)[:, None] * width + xs[None, :]).astype(np.int64) * 256
    row_base = (ys[:, None] * ntx + (xs // tile)[None, :]).astype(np.int64) * 256
    col_base.flags.writeable = row_base.flags.writeable = False
    return col_base, row_base


def _centroids_dense(mask: np.ndarray, num_classes: int, tile: int) -> np.ndarray:
    """Per-pixel path: class histograms per (tile row, column) and per (row, tile column)."""
    h, w = mask.shape
    k = num_classes
    nty, ntx = -(-h // tile), -(-w // tile)
    col_base, row_base = _dense_bases(h, w, tile)
    cols = np.bincount((col_base + mask).ravel(), minlength=nty * w * 256).reshape(nty, w, 256)[..., :k]
    rows = np.bincount((row_base + mask).ravel(), minlength=h * ntx * 256).reshape(h, ntx, 256)[..., :k]
    cols = np.pad(cols, ((0, 0), (0, ntx * tile - w), (0, 0))).reshape(nty, ntx, tile, k)
    rows = np.pad(rows, ((0, nty * tile - h), (0, 0), (0, 0))).reshape(nty, tile, ntx, k)
    local = np.arange(tile, dtype=np.float64)
    counts = cols.sum(axis=2)
    sum_x = np.einsum("abtk,t->abk", cols, local)
    sum_y = np.einsum("atbk,t->abk", rows, local)
    ty, tx, c = np.nonzero(counts)
    return _rows(c, ty, tx, counts[ty, tx, c], sum_x[ty, tx, c], sum_y[ty, tx, c], tile)


def _file_centroids(job: tuple[str, np.ndarray | None, int, int, Callable | None]) -> np.ndarray:
    from datasets.base import apply_lut, read_label

    path, lut, num_classes, tile, fn = job
    if fn is not None:  # the dataset reads its own labels (colour labels, raster masks by windows)
        return fn(path, num_classes, tile)
    return class_centroids(apply_lut(read_label(Path(path)), lut, Path(path)), num_classes, tile)


@dataclass(frozen=True)
class CacheSpec:
    """What the centroids depend on besides the label files themselves."""

    tile: int
    num_classes: int
    lut: np.ndarray | None
    # ``fn(path, num_classes, tile) -> (M, 3)`` replaces reading + ``lut``; picklable, with a
    # ``cache_key()`` that changes whenever its output would
    fn: Callable[[str, int, int], np.ndarray] | None = None

    def digest(self) -> str:
        h = hashlib.sha256(f"{FORMAT}|{self.tile}|{self.num_classes}|".encode())
        h.update(b"none" if self.lut is None else np.ascontiguousarray(self.lut, np.uint8).tobytes())
        if self.fn is not None:
            h.update(f"|fn|{self.fn.cache_key()}".encode())  # type: ignore[attr-defined]
        return h.hexdigest()


Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode: "not touched since hashed"
Key = tuple[Stat, str]  # and the content digest, which is what the centroids are keyed on
Entries = dict[str, tuple[Key, np.ndarray]]


def _unreadable(path: Path, e: OSError) -> DatasetError:
    return DatasetError(f"label file {path} cannot be read for the centroid cache ({e}); "
                        f"restore it or rebuild the file list")


def _stat(path: Path) -> Stat:
    try:
        st = path.stat()
    except OSError as e:
        raise _unreadable(path, e) from e
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise _unreadable(path, e) from e
    return h.hexdigest()


def _keys(entries: Entries, files: Sequence[str]) -> dict[str, Key]:
    """Per file its stat and content digest; re-hashed unless the stat matches the cached one."""
    keys: dict[str, Key] = {}
    for f in files:
        st = _stat(Path(f))
        old = entries.get(f)
        keys[f] = (st, old[0][1] if old is not None and old[0][0] == st else _digest(Path(f)))
    return keys


def _checksum(paths: np.ndarray, stats: np.ndarray, digests: np.ndarray, offsets: np.ndarray,
              cents: np.ndarray, spec: str) -> str:
    h = hashlib.sha256(spec.encode())
    h.update("\0".join(paths.tolist()).encode())
    h.update("\0".join(digests.tolist()).encode())
    for arr in (stats, offsets, cents):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def read_cache(path: Path, spec: CacheSpec, quiet: bool = False) -> Entries | None:
    """The cache's entries, ``None`` if absent; corrupt or foreign files give ``None`` plus a
    warning (``quiet``: no warning, for the second read of one build)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            paths, stats, digests = z["paths"], z["stats"], z["digests"]
            offsets, cents = z["offsets"], z["centroids"]
        ok = (meta.get("format") == FORMAT and meta.get("spec") == spec.digest()
              and meta.get("checksum") == _checksum(paths, stats, digests, offsets, cents, meta["spec"])
              and len(offsets) == len(paths) + 1 == len(digests) + 1 and offsets[-1] == len(cents))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        if not quiet:
            log.warning("centroid cache %s is unreadable (%r); rebuilding it", path, e)
        return None
    if not ok:
        if not quiet:
            log.warning("centroid cache %s is corrupt or was built for other settings; rebuilding it", path)
        return None
    return {p: ((tuple(int(v) for v in s), str(d)), cents[offsets[i]:offsets[i + 1]])  # type: ignore[misc]
            for i, (p, s, d) in enumerate(zip(paths.tolist(), stats, digests.tolist(), strict=True))}


def write_cache(path: Path, spec: CacheSpec, entries: Entries) -> None:
    from utils.io import atomic_path

    names = sorted(entries)
    paths = np.array(names, dtype=str) if names else np.zeros(0, dtype="<U1")
    stats = np.array([entries[p][0][0] for p in names], np.int64).reshape(-1, 4)
    digests = np.array([entries[p][0][1] for p in names], dtype="<U32")
    parts = [entries[p][1] for p in names]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in parts], dtype=np.int64)]).astype(np.int64)
    cents = np.concatenate(parts).astype(np.int32) if parts else np.zeros((0, 3), np.int32)
    meta = {"format": FORMAT, "spec": spec.digest(), "tile": spec.tile, "num_classes": spec.num_classes,
            "checksum": _checksum(paths, stats, digests, offsets, cents, spec.digest())}
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), paths=paths, stats=stats, digests=digests,
                 offsets=offsets, centroids=cents)


def compute_many(paths: Sequence[str], spec: CacheSpec, workers: int | None = None,
                 progress: bool = True) -> list[np.ndarray]:
    """Centroids of many label files, in parallel processes with a progress bar."""
    from tqdm import tqdm

    jobs = [(p, spec.lut, spec.num_classes, spec.tile, spec.fn) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="class centroids", unit="img", disable=not progress or not jobs)
    if workers <= 1 or len(jobs) < _PARALLEL_MIN:
        out = []
        for job in jobs:
            out.append(_file_centroids(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = []
            for res in pool.map(_file_centroids, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
                out.append(res)
                bar.update()
    bar.close()
    return out


@dataclass
class BuildReport:
    computed: int  # label files computed by this call (0 when the cache was reused)
    cache_path: Path


def _stale(entries: Entries, keys: dict[str, Key]) -> list[str]:
    """Files whose cached entry is missing or was made from other content."""
    return sorted(f for f, k in keys.items() if f not in entries or entries[f][0][1] != k[1])


def _moved(entries: Entries, keys: dict[str, Key]) -> bool:
    """Some file was touched but kept its content: record its new stat (no re-hash next time)."""
    return any(f in entries and entries[f][0] != k for f, k in keys.items())


def load_or_build(label_files: Sequence[str | os.PathLike], spec: CacheSpec, cache_path: Path,
                  workers: int | None = None, progress: bool = True) -> tuple[list[np.ndarray], BuildReport]:
    """Per label file its ``(M, 3)`` centroids, from the cache where it is current.

    Missing, changed or added files are computed (under a file lock, so
    concurrent processes build once) and the cache is rewritten atomically.
    """
    from filelock import FileLock

    files = [str(Path(f).resolve()) for f in label_files]
    entries = read_cache(cache_path, spec) or {}
    keys = _keys(entries, files)
    computed = 0
    if _stale(entries, keys) or _moved(entries, keys):
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(cache_path) + ".lock")
            lock.acquire()
        except OSError as e:  # read-only cache directory: still usable, just not cached
            log.warning("centroid cache %s is not writable (%s); computing without caching; "
                        "pass a writable cache_dir to keep the result", cache_path, e)
            computed = _update(entries, keys, spec, workers, progress)
        else:
            try:  # another process may have built it meanwhile (its warnings were given above)
                entries = read_cache(cache_path, spec, quiet=True) or {}
                computed = _update(entries, keys, spec, workers, progress)
                write_cache(cache_path, spec, {p: e for p, e in entries.items() if os.path.exists(p)})
            finally:
                lock.release()
    return [entries[f][1] for f in files], BuildReport(computed, cache_path)


def _update(entries: Entries, keys: dict[str, Key], spec: CacheSpec,
            workers: int | None, progress: bool) -> int:
    """Compute the stale files' centroids into ``entries``, record every key; returns how many."""
    todo = _stale(entries, keys)
    for f, cents in zip(todo, compute_many(todo, spec, workers, progress), strict=True):
        entries[f] = (keys[f], cents)
    for f, key in keys.items():
        entries[f] = (key, entries[f][1])
    return len(todo)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HMSA_CACHE_DIR") or Path.home() / ".cache" / "hmsa") / "centroids"


def cache_file(cache_dir: Path, dataset_name: str, root: Path, spec: CacheSpec) -> Path:
    """One cache per dataset root, tile size and class mapping; splits of a root share it."""
    key = hashlib.sha256(f"{Path(root).resolve()}|{spec.digest()}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{dataset_name}_tile{spec.tile}_{key}.npz"
