"""Segmentation metrics from a confusion matrix that lives on the device and all-reduces."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class ``t`` predicted as ``p``; ignored pixels skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch: ``target`` and ``pred`` integer tensors of the same shape."""
        if target.shape != pred.shape:
            raise ValueError(f"target {tuple(target.shape)} and prediction {tuple(pred.shape)} differ")
        n = self.num_classes
        t = target.reshape(-1).to(self.mat.device, torch.int64)
        p = pred.reshape(-1).to(self.mat.device, torch.int64)
        keep = (t >= 0) & (t < n) & (t != self.ignore_index)
        self.mat += torch.bincount(t[keep] * n + p[keep].clamp(0, n - 1), minlength=n * n).view(n, n)

    def reset(self) -> None:
        self.mat.zero_()

    def all_reduce(self) -> None:
        """Sum the matrices of all ranks (no-op without a process group)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def compute(self) -> dict[str, Any]:
        """mIoU over classes present in target or prediction, per-class IoU (NaN if absent), accuracy."""
        h = self.mat.double().cpu()
        tp = torch.diag(h)
        gt = h.sum(1)
        union = gt + h.sum(0) - tp
        iou = tp / union  # NaN where the class is neither present nor predicted
        acc_cls = tp / gt
        total = h.sum()
        freq = gt / total if total > 0 else gt
        valid = ~torch.isnan(iou)
        return {
            "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_class_acc": float(acc_cls[~torch.isnan(acc_cls)].mean()) if total > 0 else float("nan"),
            "fwiou": float((freq[valid] * iou[valid]).sum()),
            "per_class_iou": [float(x) for x in iou],
            "pixels": int(total),
            "confusion_matrix": self.mat.cpu().tolist(),  # written beside metrics.json, not into it
        }


def format_table(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class IoU table (percent) plus the summary lines, for the console and logs."""
    width = max([len(n) for n in class_names] + [5])
    lines = [f"{'id':>3}  {'class':<{width}}  {'IoU':>6}"]
    for i, (name, iou) in enumerate(zip(class_names, metrics["per_class_iou"], strict=True)):
        val = "   n/a" if iou != iou else f"{100 * iou:6.2f}"
        lines.append(f"{i:>3}  {name:<{width}}  {val}")
    lines.append("-" * (width + 13))
    lines.append(f"{'':>3}  {'mIoU':<{width}}  {100 * metrics['miou']:6.2f}")
    lines.append(f"{'':>3}  {'pixel acc':<{width}}  {100 * metrics['pixel_acc']:6.2f}")
    return "\n".join(lines)


def per_class_csv(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class_id", "class_name", "iou"])
    for i, (name, iou) in enumerate(zip(class_names, metrics["per_class_iou"], strict=True)):
        w.writerow([i, name, "" if iou != iou else f"{iou:.6f}"])
    return buf.getvalue()


def confusion_csv(mat: Any, class_names: Sequence[str]) -> str:
    """Pixel counts: one row per true class, one column per predicted class, names as headers."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, mat, strict=True):
        w.writerow([name, *(int(v) for v in row)])
    return buf.getvalue()


def write_confusion(result_dir: str | os.PathLike, mat: Any, class_names: Sequence[str], title: str = "") -> None:
    """``confusion_matrix.csv``/``.npy`` (counts) and ``confusion_matrix.png`` (rows normalised)."""
    import numpy as np

    from utils.figures import confusion_figure, write_png
    from utils.io import atomic_path, atomic_write_text

    counts = np.asarray(mat, dtype=np.int64)
    atomic_write_text(os.path.join(result_dir, "confusion_matrix.csv"), confusion_csv(counts, class_names))
    with atomic_path(os.path.join(result_dir, "confusion_matrix.npy")) as tmp:
        np.save(tmp, counts, allow_pickle=False)
    write_png(os.path.join(result_dir, "confusion_matrix.png"), confusion_figure(counts, class_names, title))


def write_metrics(result_dir: str | os.PathLike, metrics: dict[str, Any],
                  class_names: Sequence[str], extra: dict[str, Any] | None = None) -> None:
    """``metrics.json``, ``per_class_iou.csv`` and the confusion matrix in ``result_dir``, atomically."""
    from utils.io import atomic_write_json, atomic_write_text

    out = dict(metrics)
    mat = out.pop("confusion_matrix", None)
    if mat is not None:
        where = f"epoch {out['epoch']}, iteration {out['iteration']}: " if "iteration" in out else ""
        write_confusion(result_dir, mat, class_names,
                        f"Confusion matrix, {where}rows normalised (true class); grey: absent")
    out["per_class_iou"] = {n: (None if v != v else v)
                            for n, v in zip(class_names, metrics["per_class_iou"], strict=True)}
    out.update(extra or {})
    atomic_write_json(os.path.join(result_dir, "metrics.json"), out)
    atomic_write_text(os.path.join(result_dir, "per_class_iou.csv"), per_class_csv(metrics, class_names))
