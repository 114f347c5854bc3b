"""Registries: architectures keyed by the reference's names (``ocrnet.HRNet_Mscale``) and trunks.

Every name is registered explicitly with a decorator beside its builder, so ``grep
'register_model("'`` and ``grep 'register_trunk("'`` list them all. A new backbone is one
module in ``network/`` holding a ``@register_trunk`` builder (an ``nn.Module`` with an
``out_channels`` attribute whose forward returns ``(N, out_channels, H/4, W/4)`` features)
and its ``@register_model`` names, plus its import in ``network/__init__.py``.

A *family* covers names that cannot be listed one by one (``ocrnet.timm.<timm model>``,
network/timm_trunk.py): ``@register_family(prefix, pattern)`` on a resolver that turns a
name starting with ``prefix`` into a builder, or raises :class:`UnknownModelError` saying
why. ``get_model`` tries the explicit names first; ``list_models()`` lists only those and
``list_families()`` the patterns, so a checkpoint's ``arch`` rebuilds either kind.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from utils.errors import UserError

ModelFn = Callable[..., nn.Module]
Resolver = Callable[[str], ModelFn]
_REGISTRY: dict[str, ModelFn] = {}
_TRUNKS: dict[str, ModelFn] = {}
_FAMILIES: dict[str, tuple[str, Resolver]] = {}  # prefix -> (documented pattern, resolver)


class UnknownModelError(UserError, KeyError):
    """An architecture name that names nothing buildable; the message says why and the close names.

    A ``KeyError`` (what ``get_model`` always raised for unknown names) and a ``UserError``
    (one line on the command line, no traceback).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_trunk(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: register ``fn(weights=None, align_corners=False, weights_partial=False, **kwargs)
    -> nn.Module`` (a feature extractor with ``out_channels``) under ``name``; ``weights`` is a
    local file, loaded whole unless ``weights_partial`` (then what fits, its share printed)."""

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
    """Registered architecture names, sorted (families: :func:`list_families`)."""
    return sorted(_REGISTRY)


def register_family(prefix: str, pattern: str) -> Callable[[Resolver], Resolver]:
    """Decorator: names starting with ``prefix`` are built by ``resolver(name)`` (a builder like a
    ``register_model`` function); ``pattern`` documents them (e.g. ``ocrnet.timm.<timm_name>[_Mscale]``)."""

    def wrap(fn: Resolver) -> Resolver:
        if prefix in _FAMILIES or any(n.startswith(prefix) for n in _REGISTRY):
            raise ValueError(f"family prefix {prefix!r} is already registered or shadows a model name")
        _FAMILIES[prefix] = (pattern, fn)
        return fn

    return wrap


def list_families() -> list[str]:
    """The documented patterns of the registered families, sorted."""
    return sorted(pattern for pattern, _ in _FAMILIES.values())


def resolve_model(name: str) -> ModelFn:
    """The builder of ``name``: a registered name, else the family whose prefix it starts with."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, (_, resolver) in _FAMILIES.items():
        if name.startswith(prefix):
            return resolver(name)
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownModelError(f"unknown architecture {name!r}; {hint}known: {', '.join(list_models())}, "
                            f"and the patterns {', '.join(list_families()) or '(none)'}")


def get_model(name: str, num_classes: int, trunk_weights: str | None = None,
              mscale_lo_scale: float = 0.5, eval_scales: tuple[float, ...] | None = (0.5, 1.0, 2.0),
              align_corners: bool = False, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs.

    ``trunk_weights``: local path to ImageNet weights of the trunk (no download).
    ``mscale_lo_scale`` / ``eval_scales`` only matter for multi-scale (``*_Mscale*``) models.
    Extra ``kwargs`` go to the builder (e.g. ``widths=OCRWidths(...)``, ``fuse_upsample``).
    """
    builder = resolve_model(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return builder(num_classes=num_classes, trunk_weights=trunk_weights,
                           mscale_lo_scale=mscale_lo_scale, eval_scales=eval_scales,
                           align_corners=align_corners, **kwargs)
