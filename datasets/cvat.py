"""Convert a CVAT export into the described layout (datasets/spec.py).

    python -m datasets.cvat EXPORT_DIR OUT_DIR [--split_map Train=train,...]

The export's format is found from its files, and printed (annotations.xml, "CVAT for images
1.1", is recognised but not imported yet):

- "Segmentation mask 1.1": ``labelmap.txt`` (``name:r,g,b:parts:actions`` per class),
  ``JPEGImages/``, ``SegmentationClass/<stem>.png`` (colour masks) and
  ``ImageSets/Segmentation/<subset>.txt``; colours not in the label map become 255 (ignored).

CVAT subsets become splits, case-insensitively: Train/training -> train, Validation/val/valid
-> val, Test/testing -> test, default (no subset given) -> train; other names are kept.
``--split_map Train=train,Holdout=val`` overrides. The output is ``OUT/images/<split>/``,
``OUT/labels/<split>/<stem>.png`` (class ids) and ``OUT/dataset.yaml``; the training command
printed at the end works as printed (it is printed once there are train and val splits).
Files are written atomically. Problems with single images (missing, wrong size, unknown
colours) are listed and the rest is converted (exit 1); a bad export or flag is one line (exit 2).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datasets.custom import IGNORE, LabelDecoder
from datasets.errors import DatasetError
from datasets.info import ClassInfo
from utils.io import ensure_output_dir

PROG = "python -m datasets.cvat"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
FORMATS = {"xml": ("CVAT for images 1.1", "annotations.xml"), "mask": ("Segmentation mask 1.1", "labelmap.txt")}
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "val", "val": "val", "valid": "val",
               "test": "test", "testing": "test", "default": "train"}
_FOLDER = re.compile(r"[A-Za-z0-9][\w.-]*")  # a split name is a folder name under images/ and labels/


@dataclass
class Conversion:
    """What :func:`convert` did; :func:`main` prints it."""

    format: str  # a key of FORMATS
    classes: tuple[ClassInfo, ...]
    splits: dict[str, str]  # CVAT subset -> split
    images: Counter[str] = field(default_factory=Counter)  # split -> images written
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why): that image was not converted
    notes: list[str] = field(default_factory=list)


def detect_format(export: Path) -> str:
    """``xml`` (annotations.xml) or ``mask`` (labelmap.txt); one line naming both files if neither is there."""
    if not export.is_dir():
        unzip = "; unzip the export first" if export.is_file() else ""
        raise DatasetError(f"EXPORT_DIR {export} is not a folder{unzip}")
    for fmt, (_, marker) in FORMATS.items():
        if (export / marker).is_file():
            return fmt
    nested = sorted(p.parent for _, m in FORMATS.values() for p in export.glob(f"*/{m}"))
    hint = f" (one is in {nested[0]}: pass that folder)" if nested else ""
    raise DatasetError(f"{export} holds neither annotations.xml (CVAT for images 1.1) nor labelmap.txt "
                       f"(Segmentation mask 1.1){hint}: export the task in one of these formats and unzip it there")


def parse_split_map(text: str | None) -> dict[str, str]:
    """``Train=train,Holdout=val`` -> ``{"train": "train", "holdout": "val"}`` (subset names lower-cased)."""
    out: dict[str, str] = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        subset, sep, split = (t.strip() for t in item.partition("="))
        if not sep or not subset or not _FOLDER.fullmatch(split):
            raise DatasetError(f"--split_map {text!r}: expected SUBSET=SPLIT[,SUBSET=SPLIT...] (e.g. "
                               f"Train=train,Validation=val), got {item!r}")
        out[subset.lower()] = split
    return out


def map_subsets(subsets: Iterable[str], overrides: dict[str, str]) -> dict[str, str]:
    """Each CVAT subset's split: ``overrides`` (lower-cased names), else :data:`SPLIT_NAMES`, else itself."""
    names = list(dict.fromkeys(subsets))
    unknown = sorted(set(overrides) - {s.lower() for s in names})
    if unknown:
        raise DatasetError(f"--split_map names subset {unknown[0]!r}, which the export does not have (it has "
                           f"{', '.join(names) or 'no images'})")
    out = {}
    for subset in names:
        split = overrides.get(subset.lower()) or SPLIT_NAMES.get(subset.lower(), subset)
        if not _FOLDER.fullmatch(split):
            raise DatasetError(f"CVAT subset {subset!r} cannot be a split folder name: map it with "
                               f"--split_map '{subset}=NAME' (letters, digits, _ . -)")
        out[subset] = split
    return out


