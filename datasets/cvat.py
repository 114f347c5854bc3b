"""Convert a CVAT export into the described layout (datasets/spec.py).

    python -m datasets.cvat EXPORT_DIR OUT_DIR [--split_map Train=train,...] [--classes FILE]
                                               [--boxes] [--skip_unsupported]

The export's format is found from its files, and printed:

- "CVAT for images 1.1": ``annotations.xml`` + ``images/`` (drawn by datasets/cvat_xml.py).
  Polygons and masks are drawn in increasing z_order, boxes only with ``--boxes``; other shapes
  (polyline, points, ellipse, cuboid, skeleton; boxes without ``--boxes``) stop the import with
  one line unless ``--skip_unsupported`` leaves them out. Classes: ``background`` (id 0, every
  pixel no shape covers) then the labels of ``<meta>`` in order, the ids CVAT's "Segmentation
  mask 1.1" export gives them; ``--classes FILE`` (one label name per line, optionally followed
  by a colour ``#rrggbb``) gives them instead (an export without ``<labels>``, or a fixed order).
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
import itertools
import re
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datasets.custom import IGNORE, LabelDecoder
from datasets.cvat_xml import Color, Frame, parse_color, read_annotations
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


def read_class_file(path: Path) -> list[tuple[str, Color | None]]:
    """``--classes FILE``: one label name per line, optionally followed by ``#rrggbb``; ``#`` starts a comment line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"--classes {path}: cannot read it ({e.strerror or e})") from e
    out: list[tuple[str, Color | None]] = []
    for line in (ln.strip() for ln in lines):
        if line and not line.startswith("#"):
            m = re.fullmatch(r"(.+?)\s+(#[0-9a-fA-F]{6})", line)
            out.append((m.group(1), parse_color(m.group(2))) if m else (line, None))
    if not out:
        raise DatasetError(f"--classes {path} names no labels: write one label name per line "
                           "(optionally followed by a colour #rrggbb)")
    return out


def class_table(labels: list[tuple[str, Color | None]]) -> tuple[tuple[ClassInfo, ...], list[str]]:
    """``background`` (id 0) first, then ``labels`` in order; missing or repeated colours get free ones."""
    bg = next((lab for lab in labels if lab[0].lower() == "background"), ("background", None))
    ordered = [(bg[0], bg[1] or (0, 0, 0)), *(lab for lab in labels if lab is not bg)]
    names = [n for n, _ in ordered]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None or len(ordered) > 255:
        raise DatasetError(f"label {twice!r} is listed twice: rename one" if twice else
                           f"{len(ordered)} classes (with background): at most 255 fit in 8-bit label maps")
    given = {c for _, c in ordered if c is not None}
    used: set[Color] = set()
    classes, notes = [], []
    for i, (name, color) in enumerate(ordered):
        if color is None or color in used:
            free = next(c for c in map(_voc_color, itertools.count(1)) if c not in used | given)
            if color is not None:
                notes.append(f"label {name!r} has the colour {color} of another label; dataset.yaml gives it {free}")
            color = free
        used.add(color)
        classes.append(ClassInfo(i, name, color))
    return tuple(classes), notes


def _voc_color(i: int) -> Color:
    """Pascal VOC's colour map: distinct colours, the same on every run."""
    rgb = [0, 0, 0]
    for bit in range(8):
        for ch in range(3):
            rgb[ch] |= ((i >> (3 * bit + ch)) & 1) << (7 - bit)
    return rgb[0], rgb[1], rgb[2]


def convert_xml(export: Path, out: Path, split_map: dict[str, str], classes_file: Path | None = None,
                boxes: bool = False, skip_unsupported: bool = False, progress: bool = True) -> Conversion:
    """A "CVAT for images 1.1" export -> the described layout (see the module docstring)."""
    from tqdm import tqdm

    ann = read_annotations(export / "annotations.xml", boxes, skip_unsupported)
    labels = read_class_file(classes_file) if classes_file else ann.labels
    if not labels:
        raise DatasetError(f"{export / 'annotations.xml'} has no <labels> in <meta>: pass --classes FILE "
                           "(one label name per line)")
    classes, notes = class_table(labels)
    ids = {c.name: c.id for c in classes}
    _check_labels(ann.frames, ids, "--classes " + str(classes_file) if classes_file else "<meta><labels>")
    if not (export / "images").is_dir():
        raise DatasetError(f"{export} has annotations.xml but no images/ folder: export with 'Save images' "
                           "or copy the images into images/ there")
    conv = Conversion("xml", classes, map_subsets((f.subset for f in ann.frames), split_map), notes=notes)
    ensure_output_dir(out, flag="OUT_DIR")  # only now: a refused export leaves nothing behind
    seen: set[tuple[str, str]] = set()
    for frame in tqdm(ann.frames, desc="convert", unit="img", disable=not progress):
        split = conv.splits[frame.subset]
        problem = _write_frame(export, out, frame, split, ids, seen)
        if problem:
            conv.problems.append(problem)
        else:
            conv.images[split] += 1
    if ann.skipped:
        conv.notes.append("left out (--skip_unsupported): " + ", ".join(f"{n} {k}" for k, n in ann.skipped.items()))
    empty = sum(not f.shapes for f in ann.frames)
    if empty:
        conv.notes.append(f"{empty} image(s) have no shapes and were written as all background; remove them if "
                          "they are not annotated yet")
    return conv


