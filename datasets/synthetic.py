"""Procedurally generated street scenes, written in the Cityscapes layout.

The scenes are simple on purpose: a horizon, sky, buildings, trees, a road in
perspective with sidewalks, and street furniture and road users drawn as
primitives. Every one of the 19 Cityscapes classes gets its own colour (the
official palette), per-instance colour jitter, and for the "stuff" classes a
texture (windows, bricks, hatching, speckle, gradients), plus global lighting
changes, pixel noise and a slight blur, so a small model can learn it on the
CPU in minutes but not from a single pixel value alone.

Labels are written as Cityscapes *label ids* (``*_gtFine_labelIds.png``),
including a few ids that map to the ignore label (ego vehicle, parking,
static), so the id -> train id mapping is exercised.

    python -m datasets.synthetic --root /tmp/synth --num-train 24 --num-val 8 --size 128x256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from datasets.cityscapes_labels import LABELS, NAME_TO_ID
from datasets.errors import DatasetError
from utils.errors import is_disk_full, run_cli
from utils.io import atomic_imwrite, atomic_write_json

PROG = "python -m datasets.synthetic"

TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt",)
MARKER = ".synthetic.json"
PARTIAL = ".synthetic.partial"
LOCK = ".generate.lock"
FORMAT = "hmsa-synthetic/1"

_ID = NAME_TO_ID
# Optional scene elements; image 0 of each split draws all of them so that
# every class is present in every split.
_OPTIONAL = ("terrain", "wall", "fence", "pole", "traffic light", "traffic sign", "person",
             "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "vegetation")


@dataclass
class _Canvas:
    """A label-id map and an instance map drawn together; instances carry a colour offset."""

    height: int
    width: int
    rng: np.random.Generator
    label: np.ndarray = field(init=False)
    inst: np.ndarray = field(init=False)
    offsets: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.label = np.zeros((self.height, self.width), np.uint8)
        self.inst = np.zeros((self.height, self.width), np.int32)
        self.offsets = [np.zeros(3, np.float32)]

    def _new(self, shift: float) -> int:
        jitter = self.rng.normal(0.0, 14.0, 3) + shift
        self.offsets.append(jitter.astype(np.float32))
        return len(self.offsets) - 1

    def poly(self, pts, name: str, shift: float = 0.0) -> None:
        p = [np.round(np.asarray(pts, np.float64)).astype(np.int32)]
        cv2.fillPoly(self.label, p, int(_ID[name]))
        cv2.fillPoly(self.inst, p, self._new(shift))

    def rect(self, x0: float, y0: float, x1: float, y1: float, name: str, shift: float = 0.0) -> None:
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        x1, y1 = max(x1, x0 + 1.6), max(y1, y0 + 1.6)  # at least ~2 px
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], name, shift)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, name: str, shift: float = 0.0) -> None:
        center, axes = (round(cx), round(cy)), (max(1, round(ax)), max(1, round(ay)))
        cv2.ellipse(self.label, center, axes, 0, 0, 360, int(_ID[name]), -1)
        cv2.ellipse(self.inst, center, axes, 0, 0, 360, self._new(shift), -1)


@dataclass(frozen=True)
class _Scene:
    horizon: float  # y of the horizon
    vanish: float  # x of the vanishing point
    road_left: float  # road edge x at the bottom
    road_right: float


def _background(c: _Canvas, s: _Scene, want: set[str]) -> None:
    h, w, rng = c.height, c.width, c.rng
    c.rect(0, 0, w, s.horizon + 1, "sky")
    x = rng.uniform(-0.05, 0.05) * w
    while x < w:
        bw = rng.uniform(0.08, 0.25) * w
        if rng.random() > 0.2:
            c.rect(x, rng.uniform(0.02, 0.3) * h, x + bw, s.horizon + 0.05 * h, "building")
        x += bw
    c.rect(0, s.horizon, w, h, "sidewalk")
    if "terrain" in want:
        side = rng.integers(2)
        x_out, x_in = (0.0, 0.3 * w) if side == 0 else (w, 0.7 * w)
        c.poly([(x_out, s.horizon), (x_in, s.horizon), (x_out, s.horizon + 0.3 * (h - s.horizon))], "terrain")
    half = 0.03 * w
    c.poly([(s.vanish - half, s.horizon), (s.vanish + half, s.horizon), (s.road_right, h), (s.road_left, h)], "road")
    for t in np.linspace(0.15, 0.9, 4):  # dashed centre line: road label, bright paint
        y0, y1 = s.horizon + t * (h - s.horizon), s.horizon + (t + 0.08) * (h - s.horizon)
        xc = s.vanish + (0.5 * (s.road_left + s.road_right) - s.vanish) * t
        c.rect(xc - 0.004 * w - t * 0.006 * w, y0, xc + 0.004 * w + t * 0.006 * w, y1, "road", shift=110.0)
    if rng.random() < 0.4:
        y = s.horizon + rng.uniform(0.3, 0.6) * (h - s.horizon)
        c.rect(s.road_left + 0.02 * w, y, s.road_left + 0.12 * w, y + 0.08 * h, "parking")
    if "vegetation" in want:
        for _ in range(rng.integers(1, 5)):
            c.ellipse(rng.uniform(0, w), s.horizon - rng.uniform(0.0, 0.15) * h,
                      rng.uniform(0.03, 0.09) * w, rng.uniform(0.07, 0.16) * h, "vegetation")
    for name in ("wall", "fence"):
        if name in want:
            x0 = rng.uniform(0.0, 0.75) * w
            c.rect(x0, s.horizon - rng.uniform(0.05, 0.12) * h, x0 + rng.uniform(0.12, 0.25) * w,
                   s.horizon + 0.03 * h, name)


def _furniture(c: _Canvas, s: _Scene, want: set[str]) -> None:
    h, w, rng = c.height, c.width, c.rng
    tops = [n for n in ("traffic light", "traffic sign") if n in want]
    n_poles = max(len(tops), 1 if "pole" in want else 0, int(rng.integers(0, 3)))
    for i in range(n_poles):
        left = rng.random() < 0.5
        x = rng.uniform(0.02, 0.15) * w if left else rng.uniform(0.85, 0.98) * w
        pw, top = max(2.0, 0.008 * w), rng.uniform(0.1, 0.3) * h
        c.rect(x, top, x + pw, s.horizon + rng.uniform(0.1, 0.3) * h, "pole")
        if i < len(tops) and tops[i] == "traffic light":
            c.rect(x - pw, top - 0.02 * h, x + 2 * pw, top + 0.07 * h, "traffic light")
            c.ellipse(x + 0.5 * pw, top + 0.005 * h, pw * 0.6, pw * 0.6, "traffic light", shift=-60.0)
        elif i < len(tops):
            r = max(2.0, 0.025 * h)
            c.ellipse(x + 0.5 * pw, top, r * 1.2, r, "traffic sign")


def _vehicle(c: _Canvas, x: float, yb: float, ht: float, name: str, aspect: float, windows: int) -> None:
    wd = ht * aspect
    c.rect(x, yb - 0.75 * ht, x + wd, yb - 0.1 * ht, name)
    cabin = 0.6 if windows == 0 else 1.0
    c.rect(x + 0.1 * wd, yb - ht, x + (0.1 + 0.8 * cabin) * wd, yb - 0.7 * ht, name, shift=-15.0)
    for k in range(windows):  # dark window row
        wx = x + (0.1 + 0.8 * k / windows) * wd
        c.rect(wx, yb - 0.92 * ht, wx + 0.6 * wd / windows, yb - 0.72 * ht, name, shift=-45.0)
    for fx in (0.2, 0.8):  # wheels
        c.ellipse(x + fx * wd, yb - 0.12 * ht, 0.1 * ht, 0.12 * ht, name, shift=-50.0)


def _two_wheeler(c: _Canvas, x: float, yb: float, ht: float, name: str, rider: bool) -> None:
    wd = 1.3 * ht
    c.ellipse(x + 0.2 * wd, yb - 0.25 * ht, 0.22 * ht, 0.25 * ht, name, shift=-20.0)
    c.ellipse(x + 0.8 * wd, yb - 0.25 * ht, 0.22 * ht, 0.25 * ht, name, shift=-20.0)
    c.rect(x + 0.2 * wd, yb - 0.6 * ht, x + 0.8 * wd, yb - 0.3 * ht, name)
    if rider:
        c.ellipse(x + 0.5 * wd, yb - 1.0 * ht, 0.2 * ht, 0.45 * ht, "rider")
        c.ellipse(x + 0.5 * wd, yb - 1.55 * ht, 0.13 * ht, 0.13 * ht, "rider", shift=20.0)


_VEHICLES = {"car": (0.32, 1.9, 0), "truck": (0.5, 1.6, 1), "bus": (0.55, 2.4, 5), "train": (0.5, 3.8, 7)}


def _road_users(c: _Canvas, s: _Scene, want: set[str]) -> None:
    h, w, rng = c.height, c.width, c.rng
    kinds = [n for n in ("car", "truck", "bus", "train", "motorcycle", "bicycle", "person") if n in want]
    if "rider" in want and not {"motorcycle", "bicycle"} & set(kinds):
        kinds.append("bicycle")
    kinds += list(rng.choice(["car", "person", "car"], size=int(rng.integers(0, 3))))
    ys = s.horizon + rng.uniform(0.25, 0.95, len(kinds)) * (h - s.horizon)
    riders = "rider" in want
    for y, kind in sorted(zip(ys, kinds, strict=True), key=lambda t: t[0]):  # far first
        depth = (y - s.horizon) / (h - s.horizon)
        if kind in _VEHICLES:
            rel, aspect, windows = _VEHICLES[kind]
            ht = rel * h * depth
            _vehicle(c, rng.uniform(-0.1, 0.9) * w, y, ht, kind, aspect, windows)
        elif kind == "person":
            ht = 0.45 * h * depth
            x = rng.uniform(0.02, 0.98) * w
            c.ellipse(x, y - 0.45 * ht, 0.13 * ht, 0.42 * ht, "person")
            c.ellipse(x, y - 0.95 * ht, 0.09 * ht, 0.09 * ht, "person", shift=25.0)
        else:
            ht = 0.22 * h * depth
            _two_wheeler(c, rng.uniform(0.0, 0.9) * w, y, ht, kind, rider=riders)
            riders = riders and rng.random() < 0.5
    if rng.random() < 0.3:
        c.rect(0, h - 0.05 * h, w, h, "ego vehicle")


def _textures(label: np.ndarray, rng: np.random.Generator, horizon: float) -> np.ndarray:
    """A per-pixel brightness offset that depends on the class: the local cue besides colour."""
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w]
    tex = np.zeros((h, w), np.float32)
    period = max(4, round(h / 12))
    patterns = {
        "building": -45.0 * (((xx % period) > period // 4) & ((yy % (period + 2)) > period // 3)),
        "sidewalk": -35.0 * (((xx % period) == 0) | ((yy % max(3, period // 2)) == 0)),
        "wall": -30.0 * ((yy % 4) == 0),
        "fence": -55.0 * (((xx + yy) % 5) < 2),
        "vegetation": rng.normal(0.0, 28.0, (h, w)),
        "terrain": rng.normal(0.0, 14.0, (h, w)),
        "sky": 50.0 * (1.0 - yy / max(horizon, 1.0)),
        "road": cv2.resize(rng.normal(0.0, 10.0, (max(2, h // 16), max(2, w // 16))), (w, h)),
    }
    for name, pattern in patterns.items():
        sel = label == _ID[name]
        tex[sel] = np.asarray(pattern, np.float32)[sel]
    return tex


def render_scene(size: tuple[int, int], rng: np.random.Generator, want: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image_rgb uint8 (H, W, 3), label_ids uint8 (H, W))``."""
    h, w = size
    c = _Canvas(h, w, rng)
    horizon = rng.uniform(0.38, 0.5) * h
    scene = _Scene(horizon, rng.uniform(0.35, 0.65) * w, rng.uniform(-0.15, 0.15) * w, rng.uniform(0.85, 1.15) * w)
    _background(c, scene, want)
    _furniture(c, scene, want)
    _road_users(c, scene, want)
    base = np.zeros((256, 3), np.float32)
    for lb in LABELS:
        if lb.id >= 0:
            base[lb.id] = lb.color if lb.color != (0, 0, 0) else (30, 30, 30)
    img = base[c.label] + np.stack(c.offsets)[c.inst] + _textures(c.label, rng, horizon)[..., None]
    img = img * rng.uniform(0.75, 1.2) + rng.normal(0.0, 6.0, 3) + rng.normal(0.0, 6.0, (h, w, 1))
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (3, 3), 0.6)
    return img, c.label


