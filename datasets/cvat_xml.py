"""Read CVAT's "CVAT for images 1.1" export (``annotations.xml``) and draw class-id label maps.

Drawn, in increasing ``z_order`` (document order within one z_order; later over earlier):
``<polygon>`` (a pixel belongs to it when its centre is inside; CVAT's pixel (x, y) spans
[x, x+1) x [y, y+1)), ``<mask>`` (CVAT's run lengths over its ``width x height`` box at
``left, top``, row by row, starting with a run of 0s) and, with ``boxes=True``, ``<box>``
(turned by its ``rotation``, degrees clockwise). ``<tag>`` (whole-image labels) is not drawn.
Other children of ``<image>`` (polyline, points, ellipse, cuboid, skeleton, boxes without
``boxes``) are refused in one line unless ``skip_unsupported`` (then counted and left out).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.errors import DatasetError

DRAWN = ("polygon", "mask")
NOT_DRAWN = ("tag",)
Color = tuple[int, int, int]


@dataclass(frozen=True)
class Shape:
    kind: str  # polygon, box or mask
    label: str
    z_order: int
    points: np.ndarray | None = None  # polygon and box: (N, 2) x, y
    rle: tuple[int, int, int, int, np.ndarray] | None = None  # mask: left, top, width, height, run lengths


@dataclass
class Frame:
    """One ``<image>``: its file name (relative to ``images/``), size, CVAT subset and shapes."""

    name: str
    width: int
    height: int
    subset: str
    shapes: list[Shape] = field(default_factory=list)


@dataclass
class Annotations:
    labels: list[tuple[str, Color | None]]  # <meta>'s labels in order (colour None when not given)
    frames: list[Frame]
    skipped: Counter[str] = field(default_factory=Counter)  # shape kind -> how many were left out


def read_annotations(path: Path, boxes: bool = False, skip_unsupported: bool = False) -> Annotations:
    """Parse ``annotations.xml``; every problem is a :class:`DatasetError` naming the image and the fix."""
    reader = _Reader(path, boxes, skip_unsupported)
    try:
        with open(path, "rb") as f:
            for event, el in ET.iterparse(f, events=("start", "end")):
                reader.element(event, el)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror or e})") from e
    except ET.ParseError as e:
        raise DatasetError(f"{path}: not well-formed XML ({e}); export the task again") from e
    reader.refuse_unsupported()
    return Annotations(reader.labels, reader.frames, reader.skipped if skip_unsupported else Counter())


class _Reader:
    """Streams ``annotations.xml``: each ``<image>`` is parsed when it closes, then dropped."""

    def __init__(self, path: Path, boxes: bool, skip_unsupported: bool) -> None:
        self.path, self.boxes, self.skip = path, boxes, skip_unsupported
        self.labels: list[tuple[str, Color | None]] = []
        self.frames: list[Frame] = []
        self.skipped: Counter[str] = Counter()
        self.first_skipped: dict[str, tuple[str, str]] = {}  # kind -> (label, image) of its first one
        self.subset = "default"
        self.root_seen = False

    def element(self, event: str, el: ET.Element) -> None:
        if event == "start":
            if not self.root_seen and el.tag != "annotations":
                raise DatasetError(f"{self.path}: root element is <{el.tag}>, not <annotations>: not a CVAT "
                                   "XML export; export as 'CVAT for images 1.1'")
            self.root_seen = True
            if el.tag == "track":
                raise DatasetError(f"{self.path} holds <track>s: a 'CVAT for video 1.1' export; export the task "
                                   "as 'CVAT for images 1.1' instead")
        elif el.tag == "meta":
            self.meta(el)
        elif el.tag == "image":
            self.frames.append(self.frame(el))
            el.clear()

    def meta(self, meta: ET.Element) -> None:
        for owner in ("task", "project", "job"):
            node = meta.find(owner)
            if node is None:
                continue
            if owner == "task" and (node.findtext("subset") or "").strip():
                self.subset = (node.findtext("subset") or "").strip()
            labels = node.find("labels")
            if labels is not None and not self.labels:
                self.labels = [(name, parse_color(lab.findtext("color"))) for lab in labels.findall("label")
                               if (name := (lab.findtext("name") or "").strip())
                               and not (lab.findtext("parent") or "").strip()]  # skeleton points: no area

    def frame(self, el: ET.Element) -> Frame:
        name = el.get("name") or ""
        try:
            width, height = int(el.get("width", "")), int(el.get("height", ""))
        except ValueError as e:
            raise DatasetError(f"{self.path}: <image name={name!r}> has no integer width and height") from e
        frame = Frame(name, width, height, el.get("subset") or self.subset)
        for child in el:
            kind = child.tag
            if kind in DRAWN or (kind == "box" and self.boxes):
                frame.shapes.append(self.shape(child, frame))
            elif kind not in NOT_DRAWN:
                self.skipped[kind] += 1
                self.first_skipped.setdefault(kind, (child.get("label", "?"), name))
        return frame

    def shape(self, el: ET.Element, frame: Frame) -> Shape:
        label = el.get("label", "").strip()
        try:
            z = int(el.get("z_order", "0"))
            if el.tag == "polygon":
                return Shape("polygon", label, z, points=_points(el.get("points", "")))
            if el.tag == "box":
                return Shape("box", label, z, points=_box(el))
            return Shape("mask", label, z, rle=_rle(el))
        except (ValueError, TypeError) as e:
            raise DatasetError(f"{self.path}: image {frame.name!r}: <{el.tag} label={label!r}> is malformed "
                               f"({e}); fix or delete it in CVAT and export again") from e

    def refuse_unsupported(self) -> None:
        if not self.skipped or self.skip:
            return
        kinds = sorted(self.skipped, key=lambda k: (k == "box", k))  # shapes without an area first
        kind = kinds[0]
        label, image = self.first_skipped[kind]
        counts = ", ".join(f"{self.skipped[k]} {k}" for k in kinds)
        fix = ("pass --boxes to fill boxes with their label, or --skip_unsupported to leave them out"
               if kind == "box" else "delete them in CVAT (or draw polygons), or pass --skip_unsupported to "
               "leave them out")
        raise DatasetError(f"{self.path} holds shapes that are not drawn into label maps ({counts}; first: "
                           f"{kind} {label!r} in image {image!r}): {fix}")


def parse_color(text: str | None) -> Color | None:
    m = re.fullmatch(r"\s*#([0-9a-fA-F]{6})\s*", text or "")
    if m is None:
        return None
    v = int(m.group(1), 16)
    return v >> 16, (v >> 8) & 255, v & 255


def _points(text: str) -> np.ndarray:
    pts = np.array([[float(v) for v in p.split(",")] for p in text.strip().split(";")], np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise ValueError(f"points {text[:40]!r}: expected at least 3 'x,y' pairs separated by ';'")
    return pts


def _box(el: ET.Element) -> np.ndarray:
    x0, y0, x1, y1 = (float(el.get(k, "")) for k in ("xtl", "ytl", "xbr", "ybr"))
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    angle = math.radians(float(el.get("rotation", "0")))
    if angle:  # clockwise on screen (y points down) about the centre
        c, s = math.cos(angle), math.sin(angle)
        centre = corners.mean(axis=0)
        corners = (corners - centre) @ np.array([[c, s], [-s, c]]) + centre
    return corners


def _rle(el: ET.Element) -> tuple[int, int, int, int, np.ndarray]:
    left, top, width, height = (int(el.get(k, "")) for k in ("left", "top", "width", "height"))
    counts = np.array([int(v) for v in el.get("rle", "").split(",") if v.strip()], np.int64)
    if width <= 0 or height <= 0 or (counts < 0).any() or counts.sum() != width * height:
        raise ValueError(f"run lengths sum to {int(counts.sum())}, not width x height = {width * height}")
    return left, top, width, height, counts


def draw(frame: Frame, class_ids: Mapping[str, int], background: int) -> np.ndarray:
    """The ``(height, width)`` uint8 class-id map of ``frame``; unannotated pixels get ``background``."""
    out = np.full((frame.height, frame.width), background, np.uint8)
    for shape in sorted(frame.shapes, key=lambda s: s.z_order):  # stable: document order within a z_order
        value = class_ids[shape.label]
        if shape.points is not None:
            fill_polygon(out, shape.points, value)
        elif shape.rle is not None:
            left, top, w, h, counts = shape.rle
            mask = np.repeat(np.arange(len(counts)) % 2 == 1, counts).reshape(h, w)
            y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, out.shape[0]), min(left + w, out.shape[1])
            if y1 > y0 and x1 > x0:
                out[y0:y1, x0:x1][mask[y0 - top:y1 - top, x0 - left:x1 - left]] = value
    return out


def fill_polygon(out: np.ndarray, points: np.ndarray, value: int) -> None:
    """Set the pixels whose centre lies inside ``points`` (even-odd rule) to ``value``, in place."""
    h, w = out.shape
    a, b = points, np.roll(points, -1, axis=0)  # edges a -> b
    lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    r0 = np.clip(np.ceil(lo - 0.5), 0, h).astype(np.int64)  # rows whose centre y + 0.5 is in [lo, hi)
    r1 = np.clip(np.ceil(hi - 0.5), 0, h).astype(np.int64)
    n = np.maximum(r1 - r0, 0)
    if not n.any():
        return
    edge = np.repeat(np.arange(len(a)), n)
    rows = r0[edge] + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    t = (rows + 0.5 - a[edge, 1]) / (b[edge, 1] - a[edge, 1])
    xs = a[edge, 0] + t * (b[edge, 0] - a[edge, 0])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    cols = np.clip(np.ceil(xs - 0.5), 0, w).astype(np.int64)  # first column whose centre is right of x
    top, left = int(rows[0]), int(cols.min())  # work in the polygon's bounding box only
    inside = np.zeros((int(rows[-1]) + 1 - top, int(cols.max()) + 1 - left), np.int32)
    np.add.at(inside, (rows[0::2] - top, cols[0::2] - left), 1)  # crossings pair up in a row: [start, end)
    np.add.at(inside, (rows[1::2] - top, cols[1::2] - left), -1)
    box = out[top:top + inside.shape[0], left:left + inside.shape[1] - 1]
    box[np.cumsum(inside, axis=1)[:, :-1] > 0] = value
