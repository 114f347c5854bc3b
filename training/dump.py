"""Prediction pictures: input, colourised ground truth and prediction, overlay, attention per scale.

Besides the raw images (for tools), each image gets ``<name>_panel.png``: input, ground truth and
prediction with titles and a legend of the classes in them; attention maps carry a colour bar."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from utils.figures import attention_figure, labelled_panel, write_png
from utils.io import atomic_imwrite
from utils.vis import colorize, overlay

Stats = tuple[Sequence[float], Sequence[float]]  # (mean, std) the images were normalised with


def denormalize(image: torch.Tensor, stats: Stats | None = None) -> np.ndarray:
    """(3, H, W) normalised float tensor -> (H, W, 3) uint8 RGB, undoing ``stats`` (the run's mean/std,
    RGB on a 0..1 scale; None: ImageNet's).

    N-band rasters (standardised per band): bands 0-2 (or band 0 in grey), -2.5..2.5 std -> 0..255.
    """
    x = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    if x.shape[2] != 3:
        x = x[..., :3] if x.shape[2] >= 3 else np.repeat(x[..., :1], 3, axis=2)
        return np.clip((x + 2.5) * (255.0 / 5.0) + 0.5, 0, 255).astype(np.uint8)
    if stats is None:
        from datasets.info import IMAGENET_MEAN, IMAGENET_STD

        stats = (IMAGENET_MEAN, IMAGENET_STD)
    x = x * np.asarray(stats[1], np.float32) + np.asarray(stats[0], np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    atomic_imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))


class ImageDumper:
    """Writes pictures for the first ``limit`` images (``None``: all) under ``out_dir``."""

    def __init__(self, out_dir: str | Path, palette: np.ndarray, limit: int | None,
                 attention: bool, ignore_index: int = 255, class_names: Sequence[str] | None = None,
                 stats: Stats | None = None):
        self.out_dir = Path(out_dir)
        self.stats = stats
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.class_names = list(class_names or [f"class_{i}" for i in range(len(self.palette))])
        self.limit = limit
        self.attention = attention
        self.ignore_index = ignore_index
        self.count = 0
        self.panels: list[np.ndarray] = []  # a few input|gt|pred strips for TensorBoard

    def done(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    def dump(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        for i in range(pred.shape[0]):
            if self.done():
                return
            name = Path(str(batch["name"][i])).stem
            self._dump_one(name, batch["image"][i], batch.get("mask"), i, outputs, pred[i])
            self.count += 1

    def _dump_one(self, name: str, image: torch.Tensor, masks: Any, i: int,
                  outputs: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        rgb = denormalize(image, self.stats)
        labels = pred.cpu().numpy()
        color = colorize(labels, self.palette, self.ignore_index)
        _write_rgb(self.out_dir / f"{name}_input.png", rgb)
        _write_rgb(self.out_dir / f"{name}_prediction.png", color)
        _write_rgb(self.out_dir / f"{name}_overlay.png", overlay(rgb, color))
        strip, titled, present = [rgb, color], [("input", rgb), ("prediction", color)], [labels]
        if masks is not None:
            gt_labels = masks[i].cpu().numpy()
            gt = colorize(gt_labels, self.palette, self.ignore_index)
            _write_rgb(self.out_dir / f"{name}_gt.png", gt)
            strip, present = [rgb, gt, color], [labels, gt_labels]
            titled.insert(1, ("ground truth (black: ignored)", gt))
        write_png(self.out_dir / f"{name}_panel.png",
                  labelled_panel(titled, self._classes_in(present), self.class_names, self.palette))
        if self.attention:
            for key, attn in outputs.items():
                if key.startswith("attn"):
                    title = f"{name}\n{key}: weight of the {key.removeprefix('attn_')} scale's prediction"
                    picture = attention_figure(attn[i, 0].float().cpu().numpy(), title)
                    write_png(self.out_dir / f"{name}_{key}.png", picture)
        if len(self.panels) < 4:
            self.panels.append(np.concatenate(strip, axis=1))

    def _classes_in(self, label_maps: Sequence[np.ndarray]) -> list[int]:
        ids = set()
        for m in label_maps:
            ids |= {int(c) for c in np.unique(m) if 0 <= c < len(self.palette) and c != self.ignore_index}
        return sorted(ids)


class LabelWriter:
    """Every image's prediction as a label PNG, ``<out_dir>/<name>.png``.

    ``--dump_for_submission``: ``lut`` maps train ids to Cityscapes label ids (the test server's
    format). ``--dump_for_auto_labelling``: train ids plus ``<name>_prob.png``, the softmax
    confidence x 255, to threshold auto-labels of coarse data."""

    def __init__(self, out_dir: str | Path, lut: np.ndarray | None = None, confidence: bool = False):
        self.out_dir = Path(out_dir)
        self.lut = lut
        self.confidence = confidence

    def done(self) -> bool:
        return False

    def dump(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        labels = pred.to(torch.uint8).cpu().numpy()
        probs = outputs["pred"].float().softmax(1).amax(1).cpu().numpy() if self.confidence else None
        for i in range(labels.shape[0]):
            name = Path(str(batch["name"][i])).stem
            out = self.lut[labels[i]] if self.lut is not None else labels[i]
            atomic_imwrite(self.out_dir / f"{name}.png", np.ascontiguousarray(out))
            if probs is not None:
                conf = np.clip(probs[i] * 255.0 + 0.5, 0, 255).astype(np.uint8)
                atomic_imwrite(self.out_dir / f"{name}_prob.png", conf)


def image_miou(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int) -> float:
    """Mean IoU of one image over the classes in its ground truth or prediction (NaN: nothing labelled)."""
    keep = (gt != ignore_index) & (gt < num_classes)
    if not keep.any():
        return float("nan")
    g, p = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
    inter = np.bincount(g[g == p], minlength=num_classes)
    union = np.bincount(g, minlength=num_classes) + np.bincount(p, minlength=num_classes) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


class WorstImages:
    """``--dump_topn N``: keeps the N images with the lowest per-image mIoU and draws them, worst
    first, into ``<out_dir>`` (``<order>_<name>.png``) with ``worst_images.csv``. With DDP the N
    are the worst over all ranks: each rank draws its own of them, rank 0 writes the list."""

    def __init__(self, out_dir: str | Path, n: int, palette: np.ndarray, class_names: Sequence[str],
                 ignore_index: int = 255, rank: int = 0, stats: Stats | None = None):
        self.out_dir, self.n, self.rank, self.stats = Path(out_dir), n, rank, stats
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.kept: list[tuple[float, str, np.ndarray, np.ndarray, np.ndarray]] = []

    def done(self) -> bool:
        return False

    def dump(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor], pred: torch.Tensor) -> None:  # noqa: ARG002
        if "mask" not in batch:
            return
        for i in range(pred.shape[0]):
            gt, p = batch["mask"][i].cpu().numpy(), pred[i].cpu().numpy()
            score = image_miou(gt, p, len(self.palette), self.ignore_index)
            if score == score and (len(self.kept) < self.n or score < self.kept[-1][0]):  # else cut at once
                rgb = denormalize(batch["image"][i], self.stats)
                self.kept.append((score, Path(str(batch["name"][i])).stem, rgb,
                                  gt.astype(np.uint8), p.astype(np.uint8)))
                self.kept = sorted(self.kept, key=lambda t: t[0])[: self.n]

    def finish(self) -> None:
        """Collective under DDP: every rank calls it."""
        from utils.io import atomic_write_text

        mine = [(score, name, self.rank) for score, name, *_ in self.kept]
        if dist.is_available() and dist.is_initialized():
            every: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(every, mine)
            mine = [row for rows in every for row in rows]
        worst = sorted(mine, key=lambda t: (t[0], t[1], t[2]))[: self.n]
        drawn = {(name, rank): k for k, (_, name, rank) in enumerate(worst)}
        for score, name, rgb, gt, p in self.kept:
            k = drawn.get((name, self.rank))
            if k is None:
                continue
            title = f"prediction (image mIoU {100 * score:.1f})"
            panels = [("input", rgb), ("ground truth", colorize(gt, self.palette, self.ignore_index)),
                      (title, colorize(p, self.palette, self.ignore_index))]
            ids = sorted({int(c) for c in np.unique(np.concatenate([gt.ravel(), p.ravel()])) if c < len(self.palette)})
            write_png(self.out_dir / f"{k:03d}_{name}.png", labelled_panel(panels, ids, self.class_names, self.palette))
        if self.rank == 0:
            rows = ["order,name,miou,rank"] + [f"{k},{name},{score:.6f},{rank}"
                                               for k, (score, name, rank) in enumerate(worst)]
            atomic_write_text(self.out_dir / "worst_images.csv", "\n".join(rows) + "\n")


class Dumps:
    """Several dump writers fed by one evaluation pass (``evaluate`` sees one ``dumper``)."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = [p for p in parts if p is not None]

    def done(self) -> bool:
        return all(p.done() for p in self.parts)

    def dump(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor], pred: torch.Tensor) -> None:
        for p in self.parts:
            if not p.done():
                p.dump(batch, outputs, pred)

    def finish(self) -> None:
        for p in self.parts:
            if hasattr(p, "finish"):
                p.finish()

    @property
    def panels(self) -> list[np.ndarray]:
        return next((p.panels for p in self.parts if isinstance(p, ImageDumper)), [])


