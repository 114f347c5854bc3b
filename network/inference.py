"""Inference: flip/scale averaging, the inference-prepared model copy, memory-bounded evaluation.

Every evaluation path (validation during training, ``train.py --eval``, ``predict.py``) calls
:func:`optimize_for_inference` once to get an eval-only copy of the model (conv+BN folded,
channels_last, no gradients; the training model is untouched) and :func:`predict` on it, which
batches the flipped pass with the unflipped one and, under a memory budget, evaluates a scale
in overlapping windows (:mod:`network.tiling`) when the whole image would not fit.
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import Sequence
from typing import Any, TypeGuard, cast

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d, ConvNormAct, SyncBatchNormAct
from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual
from timm.models._features import FeatureDictNet
from timm.models.efficientnet import EfficientNetFeatures
from timm.models.mobilenetv3 import MobileNetV3Features
from timm.models.resnet import BasicBlock, Bottleneck

from network.ops import resize_to, unwrap
from network.tiling import MemoryPlan


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, scales: Sequence[float] | None = None,
            flip: bool = False, memory: MemoryPlan | None = None) -> dict[str, torch.Tensor]:
    """Eval-mode inference; returns the model's dict with ``pred`` averaged over flips.

    Multi-scale (``Mscale``) models combine ``scales`` (default: their ``eval_scales``)
    hierarchically inside the model. Single-scale models average the logits of each scale
    resized back to the input size (the reference's "AVGPOOL" evaluation). With
    ``flip=True`` the horizontally flipped image's outputs are flipped back and averaged
    with the unflipped ones (logits, as the reference does); both run as one batch unless
    ``memory`` says the doubled batch does not fit. ``memory`` (a :class:`MemoryPlan`) also
    switches a scale to overlapping windows when the whole image would not fit. The model's
    train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    x = to_input(x, model)
    try:
        if flip and (memory is None or memory.fits_batch(model, x, 2 * x.shape[0], scales)):
            both = _forward_scales(model, torch.cat([x, x.flip(3)]), scales, memory)
            n = x.shape[0]
            views = [{k: v[n:].flip(3) for k, v in both.items()}, {k: v[:n] for k, v in both.items()}]
        else:
            views = [_forward_scales(model, x, scales, memory)]
            if flip:
                flipped = _forward_scales(model, x.flip(3), scales, memory)
                views.insert(0, {k: v.flip(3) for k, v in flipped.items()})
    finally:
        model.train(was_training)
    if len(views) == 1:
        return views[0]
    return {k: (views[0][k] + views[1][k]) / 2 for k in views[1]}


def _forward_scales(model: nn.Module, x: torch.Tensor, scales: Sequence[float] | None,
                    memory: MemoryPlan | None = None) -> dict[str, torch.Tensor]:
    net = unwrap(model)
    if getattr(net, "multiscale", False):
        if memory is None or memory.budget is None:
            return model(x, scales=scales)
        with memory.windowed_scales(net, x):  # the eager network: its per-scale step is swapped
            return net(x, scales=scales)
    if scales is None or tuple(scales) == (1.0,):
        return _single(model, x, memory)
    align_corners = getattr(net, "align_corners", False)
    total: torch.Tensor | None = None
    for s in scales:
        # The reference resizes to round(size * s); resize_by uses floor. Use the reference's.
        size = (round(x.shape[-2] * s), round(x.shape[-1] * s))
        pred = resize_to(_single(model, resize_to(x, size, align_corners), memory)["pred"],
                         x.shape[-2:], align_corners)
        total = pred if total is None else total + pred
    assert total is not None, "at least one scale"
    return {"pred": total / len(scales)}


def _single(model: nn.Module, x: torch.Tensor, memory: MemoryPlan | None) -> dict[str, torch.Tensor]:
    """One scale of a single-scale model: whole image, or windows when ``memory`` says so."""
    if memory is None or memory.budget is None:
        return model(x)
    return memory.run(model, x, fn=unwrap(model))


# ----------------------------------------------------------------------------- conv+BN folding

#: Module types whose ``forward`` applies each ``convK`` directly followed by its ``bnK``
#: (timm's ResNet blocks, which HRNet's branches are made of; timm's EfficientNet/MobileNet
#: blocks and stems and ``ConvNormAct``, for the ``ocrnet.timm.*`` trunks). Our own modules
#: declare the same with a ``bn_fold_pairs`` class attribute instead (e.g.
#: ``network.hrnet.HRNetV2Trunk``). A pair whose conv or BatchNorm is absent (``conv_s2d``) is skipped.
FOLD_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    ConvNormAct: (("conv", "bn"),),
    ConvBnAct: (("conv", "bn1"),),
    DepthwiseSeparableConv: (("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")),
    InvertedResidual: (("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    EdgeResidual: (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
    EfficientNetFeatures: (("conv_stem", "bn1"),),
    MobileNetV3Features: (("conv_stem", "bn1"),),
}


def _fold(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """A conv computing ``bn(conv(x))`` with ``bn``'s running statistics (eval only).

    The folded weights are computed in at least float32 (float64 stays float64), then stored
    in the conv's own dtype.
    """
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None, "folding needs running statistics"
    ct = torch.promote_types(conv.weight.dtype, torch.float32)
    fused = copy.deepcopy(conv)
    w = bn.weight if bn.weight is not None else torch.ones_like(var)
    b = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    scale = w.to(ct) / torch.sqrt(var.to(ct) + bn.eps)
    bias = conv.bias.to(ct) if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.to(ct) * scale.reshape(-1, 1, 1, 1)
    fused.weight = nn.Parameter(weight.to(conv.weight.dtype).detach())
    fused.bias = nn.Parameter((b.to(ct) + (bias - mean.to(ct)) * scale).to(conv.weight.dtype).detach())
    return fused


def _is_bn(m: object) -> TypeGuard[nn.modules.batchnorm._BatchNorm]:
    """A BatchNorm that folds into the conv before it: plain ones and timm's BatchNormAct2d (whose
    activation stays, :func:`_bn_rest`); other subclasses may do more than normalise and are left."""
    return type(m) in (nn.BatchNorm2d, nn.SyncBatchNorm, BatchNormAct2d, SyncBatchNormAct)


def _bn_rest(bn: nn.Module) -> nn.Module:
    """What remains of a folded BatchNorm: nothing, or the dropout and activation of timm's BatchNormAct2d."""
    if isinstance(bn, (BatchNormAct2d, SyncBatchNormAct)):
        return nn.Sequential(cast(nn.Module, bn.drop), cast(nn.Module, bn.act))
    return nn.Identity()


def fuse_conv_bn(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv into that conv, in place.

    Handles ``Sequential(conv, bn, ...)``, ``Sequential(conv, Sequential(bn, relu))`` (the
    reference's BNReLU), the same runs of timm's feature wrappers (``FeatureListNet`` applies
    its modules in order) and ``convK``/``bnK`` pairs of the module types in :data:`FOLD_PAIRS`
    or of modules declaring ``bn_fold_pairs``. timm's ``BatchNormAct2d`` leaves its activation
    behind. Returns how many pairs were folded. Eval only: the result no longer has those
    BatchNorm layers and its state dict differs from the original's.
    """
    count = 0
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            count += _fuse_sequential(parent)
        elif isinstance(parent, FeatureDictNet):  # forward applies its modules one after another
            count += _fuse_sequential(parent, keep=set(parent.return_layers))
        count += _fuse_named_pairs(parent)
    return count


def _fuse_sequential(seq: nn.Module, keep: set[str] | frozenset[str] = frozenset()) -> int:
    """Fold each conv directly followed by a BatchNorm in ``seq``'s modules, applied in order;
    convs named in ``keep`` (outputs a feature wrapper returns) stay as they are."""
    count = 0
    keys = list(seq._modules)
    for a, b in itertools.pairwise(keys):
        conv, nxt = seq._modules[a], seq._modules[b]
        if not isinstance(conv, nn.Conv2d) or a in keep:
            continue
        if _is_bn(nxt):
            seq._modules[a], seq._modules[b] = _fold(conv, nxt), _bn_rest(nxt)
            count += 1
        elif isinstance(nxt, nn.Sequential) and len(nxt) and _is_bn(nxt[0]):
            seq._modules[a] = _fold(conv, nxt[0])
            nxt[0] = _bn_rest(nxt[0])
            count += 1
    return count


def fold_pairs(module: nn.Module) -> tuple[tuple[str, str], ...]:
    """The (conv, bn) attribute pairs ``module``'s forward applies back to back."""
    declared = getattr(type(module), "bn_fold_pairs", None)
    if declared is not None:
        return tuple(declared)
    return next((pairs for t, pairs in FOLD_PAIRS.items() if type(module) is t), ())


def _fuse_named_pairs(parent: nn.Module) -> int:
    count = 0
    for conv_name, bn_name in fold_pairs(parent):
        conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
        if isinstance(conv, nn.Conv2d) and _is_bn(bn):
            setattr(parent, conv_name, _fold(conv, bn))
            setattr(parent, bn_name, _bn_rest(bn))
            count += 1
    return count


# ----------------------------------------------------------------------------- the prepared copy

def optimize_for_inference(model: nn.Module, channels_last: bool = True, inplace: bool = False,
                           dtype: torch.dtype | None = None, compile: bool = False) -> nn.Module:
    """An eval-only copy of ``model``: conv+BN folded, channels_last, no gradients.

    The one place every evaluation path gets its model from. Outputs equal the original's in
    eval mode up to float round-off. ``model`` may be DDP-wrapped (its module is copied) and is
    left untouched unless ``inplace=True`` (saves one copy of the weights). ``dtype`` casts the
    folded copy (the O3 half-precision evaluation); ``compile=True`` wraps it in
    ``torch.compile`` with an eager fallback (:func:`maybe_compile`). The result is for
    inference only (its state dict does not load into ``get_model``'s models).
    """
    net = unwrap(model)
    fast = (net if inplace else copy.deepcopy(net)).eval()
    fuse_conv_bn(fast)
    if dtype is not None:
        fast = fast.to(dtype)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    return maybe_compile(fast, "evaluation") if compile else fast


def to_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` in the model's memory format (channels_last if its first conv is)."""
    first = next((m for m in unwrap(model).modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and x.dim() == 4 and first.weight.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------- torch.compile

class EagerFallback(nn.Module):
    """Calls ``torch.compile(module)``; if compiling fails, says so in one line and runs eager.

    ``torch.compile`` compiles lazily, on the first call, so failures (no C++ compiler, an
    unsupported backend or op) surface there; they are caught once and the eager module is used
    from then on. Attribute access falls through to the eager module (``num_classes`` ...).
    """

    def __init__(self, module: nn.Module, what: str, **compile_kwargs: Any) -> None:
        super().__init__()
        self.eager = module
        self.what = what
        # kept out of _modules: the state dict and parameters are the eager module's alone
        self.__dict__["compiled"] = torch.compile(module, **compile_kwargs)

    def forward(self, *args: object, **kwargs: object) -> object:
        if self.__dict__["compiled"] is not None:
            try:
                return self.__dict__["compiled"](*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure means: run eager
                self.__dict__["compiled"] = None
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                print(f"--compile: torch.compile failed for {self.what} ({type(e).__name__}: {first}); "
                      "running eager", file=sys.stderr, flush=True)
        return self.eager(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["eager"], name)


def maybe_compile(module: nn.Module, what: str) -> nn.Module:
    """``module`` compiled with ``torch.compile`` (eager fallback), or ``module`` where torch has
    no ``torch.compile``."""
    if not hasattr(torch, "compile"):
        print(f"--compile: this torch has no torch.compile; {what} runs eager", file=sys.stderr)
        return module
    return EagerFallback(module, what)


__all__ = ["FOLD_PAIRS", "EagerFallback", "fold_pairs", "fuse_conv_bn", "maybe_compile",
           "optimize_for_inference", "predict", "to_input"]
