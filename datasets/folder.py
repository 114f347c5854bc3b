"""Unlabelled image trees for inference: discovery, subdirectory ranges, sharding, loading.

Everything here is a pure function of its arguments (no config, no environment):
``predict.py`` resolves the environment (Slurm array, distributed ranks) and passes
plain numbers in.

The dataset never raises for a bad image: ``ds[i]`` returns a record whose ``error``
names what went wrong, so that one corrupt file among millions does not stop a
DataLoader (a worker exception would end the whole iteration).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.errors import DatasetError
from datasets.info import IMAGENET_MEAN, IMAGENET_STD, default_class_names, default_palette  # noqa: F401

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
RASTER_EXTENSIONS = (".tif", ".tiff")
DEFAULT_MAX_PIXELS = 100_000_000


class FolderError(DatasetError):
    """A folder, subdirectory range or shard specification that cannot be used."""


# ---------------------------------------------------------------- discovery


def parse_subdirs(spec: str | None) -> list[tuple[int, int] | str] | None:
    """``"939-986,1001,extra"`` -> ``[(939, 986), (1001, 1001), "extra"]``; ``None``/``""`` -> ``None``.

    Numeric items select top-level subdirectories whose name is an integer in the
    (inclusive) range; other items select a subdirectory by exact name.
    """
    if not spec:
        return None
    out: list[tuple[int, int] | str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if m is None:
            out.append(item)
            continue
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise FolderError(f"--subdirs range {item!r} is empty: write it low-high, e.g. {hi}-{lo}")
        out.append((lo, hi))
    if not out:
        raise FolderError(f"--subdirs {spec!r} selects nothing; use e.g. '939-986' or '12,15-20'")
    return out


def _subdir_selected(name: str, selection: Sequence[tuple[int, int] | str]) -> bool:
    for sel in selection:
        if isinstance(sel, str):
            if name == sel:
                return True
        elif name.isdigit() and sel[0] <= int(name) <= sel[1]:
            return True
    return False


def discover_images(root: str | os.PathLike, subdirs: str | None = None,
                    extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Relative POSIX paths of every image under ``root``, sorted (a stable order on every host).

    Extensions match case-insensitively; hidden files and directories (``.name``,
    e.g. temporary files of an interrupted copy) are skipped. ``subdirs`` (see
    :func:`parse_subdirs`) keeps only the matching top-level subdirectories; files
    directly in ``root`` are then excluded. Each real file is listed once, under its real path
    when that is inside ``root``: a symlink to a file or directory of the tree (an alias, or a
    loop) adds nothing; links to files and directories outside the tree are listed as links.
    """
    root = Path(root)
    if not root.is_dir():
        raise FolderError(f"--eval_folder {str(root)!r} is not a directory")
    exts = tuple(e.lower() for e in extensions)
    selection = parse_subdirs(subdirs)
    real_root = root.resolve()
    found: dict[str, str] = {}  # real path -> the relative path it is listed under
    seen: set[tuple[int, int]] = set()  # (device, inode) of every directory walked
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel_dir = Path(dirpath).relative_to(root)
        if not _walk_here(Path(dirpath), rel_dir, real_root, selection, seen):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # the same walk on every host
        if selection is not None and rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if _subdir_selected(d, selection)]
            continue
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(exts):
                _keep(found, (rel_dir / name).as_posix(), root, real_root)
    if not found:
        where = f" in subdirectories {subdirs!r}" if subdirs else ""
        raise FolderError(f"no images ({', '.join(exts)}) found under {str(root)!r}{where}")
    return sorted(found.values())


def _real_rel(path: Path, real_root: Path) -> str | None:
    """``path``'s real location relative to ``real_root``, or None when it lies outside."""
    try:
        return Path(os.path.realpath(path)).relative_to(real_root).as_posix()
    except ValueError:
        return None


def _walked(rel: str, selection: Sequence[tuple[int, int] | str] | None) -> bool:
    """Whether the walk reaches the directory ``rel`` (relative to the root) under its own path."""
    parts = Path(rel).parts
    if any(p.startswith(".") for p in parts):
        return False
    return selection is None or not parts or _subdir_selected(parts[0], selection)


def _walk_here(dirpath: Path, rel_dir: Path, real_root: Path, selection: Sequence[tuple[int, int] | str] | None,
               seen: set[tuple[int, int]]) -> bool:
    """Walk this directory unless it is an alias (or a loop) of one walked under its real path, or a
    second link to a directory outside the tree."""
    real = _real_rel(dirpath, real_root)
    if real is not None and real != rel_dir.as_posix() and _walked(real, selection):
        return False
    return _first_visit(str(dirpath), seen)


def _keep(found: dict[str, str], rel: str, root: Path, real_root: Path) -> None:
    """List ``rel`` once per real file: under the real path when it is one of the names found."""
    real = os.path.realpath(root / rel)
    if real not in found or _real_rel(root / rel, real_root) == rel:
        found[real] = rel


def _first_visit(dirpath: str, seen: set[tuple[int, int]]) -> bool:
    """True the first time a real directory is reached, however many symlinks lead to it."""
    try:
        st = os.stat(dirpath)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def shard(items: Sequence[str], index: int, count: int) -> list[str]:
    """Every ``count``-th item from ``index``: shards ``0..count-1`` partition ``items`` exactly.

    Strided rather than contiguous so each shard gets a similar mix of subdirectories
    (and image sizes) and the array tasks finish at about the same time.
    """
    if count < 1 or not 0 <= index < count:
        raise FolderError(f"shard {index}/{count} is invalid: need 0 <= index < count")
    return list(items[index::count])


