"""Segment a folder of images (and GeoTIFF rasters) with a trained model: resumable and sharded.

    python predict.py --arch ocrnet.HRNet_Mscale --snapshot best.pth \\
        --eval_folder /data/photos --result_dir /out --infer_short_side 512 [--subdirs 939-986]

Outputs mirror the input tree under ``--result_dir``::

    label/<rel>.png     train ids (uint8 palette PNG in the class colours; read the ids with PIL,
                        OpenCV expands palettes; rasters: label/<rel>.tif, GeoTIFF with a colour map)
    color/<rel>.png     colourised labels                    (not for rasters)
    overlay/<rel>.jpg   colours blended over the photo       (--overlay; not for rasters)
    prob/<rel>.npz      uint8 probabilities x 255, (K, H, W)  (--probs; rasters: prob/<rel>.tif)
    failures.csv, summary.json          merged view over every range/shard run into this folder
                                        (with the pixel share of each class, by name)
    reports/failures<part>.csv, reports/summary<part>.json   one per --subdirs range and shard
    predict_manifest.json, .claims/     settings of the outputs (resolved; a resume with others is
                                        refused, naming them); images being worked on

Every file is written atomically, so an existing output is a complete one: an image
is skipped when all its outputs exist. A Slurm job array (or ``--shard i/N``, or
several torchrun ranks) splits the images so the tasks cover each one exactly once;
processes that overlap anyway (two jobs on one folder) split the work through per-image
claim files (utils/folderjob.py). Failures are recorded as they happen; a run's status
(complete, interrupted, crashed, disk full) and its images never started are in its report.
``--list_missing`` lists what is still missing or failed, without a model.

Exit status: 0 done; 3 more than ``--max_fail_ratio`` of the shard's images failed
(listed in the failures CSV); 4 images left neither done nor failed (claimed by a process that is
gone, no output: rerun); 2 bad arguments; 1 a full disk (named) or anything else;
143 SIGTERM, 138 SIGUSR1 (the warning ``python -m sbatch`` jobs get before their time limit; the
report says "interrupted", the job is requeued and resumes). ``--list_missing``: 0 nothing left, 1 otherwise.

Progress: a bar on a terminal; without one (Slurm logs, runx), and with ``--no_progress``, a line
on stdout every 30 s: images done/total, rate, ETA.

Inference settings (scales, flip, precision, normalisation, short side, memory budget) are the one
configuration of ``inference/settings.py``: ``--n_scales``, else the scales the checkpoint was validated
with, else 0.5,1.0 (multi-scale models) / 1.0; ``--amp_dtype auto`` (bf16 where the device computes
it natively, else fp32; fp16 on older GPUs). The run logs them (``predict: inference: ...``).

``train.py --eval folder`` calls :func:`predict_folder` with its own model and the same settings.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports (torch: seconds): a stop signal meanwhile ends the run cleanly
    from utils.signals import STOP_SIGNALS, defer_stop_signals

    defer_stop_signals(STOP_SIGNALS)

import argparse
import contextlib
import io
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
import torch
import torch.nn as nn

from config import (
    AMP_LEVELS,
    CliParser,
    HelpFormatter,
    add_arguments,
    expand_overrides,
    flag,
    fraction,
    from_namespace,
    known_arch,
    non_negative,
    positive,
    rgb_triple,
)
from datasets.folder import (
    DEFAULT_MAX_PIXELS,
    RASTER_EXTENSIONS,
    FolderDataset,
    default_class_names,
    default_palette,
    discover_images,
    output_stems,
    parse_subdirs,
    shard,
)
from datasets.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, info_for_checkpoint
from datasets.raster import GeoError
from inference.defaults import AUTO_HELP, PRECISIONS, SCALES_HELP, scales_problem
from inference.settings import InferenceSettings, is_multiscale, settings_diff
from utils import slurmenv
from utils.dist import pick_device
from utils.errors import UserError, is_disk_full, run_cli
from utils.folderjob import Claims, Owner, PartReport, merged_failures, part_suffix, print_unwritten
from utils.io import atomic_write_bytes, atomic_write_json, ensure_output_dir, remove_created, remove_stale_temps
from utils.signals import STOP_SIGNALS, exit_on_signal
from utils.threads import configure_threads

EXIT_TOO_MANY_FAILURES = 3
EXIT_INCOMPLETE = 4  # images left neither done nor failed (a claim whose owner died): rerun
PROGRESS_EVERY_S = 30.0  # a progress line this often without a terminal (Slurm logs, runx)
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
MANIFEST = "predict_manifest.json"
# settings that change the pixels of an output: a resume with other values would mix results
# besides the inference settings ("inference": InferenceSettings.to_dict(), compared by settings_diff)
MANIFEST_KEYS = ("arch", "snapshot", "num_classes", "bands", "band_mean", "band_std", "tile", "overlap")
# the flag that sets each inference record key (named when a resume is refused)
SETTING_FLAGS = {"scales": "--n_scales", "flip": "--do_flip", "precision": "--amp_dtype",
                 "half_model": "--amp_opt_level", "mean": "--image_mean", "std": "--image_std",
                 "short_side": "--infer_short_side", "size_divisor": "--size_divisor"}


class PredictError(UserError, RuntimeError):
    """A run that cannot start as asked; the message says what to change."""


@dataclass
class PredictOptions:
    """Everything :func:`predict_folder` needs besides the model; each field is a command-line flag."""

    eval_folder: str = flag(help="folder of images/rasters, searched recursively")
    result_dir: str = flag(help="output folder (runx passes LOGDIR)")
    subdirs: str | None = flag(None, "top-level subdirectories to include, e.g. 939-986 or 12,15-20,misc")
    shard: str | None = flag(None, "INDEX/COUNT (0-based); none: from the Slurm array and torch.distributed ranks")
    infer_short_side: int | None = flag(None, "resize the shorter side to this before the model", check=positive)
    size_divisor: int = flag(32, "inference sizes rounded to a multiple of this (HRNet needs /32)", check=positive)
    batch_size: int = flag(4, "images (or raster tiles) per forward pass", aliases=("--bs_val",), check=positive)
    workers: int = flag(DEFAULT_WORKERS, "DataLoader processes decoding images", aliases=("--num_workers",),
                        check=non_negative)
    scales: tuple[float, ...] | None = flag(None, SCALES_HELP + " (e.g. 0.5,1.0,2.0)", flag="n_scales",
                                            check=scales_problem)
    flip: bool = flag(False, "average with the horizontally flipped prediction", flag="do_flip")
    amp: bool = flag(True, "autocast in --amp_dtype (--no_amp: exact fp32, as --amp_dtype fp32)", negate=True)
    amp_dtype: str = flag("auto", AUTO_HELP + "; fp32: the exact path", choices=list(PRECISIONS))
    amp_opt_level: str | None = flag(None, "as train.py's: O0 fp32, O1/O2 autocast in --amp_dtype (the default), "
                                     "O3 also the weights in --amp_dtype", choices=list(AMP_LEVELS))
    color: bool = flag(True, "write colourised labels (color/<rel>.png)", negate=True)
    overlay: bool = flag(False, "write colours blended over the photo (overlay/<rel>.jpg)")
    probs: bool = flag(False, "also write per-class probabilities (prob/<rel>.npz or .tif)")
    geotiff: bool = flag(True, "read .tif/.tiff with rasterio and write GeoTIFF (off: ordinary images)", negate=True)
    bands: tuple[int, ...] | None = flag(None, "zero-based raster bands, e.g. 0,1,2; none: the bands the checkpoint "
                                         "was trained on (its dataset.yaml), else the first three")
    band_mean: tuple[float, ...] | None = flag(None, "per-band mean in the raster's units; none: the checkpoint's "
                                               "(its dataset.yaml's or measured statistics), else ImageNet's")
    band_std: tuple[float, ...] | None = flag(None, "per-band standard deviation in the raster's units; none: the "
                                              "checkpoint's, else ImageNet's", check=positive)
    image_mean: tuple[float, ...] | None = flag(None, "photo normalisation, RGB on a 0..1 scale; none: the "
                                                "checkpoint's (its dataset.yaml's), ImageNet's without one",
                                                check=rgb_triple)
    image_std: tuple[float, ...] | None = flag(None, "photo standard deviation, RGB on a 0..1 scale; none: "
                                               "the checkpoint's, ImageNet's without one",
                                               check=lambda v: rgb_triple(v) or positive(v))
    tile: int = flag(1024, "raster window size in pixels", check=positive)
    overlap: int = flag(128, "overlap between raster windows in pixels (blended)", check=non_negative)
    max_pixels: int = flag(DEFAULT_MAX_PIXELS, "images larger than this many pixels are reported as failed",
                           check=positive)
    max_fail_ratio: float = flag(0.01, "exit 3 when more than this share of the shard's images failed",
                                 check=fraction)
    overwrite: bool = flag(False, "recompute everything instead of resuming")
    claim_timeout: float = flag(6 * 3600.0, "seconds after which a claim held by a process on another host "
                                "counts as abandoned", check=positive)
    progress: bool = flag(True, "a progress bar on a terminal (without one, and with --no_progress: a line "
                          "every 30 s on stdout)", negate=True)
    eval_memory_gb: float | None = flag(None, "memory budget in GB: scales that do not fit run in overlapping "
                                        "windows (none: free GPU memory; unlimited on the CPU)", check=positive)
    compile: bool = flag(False, "torch.compile the model (eager, with one line, if it cannot compile)")
    arch: str | None = flag(None, "registered model name, e.g. ocrnet.HRNet_Mscale (default: the one --snapshot "
                            "records; required for the reference's .pth files and for random weights)",
                            check=known_arch)
    snapshot: str | None = flag(None, "checkpoint (project or reference .pth); omit for random weights")


@dataclass
class ModelChoice:
    """Command-line flags that choose the model's classes and device (not part of the outputs)."""

    dataset: str | None = flag(None, "class set when the snapshot does not record its classes",
                               choices=["cityscapes", "mapillary"])
    num_classes: int | None = flag(None, "class count when the snapshot does not record it")
    eval: str = flag("folder", "accepted for the reference's command lines", choices=["folder"])
    fp16: bool = flag(False, "as train.py's --fp16 (O1: autocast in --amp_dtype), which is already the default")
    trust_checkpoint: bool = flag(False, "unpickle --snapshot fully (runs code from the file; trusted files only)")
    list_missing: bool = flag(False, "print the images still missing or failed (status, path, reason) and exit: "
                              "0 when nothing is left, 1 otherwise; loads no model")
    device: str | None = flag(None, "auto, cpu, cuda or cuda:N; none: this process's GPU if any, else cpu")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    source: str = "single"

    @property
    def suffix(self) -> str:
        return "" if self.count == 1 else f"_shard{self.index:04d}of{self.count:04d}"


