"""Any timm backbone under the OCR head: ``ocrnet.timm.<timm_name>[_fuse<P>][_Mscale]``.

The architecture name carries the trunk, so a checkpoint's ``arch`` alone rebuilds the model
(``predict.py``, ``export.py``, the hub and ``deploy`` need nothing else). ``<timm_name>`` is a
timm model name without a pretrained tag (``convnext_tiny``, ``resnet50``, ``efficientnet_lite0``,
``swin_tiny_patch4_window7_224``); ``_Mscale`` adds the hierarchical scale-attention head;
``_fuse<P>`` (e.g. ``_fuse64``) narrows wide levels before the fuse (rule 3).

The fuse rule (what the OCR head sees), after HRNet's bilinear fuse:

1. timm builds the model with ``features_only=True`` (``in_chans`` = the dataset's bands); its
   levels with stride >= 4 are kept, stride-1/2 levels are dropped (they are computed anyway,
   as the stem, so dropping them costs nothing).
2. Each kept level is upsampled bilinearly (the model's ``align_corners``) to the finest kept
   level's size and the levels are concatenated: ``out_channels`` = the sum of their channels
   (HRNet-W48: 720; resnet18: 960; convnext_tiny: 1440; efficientnet_lite0: 496).
3. With ``_fuse<P>``, each level wider than P channels is first projected to P (1x1 conv, BN,
   ReLU, at the level's own resolution, where it is cheap). The OCR head's 3x3 conv and its
   auxiliary ``C x C`` conv run at stride 4 on the concatenation, so for wide or small trunks
   they cost more than the trunk: at 256x512, convnext_tiny_Mscale is 181 GFLOP, with
   ``_fuse256`` 68; efficientnet_lite0 16.4, with ``_fuse64`` 7.2 (HRNet-W18-small: 15.7).
4. When the finest kept level is coarser than stride 4 (plain ViTs: 16; some efficient
   transformers: 8 or 16) every level is upsampled to stride 4 of the input anyway
   (``ceil(H/4) x ceil(W/4)``), so the head, the attention and the logits have the resolution
   they have on HRNet.
5. Transformers whose timm features are NHWC (Swin) are permuted to NCHW. Models with a fixed
   input size are built with ``dynamic_img_size=True`` where timm offers it. Models that need
   the input to be a multiple of something (patch size, window) get it padded at the bottom and
   right with zeros (the normalised mean colour) to the smallest multiple that works, and the
   fused map is cropped back to ``ceil(H/4) x ceil(W/4)``: padding to the finest stride is
   tried first, then to the coarsest; CNNs are never padded.
6. Inputs must be at least the coarsest stride (32 px) on each side at every scale for trunks
   whose downsampling convs have no padding (ConvNeXt's 2x2 stride-2 convs): a 40x50 image at
   scale 0.5 is too small for them (HRNet takes it). export.py's 64-px minimum side at scale 0.5
   and predict.py's sizes (multiples of 32) meet this.

At build time one probe forward (eval mode, no gradients, zeros, on an awkward size such as
70x106) checks all this; a model whose features do not follow the input size (fixed-size
attention tables, fixed windows) is refused with one line naming why. OCR head widths follow
the fused channels (:func:`head_widths`).

Trunk weights (``trunk_weights``): a timm classification checkpoint of the same model
(``.pth``/``.pt``/``.bin``, possibly under ``state_dict``/``model``, or ``.safetensors``; timm's
own key layout, as timm and its Hugging Face files save it). The classifier and other parts the
feature extractor does not use are ignored; RGB first-conv filters are extended to N bands by
network/first_conv.py's rule. Anything else that does not fit is refused unless
``trunk_weights_partial=True``; the share loaded is printed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from network.ocr import OCRWidths
from network.ocrnet import REFERENCE_WIDTHS, ocr_on_trunk
from network.ops import resize_to
from network.registry import ModelFn, UnknownModelError, register_family

PREFIX = "ocrnet.timm."
MSCALE = "_Mscale"
PATTERN = "ocrnet.timm.<timm_name>[_fuse<P>][_Mscale]"
_FUSE = re.compile(r"_fuse(\d+)$")
FUSE_STRIDE = 4  # the resolution of the representation the OCR head gets (HRNet's)


class UnsupportedTrunkError(UnknownModelError):
    """A timm model that exists but cannot serve as a segmentation trunk; the message says why."""


class TimmTrunk(nn.Module):
    """A timm ``features_only`` model whose levels (stride >= 4) are fused at stride 4 (module doc).

    ``fuse_width``: levels wider than this are first projected to it (1x1 conv, BN, ReLU at
    their own resolution); None: concatenated as they are.
    """

    def __init__(self, body: nn.Module, timm_name: str, levels: Sequence[int], strides: Sequence[int],
                 channels: Sequence[int], nhwc: bool, align_corners: bool = False,
                 fuse_width: int | None = None) -> None:
        super().__init__()
        self.body = body
        self.timm_name = timm_name
        self.levels = tuple(levels)  # indices into the body's outputs that are fused
        self.strides = tuple(strides)  # of the fused levels
        self.fuse_width = fuse_width
        widths = [c if fuse_width is None else min(c, fuse_width) for c in channels]
        self.proj = nn.ModuleList([nn.Identity() if w == c else _project(c, w) for c, w in zip(channels, widths,
                                                                                                strict=True)])
        self.out_channels = int(sum(widths))
        # --grad_ckpt: timm's own activation checkpointing of the body's stages, where the model has it
        self.supports_grad_ckpt = callable(getattr(body, "set_grad_checkpointing", None))
        self._grad_ckpt = False
        self.nhwc = nhwc
        self.align_corners = align_corners
        self.pad_to = 1  # input padded to a multiple of this (set by the probe; 1: never padded)

    @property
    def grad_ckpt(self) -> bool:
        return self._grad_ckpt

    @grad_ckpt.setter
    def grad_ckpt(self, enabled: bool) -> None:
        if self.supports_grad_ckpt:
            self.body.set_grad_checkpointing(enabled)  # type: ignore[operator]
        self._grad_ckpt = enabled and self.supports_grad_ckpt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.pad_to > 1:  # unconditional (a zero pad is free): no branch on the size in exported graphs
            x = F.pad(x, (0, (-w) % self.pad_to, 0, (-h) % self.pad_to))
        outs = self.body(x)
        feats = [proj(_nchw(outs[i]) if self.nhwc else outs[i]) for i, proj in zip(self.levels, self.proj,
                                                                                    strict=True)]
        if self.strides[0] == FUSE_STRIDE:
            size = feats[0].shape[-2:]
        else:
            size = torch.Size((_ceil_div(x.shape[-2], FUSE_STRIDE), _ceil_div(x.shape[-1], FUSE_STRIDE)))
        fused = torch.cat([resize_to(f, size, self.align_corners) for f in feats], dim=1)
        if self.pad_to > 1:
            fused = fused[..., :_ceil_div(h, FUSE_STRIDE), :_ceil_div(w, FUSE_STRIDE)]
        return fused


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def _project(in_ch: int, out_ch: int) -> nn.Sequential:
    """1x1 conv, BN, ReLU (foldable into one conv for inference)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _ceil_div(a: Any, b: int) -> Any:
    """``ceil(a / b)`` for ints and symbolic sizes (integer arithmetic only, traceable)."""
    return (a + b - 1) // b


