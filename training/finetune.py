"""The reference's fine-tuning flags: --freeze_trunk, --restore_optimizer, --start_epoch.

``--restore_net`` needs nothing here: ``--snapshot`` loads the weights (the reference forces
restore_net whenever a snapshot is given).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn


def freeze_trunk(net: nn.Module) -> int:
    """No gradient for the trunk (``net.backbone``): the heads train alone. Returns the number of
    frozen tensors."""
    from config import ConfigError

    trunk = getattr(net, "backbone", None)
    if not isinstance(trunk, nn.Module):
        raise ConfigError(f"--freeze_trunk: {type(net).__name__} has no backbone to freeze")
    params = list(trunk.parameters())
    for p in params:
        p.requires_grad_(False)
    return len(params)


def restore_optimizer(optimizer: Any, snapshot: str) -> None:
    """The optimizer state of a train.py checkpoint (moments, step counts), after the weights."""
    from config import ConfigError
    from network.checkpoint import read_checkpoint

    ckpt = read_checkpoint(snapshot)
    state = ckpt.get("optimizer") if isinstance(ckpt, dict) else None
    if not state:
        raise ConfigError(f"--restore_optimizer: {snapshot} holds no optimizer state (not written by train.py)")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"--restore_optimizer: {snapshot}'s optimizer does not fit this model "
                          f"and --optimizer: {e}") from e


def start_at_epoch(state: Any, scheduler: Any, epoch: int, steps_per_epoch: int) -> None:
    """Begin at ``epoch``: the epoch counter and the iteration (so the poly schedule) jump there."""
    it = epoch * steps_per_epoch
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore")
        scheduler.last_epoch = it - 1
        scheduler.step()
    state.epoch, state.iteration = epoch, it  # the sampler starts the epoch at position 0


def apply_start_flags(cfg: Any, optimizer: Any, scheduler: Any, state: Any, steps_per_epoch: int) -> str | None:
    """A fresh run (no resume): --restore_optimizer, then --start_epoch. Returns what was done."""
    from config import expand_assets

    done = []
    if cfg.train.restore_optimizer:
        restore_optimizer(optimizer, str(expand_assets(cfg.model.snapshot, cfg.model.assets_path)))
        done.append("optimizer state from --snapshot")
    if cfg.train.start_epoch:
        start_at_epoch(state, scheduler, cfg.train.start_epoch, steps_per_epoch)
        done.append(f"epoch {state.epoch}, iteration {state.iteration} (--start_epoch)")
    return "starting with " + " and ".join(done) if done else None