@dataclass
class Summary:
    shard: Shard
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    elsewhere: int = 0  # claimed (or finished meanwhile) by another process on the same folder
    in_progress: int = 0  # of those: still held by a live process when this run ended
    unfinished: int = 0  # of those: neither done nor held nor recorded failed at the end (a dead claim)
    seconds: float = 0.0
    max_fail_ratio: float = 0.01
    status: str = "running"  # then: complete, incomplete, interrupted, crashed, disk full
    failures: list[tuple[str, str]] = field(default_factory=list)
    class_pixels: dict[str, int] = field(default_factory=dict)  # predicted pixels per class name

    @property
    def fail_ratio(self) -> float:
        return self.failed / self.total if self.total else 0.0

    @property
    def not_started(self) -> int:
        return self.total - self.done - self.skipped - self.failed - self.elsewhere

    @property
    def ok(self) -> bool:
        return self.status == "complete" and self.fail_ratio <= self.max_fail_ratio

    @property
    def pixel_share(self) -> dict[str, float]:
        """Share of the predicted pixels per class name, largest first (the images this run segmented)."""
        total = sum(self.class_pixels.values()) or 1
        return {k: v / total for k, v in sorted(self.class_pixels.items(), key=lambda kv: -kv[1]) if v}

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        others = f", by other processes {self.elsewhere}" if self.elsewhere else ""
        if self.in_progress:
            others += f" ({self.in_progress} still in progress there)"
        unfinished = (f", UNFINISHED {self.unfinished} (claimed by a process that is gone, no output: rerun)"
                      if self.unfinished else "")
        unstarted = f", NOT STARTED {self.not_started}" if self.status not in ("complete", "incomplete") else ""
        return (f"shard {self.shard.index}/{self.shard.count} {self.status}: {self.total} images, done "
                f"{self.done}, skipped {self.skipped}, failed {self.failed} ({self.fail_ratio:.2%}){others}"
                f"{unfinished}{unstarted}, {self.seconds:.1f} s, {rate:.2f} images/s")

    def record(self, owner: Owner, started: str) -> dict:
        """This run's entry in its part's report (``reports/summary<part>.json``)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("failures", "shard")}
        data.update(shard=f"{self.shard.index}/{self.shard.count}", fail_ratio=self.fail_ratio, ok=self.ok,
                    pixel_share={k: round(v, 6) for k, v in self.pixel_share.items()},
                    not_started=self.not_started, host=owner.host, pid=owner.pid, run_id=owner.run_id,
                    started=started, updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    images_per_s=self.done / self.seconds if self.seconds else 0.0)
        return data


# ---------------------------------------------------------------- sharding


def resolve_shard(spec: str | None, env: Mapping[str, str] | None = None,
                  rank: int | None = None, world: int | None = None) -> Shard:
    """This process's shard: ``--shard i/N``, else the Slurm array task; times the distributed ranks.

    With a Slurm array ``--array=MIN-MAX[:STEP]`` task ``k`` is shard ``(k - MIN) / STEP`` of
    ``SLURM_ARRAY_TASK_COUNT``; with ``R`` ranks (torch.distributed, or torchrun's ``RANK`` and
    ``WORLD_SIZE``) each shard is split once more, rank-major, so every image is seen once.
    """
    env = os.environ if env is None else env
    if spec and spec != "auto":
        base = _parse_shard(spec)
    elif "SLURM_ARRAY_TASK_ID" in env and not slurmenv.sweep_run(env):
        # a `python -m sbatch` task's array index picks a run of the sweep rather than a shard
        # of the images (those runs pass --shard explicitly)
        base = _slurm_shard(env)
    else:
        base = Shard(0, 1)
    if rank is None or world is None:
        rank, world = _distributed_rank(env)
    if world <= 1:
        return base
    return Shard(base.index * world + rank, base.count * world, f"{base.source}+rank{rank}/{world}")


def _parse_shard(spec: str) -> Shard:
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError as e:
        raise PredictError(f"--shard {spec!r}: write it as INDEX/COUNT, e.g. 0/8") from e
    if n < 1 or not 0 <= i < n:
        raise PredictError(f"--shard {spec!r}: need 0 <= INDEX < COUNT (indices start at 0)")
    return Shard(i, n, "--shard")


def _slurm_shard(env: Mapping[str, str]) -> Shard:
    try:
        task = slurmenv.array_task(env)
    except slurmenv.SlurmEnvError as e:
        raise PredictError(f"{e}: use a contiguous array such as --array=0-99 (a '%N' throttle is "
                           "fine), or pass --shard INDEX/COUNT") from e
    assert task is not None  # the caller checked SLURM_ARRAY_TASK_ID
    return Shard(task.index, task.count, "slurm-array")


def _distributed_rank(env: Mapping[str, str]) -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    return 0, 1


# ---------------------------------------------------------------- outputs and resume


@dataclass(frozen=True)
class Item:
    rel: str  # input path relative to eval_folder
    stem: str  # output path relative to each output kind's folder, without extension
    raster: bool


def expected_outputs(result_dir: Path, item: Item, opts: PredictOptions) -> dict[str, Path]:
    """Output kind -> path, for the outputs this run writes for ``item``."""
    if item.raster:
        out = {"label": result_dir / "label" / f"{item.stem}.tif"}
        if opts.probs:
            out["prob"] = result_dir / "prob" / f"{item.stem}.tif"
        return out
    out = {"label": result_dir / "label" / f"{item.stem}.png"}
    if opts.color:
        out["color"] = result_dir / "color" / f"{item.stem}.png"
    if opts.overlay:
        out["overlay"] = result_dir / "overlay" / f"{item.stem}.jpg"
    if opts.probs:
        out["prob"] = result_dir / "prob" / f"{item.stem}.npz"
    return out


class _DirListing:
    """``exists`` by listing each output folder once (inputs come sorted, so folders come grouped).

    One listing per folder instead of one ``stat`` per file matters on network file systems.
    Only the most recent folders are cached, so memory does not grow with the tree.
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self.cache: dict[Path, set[str]] = {}

    def exists(self, path: Path) -> bool:
        names = self.cache.get(path.parent)
        if names is None:
            try:
                names = set(os.listdir(path.parent))
            except FileNotFoundError:
                names = set()
            if len(self.cache) >= self.keep:
                self.cache.pop(next(iter(self.cache)))
            self.cache[path.parent] = names
        return path.name in names