def _split_items(split: str, count: int) -> list[tuple[str, str]]:
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    return [(cities[i % len(cities)], f"{cities[i % len(cities)]}_{i:06d}_000019") for i in range(count)]


def generate(root: str | os.PathLike, num_train: int = 24, num_val: int = 8,
             size: tuple[int, int] = (128, 256), seed: int = 0) -> Path:
    """Write the dataset under ``root`` (Cityscapes layout); deterministic under ``seed``.

    Every file is written atomically; a marker file ``.synthetic.json`` is
    written last, so a tree with the marker is complete.
    """
    root = Path(root)
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"synthetic images must be at least 32x32, got {h}x{w}")
    everything = set(_OPTIONAL)
    for split_idx, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        for i, (city, stem) in enumerate(_split_items(split, count)):
            rng = np.random.default_rng([seed, split_idx, i])
            want = everything if i == 0 else {n for n in _OPTIONAL if rng.random() < 0.7}
            img, label = render_scene((h, w), rng, want)
            atomic_imwrite(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                           cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            atomic_imwrite(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
    atomic_write_json(root / MARKER, {"format": FORMAT, "num_train": num_train, "num_val": num_val,
                                      "size": [h, w], "seed": seed})
    return root


def is_complete(root: str | os.PathLike) -> bool:
    """True when ``root`` holds a finished synthetic dataset (its marker file)."""
    marker = Path(root) / MARKER
    try:
        return json.loads(marker.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def default_root() -> Path:
    return Path(os.environ.get("SYNTHETIC_ROOT") or Path.home() / ".cache" / "hmsa" / "synthetic")


def ensure(root: str | os.PathLike | None = None, **options) -> Path:
    """Generate the dataset under ``root`` unless it is there; one process generates, others wait."""
    from filelock import FileLock

    root = Path(root) if root is not None else default_root()
    if is_complete(root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / LOCK)):
        if is_complete(root):
            return root
        foreign = sorted(p.name for p in root.iterdir() if p.name not in (LOCK, PARTIAL))
        if foreign and not (root / PARTIAL).exists():
            raise DatasetError(f"{root} is not empty ({', '.join(foreign[:3])}, ...) and holds no synthetic "
                               f"dataset; refusing to write into it: pass an empty or new directory as root")
        (root / PARTIAL).touch()  # an interrupted generation is resumed, not mistaken for foreign files
        generate(root, **options)
        (root / PARTIAL).unlink()
    return root


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--size wants HxW such as 128x256, got {text!r}") from e
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"synthetic images must be at least 32x32, got {h}x{w}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="output directory")
    parser.add_argument("--num-train", type=int, default=24)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--size", type=_parse_size, default=(128, 256), help="HxW, e.g. 128x256")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args: argparse.Namespace) -> int:
    """Generate; a root that cannot be written is the user's to fix (one line, exit 2)."""
    try:
        generate(args.root, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed)
    except OSError as e:
        if is_disk_full(e):
            raise
        raise DatasetError(f"--root {args.root}: cannot write the dataset there ({e.strerror or e}): "
                           "pass a writable directory") from e
    print(f"wrote {args.num_train} train + {args.num_val} val images of {args.size[0]}x{args.size[1]} to {args.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)  # --debug: tracebacks too
    return run_cli(PROG, lambda: run(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    raise SystemExit(main())