# ----------------------------------------------------------------------------- names


@dataclass(frozen=True)
class TimmArch:
    """What an ``ocrnet.timm.*`` name says: the timm model, the fuse width, the scale attention."""

    timm_name: str
    fuse_width: int | None
    multiscale: bool


def parse_arch(name: str) -> TimmArch:
    """``ocrnet.timm.efficientnet_lite0_fuse64_Mscale`` -> (``efficientnet_lite0``, 64, True)."""
    if not name.startswith(PREFIX):
        raise UnknownModelError(f"{name!r} is not a timm-trunk architecture ({PATTERN})")
    rest = name[len(PREFIX):]
    multiscale = rest.endswith(MSCALE)
    rest = rest[:-len(MSCALE)] if multiscale else rest
    fuse = _FUSE.search(rest)
    if fuse and int(fuse[1]) < 1:
        raise UnknownModelError(f"architecture {name}: the fuse width (_fuse<P>) must be >= 1")
    return TimmArch(rest[:fuse.start()] if fuse else rest, int(fuse[1]) if fuse else None, multiscale)


def check_timm_name(timm_name: str, arch: str) -> None:
    """Refuse a name timm does not know (with its close matches) or one with a pretrained tag."""
    if "." in timm_name:
        base = timm_name.split(".")[0]
        raise UnknownModelError(f"architecture {arch}: drop the pretrained tag ({timm_name[len(base):]}): the trunk "
                                f"is the timm model {base!r} (ocrnet.timm.{base}...); its weights come from a local "
                                "file (--trunk_weights), never from the tag")
    if not timm_name or not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models('<pattern>')"
        raise UnknownModelError(f"architecture {arch}: timm {timm.__version__} has no model {timm_name!r} "
                                f"({hint}); the pattern is {PATTERN}")


