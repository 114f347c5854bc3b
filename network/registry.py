"""Architecture registry keyed by the reference's names (``ocrnet.HRNet_Mscale``)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: register ``fn(num_classes, **kwargs) -> nn.Module`` under ``name``."""

    def wrap(fn: ModelFn) -> ModelFn:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, num_classes: int, trunk_weights: str | None = None,
              mscale_lo_scale: float = 0.5, eval_scales: tuple[float, ...] | None = (0.5, 1.0, 2.0),
              align_corners: bool = False, **kwargs) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs.

    ``trunk_weights``: local path to ImageNet weights of the HRNet trunk (no download).
    ``mscale_lo_scale`` / ``eval_scales`` only matter for multi-scale (``*_Mscale*``) models.
    Extra ``kwargs`` go to the builder (e.g. ``widths=OCRWidths(...)``, ``fuse_upsample``).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _REGISTRY[name](num_classes=num_classes, trunk_weights=trunk_weights,
                           mscale_lo_scale=mscale_lo_scale, eval_scales=eval_scales,
                           align_corners=align_corners, **kwargs)