def output_stems(files: Sequence[str]) -> list[str]:
    """Output name (relative, without extension) per input: the stem, or the full name on a clash.

    ``a/x.jpg`` -> ``a/x``; ``a/x.jpg`` and ``a/x.png`` together -> ``a/x.jpg`` and ``a/x.png``.
    """
    stems = [f.rsplit(".", 1)[0] for f in files]
    counts: dict[str, int] = {}
    for s in stems:
        key = s.lower()
        counts[key] = counts.get(key, 0) + 1
    return [f if counts[s.lower()] > 1 else s for f, s in zip(files, stems, strict=True)]


# ---------------------------------------------------------------- loading


def inference_size(height: int, width: int, short_side: int | None, divisor: int = 1) -> tuple[int, int]:
    """(H, W) with the shorter side scaled to ``short_side``, each side rounded to ``divisor``."""
    scale = short_side / min(height, width) if short_side else 1.0
    d = max(1, divisor)
    return max(d, int(round(height * scale / d)) * d), max(d, int(round(width * scale / d)) * d)


class ImageLoadError(RuntimeError):
    """An image that cannot be read; the message is the reason written to the failures report."""


def read_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to ``(H, W, 3)`` uint8 RGB, checking the size from the header first.

    Pixels are kept in stored order (EXIF orientation is not applied), so outputs
    line up with the file's own pixel grid. Truncated files raise instead of
    decoding to grey.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(f"too large: {width}x{height} pixels > --max_pixels {max_pixels}")
                img.load()
                rgb = _to_rgb8(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"too large: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError("unreadable: not a recognised image format") from e
    except FileNotFoundError as e:
        raise ImageLoadError(_missing_reason(Path(path))) from e
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncation/corruption as these
        raise ImageLoadError(f"corrupt: {e}") from e
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageLoadError(f"unreadable: decoded to shape {rgb.shape}")
    return rgb


def _missing_reason(path: Path) -> str:
    if path.is_symlink():
        return f"dangling symlink: {path.name} points to {os.readlink(path)}, which does not exist"
    return "missing: the file was removed after the folder was listed"


# 16-bit grey (PNG/TIFF). PIL's own convert("RGB") clips these at 255: 99% of a photo turned white.
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb8(img) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; 16-bit images are scaled from 0..65535 (PIL scales 16-bit RGB itself)."""
    if img.mode in _GREY16_MODES:
        grey = np.asarray(img)
        if grey.size and (int(grey.min()) < 0 or int(grey.max()) > 65535):
            raise ImageLoadError(f"unsupported: {img.mode} image with values outside 0..65535; "
                                 "convert it to 8 or 16 bits per channel")
        grey8 = ((grey.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if img.mode == "F":
        raise ImageLoadError("unsupported: 32-bit float image; convert it to 8 or 16 bits per channel "
                             "(or read it as a GeoTIFF raster, which standardises its own range)")
    return np.array(img.convert("RGB"))  # a writable copy


def to_model_input(rgb: np.ndarray, size: tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Resize (area for shrinking, bilinear for enlarging) and normalise to a ``(3, H, W)`` tensor."""
    import cv2

    h, w = size
    if rgb.shape[:2] != (h, w):
        interp = cv2.INTER_AREA if h * w < rgb.shape[0] * rgb.shape[1] else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (w, h), interpolation=interp)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # one value per band
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)


class FolderDataset(Dataset):
    """Images under ``root`` for inference (``build_dataset("folder", root=DIR)``).

    ``ds[i]`` is ``{"image": FloatTensor (3, h, w) normalised with ``mean``/``std`` (RGB, 0..1 scale;
    predict.py passes the checkpoint's, ImageNet's by default) at inference size,
    "name": relative path, "index": i, "size": (H, W) original, "error": ""}``; with
    ``keep_original=True`` also ``"original"``: uint8 ``(H, W, 3)`` RGB (for overlays). A
    bad image gives ``error`` = the reason, an empty ``image`` and ``size`` ``(0, 0)``.
    ``transform``, when given, replaces resizing and normalisation; it follows
    ``datasets.transforms``' convention: ``transform(rgb_uint8, None) -> (tensor, None)``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "folder", cv: int = 0,
                 transform: Callable | None = None, *,
                 files: Sequence[str] | None = None, subdirs: str | None = None,
                 short_side: int | None = None, size_divisor: int = 1,
                 max_pixels: int = DEFAULT_MAX_PIXELS, keep_original: bool = False,
                 num_classes: int = 19, ignore_index: int = 255,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        del split, cv  # accepted for build_dataset's common signature; a folder has no splits
        self.root = Path(root)
        self.files = list(files) if files is not None else discover_images(self.root, subdirs)
        self.transform = transform
        self.short_side = short_side
        self.size_divisor = size_divisor
        self.max_pixels = max_pixels
        self.keep_original = keep_original
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = default_class_names(num_classes)
        self.palette = default_palette(num_classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        name = self.files[index]
        record: dict = {"name": name, "index": index, "error": ""}
        try:
            rgb = read_rgb(self.root / name, self.max_pixels)
        except ImageLoadError as e:
            record.update(image=torch.empty(3, 0, 0), size=(0, 0), error=str(e))
            if self.keep_original:
                record["original"] = torch.empty(0, 0, 3, dtype=torch.uint8)
            return record
        size = inference_size(rgb.shape[0], rgb.shape[1], self.short_side, self.size_divisor)
        if self.transform is not None:
            image = self.transform(rgb, None)[0]
        else:
            image = to_model_input(rgb, size, self.mean, self.std)
        record.update(image=image, size=tuple(rgb.shape[:2]))
        if self.keep_original:
            record["original"] = torch.from_numpy(rgb)
        return record