def read_labelmap(path: Path) -> tuple[ClassInfo, ...]:
    """Classes in file order (CVAT writes ``background`` first); ids are the positions."""
    if not path.is_file():
        raise DatasetError(f"{path} not found: EXPORT_DIR must be an unpacked CVAT 'Segmentation mask 1.1' export")
    classes: list[ClassInfo] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(":", 3)
        try:
            r, g, b = (int(v) for v in parts[1].split(","))
            if len(parts) != 4 or not parts[0].strip() or not all(0 <= v <= 255 for v in (r, g, b)):
                raise ValueError(line)
        except (ValueError, IndexError) as e:
            raise DatasetError(f"{path}:{n}: expected 'name:r,g,b:parts:actions', got {line!r}") from e
        classes.append(ClassInfo(len(classes), parts[0].strip(), (r, g, b)))
    if not classes:
        raise DatasetError(f"{path} lists no labels")
    return tuple(classes)


def read_splits(export: Path) -> dict[str, list[str]]:
    """``{split: [stem, ...]}`` from ImageSets/Segmentation; every mask in ``train`` if there are none."""
    sets = export / "ImageSets" / "Segmentation"
    splits = {p.stem: [s.strip() for s in p.read_text().splitlines() if s.strip()]
              for p in sorted(sets.glob("*.txt"))} if sets.is_dir() else {}
    if not splits:
        splits = {"train": sorted(p.stem for p in (export / "SegmentationClass").glob("*.png"))}
    return splits


