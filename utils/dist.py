"""Distributed set-up from torchrun's or Slurm's environment; gloo on the CPU, nccl on GPUs."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utils.slurmenv import distributed_env


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """The one device choice (train.py, predict.py): ``auto`` is this process's GPU when CUDA is
    available, else the CPU; ``cuda`` is this process's GPU (``LOCAL_RANK`` modulo the GPUs);
    ``cuda:N`` and other torch device names are taken as given."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {pref} was asked for but torch.cuda.is_available() is False")
    device = torch.device(pref)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Read the rank from torchrun or Slurm, pick the device, start the process group if needed."""
    os.environ.update(distributed_env(os.environ))  # srun's tasks; torchrun's RANK wins
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        extra: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **extra)
    return DistInfo(rank, world, local_rank, device, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (one small all-reduce)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class PeerFailed(RuntimeError):
    """Rank 0 failed in work only it does; raised on the other ranks so that they end too."""


def on_main_rank(info: DistInfo, what: str, work: Callable[[], object]) -> None:
    """Rank 0 runs ``work``; then every rank learns whether it succeeded (one all-reduce, which
    is also the barrier). Without the agreement a failure on rank 0 (disk full while writing a
    checkpoint) leaves the others in the next collective until its timeout (30 min by default;
    an NCCL peer that died is not noticed sooner) when nothing like ``srun --kill-on-bad-exit``
    or torchrun ends them."""
    error: BaseException | None = None
    if info.is_main:
        try:
            work()
        except Exception as e:  # reported to the others first, then raised here
            error = e
    if any_rank(error is not None, info.device):
        if error is not None:
            raise error
        raise PeerFailed(f"rank 0 failed while {what} (its log names the cause); rank {info.rank} stops too")


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def maybe_sync_batchnorm(model: nn.Module, info: DistInfo) -> nn.Module:
    """SyncBatchNorm where the backend supports it (CUDA); a warning and plain BN otherwise."""
    if info.device.type != "cuda":
        warnings.warn("--syncbn: SyncBatchNorm needs CUDA tensors; keeping BatchNorm on "
                      f"{info.device.type} (statistics are per process)", stacklevel=2)
        return model
    if not info.distributed:
        return model  # one process: SyncBatchNorm would equal BatchNorm
    return convert_sync_batchnorm(model)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm as SyncBatchNorm, timm's BatchNorm+activation layers (EfficientNet, MobileNet,
    ConvNeXt-style trunks) as timm's SyncBatchNormAct: torch's converter turns those into a plain
    SyncBatchNorm and drops their activation."""
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)