def _check_labels(frames: list[Frame], ids: dict[str, int], source: str) -> None:
    for frame in frames:
        for shape in frame.shapes:
            if shape.label not in ids:
                raise DatasetError(f"image {frame.name!r}: {shape.kind} label {shape.label!r} is not in {source}; "
                                   "add it there")


def _write_frame(export: Path, out: Path, frame: Frame, split: str, ids: dict[str, int],
                 seen: set[tuple[str, str]]) -> tuple[str, str] | None:
    """Draw one image's label map and copy the image; a problem (path, why) instead if it cannot be."""
    from datasets.cvat_xml import draw
    from utils.io import atomic_imwrite

    parts = Path(frame.name).parts
    if not parts or ".." in parts or Path(frame.name).is_absolute():
        return frame.name, "unusable image name in annotations.xml; rename the image in CVAT"
    image = next((p for p in (export / "images" / frame.name, export / "images" / frame.subset / frame.name)
                  if p.is_file()), None)
    if image is None:
        return frame.name, "not in images/: export with 'Save images', or copy it there"
    flat = "__".join(parts)  # images in subfolders: sub__name.jpg (the layout has one folder per split)
    stem = Path(flat).stem
    if (split, stem) in seen:
        return str(image), f"another image of split {split!r} is also called {stem!r}; rename one in CVAT"
    seen.add((split, stem))
    size = _image_size(image)
    if size != (frame.width, frame.height):
        found = f"is {size[0]}x{size[1]}" if size else "cannot be read"
        return str(image), f"{found}, annotations.xml says {frame.width}x{frame.height}; export it again"
    atomic_imwrite(out / "labels" / split / f"{stem}.png", draw(frame, ids, background=0))
    _copy(image, out / "images" / split / flat)
    return None


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError):
        return None


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
            classes_file: Path | None = None, boxes: bool = False, skip_unsupported: bool = False,
            progress: bool = True) -> Conversion:
    """Convert ``export`` (either format) into ``out`` and write ``out/dataset.yaml``."""
    from utils.io import atomic_write_text

    export, out = Path(export), Path(out)
    fmt = detect_format(export)
    if fmt == "xml":
        conv = convert_xml(export, out, split_map or {}, classes_file, boxes, skip_unsupported, progress)
    elif classes_file is not None:
        raise DatasetError(f"--classes is for 'CVAT for images 1.1' exports; {export} is a 'Segmentation mask "
                           "1.1' export, whose classes are in labelmap.txt")
    else:
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
    p.add_argument("--classes", type=Path, default=None, metavar="FILE",
                   help="annotations.xml: label names, one per line (optionally '#rrggbb' after each); "
                   "default: <meta><labels>")
    p.add_argument("--boxes", action="store_true", help="annotations.xml: fill boxes with their label")
    p.add_argument("--skip_unsupported", "--skip-unsupported", action="store_true",
                   help="annotations.xml: leave out shapes that are not drawn (polyline, points, ellipse, "
                   "cuboid, skeleton; boxes without --boxes) instead of stopping")
    p.add_argument("--no_progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    name, marker = FORMATS[detect_format(args.export_dir)]
    print(f"found {name} ({marker})", flush=True)
    conv = convert(args.export_dir, args.out_dir, parse_split_map(args.split_map), args.classes, args.boxes,
                   args.skip_unsupported, progress=not args.no_progress)
    report(conv, args.out_dir)
    return 1 if conv.problems else 0


def main(argv: list[str] | None = None) -> int:
    from utils.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, lambda: run(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
