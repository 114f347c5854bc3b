"""HRNetV2 trunk from timm, made to compute exactly what the reference's trunk computes.

timm's ``hrnet_w48`` (``features_only=True, feature_location=''``) holds the reference's
trunk weights key for key, but its fuse layers upsample lower-resolution branches with
``nearest`` by a fixed factor, while the reference upsamples them bilinearly to the exact
size of the target branch. :func:`create_trunk` builds the timm model and swaps the class
of each ``HighResolutionModule`` for :class:`BilinearFuseModule` (same parameters, same
state-dict keys) so that the outputs equal the reference's; the trunk's ``forward``
returns the reference's "high level features": the four branches upsampled bilinearly
to 1/4 resolution and concatenated (720 channels for W48).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import timm
import torch
import torch.nn as nn
from timm.models.hrnet import HighResolutionModule, HighResolutionNetFeatures

from network.ops import resize_to
from network.registry import register_trunk

TRUNKS = {"w48": "hrnet_w48", "w18": "hrnet_w18", "w18s": "hrnet_w18_small_v2"}


class BilinearFuseModule(HighResolutionModule):
    """timm's HighResolutionModule whose fuse step upsamples bilinearly to the exact size.

    The summation order (branch 0 first) is the reference's, so float results match.
    """

    align_corners: bool = False

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(t) for branch, t in zip(self.branches, x, strict=True)]
        out = []
        for i, fuse_outer in enumerate(self.fuse_layers):
            y = None
            for j, f in enumerate(fuse_outer):
                z = f(x[j])
                if j > i:
                    z = resize_to(z, x[i].shape[-2:], self.align_corners)
                y = z if y is None else y + z
            out.append(self.fuse_act(y))
        return out


class HRNetV2Trunk(HighResolutionNetFeatures):
    """timm's HRNet features model returning the 4 branches concatenated at 1/4 resolution.

    ``grad_ckpt = True`` recomputes each stage's activations in the backward pass instead of
    keeping them (the reference's ``--grad_ckpt``): same gradients, less memory, more time.
    """

    align_corners: bool = False
    out_channels: int = 0  # channels of the concatenated features (set by create_trunk)
    grad_ckpt: bool = False
    #: the stem's conv/BN pairs, applied back to back (network.inference folds them for eval)
    bn_fold_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        if self.grad_ckpt and self.training and torch.is_grad_enabled():
            branches = self._checkpointed_stages(x)
        else:
            branches = self.stages(x)
        size = branches[0].shape[-2:]
        ups = [branches[0]] + [resize_to(b, size, self.align_corners) for b in branches[1:]]
        return torch.cat(ups, dim=1)

    def _checkpointed_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """timm's ``stages`` with layer1 and every HighResolutionModule checkpointed."""
        x = cast(torch.Tensor, checkpoint_bn_safe(self.layer1, x))
        xl = [t(x) for t in self.transition1]
        xl = _checkpoint_stage(self.stage2, xl)
        for transition, stage in ((self.transition2, self.stage3), (self.transition3, self.stage4)):
            xl = [xl[i] if isinstance(t, nn.Identity) else t(xl[-1]) for i, t in enumerate(transition)]
            xl = _checkpoint_stage(stage, xl)
        return xl


def _checkpoint_stage(stage: nn.Sequential, xl: list[torch.Tensor]) -> list[torch.Tensor]:
    for module in stage:
        xl = cast(list[torch.Tensor], checkpoint_bn_safe(module, xl))
    return xl


def checkpoint_bn_safe(module: nn.Module, x: object) -> object:
    """``module(x)`` under activation checkpointing, counting BatchNorm statistics once.

    The recomputation in the backward pass runs BatchNorm layers in training mode again, which
    would update their running statistics a second time; they are saved before and restored
    after it, so running statistics (and ``num_batches_tracked``) equal those of a plain step.
    """
    from torch.utils.checkpoint import checkpoint

    calls = [0]

    def run(inp: object) -> object:
        calls[0] += 1
        if calls[0] == 1:
            return module(inp)
        with _frozen_bn_stats(module):
            return module(inp)

    return checkpoint(run, x, use_reentrant=False)


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[b.clone() for b in bn.buffers()] for bn in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, bufs in zip(bns, saved, strict=True):
                for b, old in zip(bn.buffers(), bufs, strict=True):
                    b.copy_(old)


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn trunk gradient checkpointing on/off in every trunk of ``model`` that has it (HRNet trunks,
    ``ocrnet.timm.*`` trunks whose timm model supports it); returns how many."""
    trunks = [m for m in model.modules() if isinstance(m, HRNetV2Trunk) or getattr(m, "supports_grad_ckpt", False)]
    for t in trunks:
        setattr(t, "grad_ckpt", enabled)  # noqa: B010 (HRNetV2Trunk's attribute, TimmTrunk's property)
    return len(trunks)


def create_trunk(width: str, align_corners: bool = False, fuse_upsample: str = "bilinear") -> HRNetV2Trunk:
    """Build the HRNetV2 trunk ``width`` (``w48``, ``w18``, ``w18s``) with random weights.

    ``fuse_upsample="nearest"`` keeps timm's own fuse layers (not the reference's
    arithmetic; used only as a benchmark baseline).
    """
    if width not in TRUNKS:
        raise KeyError(f"unknown HRNet trunk {width!r}; known: {sorted(TRUNKS)}")
    if fuse_upsample not in ("bilinear", "nearest"):
        raise ValueError(f"fuse_upsample must be 'bilinear' or 'nearest', got {fuse_upsample!r}")
    trunk = cast(HRNetV2Trunk, timm.create_model(TRUNKS[width], pretrained=False, features_only=True,
                                                 feature_location="", out_indices=(1, 2, 3, 4)))
    trunk.__class__ = HRNetV2Trunk
    trunk.align_corners = align_corners
    trunk.out_channels = trunk_channels(trunk)
    if fuse_upsample == "bilinear":
        for module in trunk.modules():
            if isinstance(module, HighResolutionModule):
                _to_bilinear_fuse(module, align_corners)
    return trunk


def _to_bilinear_fuse(module: HighResolutionModule, align_corners: bool) -> None:
    """Drop timm's parameter-free ``nn.Upsample`` from each fuse path and swap the class."""
    if isinstance(module.fuse_layers, nn.ModuleList):
        for fuse_outer in cast(nn.ModuleList, module.fuse_layers):
            for path in cast(nn.ModuleList, fuse_outer):
                if isinstance(path, nn.Sequential) and isinstance(path[-1], nn.Upsample):
                    path[-1] = nn.Identity()
    module.__class__ = BilinearFuseModule
    cast(BilinearFuseModule, module).align_corners = align_corners


