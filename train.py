"""Train and evaluate HRNet-OCR / hierarchical multi-scale attention models.

``python train.py --dataset synthetic --arch ocrnet.HRNet_Mscale_w18s --result_dir logs/x``;
``torchrun --nproc_per_node=N train.py ...`` or ``srun`` for DDP. ``main(cfg)`` only wires the
builders; :func:`train_one_epoch` and :func:`evaluate` are the loops. Exit status: 0 done,
75 stopped by SIGTERM/SIGUSR1 after writing ``last.pth`` ("requeue me"), 2 bad flags.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports (torch: seconds): a SIGTERM meanwhile is a start-up stop, exit 75
    from utils.signals import defer_stop_signals

    defer_stop_signals()

import contextlib
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from config import Config, ConfigError, check_resume, expand_assets, parse_config, save_config
from datasets.info import DatasetInfo, dataset_info
from datasets.loading import SeededDataset, ShardSampler, mix_seed, seed_all
from datasets.sampler import ClassUniformSampler
from inference.settings import InferenceSettings
from network import checkpoint as ckpt_io
from training.dump import Dumps, ImageDumper, eval_dumps
from training.finetune import apply_start_flags, freeze_trunk
from utils.amp import Precision, prepare_model
from utils.dist import (
    DistInfo,
    any_rank,
    cleanup,
    init_distributed,
    maybe_sync_batchnorm,
    mean_over_ranks,
    on_main_rank,
    pick_device,
)
from utils.errors import end_children, run_cli
from utils.io import ensure_output_dir, remove_created
from utils.logger import RunLogger
from utils.metrics import ConfusionMatrix, format_table, write_metrics
from utils.monitor import Monitor, eval_output_dir, write_top_k
from utils.optim import build_optimizer, poly_schedule
from utils.progress import TrainProgress, progress_iter
from utils.reference_flags import TEST_MODE_VAL_BATCHES
from utils.signals import (
    EXIT_REQUEUE,
    StartupStop,
    StopRequest,
    ignore_stop_signals,
    stop_handlers_kept,
    stop_raises,
)
from utils.threads import configure_threads


@dataclass
class State:
    """What changes every step (the position inside ``epoch`` is the sampler's)."""

    epoch: int = 0  # epoch in progress (or next to start)
    iteration: int = 0  # optimizer steps done
    best_miou: float = -1.0
    monitor: Monitor = field(default_factory=Monitor)  # best.pth, --save_top_k, --early_stop_patience


@dataclass(frozen=True)
class Setup:
    """What training and evaluation share, built once by :func:`main`."""

    cfg: Config
    info: DistInfo
    precision: Precision
    model: nn.Module  # possibly DDP-wrapped
    net: nn.Module  # the unwrapped model
    data: DatasetInfo  # the classes the model predicts (recorded in every checkpoint)
    val_ds: Any  # a datasets.base.SegmentationDataset
    val_loader: DataLoader
    logger: RunLogger
    inference: InferenceSettings  # resolved: what validation and --eval compute with (metrics.json)
    weights: Weights  # where the weights came from


@dataclass(frozen=True)
class Trainer:
    """What only training needs, built once by :func:`build_trainer`."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    loader: DataLoader
    sampler: ClassUniformSampler
    dataset: SeededDataset
    accum: int  # micro-batches per optimizer step
    steps_per_epoch: int
    total_iters: int
    stop: StopRequest = field(default_factory=lambda: StopRequest(settled=True))  # outcome settled at its end


# ----------------------------------------------------------------------------- data

def _dataset_options(cfg: Config) -> dict[str, Any]:
    d = cfg.data
    opts = {"coarse_boost_classes": d.coarse_boost_classes, "custom_coarse_prob": d.custom_coarse_prob,
            "custom_coarse_dropout_classes": d.custom_coarse_dropout_classes}
    opts = {k: v for k, v in opts.items() if v is not None}
    if d.mask_out_cityscapes:
        opts["mask_out_cityscapes"] = True
    return opts


def _source(cfg: Config) -> dict[str, Any]:
    """Where a described dataset's dataset.yaml is, when not in --dataset_root."""
    return {"config": cfg.data.dataset_config} if cfg.data.dataset_config else {}


def build_datasets(cfg: Config, train: bool) -> tuple[Any, Any]:
    from datasets import build_dataset
    from datasets.base import check_label_sample
    from datasets.transforms import build_eval_transform, build_train_transform

    d = cfg.data
    val_split = {"trn": "train", "test": "test"}.get(cfg.eval.eval or "", "val")
    val_ds = build_dataset(d.dataset, root=d.dataset_root, split=val_split, cv=d.cv,
                           transform=build_eval_transform(pre_size=d.pre_size), **_source(cfg))
    check_label_sample(val_ds)  # labels of another dataset would train and score as nothing
    if not train:
        return None, val_ds
    tf = build_train_transform(d.crop_size, d.scale_min, d.scale_max, ignore_index=val_ds.ignore_index,
                               color_aug=d.color_aug, gblur=d.gblur)
    train_ds = build_dataset(d.dataset, root=d.dataset_root, split="train", cv=d.cv, transform=tf,
                             **_dataset_options(cfg), **_source(cfg))
    check_label_sample(train_ds)
    return train_ds, val_ds


def build_train_loader(cfg: Config, info: DistInfo, train_ds: Any) -> tuple[DataLoader, ClassUniformSampler]:
    from datasets import build_sampler

    sampler = build_sampler(train_ds, class_uniform_pct=cfg.data.class_uniform_pct,
                            class_uniform_tile=cfg.data.class_uniform_tile, num_replicas=info.world_size,
                            rank=info.rank, seed=cfg.train.seed, shuffle=True, cache_dir=cfg.data.centroid_cache)
    # SeededDataset.set_epoch before each epoch's iteration: workers are not persistent
    loader = DataLoader(SeededDataset(train_ds, cfg.train.seed), batch_size=cfg.data.bs_trn, sampler=sampler,
                        num_workers=cfg.data.num_workers, drop_last=True, pin_memory=info.device.type == "cuda",
                        worker_init_fn=ignore_stop_signals)
    return loader, sampler


def build_val_loader(cfg: Config, info: DistInfo, val_ds: Any) -> DataLoader:
    n = len(val_ds)
    if cfg.train.test_mode:
        n = min(n, TEST_MODE_VAL_BATCHES * cfg.data.bs_val * info.world_size)
    return DataLoader(val_ds, batch_size=cfg.data.bs_val, sampler=ShardSampler(n, info.rank, info.world_size),
                      num_workers=cfg.data.num_workers, pin_memory=info.device.type == "cuda",
                      worker_init_fn=ignore_stop_signals)


# ----------------------------------------------------------------------------- model

def model_kwargs(cfg: Config) -> dict[str, Any]:
    """``get_model`` arguments other than the class count, from the config."""
    m = cfg.model
    return {"trunk_weights": expand_assets(m.trunk_weights, m.assets_path),
            "trunk_weights_partial": m.trunk_weights_partial, "mscale_lo_scale": m.mscale_lo_scale,
            "align_corners": m.align_corners, "eval_scales": cfg.eval.n_scales or (m.mscale_lo_scale, 1.0)}


def build_model(cfg: Config, num_classes: int, in_channels: int = 3) -> nn.Module:
    try:
        return ckpt_io.build_model(cfg.model.arch, num_classes, in_channels=in_channels, **model_kwargs(cfg))
    except KeyError as e:
        raise ConfigError(f"--arch: {e.args[0]}") from e


def place_model(cfg: Config, net: nn.Module, info: DistInfo, precision: Precision) -> tuple[nn.Module, nn.Module]:
    """Device, SyncBN, precision, memory format, checkpointing, DDP, compile.

    Returns (model to call for training, unwrapped model: its state dict is the checkpoint's).
    """
    from network.hrnet import set_grad_checkpointing
    from network.inference import maybe_compile

    net.to(info.device)
    if cfg.model.syncbn:
        net = maybe_sync_batchnorm(net, info)
    prepare_model(net, precision)
    if channels_last(cfg, info.device):
        net.to(memory_format=torch.channels_last)
    if set_grad_checkpointing(net, cfg.train.grad_ckpt) == 0 and cfg.train.grad_ckpt:
        warnings.warn(f"--grad_ckpt: the trunk of {cfg.model.arch} has no gradient checkpointing; "
                      "training without it", stacklevel=2)
    model = net
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return (maybe_compile(model, "training") if cfg.train.compile else model), net


def channels_last(cfg: Config, device: torch.device) -> bool:
    """channels_last training: the default on CUDA (tensor cores want NHWC), off with --no_channels_last."""
    return device.type == "cuda" and not cfg.train.no_channels_last


def training_precision(cfg: Config, device: torch.device) -> Precision:
    """The training precision: the level (``--amp_opt_level``, O1 with ``--fp16``) in the dtype the one
    precision rule gives ``--amp_dtype`` on ``device`` (``inference.settings.resolve_precision``)."""
    from inference.settings import resolve_precision

    level = cfg.amp_level
    if level == "O0":
        return Precision(level, device.type, torch.float32)
    p = resolve_precision(cfg.train.amp_dtype, device)
    return Precision(level, device.type, p.dtype, p.reason)


@dataclass(frozen=True)
class Weights:
    """Where the model's weights came from; an evaluation records it in metrics.json (``checkpoint``)."""

    path: str | None = None  # None: the initial (random or ImageNet-trunk) weights
    resume: dict[str, Any] | None = None  # a training checkpoint to continue from
    validated: tuple[float, ...] | None = None  # the scales the checkpoint's run validated with
    epoch: int | None = None
    iteration: int | None = None

    @classmethod
    def of(cls, path: str, ckpt: dict[str, Any], net: nn.Module, resume: bool = False) -> Weights:
        from inference.settings import is_multiscale, validated_scales

        epoch, it = ckpt.get("epoch"), ckpt.get("iteration")
        return cls(str(Path(path).resolve()), ckpt if resume else None, validated_scales(ckpt, is_multiscale(net)),
                   None if epoch is None else int(epoch), None if it is None else int(it))

    def record(self) -> dict[str, Any]:
        return {"path": self.path or "none: initial weights (no --snapshot)", "epoch": self.epoch,
                "iteration": self.iteration}


def load_weights(cfg: Config, net: nn.Module, info: DistInfo) -> Weights:
    """Resume (explicit --resume, else result_dir/last.pth) or --snapshot (weights only)."""
    from network import CheckpointError, load_checkpoint
    from network.checkpoint import read_checkpoint

    last = Path(cfg.train.result_dir) / ckpt_io.LAST
    resume = cfg.train.resume or (str(last) if last.is_file() and cfg.eval.eval is None else None)
    if resume:
        ckpt = read_checkpoint(resume, trust=cfg.model.trust_checkpoint)
        if not ckpt_io.is_training_checkpoint(ckpt):
            raise CheckpointError(f"{resume} is not a training checkpoint written by train.py (format "
                                  f"{ckpt.get('format')!r}, no optimizer/iteration); pass it as --snapshot "
                                  "to load its weights only")
        for note in check_resume(ckpt.get("config"), cfg, resume):
            _say(info, f"note: {note}")
        load_checkpoint(net, ckpt, strict=True)
        return Weights.of(resume, ckpt, net, resume=True)
    path = expand_assets(cfg.model.snapshot, cfg.model.assets_path)
    if path is None and cfg.eval.eval is not None:
        for name in (ckpt_io.BEST, ckpt_io.LAST):
            if (Path(cfg.train.result_dir) / name).is_file():
                path = str(Path(cfg.train.result_dir) / name)
                break
    if path:
        return Weights.of(path, _load_snapshot(cfg, net, info, path), net)
    if cfg.eval.eval is not None:
        warnings.warn("evaluating a model with random weights: no --snapshot, --resume or checkpoint "
                      "in --result_dir", stacklevel=2)
    return Weights()


def _load_snapshot(cfg: Config, net: nn.Module, info: DistInfo, path: str) -> dict[str, Any]:
    """All of the model from ``path``, or with --snapshot_partial (training) what fits; says how much."""
    from network import CheckpointError, load_checkpoint
    from network.checkpoint import loaded_fraction

    partial = cfg.model.snapshot_partial and cfg.eval.eval is None
    ckpt = load_checkpoint(net, path, strict=not partial, trust=cfg.model.trust_checkpoint,
                           partial_flag=None if cfg.eval.eval else "--snapshot_partial")
    fit, total, share = loaded_fraction(net, ckpt)
    if fit == 0:
        raise CheckpointError(f"--snapshot {path}: no tensor fits {cfg.model.arch} (--arch); pass the checkpoint "
                              f"of a model of this architecture")
    _say(info, f"loaded weights from {path}: {fit} of {total} tensors, {100 * share:.2f}% of the weights")
    return {k: v for k, v in ckpt.items() if k in ("epoch", "iteration", "inference", "config")}


def inference_settings(cfg: Config, net: nn.Module, data: DatasetInfo, device: torch.device,
                       weights: Weights) -> InferenceSettings:
    """The one inference configuration of this run (validation and ``--eval``): ``--n_scales``, else
    (``--eval``) the scales the checkpoint was validated with, else the documented default; precision
    from ``--amp_opt_level``/``--amp_dtype`` (``auto`` unless given); the dataset's normalisation."""
    from inference.defaults import requested_precision
    from inference.settings import build_settings, is_multiscale

    e = cfg.eval
    precision, half_model = requested_precision(cfg.train.amp_dtype, cfg.train.amp_opt_level)
    settings = build_settings(multiscale=is_multiscale(net), scales=e.n_scales,
                              validated=weights.validated if e.eval else None, lo_scale=cfg.model.mscale_lo_scale,
                              flip=e.do_flip, precision=precision, half_model=half_model, mean=data.mean,
                              std=data.std, size_divisor=1, memory_gb=e.eval_memory_gb)
    return settings.resolve(device)


# ----------------------------------------------------------------------------- training

def _say(info: DistInfo, text: str) -> None:
    if info.is_main:
        print(text, flush=True)


def train_step(s: Setup, t: Trainer, iteration: int, batches: Iterator[dict[str, Any]]) -> torch.Tensor:
    """One optimizer step over ``t.accum`` micro-batches; returns the (local) loss."""
    cfg, info, dev, p = s.cfg, s.info, s.info.device, s.precision
    total = torch.zeros((), device=dev)
    for micro in range(t.accum):
        batch = next(batches)
        x, y = batch["image"].to(dev, non_blocking=True), batch["mask"].to(dev, non_blocking=True)
        if channels_last(cfg, dev):
            x = x.contiguous(memory_format=torch.channels_last)
        if cfg.train.deterministic:  # dropout masks depend on the step, not on the RNG's history
            torch.manual_seed(mix_seed(cfg.train.seed, iteration, micro * info.world_size + info.rank))
        last = micro == t.accum - 1
        sync = s.model.no_sync() if info.distributed and not last else contextlib.nullcontext()  # type: ignore[operator]
        with sync:
            with p.autocast():
                out = s.model(p.cast_input(x))
            loss = t.criterion({k: v.float() for k, v in out.items()}, y) / t.accum
            (t.scaler.scale(loss) if t.scaler else loss).backward()
        total += loss.detach()
    if t.scaler:
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.scheduler.step()
    return total


def start_epoch(cfg: Config, t: Trainer, epoch: int) -> None:
    """Point the sampler and the per-sample seeds at ``epoch`` (a restored position is kept)."""
    t.sampler.set_epoch(epoch)
    t.dataset.set_epoch(epoch)
    if cfg.data.class_uniform_pct:
        t.sampler.class_uniform_pct = cfg.data.class_uniform_pct if epoch < cfg.train.max_cu_epoch else 0.0


def train_one_epoch(s: Setup, t: Trainer, st: State, progress: TrainProgress) -> bool:
    """Train ``st.epoch`` from its current position; True when stopped by a signal."""
    cfg, info, epoch = s.cfg, s.info, st.epoch
    start_epoch(cfg, t, epoch)
    s.model.train()
    per_step = cfg.data.bs_trn * t.accum
    steps = min(len(t.sampler) // per_step, t.total_iters - st.iteration)
    batches = iter(t.loader)
    bar = progress.bar(steps, f"epoch {epoch}")
    for _ in bar:
        loss = train_step(s, t, st.iteration, batches)
        st.iteration += 1
        t.sampler.advance(per_step)
        if st.iteration % cfg.train.log_freq == 0 or st.iteration == t.total_iters:
            value, lr = float(mean_over_ranks(loss)), t.optimizer.param_groups[0]["lr"]
            rates = progress.report(st.iteration, epoch, cfg.train.max_epoch, value, lr, bar)
            s.logger.train_step(st.iteration, value, lr, epoch=epoch, **rates)
        if any_rank(t.stop.requested, info.device):
            return True
        if cfg.train.ckpt_freq and st.iteration % cfg.train.ckpt_freq == 0:
            save(s, t, st, ckpt_io.LAST)
    return False


def save(s: Setup, t: Trainer, st: State, name: str) -> None:
    """Rank 0 writes ``name`` (last.pth / best.pth) atomically; every rank waits for it, and
    every rank stops if it failed."""
    def write() -> None:
        ckpt = ckpt_io.build_checkpoint(
            model=s.net, optimizer=t.optimizer, scheduler=t.scheduler, scaler=t.scaler,
            epoch=st.epoch, iteration=st.iteration, best_miou=st.best_miou, device=s.info.device,
            sampler=t.sampler.state_dict(), config=s.cfg.to_dict(), dataset_info=s.data.to_dict())
        ckpt["monitor"] = st.monitor.state_dict()
        ckpt["inference"] = s.inference.to_dict()  # the settings it is validated with: the doors' default
        ckpt_io.save_checkpoint(ckpt, s.cfg.train.result_dir, name)

    on_main_rank(s.info, f"writing {Path(name).name}", write)


def restore(t: Trainer, ckpt: dict[str, Any], device: torch.device, monitor: Monitor) -> State:
    """Optimizer, schedule, scaler, position and RNG from a training checkpoint; the loop state."""
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    if t.scaler is not None and ckpt.get("scaler"):
        t.scaler.load_state_dict(ckpt["scaler"])
    t.sampler.load_state_dict(ckpt["sampler"])  # the position; another world size keeps the global one
    ckpt_io.restore_rng(ckpt["rng"], device)
    best_miou = float(ckpt.get("best_miou", -1.0))
    state = ckpt.get("monitor")
    if state and monitor.metric == "miou":  # one truth for the best mIoU: the reference's `best_miou` key
        state = {**state, "best": best_miou}
    monitor.load_state_dict(state)
    return State(epoch=int(ckpt["epoch"]), iteration=int(ckpt["iteration"]),
                 best_miou=best_miou, monitor=monitor)


# ----------------------------------------------------------------------------- evaluation

@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, settings: InferenceSettings,
             device: torch.device, dumper: ImageDumper | Dumps | None = None, show: bool = True,
             ignore_index: int = 255, compile: bool = False) -> dict[str, Any]:
    """Inference with ``settings`` (resolved: scales, flip, precision, memory budget) over ``loader``;
    a confusion matrix summed over ranks.

    Runs an inference-prepared copy of ``model`` (conv+BN folded, channels_last; ``model`` itself
    is untouched), within the settings' memory budget.
    """
    from network import optimize_for_inference, predict
    from network.tiling import memory_plan

    p = settings.run_precision
    fast = optimize_for_inference(model, dtype=p.dtype if p.half_model else None, compile=compile)
    memory = memory_plan(device, settings.memory_gb)
    cm = ConfusionMatrix(num_classes, ignore_index, device)
    for batch in progress_iter(loader, "eval", len(loader), enabled=show):
        x = batch["image"].to(device, non_blocking=True)
        with p.autocast():
            out = predict(fast, p.cast_input(x), scales=settings.scales, flip=settings.flip, memory=memory)
        pred = out["pred"].argmax(1)
        if "mask" in batch:
            cm.update(batch["mask"].to(device, non_blocking=True), pred)
        if dumper is not None and not dumper.done():
            dumper.dump(batch, out, pred)
    cm.all_reduce()
    return cm.compute()


def validate(s: Setup, st: State, epoch: int, t: Trainer | None = None) -> dict[str, Any]:
    """Evaluate, print the table, log, write metrics files; when training (``t``) keep best.pth
    and its pictures."""
    cfg, info, ds = s.cfg, s.info, s.val_ds
    rd = Path(cfg.train.result_dir)
    tmp = rd / (".val_images" if cfg.eval.eval is None else "best_images")
    dumper = eval_dumps(cfg.eval, rd, tmp, ds, info.is_main, info.rank,  # every rank: its own share
                        (s.inference.mean, s.inference.std))
    t0 = time.time()
    metrics = evaluate(s.net, s.val_loader, ds.num_classes, s.inference, info.device, dumper, info.is_main,
                       ds.ignore_index, cfg.train.compile)
    dumper.finish()
    metrics.update(epoch=epoch, iteration=st.iteration, eval_seconds=round(time.time() - t0, 2),
                   scales=list(s.inference.scales), flip=s.inference.flip,
                   precision=s.inference.run_precision.describe(), inference=s.inference.to_dict())
    if cfg.eval.eval:  # which weights were evaluated (training validates its own, at `iteration`)
        metrics["checkpoint"] = s.weights.record()
    decision = st.monitor.update(metrics[cfg.train.monitor], epoch, st.iteration)
    improved = decision.improved and not cfg.eval.no_metrics  # best.pth follows --monitor
    st.best_miou = max(st.best_miou, metrics["miou"])
    def report() -> None:
        where = f"epoch {epoch} iteration {st.iteration}" if cfg.eval.eval is None else f"--eval {cfg.eval.eval}"
        s.logger.msg(f"{where}: mIoU {100 * metrics['miou']:.2f}\n" + format_table(metrics, ds.class_names))
        s.logger.val(epoch, metrics, ds.class_names, st.iteration)
        for i, panel in enumerate(dumper.panels):
            s.logger.image(f"val_images/{i}", panel, st.iteration)
        write_metrics(rd, metrics, ds.class_names, {"best_miou": st.best_miou})

    if not cfg.eval.no_metrics:
        on_main_rank(info, "writing the validation metrics", report)
    if improved and t is not None:
        save(s, t, st, ckpt_io.BEST)
    if t is not None:
        trainer = t
        write_top_k(rd, decision, st.monitor, lambda path: save(s, trainer, st, str(path)), info.is_main)
    if info.is_main:  # after best.pth, so the pictures never run ahead of the checkpoint
        _keep_best_images(tmp, rd / "best_images", improved and t is not None)
    return metrics


def _keep_best_images(tmp: Path, best: Path, improved: bool) -> None:
    if tmp == best or not tmp.exists():
        return
    if not improved:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = best.with_name(f".{best.name}.old")  # swap by renames: a kill never leaves neither
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        best.rename(old)
    tmp.rename(best)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- wiring

def _setup_determinism(cfg: Config) -> None:
    seed_all(mix_seed(cfg.train.seed, "init"))  # same initial weights on every rank
    torch.backends.cudnn.benchmark = not cfg.train.deterministic
    if cfg.train.deterministic:
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _runtime(cfg: Config, info: DistInfo, precision: Precision, accum: int, steps: int, total: int) -> dict[str, Any]:
    return {"world_size": info.world_size, "backend": info.backend, "device": str(info.device),
            "precision": precision.describe(), "bs_per_process": cfg.data.bs_trn, "accum_steps": accum,
            "global_batch_size": cfg.data.bs_trn * accum * info.world_size, "crop_size": list(cfg.data.crop_size),
            "steps_per_epoch": steps, "total_iters": total, "torch": torch.__version__}


def _accum_steps(cfg: Config, info: DistInfo) -> int:
    per = cfg.data.bs_trn * info.world_size
    g = cfg.train.global_batch_size or per
    if g % per:
        raise ConfigError(f"--global_batch_size {g} must be a multiple of --bs_trn x world size "
                          f"({cfg.data.bs_trn} x {info.world_size} = {per})")
    return g // per


def _monitor(cfg: Config) -> Monitor:
    return Monitor(cfg.train.monitor, cfg.train.save_top_k, cfg.train.early_stop_patience)


def run_eval(s: Setup) -> int:
    metrics = validate(s, State(monitor=_monitor(s.cfg)), epoch=0)
    _say(s.info, f"mIoU {100 * metrics['miou']:.2f}  pixel acc {100 * metrics['pixel_acc']:.2f}")
    return 0


def build_trainer(s: Setup, train_ds: Any) -> Trainer:
    """Loader, sampler, loss, optimizer, schedule and scaler for ``train_ds``."""
    cfg, info = s.cfg, s.info
    loader, sampler = build_train_loader(cfg, info, train_ds)
    accum = _accum_steps(cfg, info)
    steps = sampler.num_samples // (cfg.data.bs_trn * accum)
    if steps < 1:
        raise ConfigError(f"--bs_trn {cfg.data.bs_trn} x accumulation {accum} exceeds the "
                          f"{sampler.num_samples} training samples per process")
    total = min(cfg.train.max_iter or 10**12, cfg.train.max_epoch * steps)
    assert isinstance(loader.dataset, SeededDataset)
    optimizer = build_optimizer(cfg.optim.optimizer, s.model.parameters(), cfg.optim.lr,
                                cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.amsgrad)
    return Trainer(criterion=_build_criterion(cfg, train_ds), optimizer=optimizer,
                   scheduler=poly_schedule(optimizer, total, cfg.optim.poly_exp), scaler=s.precision.make_scaler(),
                   loader=loader, sampler=sampler, dataset=loader.dataset, accum=accum, steps_per_epoch=steps,
                   total_iters=total)


def run_training(s: Setup, train_ds: Any, ckpt: dict[str, Any] | None) -> int:
    cfg, info = s.cfg, s.info
    t = build_trainer(s, train_ds)
    st = State(monitor=_monitor(cfg))
    if ckpt is not None:
        st = restore(t, ckpt, info.device, st.monitor)
        _say(info, f"resumed at epoch {st.epoch}, iteration {st.iteration}")
    elif started := apply_start_flags(cfg, t.optimizer, t.scheduler, st, t.steps_per_epoch):
        _say(info, started)
    s.logger.start_training(st.iteration, epoch_closed=t.sampler.start_index == 0)
    progress = TrainProgress(t.total_iters, st.iteration, cfg.data.bs_trn * t.accum * info.world_size,
                             enabled=info.is_main)
    if info.is_main:
        runtime = _runtime(cfg, info, s.precision, t.accum, t.steps_per_epoch, t.total_iters)
        save_config(cfg, Path(cfg.train.result_dir) / "config.json", {**runtime, "inference": s.inference.to_dict()})
    return _epochs(s, t, st, progress)


def _epochs(s: Setup, t: Trainer, st: State, progress: TrainProgress) -> int:
    cfg = s.cfg
    with t.stop:
        # a position inside the epoch: a checkpoint taken inside the last epoch (even at its final
        # iteration) still owes that epoch's close: validation, best.pth and the final metrics
        while st.epoch < cfg.train.max_epoch and (st.iteration < t.total_iters or t.sampler.start_index > 0):
            if train_one_epoch(s, t, st, progress):
                save(s, t, st, ckpt_io.LAST)
                _say(s.info, f"stopped by signal {t.stop.signum} at iteration {st.iteration}; "
                     f"wrote last.pth, exit {EXIT_REQUEUE}")
                return EXIT_REQUEUE
            epoch, st.epoch = st.epoch, st.epoch + 1
            t.sampler.set_epoch(st.epoch)  # position 0 of the next epoch, as checkpointed below
            done = st.epoch >= cfg.train.max_epoch or st.iteration >= t.total_iters
            if done or (epoch + 1) % cfg.train.val_freq == 0:
                validate(s, st, epoch, t)
            save(s, t, st, ckpt_io.LAST)
            if st.monitor.exhausted:
                _say(s.info, st.monitor.stop_message())
                break
    return 0


def _build_criterion(cfg: Config, ds: Any) -> nn.Module:
    from loss import SegLoss

    lo = cfg.loss
    return SegLoss(ds.num_classes, ignore_index=ds.ignore_index, rmi=lo.rmi_loss, img_wt=lo.img_wt_loss,
                   aux_weight=lo.ocr_alpha, mscale_weight=lo.supervised_mscale_loss_wt or 0.0,
                   ocr_aux_rmi=lo.ocr_aux_loss_rmi)


def main(cfg: Config) -> int:
    """Wire the builders and run training or evaluation; returns the exit status. The caller's
    SIGTERM/SIGUSR1 handlers are as they were afterwards (training ignores them once settled)."""
    if cfg.eval.eval == "folder":
        return eval_folder(cfg)
    with stop_handlers_kept():
        return _run(cfg)


def _run(cfg: Config) -> int:
    info = init_distributed(cfg.train.device)
    threads = configure_threads()  # the CPUs allotted, not the machine's: no OpenMP oversubscription
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    created = ensure_output_dir(cfg.train.result_dir)
    try:
        _setup_determinism(cfg)
        if info.is_main:
            ckpt_io.remove_stale_temps(cfg.train.result_dir)
        precision = training_precision(cfg, info.device)
        train_ds, val_ds = build_datasets(cfg, train=cfg.eval.eval is None)
        data = dataset_info(cfg.data.dataset, root=cfg.data.dataset_root, **_source(cfg))
        net = build_model(cfg, val_ds.num_classes, data.in_channels)
        if cfg.train.freeze_trunk:
            freeze_trunk(net)
        weights = load_weights(cfg, net, info)
        settings = inference_settings(cfg, net, data, info.device, weights)
        model, net = place_model(cfg, net, info, precision)
        if cfg.eval.eval:  # into a training run: eval_<mode>/, the run's own files stay as training wrote them
            out = eval_output_dir(cfg.train.result_dir, cfg.eval.eval)
            cfg = replace(cfg, train=replace(cfg.train, result_dir=str(out)))
            Path(cfg.train.result_dir).mkdir(parents=True, exist_ok=True)
        s = Setup(cfg, info, precision, model, net, data, val_ds, build_val_loader(cfg, info, val_ds),
                  RunLogger(cfg.train.result_dir, info.rank, cfg.flags()), settings, replace(weights, resume=None))
        what = "evaluation" if cfg.eval.eval else f"training {precision.describe()}"
        _say(info, f"{cfg.model.arch} on {info.device} x{info.world_size}, {what}, {threads.describe()}, "
                   f"result_dir {cfg.train.result_dir}")
        _say(info, f"inference: {settings.describe()}")
        try:
            return run_eval(s) if cfg.eval.eval else run_training(s, train_ds, weights.resume)
        finally:
            s.logger.close()
    except BaseException:
        remove_created(cfg.train.result_dir, created)  # a run that failed before writing leaves no empty folder
        raise
    finally:
        torch.use_deterministic_algorithms(flags[0])  # leave the process as found (tests, notebooks)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[1], flags[2]
        cleanup()


def eval_folder(cfg: Config) -> int:
    """``--eval folder``: predict.py's resumable, sharded folder inference with this config's model and
    the same inference settings predict.py would use for these flags."""
    import predict

    snapshot = expand_assets(cfg.model.snapshot, cfg.model.assets_path)
    try:
        net, data, validated = predict.load_model(cfg.model.arch, snapshot, dataset=cfg.data.dataset,
                                                  trust=cfg.model.trust_checkpoint, **model_kwargs(cfg))
    except KeyError as err:
        raise ConfigError(f"--arch: {err.args[0]}") from err
    device = pick_device(cfg.train.device)
    e = cfg.eval
    opts = predict.PredictOptions(
        eval_folder=str(e.eval_folder), result_dir=cfg.train.result_dir, subdirs=e.subdirs, shard=e.shard,
        infer_short_side=e.infer_short_side, batch_size=cfg.data.bs_val, workers=cfg.data.num_workers,
        scales=e.n_scales, flip=e.do_flip, amp_dtype=cfg.train.amp_dtype, amp_opt_level=cfg.train.amp_opt_level,
        eval_memory_gb=e.eval_memory_gb, compile=cfg.train.compile, overlay=e.dump_assets, probs=e.probs,
        arch=cfg.model.arch, snapshot=snapshot)
    try:
        opts = predict.with_data_defaults(opts, data)
        summary = predict.predict_folder(net.to(device), opts, palette=data.palette, class_names=data.class_names,
                                         device=device, settings=predict.inference_settings(opts, net, validated))
    except (predict.PredictError, ValueError) as err:
        raise ConfigError(f"--eval folder: {err}") from err
    return predict.exit_status(summary, opts)


def cli(argv: list[str] | None = None) -> int:
    """Exit status per utils/errors.py: user errors one line + 2, disk full named, workers ended."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli("train.py", lambda: _main_until_stopped(argv), argv)


def _main_until_stopped(argv: list[str]) -> int:
    try:
        with stop_raises():
            return main(parse_config(argv))
    except StartupStop as e:
        end_children()
        print(f"train.py: {e}, before the first training step: nothing new to save; rerun the same command "
              f"to start again (it resumes from last.pth in --result_dir if there is one); exit {EXIT_REQUEUE}",
              file=sys.stderr, flush=True)
        return EXIT_REQUEUE


if __name__ == "__main__":
    from utils.signals import exit_settled

    exit_settled(cli())