def plan(opts: PredictOptions, shard_: Shard) -> tuple[list[Item], int]:
    """This shard's images still to do, and how many were skipped as complete."""
    files = discover_images(opts.eval_folder, opts.subdirs)
    inside = _relative_inside(Path(opts.result_dir), Path(opts.eval_folder))
    if inside == "":
        raise PredictError("--result_dir is --eval_folder: choose another folder for the outputs")
    if inside is not None:  # never segment our own outputs when result_dir is under eval_folder
        files = [f for f in files if not (f + "/").startswith(inside + "/")]
    stems = output_stems(files)
    mine = set(shard(files, shard_.index, shard_.count))
    items = [Item(f, s, opts.geotiff and f.lower().endswith(RASTER_EXTENSIONS))
             for f, s in zip(files, stems, strict=True) if f in mine]
    if opts.overwrite:
        return items, 0
    listing, todo = _DirListing(), []
    result_dir = Path(opts.result_dir)
    for item in items:
        if not all(listing.exists(p) for p in expected_outputs(result_dir, item, opts).values()):
            todo.append(item)
    return todo, len(items) - len(todo)


def _relative_inside(path: Path, root: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    return rel if rel != "." else ""


def check_manifest(opts: PredictOptions, num_classes: int, settings: InferenceSettings,
                   multiscale: bool = True) -> None:
    """Refuse to resume into a result folder made with other settings (mixed outputs), naming the
    differences and the flags that set them; record this run's (resolved) settings."""
    record = {k: v for k, v in asdict(opts).items() if k in MANIFEST_KEYS}
    record["num_classes"] = num_classes
    if record.get("snapshot"):  # the same file, however it was spelled (predict.py or train.py)
        record["snapshot"] = str(Path(record["snapshot"]).resolve())
    record = json.loads(json.dumps(record, default=str))
    record["inference"] = settings.to_dict()
    path = Path(opts.result_dir) / MANIFEST
    if path.exists() and not opts.overwrite:
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)} there, {record.get(k)} now" for k in MANIFEST_KEYS if old.get(k) != record.get(k)]
        inference = settings_diff(old.get("inference") or legacy_settings(old, multiscale), record["inference"])
        if diff or inference:
            flags = sorted({SETTING_FLAGS[d.split(":")[0]] for d in inference})
            hint = f"rerun with the folder's {', '.join(flags)}, " if flags else ""
            what = "; ".join(diff + inference)
            raise PredictError(f"{opts.result_dir} holds outputs made with other settings ({what}): {hint}"
                               "use a new --result_dir, or --overwrite to recompute everything")
    atomic_write_json(path, record)


