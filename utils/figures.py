"""Labelled pictures people read: prediction panels with titles and a class legend, attention maps
with a colour bar, the row-normalised confusion matrix, training curves.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global figure state), returned
as (H, W, 3) uint8 RGB arrays; callers write them atomically (:func:`write_png`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_ANNOTATED = 25  # confusion cells carry their percentage up to this many classes


def _figure(width_in: float, height_in: float, dpi: int = 100) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")


def render(fig: Any) -> np.ndarray:
    """The figure as (H, W, 3) uint8 RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    from utils.io import atomic_imwrite

    atomic_imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))


def _legend(fig: Any, class_ids: Sequence[int], class_names: Sequence[str], palette: np.ndarray) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=_rgb01(palette[c]), edgecolor="black", linewidth=0.5,
                     label=class_names[c] if c < len(class_names) else f"class_{c}") for c in class_ids]
    if handles:
        ncol = min(len(handles), 6)
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)


def _rgb01(color: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(v) / 255.0 for v in color[:3])
    return (r, g, b)


def labelled_panel(images: Sequence[tuple[str, np.ndarray]], class_ids: Sequence[int],
                   class_names: Sequence[str], palette: np.ndarray) -> np.ndarray:
    """Side-by-side pictures, a title over each, and a legend of ``class_ids`` (name + colour)."""
    h, w = images[0][1].shape[:2]
    panel_w = 4.0
    rows_of_legend = -(-len(class_ids) // 6) if class_ids else 0
    fig = _figure(panel_w * len(images), panel_w * h / w + 0.5 + 0.25 * rows_of_legend)
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for ax, (title, rgb) in zip(axes, images, strict=True):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    _legend(fig, class_ids, class_names, palette)
    return render(fig)


def attention_figure(values: np.ndarray, title: str) -> np.ndarray:
    """An (H, W) map in [0, 1] with the inferno scale and a labelled colour bar."""
    h, w = values.shape
    fig = _figure(5.0, 4.0 * h / w + 0.9)
    ax = fig.subplots()
    im = ax.imshow(np.clip(np.nan_to_num(values.astype(np.float32)), 0, 1), cmap="inferno", vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, shrink=0.9, label="attention weight")
    return render(fig)


def normalise_rows(mat: np.ndarray) -> np.ndarray:
    """Each row (true class) divided by its pixel count; rows without pixels are NaN."""
    mat = np.asarray(mat, dtype=np.float64)
    totals = mat.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, mat / np.where(totals > 0, totals, 1), np.nan)


def confusion_figure(mat: np.ndarray, class_names: Sequence[str], title: str = "") -> np.ndarray:
    """Row-normalised confusion matrix: row = true class, column = predicted class."""
    k = len(class_names)
    norm = normalise_rows(mat)
    side = max(5.0, 0.32 * k + 2.5)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    cmap = _cmap("Blues")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(k), labels=class_names, rotation=90, fontsize=7 if k > 25 else 8)
    ax.set_yticks(range(k), labels=class_names, fontsize=7 if k > 25 else 8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix (each row normalised to 1; grey: class absent)", fontsize=10)
    if k <= MAX_ANNOTATED:
        size = 10 if k <= 8 else 8 if k <= 15 else 6
        for (r, c), v in np.ndenumerate(norm):
            if v == v and v >= 0.005:
                ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=size,
                        color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class's pixels")
    return render(fig)


def _cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#d0d0d0")


def smooth_curve(values: Sequence[float], half_width: int | None = None) -> list[float]:
    """Centred moving mean: each point averages ``half_width`` neighbours on either side (fewer at the
    ends, where the window shrinks symmetrically, so the first and last values are the raw ones).

    A trailing EMA started at the first value lags the data: on a falling loss it runs above almost
    every raw point of a short run. The centred mean runs through the data (exactly through a
    straight line). Default ``half_width``: 1/20 of the points, at least 1.
    """
    n = len(values)
    h = max(1, round(n / 20)) if half_width is None else half_width
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=np.float64))])
    out = []
    for i in range(n):
        k = min(h, i, n - 1 - i)
        out.append(float((prefix[i + k + 1] - prefix[i - k]) / (2 * k + 1)))
    return out


def curves_figure(rows: Sequence[dict[str, Any]], title: str = "") -> np.ndarray:
    """Training loss (raw and smoothed), learning rate and validation mIoU against the iteration."""
    train = [r for r in rows if r.get("phase") == "train" and isinstance(r.get("loss"), (int, float))]
    val = [r for r in rows if r.get("phase") == "val" and isinstance(r.get("mean_iu"), (int, float))]
    fig = _figure(12.0, 3.6)
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    its = [r["iteration"] for r in train]
    losses = [r["loss"] for r in train]
    ax_loss.plot(its, losses, color="#9ecae1", linewidth=0.8, label="loss")
    half = max(1, round(len(losses) / 20))
    ax_loss.plot(its, smooth_curve(losses, half), color="#08519c", linewidth=1.5,
                 label=f"smoothed (centred mean of {2 * half + 1})")
    ax_loss.set(title="training loss", xlabel="iteration", ylabel="loss")
    ax_loss.legend(fontsize=8)
    ax_lr.plot(its, [r.get("lr") for r in train], color="#31a354")
    ax_lr.set(title="learning rate", xlabel="iteration", ylabel="lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_val.plot([r["iteration"] for r in val], [100 * r["mean_iu"] for r in val], "o-", color="#d95f0e",
                label="mIoU")
    if any(isinstance(r.get("pixel_acc"), (int, float)) for r in val):
        ax_val.plot([r["iteration"] for r in val], [100 * (r.get("pixel_acc") or 0) for r in val], "s--",
                    color="#756bb1", label="pixel accuracy")
    ax_val.set(title="validation", xlabel="iteration", ylabel="%")
    ax_val.legend(fontsize=8)
    for ax in (ax_loss, ax_lr, ax_val):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return render(fig)
