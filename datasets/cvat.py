"""Convert a CVAT "Segmentation mask 1.1" export into the described layout (datasets/spec.py).

    python -m datasets.cvat EXPORT_DIR OUT_DIR

The export holds ``labelmap.txt`` (``name:r,g,b:parts:actions`` per class), ``JPEGImages/``,
``SegmentationClass/<stem>.png`` (colour masks) and ``ImageSets/Segmentation/<split>.txt``.
The output is ``OUT/images/<split>/``, ``OUT/labels/<split>/<stem>.png`` (class ids, 255 for
colours not in the label map) and ``OUT/dataset.yaml``; train with
``--dataset custom --dataset_root OUT_DIR``. Files are written atomically; problems (missing
masks or images, unknown colours) are listed and the rest is converted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from datasets.custom import IGNORE, LabelDecoder
from datasets.errors import DatasetError
from datasets.info import ClassInfo

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


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


def dataset_yaml(name: str, classes: tuple[ClassInfo, ...], splits: list[str]) -> str:
    lines = ["# converted from a CVAT 'Segmentation mask 1.1' export by python -m datasets.cvat",
             f"name: {name}", "label_encoding: ids", "ignore_index: 255", "classes:"]
    lines += [f"  - {{id: {c.id}, name: {_quote(c.name)}, color: [{c.color[0]}, {c.color[1]}, {c.color[2]}]}}"
              for c in classes]
    lines += ["images: images/{split}/*", "labels: labels/{split}/{stem}.png",
              "splits: {" + ", ".join(f"{s}: {s}" for s in splits) + "}"]
    return "\n".join(lines) + "\n"


def _quote(name: str) -> str:
    import json

    return json.dumps(name)  # JSON strings are YAML strings: spaces, colons and quotes stay intact


def convert(export: str | Path, out: str | Path, progress: bool = True) -> list[tuple[str, str]]:
    """Convert ``export`` into ``out``; returns the problems (path, reason), also printed by :func:`main`."""
    from tqdm import tqdm

    from utils.io import atomic_write_text

    export, out = Path(export), Path(out)
    classes = read_labelmap(export / "labelmap.txt")
    decoder = LabelDecoder("rgb", tuple(c.id for c in classes), tuple(c.color for c in classes))
    splits, problems = read_splits(export), []
    for split, stems in splits.items():
        for stem in tqdm(stems, desc=f"convert {split}", unit="img", disable=not progress):
            mask, image = export / "SegmentationClass" / f"{stem}.png", _find_image(export, stem)
            if image is None or not mask.is_file():
                problems.append((stem, "no image in JPEGImages/" if image is None else f"no mask {mask}"))
                continue
            try:
                unknown = convert_mask(mask, out / "labels" / split / f"{stem}.png", decoder)
            except (DatasetError, OSError) as e:
                problems.append((str(mask), str(e)))
                continue
            _copy(image, out / "images" / split / image.name)
            if unknown:
                problems.append((str(mask), f"{unknown} pixels in colours not in labelmap.txt (now ignored, 255)"))
    atomic_write_text(out / "dataset.yaml", dataset_yaml(out.resolve().name, classes, list(splits)))
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datasets.cvat", description=__doc__.split("\n")[0])
    p.add_argument("export_dir", type=Path, help="unpacked CVAT 'Segmentation mask 1.1' export")
    p.add_argument("out_dir", type=Path, help="output dataset root (gets dataset.yaml)")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    try:
        problems = convert(args.export_dir, args.out_dir, progress=not args.no_progress)
    except DatasetError as e:
        print(f"python -m datasets.cvat: error: {e}", file=sys.stderr)
        return 2
    for path, why in problems:
        print(f"  {path}: {why}", file=sys.stderr)
    splits = list(read_splits(args.export_dir))
    print(f"wrote {args.out_dir / 'dataset.yaml'} (splits {', '.join(splits)}); "
          f"{len(problems)} problem(s). Train: python train.py --dataset custom --dataset_root {args.out_dir}")
    if "val" not in splits:
        print("note: the export has no 'val' subset; add one in CVAT or edit 'splits' in dataset.yaml",
              file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
