"""Run logging on rank 0: runx ``logx`` (metrics.csv for ``python -m runx.sumx``, hparams.json,
logging.log) and its TensorBoard writer (loss, lr, mIoU, per-class IoU, images)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np


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
        self.logx = LogX()
        self.logx.initialize(logdir=str(result_dir), tensorboard=True, hparams=hparams,
                             global_rank=rank, eager_flush=False)
        self.val_epochs = _val_epochs(os.path.join(str(result_dir), "metrics.csv"))

    def msg(self, text: str) -> None:
        self.logx.msg(text)  # prints and appends to logging.log, rank 0 only

    def train_step(self, iteration: int, loss: float, lr: float) -> None:
        self.logx.metric("train", {"loss": loss, "lr": lr}, iteration)

    def val(self, epoch: int, metrics: dict[str, Any], class_names: Sequence[str]) -> None:
        """A ``val`` line in metrics.csv (read by runx.sumx) and TensorBoard scalars."""
        summary = {"mean_iu": metrics["miou"], "pixel_acc": metrics["pixel_acc"],
                   "mean_class_acc": metrics["mean_class_acc"], "fwiou": metrics["fwiou"]}
        if str(epoch) in self.val_epochs:  # re-validated after a kill before last.pth: one row per epoch
            return
        self.val_epochs.add(str(epoch))
        self.logx.metric("val", summary, epoch)
        if self.rank0:
            for name, iou in zip(class_names, metrics["per_class_iou"], strict=True):
                if not math.isnan(iou):
                    self.logx.add_scalar(f"val_iou/{name}", iou, epoch)
        self.flush()

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