# ----------------------------------------------------------------------------- building


def create_body(timm_name: str, in_channels: int = 3) -> nn.Module:
    """timm's ``features_only`` model with random weights; ``dynamic_img_size`` where it has a fixed size."""
    kwargs: dict[str, Any] = {"pretrained": False, "features_only": True, "in_chans": in_channels}
    try:
        body = timm.create_model(timm_name, **kwargs)
    except Exception as e:  # timm raises assorted types for models without a feature extractor
        raise UnsupportedTrunkError(f"timm cannot build {timm_name} as a feature extractor (features_only=True): "
                                    f"{_first_line(e)}") from e
    if any(getattr(m, "strict_img_size", False) for m in body.modules()):  # a fixed input size
        try:
            body = timm.create_model(timm_name, dynamic_img_size=True, **kwargs)
        except TypeError as e:
            raise UnsupportedTrunkError(f"timm's {timm_name} only takes its fixed input size and has no "
                                        "dynamic_img_size option; segmentation needs any size") from e
    return body


def create_timm_trunk(timm_name: str, in_channels: int = 3, align_corners: bool = False,
                      weights: str | Path | None = None, weights_partial: bool = False,
                      fuse_width: int | None = None) -> TimmTrunk:
    """The fused trunk of timm model ``timm_name`` (module doc), checked by a probe forward."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    body = create_body(timm_name, in_channels)
    reductions, channels = feature_levels(body)
    levels = [i for i, r in enumerate(reductions) if r >= FUSE_STRIDE]
    if not levels:
        raise UnsupportedTrunkError(f"{timm_name}: no feature level at stride >= {FUSE_STRIDE} "
                                    f"(strides {reductions})")
    fmt = str(getattr(body, "output_fmt", "NCHW"))
    trunk = TimmTrunk(body, timm_name, levels, [reductions[i] for i in levels], [channels[i] for i in levels],
                      nhwc=fmt.endswith("NHWC"), align_corners=align_corners, fuse_width=fuse_width)
    trunk.pad_to = probe_padding(trunk, in_channels)
    if weights:
        load_timm_weights(trunk, weights, in_channels, partial=weights_partial)
    return trunk


def feature_levels(body: nn.Module) -> tuple[list[int], list[int]]:
    """(stride, channels) of each level of a timm features model (its ``feature_info``)."""
    info: Any = getattr(body, "feature_info", None)
    if info is None:
        raise UnsupportedTrunkError(f"{type(body).__name__} has no feature_info: not a timm features_only model")
    return [int(r) for r in info.reduction()], [int(c) for c in info.channels()]


def probe_padding(trunk: TimmTrunk, in_channels: int) -> int:
    """The smallest input multiple (1: none) under which the trunk's features follow an awkward size."""
    coarsest = max(trunk.strides)
    size = (2 * coarsest + 6, 3 * coarsest + 10)  # a multiple of nothing that matters
    errors = []
    for pad_to in sorted({1, trunk.strides[0], coarsest}):
        problem = _probe(trunk, in_channels, size, pad_to)
        if problem is None:
            return pad_to
        errors.append(f"padded to a multiple of {pad_to}: {problem}" if pad_to > 1 else problem)
    raise UnsupportedTrunkError(f"timm's {trunk.timm_name} cannot serve as a segmentation trunk: its features do "
                                f"not follow the input size ({size[0]}x{size[1]} probe; {errors[-1]}); models with "
                                "fixed-size attention tables or windows are not supported")


