"""Inference helpers: flip/scale averaging and an eval-only speed-up (conv-BN folding)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn

from network.ops import resize_to


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, scales: Sequence[float] | None = None,
            flip: bool = False) -> dict[str, torch.Tensor]:
    """Eval-mode inference; returns the model's dict with ``pred`` averaged over flips.

    Multi-scale (``Mscale``) models combine ``scales`` (default: their ``eval_scales``)
    hierarchically inside the model. Single-scale models average the logits of each scale
    resized back to the input size (the reference's "AVGPOOL" evaluation). With
    ``flip=True`` the horizontally flipped image's outputs are flipped back and averaged
    with the unflipped ones (logits, as the reference does). The model's train/eval mode is
    restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        views = [_forward_scales(model, x, scales)]
        if flip:
            flipped = _forward_scales(model, x.flip(3), scales)
            views.insert(0, {k: v.flip(3) for k, v in flipped.items()})
    finally:
        model.train(was_training)
    if len(views) == 1:
        return views[0]
    return {k: (views[0][k] + views[1][k]) / 2 for k in views[1]}


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel/DataParallel wrapper (for its attributes)."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def _forward_scales(model: nn.Module, x: torch.Tensor,
                    scales: Sequence[float] | None) -> dict[str, torch.Tensor]:
    net = _unwrap(model)
    if getattr(net, "multiscale", False):
        return model(x, scales=scales)
    if scales is None or tuple(scales) == (1.0,):
        return model(x)
    align_corners = getattr(net, "align_corners", False)
    total = None
    for s in scales:
        # The reference resizes to round(size * s); resize_by uses floor. Use the reference's.
        size = [round(d * s) for d in x.shape[-2:]]
        pred = resize_to(model(resize_to(x, size, align_corners))["pred"], x.shape[-2:], align_corners)
        total = pred if total is None else total + pred
    return {"pred": total / len(scales)}


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing ``bn(conv(x))`` with ``bn``'s running statistics (eval only)."""
    fused = copy.deepcopy(conv)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight = nn.Parameter((conv.weight * scale.reshape(-1, 1, 1, 1)).detach())
    fused.bias = nn.Parameter((bn.bias + (bias - bn.running_mean) * scale).detach())
    return fused


def fuse_conv_bn(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv into that conv, in place.

    Handles the patterns of this package: ``Sequential(conv, bn, ...)``,
    ``Sequential(conv, Sequential(bn, relu))`` (the reference's BNReLU) and sibling
    attributes ``convK``/``bnK`` applied back to back (timm ResNet blocks, the HRNet stem,
    the attention head). Returns how many pairs were folded. Eval only: the result no longer
    has BatchNorm layers and its state dict differs from the original's.
    """
    count = 0
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            count += _fuse_sequential(parent)
        count += _fuse_named_pairs(parent)
    return count


def _fuse_sequential(seq: nn.Sequential) -> int:
    count = 0
    keys = list(seq._modules)
    for a, b in itertools.pairwise(keys):
        conv, nxt = seq._modules[a], seq._modules[b]
        if not isinstance(conv, nn.Conv2d):
            continue
        if isinstance(nxt, nn.BatchNorm2d):
            seq._modules[a], seq._modules[b] = _fold(conv, nxt), nn.Identity()
            count += 1
        elif isinstance(nxt, nn.Sequential) and len(nxt) and isinstance(nxt[0], nn.BatchNorm2d):
            seq._modules[a] = _fold(conv, nxt[0])
            nxt[0] = nn.Identity()
            count += 1
    return count


_PAIRED_TYPES = ("BasicBlock", "Bottleneck", "HRNetV2Trunk", "HighResolutionNetFeatures")


def _fuse_named_pairs(parent: nn.Module) -> int:
    """``convK``/``bnK`` siblings in module types whose forward applies them back to back."""
    if type(parent).__name__ not in _PAIRED_TYPES:
        return 0
    count = 0
    for name, conv in list(parent.named_children()):
        bn_name = "bn" + name[4:]
        bn = getattr(parent, bn_name, None)
        if name.startswith("conv") and isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(parent, name, _fold(conv, bn))
            setattr(parent, bn_name, nn.Identity())
            count += 1
    return count


def optimize_for_inference(model: nn.Module, channels_last: bool = True,
                           inplace: bool = False) -> nn.Module:
    """An eval-only version of ``model``: conv+BN folded, optionally channels_last memory format.

    Outputs equal the original's in eval mode up to float round-off. The result is for
    inference only (no BatchNorm; its state dict does not load into ``get_model``'s models).
    ``inplace=True`` converts ``model`` itself instead of a copy (saves one copy of the weights).
    Feed it channels_last inputs (``network.inference.to_input``) for the full speed-up.
    """
    fast = (model if inplace else copy.deepcopy(model)).eval()
    fuse_conv_bn(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


def to_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` in the model's memory format (channels_last if its first conv is)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.weight.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


__all__ = ["fuse_conv_bn", "optimize_for_inference", "predict", "to_input"]
