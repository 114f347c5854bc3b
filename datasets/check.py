"""Check and summarise a described dataset before training on it.

    python -m datasets.check --dataset_root DIR [--dataset_config FILE] [--write_stats]

Per split: images, labels, problems (unreadable files, image/label size mismatches, label
values outside the class table), class pixel frequencies and per-band mean/std of the
training images. Bad files are listed; they never stop the summary. ``--write_stats``
writes the band statistics of the first split (train) to ``dataset_stats.json`` beside
dataset.yaml (atomically), where rasters' ``raster.mean``/``raster.std`` are read from
when dataset.yaml does not set them. Rasters are read strip by strip (memory stays flat).

Each bad file is listed once (a raster read strip by strip too), however many of its pixels
or strips are wrong. Exit status: 0 no problems; 2 problems listed (bad files: fix or remove
them, then check again), or a bad dataset.yaml or arguments (one line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.base import Item, read_image
from datasets.custom import IGNORE, LabelDecoder, find_items, labelled, rgb_code, rgb_int
from datasets.errors import DatasetError
from datasets.spec import STATS_NAME, DatasetSpec, load_spec
from utils.errors import EXIT_USAGE, run_cli


@dataclass
class Moments:
    """Running per-band sums (float64) for mean/std over valid pixels."""

    n: np.ndarray | None = None
    s: np.ndarray | None = None
    ss: np.ndarray | None = None

    def add(self, bands: np.ndarray, valid: np.ndarray) -> None:
        """``bands`` (C, H, W) float64, ``valid`` (H, W) bool."""
        v = bands[:, valid]
        if self.n is None:
            self.n, self.s, self.ss = (np.zeros(len(bands)) for _ in range(3))
        self.n += v.shape[1]
        self.s += v.sum(axis=1)
        self.ss += (v * v).sum(axis=1)

    def result(self) -> tuple[list[float], list[float]] | None:
        if self.n is None or not self.n.all():
            return None
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean * mean, 0.0))
        return [round(float(m), 6) for m in mean], [round(float(max(s, 1e-6)), 6) for s in std]


@dataclass
class SplitReport:
    split: str
    images: int = 0
    labelled: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignored: int = 0
    moments: Moments = field(default_factory=Moments)
    problems: list[tuple[str, str]] = field(default_factory=list)


class Checker:
    """Reads every pair once and accumulates a :class:`SplitReport`."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.decoder = LabelDecoder.from_spec(spec)
        self.k = len(spec.classes)

    def split(self, split: str, progress: bool = True) -> SplitReport:
        from tqdm import tqdm

        rep = SplitReport(split, counts=np.zeros(self.k, np.int64))
        items = find_items(self.spec, split, labels_required=False)
        rep.images = len(items)
        for item in tqdm(items, desc=f"check {split}", unit="file", disable=not progress):
            if item.label is None:
                rep.problems.append((str(item.image), "no label file"))
                continue
            try:
                self.pair(item, rep)
                rep.labelled += 1
            except (DatasetError, OSError, ValueError) as e:
                rep.problems.append((str(item.image), " ".join(str(e).split())))
        return rep

    def pair(self, item: Item, rep: SplitReport) -> None:
        chunks = self._raster_chunks(item) if self.spec.raster else self._photo_chunks(item)
        outside, values = 0, np.zeros(0, np.int64)
        for bands, raw_label, valid in chunks:
            rep.moments.add(bands, valid)
            n, v = self.labels(item, raw_label, rep)
            outside, values = outside + n, np.union1d(values, v)
        if outside:  # one line per file, however many strips hold such values
            shown = [_show(int(v), self.spec.encoding) for v in values[:5]]
            rep.problems.append((str(item.label), f"{outside} pixels hold values outside the class "
                                                  f"table (e.g. {', '.join(shown)}); they are ignored in training"))

    def labels(self, item: Item, raw: np.ndarray, rep: SplitReport) -> tuple[int, np.ndarray]:
        """Count the classes of one chunk; returns how many pixels hold undeclared values, and which."""
        ids = self.decoder.decode(raw, item.label)
        rep.counts += np.bincount(ids.ravel(), minlength=256)[: self.k]
        ignored = ids == IGNORE
        if self.spec.encoding == "rgb":
            raw = rgb_code(raw)
            declared = raw == (rgb_int(self.spec.ignore_color) if self.spec.ignore_color else -1)
        else:
            declared = raw == (self.spec.ignore_value if self.spec.ignore_value is not None else -1)
        rep.ignored += int(ignored.sum())
        outside = ignored & ~declared
        return int(outside.sum()), np.unique(raw[outside]).astype(np.int64)

    def _photo_chunks(self, item: Item) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        image = read_image(item.image)
        raw = self.decoder.read_raw(labelled(item))
        if raw.shape[:2] != image.shape[:2]:
            raise DatasetError(f"size mismatch: image is {image.shape[1]}x{image.shape[0]}, label {item.label} "
                               f"is {raw.shape[1]}x{raw.shape[0]}")
        bands = image.transpose(2, 0, 1).astype(np.float64) / 255.0
        yield bands, raw, np.ones(image.shape[:2], bool)

    def _raster_chunks(self, item: Item, strip: int = 128) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        from rasterio.windows import Window

        from datasets.raster_pairs import _open, inspect_pair, limit_gdal_cache

        limit_gdal_cache()
        spec = self.spec.raster
        assert spec is not None
        pair = inspect_pair(item, spec.bands)
        with _open(item.image) as src, _open(labelled(item)) as msk:
            for y in range(0, pair.height, strip):
                win = Window(0, y, pair.width, min(strip, pair.height - y))
                raw = src.read([b + 1 for b in spec.bands], window=win).astype(np.float64)
                valid = np.isfinite(raw).all(axis=0)
                if pair.nodata is not None and not np.isnan(pair.nodata):
                    valid &= (raw != pair.nodata).all(axis=0)
                yield raw, msk.read(1, window=win), valid