def _probe(trunk: TimmTrunk, in_channels: int, size: tuple[int, int], pad_to: int) -> str | None:
    """None when features of a zeros input of ``size`` (padded to ``pad_to``) have the expected shapes."""
    hp, wp = (math.ceil(s / pad_to) * pad_to for s in size)
    was_training = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            outs = trunk.body(torch.zeros(1, in_channels, hp, wp))
    except Exception as e:  # the model's own assertion or shape error is the reason to report
        return _first_line(e)
    finally:
        trunk.train(was_training)
    channels = feature_levels(trunk.body)[1]
    for i, stride in zip(trunk.levels, trunk.strides, strict=True):
        t = outs[i]
        if t.dim() != 4:
            return f"level {i} has shape {tuple(t.shape)}, not an image-shaped map"
        c, h, w = (t.shape[3], t.shape[1], t.shape[2]) if trunk.nhwc else t.shape[1:]
        if c != channels[i] or not (_near(h, hp / stride) and _near(w, wp / stride)):
            return (f"level {i} (stride {stride}) is {c}x{h}x{w}, expected {channels[i]} channels of "
                    f"about {hp / stride:.1f}x{wp / stride:.1f}")
    return None


def _near(n: int, exact: float) -> bool:
    return math.floor(exact) - 1 <= n <= math.ceil(exact) + 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def head_widths(channels: int) -> OCRWidths:
    """OCR head widths for ``channels`` fused trunk channels, as the HRNet models pair them.

    Under 512 (efficientnet_lite0: 496; HRNet-W18: 270): W18-small's 128/64/64; under 1024
    (resnet18: 960): W18's 256/128/128; wider (convnext_tiny: 1440; HRNet-W48: 720 is the
    exception, by name): the reference's 512/256/256. Pass ``widths=`` to choose others.
    """
    if channels < 512:
        return OCRWidths(mid=128, key=64, attn_bottleneck=64)
    if channels < 1024:
        return OCRWidths(mid=256, key=128, attn_bottleneck=128)
    return REFERENCE_WIDTHS


# ----------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsReport:
    """How much of a trunk a weights file filled."""

    loaded: int
    total: int
    share: float  # of the trunk's weight elements
    ignored: int  # file tensors the feature extractor does not use (classifier, final norm, ...)

    def line(self, path: str | Path) -> str:
        return (f"trunk weights {path}: {self.loaded} of {self.total} tensors loaded ({100 * self.share:.1f}% of "
                f"the trunk's weights); {self.ignored} classifier/unused tensors ignored")


def load_timm_weights(trunk: TimmTrunk, path: str | Path, in_channels: int = 3,
                      partial: bool = False) -> WeightsReport:
    """Load a timm checkpoint of the trunk's model into it (module doc); prints and returns the share."""
    from network.checkpoint import CheckpointError, read_state_dict, say_once

    state = read_state_dict(path)
    own = trunk.body.state_dict()
    mapped, foreign = _map_keys(state, own)
    _adapt_first_conv(trunk.body, mapped, own, in_channels)
    full = _classifier_keys(trunk.timm_name, in_channels)
    unexpected = [k for k in foreign if full is not None and k not in full]
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in mapped.items()
             if v.shape != own[k].shape]
    missing = [k for k in own if k not in mapped]
    if (missing or wrong or unexpected) and not partial:
        raise CheckpointError(_misfit(path, trunk.timm_name, missing, wrong, unexpected))
    fitting = {k: v for k, v in mapped.items() if v.shape == own[k].shape}
    trunk.body.load_state_dict(fitting, strict=False)
    total = sum(v.numel() for v in own.values()) or 1
    report = WeightsReport(len(fitting), len(own), sum(own[k].numel() for k in fitting) / total,
                           len(foreign) - len(unexpected))
    if not fitting:
        raise CheckpointError(f"trunk weights {path}: no tensor fits timm's {trunk.timm_name}")
    say_once(report.line(path))
    return report


def _misfit(path: str | Path, timm_name: str, missing: list[str], wrong: list[str], unexpected: list[str]) -> str:
    parts = [f"trunk weights {path} do not fit timm's {timm_name}:"]
    for label, keys in (("missing tensors", missing), ("tensors of another shape", wrong),
                        ("tensors this model does not have", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])});")
    parts.append(f"pass the timm checkpoint of {timm_name} (timm's key layout), or ask for a partial load "
                 "(--trunk_weights_partial; get_model(..., trunk_weights_partial=True)) to load what fits")
    return " ".join(parts)


