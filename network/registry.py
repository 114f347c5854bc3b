"""Registries: architectures keyed by the reference's names (``ocrnet.HRNet_Mscale``) and trunks.

Every name is registered explicitly with a decorator beside its builder, so ``grep
'register_model("'`` and ``grep 'register_trunk("'`` list them all. A new backbone is one
module in ``network/`` holding a ``@register_trunk`` builder (an ``nn.Module`` with an
``out_channels`` attribute whose forward returns ``(N, out_channels, H/4, W/4)`` features)
and its ``@register_model`` names, plus its import in ``network/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}
_TRUNKS: dict[str, ModelFn] = {}


def register_trunk(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: register ``fn(weights=None, align_corners=False, **kwargs) -> nn.Module`` (a
    feature extractor with ``out_channels``) under ``name``; ``weights`` is a local file."""

    def wrap(fn: ModelFn) -> ModelFn:
        if name in _TRUNKS:
            raise ValueError(f"trunk {name!r} is already registered")
        _TRUNKS[name] = fn
        return fn

    return wrap


def list_trunks() -> list[str]:
    return sorted(_TRUNKS)


def build_trunk(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """The registered trunk ``name``, with ``weights`` (a local file) loaded when given."""
    if name not in _TRUNKS:
        raise KeyError(f"unknown trunk {name!r}; known: {', '.join(list_trunks())}")
    return _TRUNKS[name](weights=weights, **kwargs)


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
              align_corners: bool = False, **kwargs: Any) -> nn.Module:
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