def trunk_channels(trunk: HRNetV2Trunk) -> int:
    """Channels of the concatenated high-level features (720 for W48, 270 for W18)."""
    return int(sum(trunk.feature_info.channels()))  # type: ignore[attr-defined]  # timm's FeatureInfo


def load_trunk_weights(trunk: nn.Module, path: str | Path, partial: bool = False) -> None:
    """Load ImageNet HRNet weights from a local file (``.pth``/``.pt``/``.bin``/``.safetensors``).

    Accepts timm/HF classification checkpoints (classifier and ``incre_modules`` keys are
    ignored), reference-style trunk checkpoints (``module.``/``backbone.`` prefixes) and
    ``{"state_dict": ...}`` wrappers. Every trunk key must be present with its shape, unless
    ``partial``: then the tensors whose name and shape fit are loaded and their share printed.
    """
    from network.checkpoint import CheckpointError, read_state_dict, say_once

    path = Path(path)
    state = read_state_dict(path)
    state = {_strip(k): v for k, v in state.items()}
    own = trunk.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own and not k.startswith(_HEAD_PREFIXES)]
    if (missing or wrong or unexpected) and not partial:
        raise CheckpointError(
            f"{path} does not hold weights for this HRNet trunk: {len(missing)} missing keys "
            f"(e.g. {missing[:5]}), {len(wrong)} shape mismatches (e.g. {wrong[:5]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]}). Pass the ImageNet "
            "checkpoint of the same trunk (hrnet_w48 for ocrnet.HRNet_Mscale, hrnet_w18, "
            "hrnet_w18_small_v2 for the _w18s models), or ask for a partial load "
            "(--trunk_weights_partial; get_model(..., trunk_weights_partial=True)).")
    fitting = {k: state[k] for k in own if k in state and state[k].shape == own[k].shape}
    if not fitting:
        raise CheckpointError(f"trunk weights {path}: no tensor fits this HRNet trunk")
    trunk.load_state_dict(fitting, strict=not partial)
    if partial:
        share = sum(own[k].numel() for k in fitting) / (sum(v.numel() for v in own.values()) or 1)
        say_once(f"trunk weights {path}: {len(fitting)} of {len(own)} tensors loaded "
                 f"({100 * share:.1f}% of the trunk's weights)")


# Classification-head parts of ImageNet HRNet checkpoints, not used by the segmentation trunk.
_HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.", "ocr.",
                  "scale_attn.")


def _strip(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


# ----------------------------------------------------------------------------- registered trunks

def _hrnet(width: str, weights: str | None, align_corners: bool = False,
           fuse_upsample: str = "bilinear", weights_partial: bool = False) -> HRNetV2Trunk:
    trunk = create_trunk(width, align_corners=align_corners, fuse_upsample=fuse_upsample)
    if weights:
        load_trunk_weights(trunk, weights, partial=weights_partial)
    return trunk


@register_trunk("hrnetv2_w48")
def hrnetv2_w48(weights: str | None = None, **kwargs: Any) -> HRNetV2Trunk:
    return _hrnet("w48", weights, **kwargs)


@register_trunk("hrnetv2_w18")
def hrnetv2_w18(weights: str | None = None, **kwargs: Any) -> HRNetV2Trunk:
    return _hrnet("w18", weights, **kwargs)


@register_trunk("hrnetv2_w18s")
def hrnetv2_w18s(weights: str | None = None, **kwargs: Any) -> HRNetV2Trunk:
    return _hrnet("w18s", weights, **kwargs)