def legacy_settings(old: Mapping[str, Any], multiscale: bool) -> dict[str, Any]:
    """The inference record of a manifest written before settings were recorded (flat keys): its
    ``scales: null`` meant the model's own (predict.py built Mscale models with 0.5,1.0,2.0), and
    photos were ImageNet-normalised when the keys were absent; precision was not recorded."""
    scales = old.get("scales") or ([0.5, 1.0, 2.0] if multiscale else [1.0])
    return {"scales": sorted(float(v) for v in scales), "flip": bool(old.get("flip", False)),
            "mean": old.get("image_mean", list(IMAGENET_MEAN)), "std": old.get("image_std", list(IMAGENET_STD)),
            "short_side": old.get("infer_short_side") or "original", "size_divisor": old.get("size_divisor", 32)}


# ---------------------------------------------------------------- inference


def _logits_fn(model: nn.Module, device: torch.device, settings: InferenceSettings):
    """``x -> float32 logits`` with the (resolved) settings: scales, flip, precision, memory budget."""
    from network import predict as network_predict
    from network.tiling import memory_plan

    precision, memory = settings.run_precision, memory_plan(device, settings.memory_gb)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":  # the stacked batch, pinned, copies asynchronously
            x = x.pin_memory()
        x = precision.cast_input(x.to(device, non_blocking=True))
        with torch.inference_mode(), precision.autocast():
            out = network_predict(model, x, scales=settings.scales, flip=settings.flip, memory=memory)
            return out["pred"].float()

    return fn


def inference_settings(opts: PredictOptions, model: nn.Module, validated: Sequence[float] | None = None
                       ) -> InferenceSettings:
    """The one inference configuration from predict.py's flags: ``--n_scales``, else ``validated`` (the
    scales the checkpoint was validated with), else the documented default; precision from
    ``--no_amp``/``--amp_opt_level``/``--amp_dtype``; photo normalisation (``photo_stats``)."""
    from inference.defaults import requested_precision
    from inference.settings import build_settings, is_multiscale

    precision, half_model = requested_precision(opts.amp_dtype if opts.amp else "fp32", opts.amp_opt_level)
    mean, std = photo_stats(opts)
    return build_settings(multiscale=is_multiscale(model), scales=opts.scales, validated=validated, flip=opts.flip,
                          precision=precision, half_model=half_model, mean=mean, std=std,
                          short_side=opts.infer_short_side, size_divisor=opts.size_divisor,
                          memory_gb=opts.eval_memory_gb)


class SizeBuckets:
    """Group decoded images by their (resized) tensor shape into batches of ``batch_size``.

    Sizes are only known once a worker has decoded a file, so grouping happens here,
    on the stream of decoded samples, rather than in a sampler that would need a pass
    over every file's header first. At most ``max_pending`` images wait; past that the
    fullest group goes out as a smaller batch, which keeps memory bounded.
    """

    def __init__(self, batch_size: int, max_pending: int | None = None) -> None:
        self.batch_size = batch_size
        self.max_pending = max_pending or 4 * batch_size
        self.groups: dict[tuple[int, ...], list[dict]] = {}
        self.pending = 0

    def add(self, sample: dict) -> list[list[dict]]:
        key = tuple(sample["image"].shape)
        group = self.groups.setdefault(key, [])
        group.append(sample)
        self.pending += 1
        if len(group) >= self.batch_size:
            return [self._pop(key)]
        if self.pending > self.max_pending:
            return [self._pop(max(self.groups, key=lambda k: len(self.groups[k])))]
        return []

    def flush(self) -> list[list[dict]]:
        return [self._pop(k) for k in list(self.groups)]

    def _pop(self, key: tuple[int, ...]) -> list[dict]:
        group = self.groups.pop(key)
        self.pending -= len(group)
        return group