def _show(value: int, encoding: str) -> str:
    return f"rgb({value >> 16},{(value >> 8) & 255},{value & 255})" if encoding == "rgb" else str(value)


def format_report(spec: DatasetSpec, reps: list[SplitReport]) -> str:
    kind = f"raster, bands {list(spec.raster.bands)}" if spec.raster else f"images, labels as {spec.encoding}"
    lines = [f"dataset {spec.name} ({spec.path}): {len(spec.classes)} classes, {kind}"]
    for r in reps:
        lines.append(f"split {r.split}: {r.images} images, {r.labelled} readable pairs, {len(r.problems)} problem(s)")
    for r in reps:
        total = int(r.counts.sum()) + r.ignored
        lines.append(f"class pixels ({r.split}):")
        for c, n in zip(spec.classes, r.counts.tolist(), strict=True):
            lines.append(f"  {c.id:>5}  {c.name:<20} {n:>12}  {100 * n / max(total, 1):6.2f}%")
        lines.append(f"  {'':>5}  {'(ignored)':<20} {r.ignored:>12}  {100 * r.ignored / max(total, 1):6.2f}%")
    stats = reps[0].moments.result() if reps else None
    if stats:
        unit = "raster units" if spec.raster else "0..1 scale, RGB"
        lines.append(f"band mean ({reps[0].split}, {unit}): {stats[0]}")
        lines.append(f"band std  ({reps[0].split}, {unit}): {stats[1]}")
    problems = list(dict.fromkeys(p for r in reps for p in r.problems))  # splits may share files
    if problems:
        lines.append(f"problems ({len(problems)}):")
        lines += [f"  {path}: {why}" for path, why in problems]
    return "\n".join(lines)


def write_stats(spec: DatasetSpec, rep: SplitReport) -> Path:
    """``dataset_stats.json`` beside dataset.yaml: per-band mean/std of ``rep``'s split."""
    from utils.io import atomic_write_json

    stats = rep.moments.result()
    if stats is None:
        raise DatasetError(f"no readable pixels in split {rep.split!r}: nothing to measure")
    bands = list(spec.raster.bands) if spec.raster else [0, 1, 2]
    path = spec.path.with_name(STATS_NAME)
    atomic_write_json(path, {"split": rep.split, "images": rep.labelled, "bands": bands,
                             "mean": stats[0], "std": stats[1],
                             "unit": "raster" if spec.raster else "rgb 0..1"})
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets.check", description=__doc__.split("\n")[0])
    p.add_argument("--dataset_root", default=None, help="folder holding dataset.yaml")
    p.add_argument("--dataset_config", default=None, help="dataset.yaml elsewhere")
    p.add_argument("--splits", default=None, help="comma list (default: every split in dataset.yaml)")
    p.add_argument("--write_stats", action="store_true", help=f"write {STATS_NAME} (band mean/std of the first split)")
    p.add_argument("--no_progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.dataset_root, args.dataset_config)
    splits = args.splits.split(",") if args.splits else list(spec.splits)
    checker = Checker(spec)
    reps = [checker.split(s, progress=not args.no_progress) for s in splits]
    print(format_report(spec, reps))
    if args.write_stats:
        print(f"wrote {write_stats(spec, reps[0])}")
    bad = {path for r in reps for path, _ in r.problems}
    if bad:
        print(f"python -m datasets.check: error: {len(bad)} bad file(s) listed above; fix or remove them "
              "(or correct dataset.yaml), then check again", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("python -m datasets.check", lambda: run(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
