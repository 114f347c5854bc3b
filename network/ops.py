"""Resizing helpers with the reference's semantics (bilinear, explicit ``align_corners``); :func:`unwrap`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``size`` (the reference's ``Upsample``/``scale_as``).

    Returns ``x`` itself when it already has that size: bilinear resampling to the
    same size is the identity, so skipping it changes no value.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def scale_as(x: torch.Tensor, y: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Resize ``x`` bilinearly to the spatial size of ``y``."""
    return resize_to(x, y.shape[-2:], align_corners)


def resize_by(x: torch.Tensor, scale: float, align_corners: bool) -> torch.Tensor:
    """Resize ``x`` by a factor (the reference's ``ResizeX``: ``recompute_scale_factor=True``)."""
    if scale == 1.0:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align_corners,
                         recompute_scale_factor=True)


def scale_key(prefix: str, scale: float) -> str:
    """Output-dict key for one scale, e.g. ``scale_key("attn", 0.5) == "attn_0.5x"``."""
    return f"{prefix}_{scale:g}x"


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel/DataParallel and
    :class:`~network.inference.EagerFallback` wrappers."""
    while True:
        inner = model._modules.get("module", model._modules.get("eager"))
        if not isinstance(inner, nn.Module):
            return model
        model = inner