def _map_keys(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """File keys (a timm classification model's) -> the feature extractor's keys; and the unmapped ones.

    timm's feature wrappers keep the model's module names, except that ``FeatureListNet`` flattens
    top-level ``nn.Sequential`` children (``stages.0.x`` -> ``stages_0.x``) and ``FeatureGetterNet``
    holds the model as ``model``.
    """
    mapped: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in state.items():
        parts = key.split(".")
        candidates = [key, "model." + key] + (["_".join(parts[:2]) + "." + ".".join(parts[2:])]
                                              if len(parts) > 2 else [])
        target = next((c for c in candidates if c in own), None)
        if target is None:
            foreign.append(key)
        else:
            mapped[target] = value
    return mapped, foreign


def _adapt_first_conv(body: nn.Module, mapped: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                      in_channels: int) -> None:
    """RGB filters of the first conv -> ``in_channels`` bands (network/first_conv.py's rule)."""
    from network.first_conv import expand_rgb_weight

    first = getattr(body, "pretrained_cfg", {}).get("first_conv") or ()
    for name in [first] if isinstance(first, str) else first:
        for key in (f"{name}.weight", f"model.{name}.weight", _flat(f"{name}.weight")):
            w = mapped.get(key)
            if w is not None and key in own and w.dim() == 4 and w.shape[1] == 3 and own[key].shape[1] == in_channels:
                mapped[key] = expand_rgb_weight(w, in_channels)


def _flat(key: str) -> str:
    parts = key.split(".")
    return "_".join(parts[:2]) + "." + ".".join(parts[2:]) if len(parts) > 2 else key


def _classifier_keys(timm_name: str, in_channels: int) -> set[str] | None:
    """The full classification model's keys (built on the meta device: no memory), None if it cannot be."""
    kwargs: dict[str, Any] = {"pretrained": False, "in_chans": in_channels}
    extras: list[dict[str, Any]] = [{}, {"dynamic_img_size": True}]
    for extra in extras:
        try:
            with torch.device("meta"):
                return set(timm.create_model(timm_name, **kwargs, **extra).state_dict())
        except Exception:  # noqa: BLE001, S112 - only narrows the check of unexpected keys
            continue
    return None


# ----------------------------------------------------------------------------- the family


def timm_ocr_model(arch: str, num_classes: int, trunk_weights: str | None = None, mscale_lo_scale: float = 0.5,
                   eval_scales: Sequence[float] | None = (0.5, 1.0, 2.0), align_corners: bool = False,
                   widths: OCRWidths | None = None, in_channels: int = 3,
                   trunk_weights_partial: bool = False) -> nn.Module:
    """The model ``arch`` (``ocrnet.timm.<timm_name>[_fuse<P>][_Mscale]``) with ``num_classes`` outputs."""
    spec = parse_arch(arch)
    check_timm_name(spec.timm_name, arch)
    trunk = create_timm_trunk(spec.timm_name, in_channels, align_corners, trunk_weights, trunk_weights_partial,
                              fuse_width=spec.fuse_width)
    return ocr_on_trunk(arch, spec.multiscale, trunk, num_classes, widths or head_widths(trunk.out_channels),
                        align_corners=align_corners, mscale_lo_scale=mscale_lo_scale, eval_scales=eval_scales,
                        in_channels=in_channels)


@register_family(PREFIX, PATTERN)
def resolve(arch: str) -> ModelFn:
    """The builder of ``ocrnet.timm.<timm_name>[_fuse<P>][_Mscale]``; an unknown timm name is refused here."""
    check_timm_name(parse_arch(arch).timm_name, arch)

    def build(num_classes: int, **kwargs: Any) -> nn.Module:
        return timm_ocr_model(arch, num_classes, **kwargs)

    return build


__all__ = ["PATTERN", "PREFIX", "TimmArch", "TimmTrunk", "UnsupportedTrunkError", "WeightsReport", "check_timm_name",
           "create_timm_trunk", "head_widths", "load_timm_weights", "parse_arch", "timm_ocr_model"]