def _find_image(export: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS:
        for cand in (export / "JPEGImages" / f"{stem}{ext}", export / "JPEGImages" / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def convert_mask(src: Path, dest: Path, decoder: LabelDecoder) -> int:
    """Colour mask -> class-id PNG; returns how many pixels had colours outside the label map."""
    from utils.io import atomic_imwrite

    ids = decoder(src)  # no ignore colour: every 255 is a colour the label map lacks
    atomic_imwrite(dest, ids)
    return int((ids == IGNORE).sum())


def _copy(src: Path, dest: Path) -> None:
    from utils.io import atomic_path

    with atomic_path(dest, suffix=src.suffix) as tmp:
        shutil.copyfile(src, tmp)


def convert_masks(export: Path, out: Path, split_map: dict[str, str], progress: bool = True) -> Conversion:
    """A "Segmentation mask 1.1" export -> the described layout."""
    from tqdm import tqdm

    classes = read_labelmap(export / "labelmap.txt")
    decoder = LabelDecoder("rgb", tuple(c.id for c in classes), tuple(c.color for c in classes))
    subsets = read_splits(export)
    conv = Conversion("mask", classes, map_subsets(subsets, split_map))
    ensure_output_dir(out, flag="OUT_DIR")
    seen: set[tuple[str, str]] = set()
    for subset, stems in subsets.items():
        split = conv.splits[subset]
        for stem in tqdm(stems, desc=f"convert {subset}", unit="img", disable=not progress):
            if (split, stem) in seen:  # two subsets mapped to one split may list an image twice
                continue
            seen.add((split, stem))
            mask, image = export / "SegmentationClass" / f"{stem}.png", _find_image(export, stem)
            if image is None or not mask.is_file():
                conv.problems.append((stem, "no image in JPEGImages/" if image is None else f"no mask {mask}"))
                continue
            try:
                unknown = convert_mask(mask, out / "labels" / split / f"{stem}.png", decoder)
            except (DatasetError, OSError) as e:
                conv.problems.append((str(mask), str(e)))
                continue
            _copy(image, out / "images" / split / image.name)
            conv.images[split] += 1
            if unknown:
                conv.problems.append((str(mask), f"{unknown} pixels in colours not in labelmap.txt (now ignored, 255)"))
    return conv


def dataset_yaml(name: str, classes: tuple[ClassInfo, ...], splits: list[str],
                 source: str = "Segmentation mask 1.1") -> str:
    lines = [f"# converted from a CVAT '{source}' export by python -m datasets.cvat",
             f"name: {_quote(name)}", "label_encoding: ids", "ignore_index: 255", "classes:"]
    lines += [f"  - {{id: {c.id}, name: {_quote(c.name)}, color: [{c.color[0]}, {c.color[1]}, {c.color[2]}]}}"
              for c in classes]
    lines += ["images: images/{split}/*", "labels: labels/{split}/{stem}.png",
              "splits: {" + ", ".join(f"{s}: {s}" for s in splits) + "}"]
    return "\n".join(lines) + "\n"


def _quote(name: str) -> str:
    import json

    return json.dumps(name)  # JSON strings are YAML strings: spaces, colons and quotes stay intact


def convert(export: str | Path, out: str | Path, split_map: dict[str, str] | None = None,
            progress: bool = True) -> Conversion:
    """Convert ``export`` (either format) into ``out`` and write ``out/dataset.yaml``."""
    from utils.io import atomic_write_text

    export, out = Path(export), Path(out)
    fmt = detect_format(export)
    if fmt == "xml":
        raise DatasetError(f"{export / 'annotations.xml'}: 'CVAT for images 1.1' exports are not imported yet; "
                           "export the task as 'Segmentation mask 1.1'")
    conv = convert_masks(export, out, split_map or {}, progress)
    splits = [s for s in dict.fromkeys(conv.splits.values()) if conv.images[s]]
    atomic_write_text(out / "dataset.yaml", dataset_yaml(out.resolve().name, conv.classes, splits,
                                                         FORMATS[fmt][0]))
    return conv


def train_command(out: Path) -> str:
    return f"python train.py --dataset custom --dataset_root {shlex.quote(str(out))}"


def report(conv: Conversion, out: Path) -> None:
    """Problems and notes on stderr; what was written, and the training command, on stdout."""
    for path, why in conv.problems:
        print(f"  {path}: {why}", file=sys.stderr)
    for note in conv.notes:
        print(f"note: {note}", file=sys.stderr)
    print("subsets: " + (", ".join(f"{s} -> {t}" for s, t in conv.splits.items()) or "none"))
    written = ", ".join(f"{s} ({n} image{'s' * (n != 1)})" for s, n in conv.images.items()) or "no images"
    print(f"wrote {out / 'dataset.yaml'}: {len(conv.classes)} classes, splits {written}; "
          f"{len(conv.problems)} problem(s)")
    missing = [s for s in ("train", "val") if not conv.images[s]]
    if missing:
        why = "; ".join(f"'{s}' got no images (problems above)" if s in conv.splits.values() else
                        f"no subset maps to '{s}'" for s in missing)
        print(f"note: training needs a 'train' and a 'val' split: {why}; assign Train and Validation subsets in "
              f"CVAT and export again, or map a subset with --split_map SUBSET={missing[-1]}; then train: "
              f"{train_command(out)}", file=sys.stderr)
    else:
        print(f"train: {train_command(out)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("export_dir", type=Path, help="unzipped CVAT export: 'CVAT for images 1.1' (annotations.xml) "
                   "or 'Segmentation mask 1.1' (labelmap.txt)")
    p.add_argument("out_dir", type=Path, help="output dataset root (gets dataset.yaml)")
    p.add_argument("--split_map", "--split-map", default=None, metavar="SUBSET=SPLIT,...",
                   help="CVAT subset -> split, e.g. Train=train,Holdout=val (default, case-insensitive: "
                   "train/training -> train, validation/val/valid -> val, test/testing -> test, default -> train, "
                   "other names kept)")
    p.add_argument("--no_progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    name, marker = FORMATS[detect_format(args.export_dir)]
    print(f"found {name} ({marker})", flush=True)
    conv = convert(args.export_dir, args.out_dir, parse_split_map(args.split_map), progress=not args.no_progress)
    report(conv, args.out_dir)
    return 1 if conv.problems else 0


def main(argv: list[str] | None = None) -> int:
    from utils.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, lambda: run(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