def eval_dumps(e: Any, result_dir: str | Path, pictures_dir: Path, ds: Any, is_main: bool, rank: int,
               stats: Stats | None = None) -> Dumps:
    """The writers an evaluation pass feeds, from the eval settings ``e`` (config's EvalConfig);
    ``stats``: the mean/std the images were normalised with (the pictures undo them)."""
    rd = Path(result_dir)
    every = e.dump_all_images  # with --dump_all_images each rank draws its own images
    limit = None if every else e.dump_num_images
    parts: list[Any] = []
    if is_main or every:
        parts.append(ImageDumper(pictures_dir, ds.palette, limit, e.dump_assets, ds.ignore_index,
                                 class_names=ds.class_names, stats=stats))
    if e.dump_for_submission:
        from datasets.cityscapes_labels import TRAIN_LABELS

        lut = np.zeros(256, dtype=np.uint8)  # unknown train ids -> 0 (unlabeled)
        lut[: len(TRAIN_LABELS)] = [lb.id for lb in TRAIN_LABELS]
        parts.append(LabelWriter(rd / "submit", lut=lut))
    if e.dump_for_auto_labelling:
        parts.append(LabelWriter(rd / "auto_labels", confidence=True))
    if e.dump_topn:
        parts.append(WorstImages(rd / "worst_images", e.dump_topn, ds.palette, ds.class_names, ds.ignore_index, rank,
                                 stats))
    return Dumps(parts)