def _infer_batch(logits_fn, batch: list[dict], want_probs: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Labels (uint8 at inference size) and optional uint8 probabilities (K, h, w) per sample."""
    logits = logits_fn(torch.stack([s["image"] for s in batch]))
    labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
    probs = None
    if want_probs:
        probs = (torch.softmax(logits, 1) * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return [(labels[i], None if probs is None else probs[i]) for i in range(len(batch))]


def _resize_back(label: np.ndarray, prob: np.ndarray | None, size: tuple[int, int]):
    """Nearest for labels, bilinear for probabilities, back to the original ``(H, W)``."""
    import cv2

    h, w = size
    if label.shape != (h, w):
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    if prob is not None and prob.shape[1:] != (h, w):
        chans = [cv2.resize(np.ascontiguousarray(prob[i:i + 256].transpose(1, 2, 0)), (w, h),
                            interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
                 for i in range(0, prob.shape[0], 256)]
        prob = np.concatenate(chans, axis=2).transpose(2, 0, 1)
    return label, prob


def _write_photo_outputs(paths: dict[str, Path], label: np.ndarray, prob: np.ndarray | None,
                         original: np.ndarray | None, palette: np.ndarray,
                         class_names: Sequence[str]) -> None:
    """Write one image's outputs; the label goes last, so a crash leaves it missing (-> redone)."""
    import cv2

    from utils.io import atomic_imwrite, atomic_write_label_png
    from utils.vis import colorize, overlay

    color = colorize(label, palette) if "color" in paths or "overlay" in paths else None
    if "color" in paths:
        assert color is not None
        atomic_imwrite(paths["color"], color[..., ::-1])
    if "overlay" in paths:
        assert color is not None and original is not None
        atomic_imwrite(paths["overlay"], overlay(original, color)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if "prob" in paths:
        assert prob is not None
        buf = io.BytesIO()
        np.savez_compressed(buf, prob=prob, class_names=np.asarray(class_names))
        atomic_write_bytes(paths["prob"], buf.getvalue())
    atomic_write_label_png(paths["label"], label, palette)  # class ids, shown in the class colours


class _Run:
    """State of one :func:`predict_folder` call: progress, claims, failures, pending writes."""

    def __init__(self, opts: PredictOptions, summary: Summary, palette: np.ndarray, class_names: Sequence[str],
                 items: Sequence[Item], claims: Claims, report: PartReport, settings: InferenceSettings) -> None:
        from utils.progress import CountProgress

        self.opts, self.summary, self.settings = opts, summary, settings
        self.palette, self.class_names = palette, class_names
        self.result_dir = Path(opts.result_dir)
        self.items = {it.rel: it for it in items}
        self.claims, self.report = claims, report
        self.progress = CountProgress(len(items), f"predict {summary.shard.index}/{summary.shard.count}",
                                      bar=opts.progress, every_s=PROGRESS_EVERY_S)
        self.writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="predict-write")
        self.pending: deque[tuple[str, Future]] = deque()
        self.handed_over: list[str] = []  # images another process claimed (or finished) meanwhile
        self.pixels = np.zeros(len(class_names), np.int64)

    def fail(self, rel: str, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failures.append((rel, reason))
        item = self.items[rel]
        label = expected_outputs(Path(), item, self.opts)["label"].as_posix()
        self.report.fail(rel, reason, label)  # recorded at once: a crash later keeps it
        self.claims.release(item.stem)
        self.progress.update(1, failed=self.summary.failed)

    def succeed(self, rel: str) -> None:
        self.summary.done += 1
        self.claims.release(self.items[rel].stem)
        self.progress.update(1)

    def elsewhere(self, rel: str) -> None:
        self.summary.elsewhere += 1
        self.handed_over.append(rel)
        self.progress.update(1)

    def count_pixels(self, label: np.ndarray) -> None:
        self.pixels += np.bincount(label.reshape(-1), minlength=len(self.pixels))[: len(self.pixels)]

    def submit_write(self, rel: str, fn, *args) -> None:
        self.pending.append((rel, self.writer.submit(fn, *args)))
        while len(self.pending) > 2 * self.opts.batch_size:  # bounded: memory stays flat
            self._collect_one()

    def _collect_one(self) -> None:
        rel, fut = self.pending.popleft()
        try:
            fut.result()
        except (OSError, ValueError) as e:
            if is_disk_full(e):
                raise  # every later image would fail too: stop, name it (utils/errors.py), keep the reports
            self.fail(rel, f"write failed: {e}")
        else:
            self.succeed(rel)

    def close(self) -> None:
        try:
            while self.pending:
                self._collect_one()
        finally:
            self.writer.shutdown(wait=True)
            self.progress.close()
            self.claims.release_all()
            self.summary.class_pixels = {n: int(c) for n, c in zip(self.class_names, self.pixels, strict=True)}

    def settle(self) -> None:
        """The images handed to other processes: finished there, still held by a live one, recorded
        failed, or none of these (a claim whose owner died or whose write failed): unfinished."""
        failures: dict | None = None
        for rel in self.handed_over:
            item = self.items[rel]
            if all(p.exists() for p in expected_outputs(self.result_dir, item, self.opts).values()):
                continue
            if self.claims.holder(item.stem) is not None:
                self.summary.in_progress += 1
                continue
            failures = merged_failures(self.result_dir) if failures is None else failures
            if rel not in failures:
                self.summary.unfinished += 1
        self.claims.sweep()  # claims a killed run left, also on images it finished



def _worker_init(_: int) -> None:
    # Only torch's pool is narrowed. Never call cv2.setNumThreads in a forked worker: when the
    # parent has used OpenCV's pthreads pool, that call waits forever for threads that were not
    # forked (tests/test_predict.py::test_workers_after_parent_used_opencv_threads).
    torch.set_num_threads(1)


def _photo_batches(ds: torch.utils.data.Dataset, run: _Run, opts: PredictOptions) -> Iterator[list[dict]]:
    """Decoded samples from DataLoader workers, grouped by size; failures go to the report."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=opts.workers,
                        worker_init_fn=_worker_init if opts.workers else None,
                        prefetch_factor=max(4, 2 * opts.batch_size // max(1, opts.workers)) if opts.workers else None)
    buckets = SizeBuckets(opts.batch_size)
    for sample in loader:
        if sample.get("elsewhere"):
            run.elsewhere(sample["name"])
            continue
        if sample["error"]:
            run.fail(sample["name"], sample["error"])
            continue
        yield from buckets.add(sample)
    yield from buckets.flush()


def _run_photos(items: list[Item], logits_fn, run: _Run, opts: PredictOptions) -> None:
    if not items:
        return
    st = run.settings
    ds = FolderDataset(opts.eval_folder, files=[it.rel for it in items], short_side=st.short_side,
                       size_divisor=st.size_divisor, max_pixels=opts.max_pixels,
                       keep_original=opts.overlay, mean=st.mean, std=st.std)
    outputs = [_recheck(run.result_dir, it, opts) for it in items]
    for batch in _photo_batches(_ClaimingDataset(ds, [it.stem for it in items], outputs, run.claims), run, opts):
        for sample, result in _infer_with_oom_fallback(logits_fn, batch, opts.probs, run):
            item = items[sample["index"]]
            label, prob = _resize_back(result[0], result[1], sample["size"])
            run.count_pixels(label)
            original = sample["original"].numpy() if opts.overlay else None
            run.submit_write(item.rel, _write_photo_outputs, expected_outputs(run.result_dir, item, opts),
                             label, prob, original, run.palette, run.class_names)


def _infer_with_oom_fallback(logits_fn, batch: list[dict], want_probs: bool, run: _Run):
    """Infer a batch; on out-of-memory retry one by one, and report an image that alone does not fit."""
    try:
        return list(zip(batch, _infer_batch(logits_fn, batch, want_probs), strict=True))
    except torch.cuda.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(batch) == 1:
            shape = tuple(batch[0]["image"].shape[1:])
            run.fail(batch[0]["name"], f"too large: out of memory at inference size {shape}")
            return []
    out = []
    for sample in batch:
        out.extend(_infer_with_oom_fallback(logits_fn, [sample], want_probs, run))
    return out


class _ClaimingDataset(torch.utils.data.Dataset):
    """Claims each image before decoding it (in the DataLoader worker), so processes split the work."""

    def __init__(self, ds: FolderDataset, stems: Sequence[str], outputs: Sequence[tuple[Path, ...]],
                 claims: Claims) -> None:
        self.ds, self.stems, self.outputs, self.claims = ds, stems, outputs, claims

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        if not _claim_open(self.claims, self.stems[index], self.outputs[index]):
            return {"name": self.ds.files[index], "index": index, "error": "", "elsewhere": True}
        return self.ds[index]


def _recheck(result_dir: Path, item: Item, opts: PredictOptions) -> tuple[Path, ...]:
    """The outputs whose presence, once claimed, means another process finished the image (none with --overwrite)."""
    return () if opts.overwrite else tuple(expected_outputs(result_dir, item, opts).values())


def _claim_open(claims: Claims, stem: str, outputs: Sequence[Path]) -> bool:
    """Claim ``stem`` unless another process holds it or has finished it since this run's plan."""
    if not claims.claim(stem):
        return False
    if outputs and all(p.exists() for p in outputs):
        claims.release(stem)
        return False
    return True


def _run_rasters(items: list[Item], logits_fn, run: _Run, opts: PredictOptions, num_classes: int,
                 in_channels: int = 3) -> None:
    if not items:  # rasterio is the optional `geo` extra: needed only when there are rasters
        return
    from rasterio.errors import RasterioError

    from datasets.raster import RasterOptions, RasterOutputs, predict_raster

    ropts = RasterOptions(bands=opts.bands, band_mean=opts.band_mean, band_std=opts.band_std,
                          tile=opts.tile, overlap=opts.overlap, batch_size=opts.batch_size,
                          size_divisor=opts.size_divisor, write_probs=opts.probs, in_channels=in_channels)
    for item in items:
        paths = expected_outputs(run.result_dir, item, opts)
        if not _claim_open(run.claims, item.stem, _recheck(run.result_dir, item, opts)):
            run.elsewhere(item.rel)
            continue
        for path in paths.values():  # a killed run's .<name>.*.tmp.tif; the claim makes the item ours
            remove_stale_temps(path)
        try:
            predict_raster(Path(opts.eval_folder) / item.rel, RasterOutputs(paths["label"], paths.get("prob")),
                           logits_fn, num_classes, run.palette, ropts, run.class_names)
        except (GeoError, RasterioError, OSError, ValueError, torch.cuda.OutOfMemoryError) as e:
            if is_disk_full(e):
                raise
            run.fail(item.rel, f"raster: {e}")  # unreadable/corrupt file, or bands it does not have
        else:
            _count_raster_pixels(run, paths["label"])
            run.succeed(item.rel)


def _count_raster_pixels(run: _Run, label_path: Path) -> None:
    """The classes of a finished label raster, block by block (255 = nodata is not a class)."""
    import rasterio

    with rasterio.open(label_path) as src:
        for _, window in src.block_windows(1):
            run.count_pixels(src.read(1, window=window))


def predict_folder(model: nn.Module, opts: PredictOptions, *, palette: np.ndarray | None = None,
                   class_names: Sequence[str] | None = None, device: torch.device | None = None,
                   shard_: Shard | None = None, settings: InferenceSettings | None = None) -> Summary:
    """Segment ``opts.eval_folder`` into ``opts.result_dir`` with ``model`` (already built and loaded).

    ``settings``: the inference configuration (default: :func:`inference_settings` of ``opts``,
    without a checkpoint's scales), resolved on ``device``, logged and recorded in the manifest.
    Resumes (skips complete outputs), covers only this process's shard, writes the failures CSV
    and summary JSON, and returns the :class:`Summary`; the caller decides the exit status.
    """
    device = device or next(model.parameters()).device
    num_classes = int(getattr(model, "num_classes", 0) or len(palette if palette is not None else []))
    if num_classes <= 0:
        raise PredictError("the model has no `num_classes` attribute: pass `palette` for its classes")
    palette = default_palette(num_classes) if palette is None else np.asarray(palette, np.uint8)
    class_names = class_names or default_class_names(num_classes)
    check_options(opts)
    shard_ = shard_ or resolve_shard(opts.shard)
    opts = opts if opts.arch else replace(opts, arch=getattr(model, "arch", type(model).__name__))
    settings = (settings or inference_settings(opts, model)).resolve(device)
    items, skipped = _start(opts, shard_, num_classes, settings, is_multiscale(model))
    summary = Summary(shard_, total=len(items) + skipped, skipped=skipped, max_fail_ratio=opts.max_fail_ratio)
    threads = configure_threads()  # the CPUs allotted, not the machine's (utils/threads)
    print(f"predict: shard {shard_.index}/{shard_.count} ({shard_.source}): {summary.total} images, "
          f"{skipped} already complete, {len(items)} to do; {threads.describe()}", file=sys.stderr)
    print(f"predict: inference: {settings.describe()}", file=sys.stderr)
    owner, started = Owner.this_process(), time.strftime("%Y-%m-%dT%H:%M:%S")
    report = PartReport(opts.result_dir, part_suffix(opts.subdirs, shard_.suffix), owner,
                        lambda: summary.record(owner, started))
    run = _Run(opts, summary, palette, class_names, items, Claims(opts.result_dir, owner, opts.claim_timeout),
               report, settings)
    _execute(run, items, lambda: _prepare(model, device, settings, opts.compile), num_classes,
             int(getattr(model, "in_channels", 3)))
    return summary


def _prepare(model: nn.Module, device: torch.device, settings: InferenceSettings, compile: bool):
    """The logits function on the inference-prepared copy (folded BN, channels_last; O3: half weights)."""
    from network import optimize_for_inference

    half = settings.run_precision.dtype if settings.run_precision.half_model else None
    return _logits_fn(optimize_for_inference(model, compile=compile, dtype=half), device, settings)


def _start(opts: PredictOptions, shard_: Shard, num_classes: int, settings: InferenceSettings,
           multiscale: bool) -> tuple[list[Item], int]:
    """This shard's work, the result folder (created only once the input is known good) and its manifest."""
    items, skipped = plan(opts, shard_)  # a bad --eval_folder is refused before anything is created
    created = ensure_output_dir(opts.result_dir)
    try:
        check_manifest(opts, num_classes, settings, multiscale)
    except BaseException:
        remove_created(opts.result_dir, created)  # a run that cannot start leaves no empty folder behind
        raise
    return items, skipped


def _execute(run: _Run, items: list[Item], prepare, num_classes: int, in_channels: int) -> None:
    """Prepare the model, then every image of ``items``; the report's status says how the run ended,
    whatever ends it (a SIGTERM while the model is prepared too: "interrupted", nothing started)."""
    summary, opts, start = run.summary, run.opts, time.perf_counter()
    try:
        run.report.write()  # "running": a run killed with SIGKILL is not mistaken for a finished one
        logits_fn = prepare()
        _run_photos([it for it in items if not it.raster], logits_fn, run, opts)
        _run_rasters([it for it in items if it.raster], logits_fn, run, opts, num_classes, in_channels)
        run.close()
        run.settle()
        summary.status = "incomplete" if summary.unfinished else "complete"
    except BaseException as e:
        summary.status = _status_of(e)
        with contextlib.suppress(Exception):
            run.close()
        raise
    finally:
        summary.seconds = time.perf_counter() - start
        _final_report(run.report, summary)
        print(f"predict: {summary.line()}", file=sys.stderr)


def _status_of(err: BaseException) -> str:
    if is_disk_full(err):
        return "disk full"
    return "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "crashed"


def _final_report(report: PartReport, summary: Summary) -> None:
    """Write the part's report and the merged view; on a full disk say so and print the failures."""
    try:
        report.write(final=True)
    except OSError as e:
        if not is_disk_full(e):
            raise
        print(f"predict: disk full (ENOSPC): the reports under {report.result_dir} are from before the "
              "disk filled; this run's failures follow", file=sys.stderr)
        print_unwritten(summary.failures, sys.stderr)



# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Flags generated from :class:`PredictOptions` and :class:`ModelChoice` (config.py's machinery)."""
    p = CliParser(prog="predict.py", description=(__doc__ or "").split("\n")[0], allow_abbrev=False,
                  formatter_class=HelpFormatter)
    add_arguments(p.add_argument_group("outputs"), PredictOptions)
    add_arguments(p.add_argument_group("model"), ModelChoice)
    return p


def options_from_args(args: argparse.Namespace) -> PredictOptions:
    opts = from_namespace(PredictOptions, args)
    return replace(opts, snapshot=str(Path(opts.snapshot).resolve()) if opts.snapshot else None)


class LoadedModel(NamedTuple):
    """A model built from a snapshot, its classes, and the scales the snapshot was validated with (or None)."""

    model: nn.Module
    info: DatasetInfo
    validated: tuple[float, ...] | None = None


def load_model(arch: str | None, snapshot: str | None, *, dataset: str | None = None, num_classes: int | None = None,
               trust: bool = False, **model_kwargs: Any) -> LoadedModel:
    """The registered model with the snapshot's weights, the classes it predicts (from the snapshot
    when it records them, ``datasets.info_for_checkpoint``) and its validated scales."""
    from inference.settings import validated_scales
    from network.checkpoint import build_model, read_checkpoint

    ckpt = read_checkpoint(snapshot, trust=trust) if snapshot else None
    arch = arch or str((ckpt or {}).get("arch") or "")
    if not arch:  # the reference's published .pth files do not record it
        raise PredictError(f"{snapshot} does not record its architecture: pass --arch")
    info = info_for_checkpoint(ckpt, dataset, num_classes)
    model_kwargs.setdefault("trunk_weights", None)
    model_kwargs.setdefault("in_channels", info.in_channels)
    model = build_model(arch, info.num_classes, ckpt, **model_kwargs)
    if ckpt is None:
        print("predict: no --snapshot: the model has random weights (demo/benchmark only)", file=sys.stderr)
    return LoadedModel(model, info, validated_scales(ckpt, is_multiscale(model)))


def check_options(opts: PredictOptions) -> None:
    """What the flags refuse together (each flag alone is checked while parsing); before any model or
    file is touched, and by ``python -m sbatch`` at submission."""
    if opts.tile <= opts.overlap:
        raise PredictError(f"--tile {opts.tile} must be larger than --overlap {opts.overlap}")
    if opts.band_mean and opts.band_std and len(opts.band_mean) != len(opts.band_std):
        raise PredictError(f"--band_mean has {len(opts.band_mean)} values, --band_std {len(opts.band_std)}: "
                           "give one per band")
    for name in ("band_mean", "band_std"):
        values = getattr(opts, name)
        if values and opts.bands and len(values) != len(opts.bands):
            raise PredictError(f"--{name} has {len(values)} values for {len(opts.bands)} --bands: give one per band")
    if opts.bands and min(opts.bands) < 0:
        raise PredictError(f"--bands {','.join(map(str, opts.bands))}: band numbers start at 0")
    if opts.shard and opts.shard != "auto":
        _parse_shard(opts.shard)
    parse_subdirs(opts.subdirs)


def photo_stats(opts: PredictOptions) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std photos are normalised with: ``--image_mean``/``--image_std``, else ImageNet's."""
    mean, std = opts.image_mean or IMAGENET_MEAN, opts.image_std or IMAGENET_STD
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise PredictError(f"--image_mean {list(mean)} --image_std {list(std)}: need three numbers each "
                           "(RGB, 0..1 scale), the standard deviations positive")
    return tuple(mean), tuple(std)


def with_data_defaults(opts: PredictOptions, info: DatasetInfo) -> PredictOptions:
    """Normalisation from the checkpoint's data, as training used it, unless given on the command line:
    photos get its mean/std (RGB checkpoints); rasters its bands and their statistics."""
    if info.bands is None:
        return replace(opts, image_mean=opts.image_mean or tuple(info.mean),
                       image_std=opts.image_std or tuple(info.std))
    stats: dict[str, Any] = {} if opts.band_mean or opts.band_std else {"band_mean": info.mean, "band_std": info.std}
    return replace(opts, bands=opts.bands or info.bands, **stats)


def list_missing(opts: PredictOptions, out: TextIO | None = None) -> int:
    """``--list_missing``: this shard's images without complete outputs, with the recorded reason.

    One tab-separated line each: ``failed PATH REASON``, ``claimed PATH HOST:PID`` (another
    process holds it) or ``missing PATH``. Reads the folder and the reports only; exit 0 when
    nothing is left, 1 otherwise.
    """
    out = out or sys.stdout
    shard_ = resolve_shard(opts.shard)
    todo, skipped = plan(replace(opts, overwrite=False), shard_)
    failures = merged_failures(opts.result_dir)
    claims = Claims(opts.result_dir, Owner.this_process(), opts.claim_timeout)
    counts = {"failed": 0, "claimed": 0, "missing": 0}
    for item in todo:
        held = claims.holder(item.stem)
        if item.rel in failures:
            status, detail = "failed", failures[item.rel].reason
        elif held:
            status, detail = "claimed", f"{held.get('host')}:{held.get('pid')}"
        else:
            status, detail = "missing", ""
        counts[status] += 1
        print("\t".join([status, item.rel, detail]).rstrip("\t"), file=out)
    print(f"predict: {len(todo) + skipped} images, {skipped} complete, "
          + ", ".join(f"{v} {k}" for k, v in counts.items()), file=sys.stderr)
    return 1 if todo else 0


@contextlib.contextmanager
def _said_if_stopped(when: str) -> Iterator[None]:
    """A stop signal (``exit_on_signal``'s SystemExit) before the report exists is said in one line."""
    try:
        yield
    except SystemExit as e:
        if e.code in {128 + int(s) for s in STOP_SIGNALS}:
            print(f"predict.py: stopped by signal {int(e.code) - 128} {when}: nothing written; rerun the same "
                  f"command; exit {e.code}", file=sys.stderr, flush=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status per utils/errors.py: user errors one line + 2, a full disk named + 1, 3 too many failures."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli("predict.py", lambda: _main(argv), argv)


def _main(argv: Sequence[str]) -> int:
    # SIGTERM/SIGUSR1 -> SystemExit(128 + signum), unwinding through `finally`: reports written,
    # pending writes finish (by default SIGUSR1, Slurm's warning signal, would kill it outright)
    with exit_on_signal(STOP_SIGNALS, prog="predict.py"):
        parser = build_parser()
        args = parser.parse_args(expand_overrides(argv, parser))  # key=value words as their flags
        opts = options_from_args(args)
        if args.list_missing:
            return list_missing(opts)
        if not args.arch and not args.snapshot:
            raise PredictError("--snapshot (a trained checkpoint, which names its --arch) or --arch (random weights) "
                               "is required (only --list_missing runs without a model)")
        check_options(opts)  # bad flag combinations are named before the model is built
        device = pick_device(args.device or "auto", int(os.environ.get("LOCAL_RANK", "0")))
        with _said_if_stopped("while loading the model, before any image"):
            model, info, validated = load_model(args.arch, args.snapshot, dataset=args.dataset,
                                                num_classes=args.num_classes, trust=args.trust_checkpoint)
        opts = with_data_defaults(opts, info)
        summary = predict_folder(model.to(device), opts, palette=info.palette, class_names=info.class_names,
                                 device=device, settings=inference_settings(opts, model, validated))
    return exit_status(summary, opts)


def exit_status(summary: Summary, opts: PredictOptions) -> int:
    """0 done; 4 images left neither done nor failed; 3 more than --max_fail_ratio failed (said why)."""
    if summary.unfinished:
        print(f"predict: {summary.unfinished} images were claimed by a process that is gone and have no output; "
              f"rerun the same command to do them (predict.py --list_missing lists them)", file=sys.stderr)
        return EXIT_INCOMPLETE
    if not summary.ok:
        print(f"predict: {summary.failed} of {summary.total} images failed ({summary.fail_ratio:.2%} > "
              f"--max_fail_ratio {opts.max_fail_ratio:.2%}); see {opts.result_dir}/failures.csv",
              file=sys.stderr)
        return EXIT_TOO_MANY_FAILURES
    return 0


if __name__ == "__main__":
    from utils.signals import exit_settled

    exit_settled(main())
