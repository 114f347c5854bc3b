"""Optimizers by the reference's names and the per-iteration poly learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, momentum: float,
                    weight_decay: float, amsgrad: bool = False) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    betas = (momentum, 0.999)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, amsgrad=amsgrad)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, amsgrad=amsgrad)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, adam, adamw, radam")


def poly_schedule(optimizer: torch.optim.Optimizer, total_iters: int,
                  power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """lr = base_lr * (1 - it / total_iters) ** power, stepped once per optimizer step."""
    total = max(int(total_iters), 1)

    def factor(it: int) -> float:
        return (1.0 - min(it, total) / total) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
