"""Run logging on rank 0: runx ``logx`` (metrics.csv for ``python -m runx.sumx``, hparams.json,
logging.log), its TensorBoard writer (loss, lr, mIoU, per-class IoU, images) and
``metrics.jsonl`` (one JSON object per log step and per validation, flushed as written).

Train and validation scalars share one TensorBoard step, the optimizer iteration, so their
x-axes line up; metrics.csv keeps runx's ``epoch`` column for sumx.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

JSONL = "metrics.jsonl"


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (killed mid-write) is skipped."""
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_jsonl(path: str | os.PathLike, iteration: int, epoch_closed: bool) -> None:
    """Drop the rows a resumed run will write again: train rows past ``iteration``, validation
    rows from ``iteration`` on unless the epoch that ended there was closed (validated, saved)."""
    from utils.io import atomic_write_text

    p = Path(path)
    if not p.exists():
        return
    rows = read_jsonl(p)

    def keep(r: dict[str, Any]) -> bool:
        it = r.get("iteration", 0)
        if r.get("phase") == "val":
            return it < iteration or (it == iteration and epoch_closed)
        return it <= iteration

    kept = [r for r in rows if keep(r)]
    atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in kept))


def _val_epochs(path: str) -> set[str]:
    """Epochs that already have a ``val`` row in runx's metrics.csv (``val,k,v,...,epoch,E,...``)."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0] == "val" and "epoch" in r[:-1]]
    except OSError:
        return set()
    return {r[r.index("epoch") + 1] for r in rows}


class RunLogger:
    def __init__(self, result_dir: str, rank: int, hparams: dict[str, Any] | None = None):
        from runx.logx import LogX  # an instance of our own: no global logger

        self.rank0 = rank == 0
        self.jsonl_path = Path(result_dir) / JSONL
        self.logx = LogX()
        self.logx.initialize(logdir=str(result_dir), tensorboard=True, hparams=hparams,
                             global_rank=rank, eager_flush=False)
        self.val_epochs = _val_epochs(os.path.join(str(result_dir), "metrics.csv"))

    def msg(self, text: str) -> None:
        self.logx.msg(text)  # prints and appends to logging.log, rank 0 only

    def start_training(self, iteration: int, epoch_closed: bool) -> None:
        """Called once the start position is known (0 or the resume point)."""
        if self.rank0:
            truncate_jsonl(self.jsonl_path, iteration, epoch_closed)

    def _row(self, row: dict[str, Any]) -> None:
        with open(self.jsonl_path, "a") as f:  # appended and flushed per log step
            f.write(json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")

    def train_step(self, iteration: int, loss: float, lr: float, **extra: Any) -> None:
        """TensorBoard ``train/*`` and a ``train`` row (``extra``: epoch, images_per_s, eta_s)."""
        if not self.rank0:
            return
        scalars = {"loss": loss, "lr": lr}
        if "images_per_s" in extra:
            scalars["images_per_s"] = extra["images_per_s"]
        for k, v in scalars.items():
            if v is not None and math.isfinite(v):
                self.logx.add_scalar(f"train/{k}", v, iteration)
        self._row({"phase": "train", "iteration": iteration, "loss": loss, "lr": lr, **extra, "time": time.time()})
        self.logx.log_file.write(f"train iteration {iteration} loss {loss:.4f} lr {lr:.3e}\n")
        self.logx.log_file.flush()

    def val(self, epoch: int, metrics: dict[str, Any], class_names: Sequence[str], iteration: int = 0) -> None:
        """A ``val`` line in metrics.csv (read by runx.sumx), a ``val`` JSONL row, TensorBoard
        scalars at step ``iteration``."""
        if not self.rank0:
            return
        summary = {"mean_iu": metrics["miou"], "pixel_acc": metrics["pixel_acc"],
                   "mean_class_acc": metrics["mean_class_acc"], "fwiou": metrics["fwiou"]}
        if str(epoch) not in self.val_epochs:  # re-validated after a kill before last.pth: one row per epoch
            self.val_epochs.add(str(epoch))
            row: list[Any] = ["val"]
            for k, v in {**summary, "epoch": epoch, "iteration": iteration, "timestamp": time.time()}.items():
                row += [k, v]
            self.logx.metrics_writer.writerow(row)
            self.logx.metrics_fp.flush()
        for k, v in summary.items():
            self.logx.add_scalar(f"val/{k}", v, iteration)
        for name, iou in zip(class_names, metrics["per_class_iou"], strict=True):
            if not math.isnan(iou):
                self.logx.add_scalar(f"val_iou/{name}", iou, iteration)
        self._row({"phase": "val", "iteration": iteration, "epoch": epoch, **summary, "time": time.time()})
        self.flush()
        self.plot_curves()

    def plot_curves(self) -> None:
        """``curves.png`` (loss, lr, validation mIoU against the iteration) from metrics.jsonl,
        redrawn at each validation, so the last one is the whole run's."""
        from utils.figures import curves_figure, write_png

        rows = read_jsonl(self.jsonl_path)
        if self.rank0 and any(r.get("phase") == "train" for r in rows):
            write_png(self.jsonl_path.with_name("curves.png"), curves_figure(rows, self.jsonl_path.parent.name))

    def image(self, tag: str, image_rgb: np.ndarray, step: int) -> None:
        self.logx.tensorboard.add_image(tag, image_rgb, step, dataformats="HWC")

    def flush(self) -> None:
        if self.rank0 and self.logx.tb_writer is not None:
            self.logx.tb_writer.flush()

    def close(self) -> None:
        if self.rank0:
            if self.logx.tb_writer is not None:
                self.logx.tb_writer.close()
            self.logx.metrics_fp.close()
            self.logx.log_file.close()
            self.logx.initialized = False
