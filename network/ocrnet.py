"""HRNet-OCR (``ocrnet.HRNet``) and HRNet-OCR with hierarchical multi-scale attention
(``ocrnet.HRNet_Mscale``), with the reference's forward semantics and no loss inside.

Small CPU-friendly variants use narrower heads than the reference (documented in
``HEAD_WIDTHS``); the W48 models use the reference's widths (512 / 256 / 256).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn as nn

from network import hrnet as _hrnet  # noqa: F401  (registers the HRNet trunks)
from network.first_conv import set_in_channels
from network.ocr import OCRBlock, OCRWidths, make_attn_head
from network.ops import resize_by, resize_to, scale_as, scale_key
from network.registry import build_trunk, register_model

REFERENCE_WIDTHS = OCRWidths(mid=512, key=256, attn_bottleneck=256)
# OCR head widths per registered trunk (a trunk not listed gets the reference's)
HEAD_WIDTHS = {"hrnetv2_w48": REFERENCE_WIDTHS,
               "hrnetv2_w18": OCRWidths(mid=256, key=128, attn_bottleneck=128),
               "hrnetv2_w18s": OCRWidths(mid=128, key=64, attn_bottleneck=64)}


class OCRNet(nn.Module):
    """HRNetV2 trunk + OCR head, single scale (the reference's ``OCRNet``).

    ``forward(x)`` -> ``{"pred", "aux"}`` in training, ``{"pred"}`` in eval; logits at input size.
    """

    in_channels: int = 3  # input bands (network.first_conv.set_in_channels)

    multiscale = False

    def __init__(self, arch: str, num_classes: int, trunk: nn.Module,
                 widths: OCRWidths = REFERENCE_WIDTHS, align_corners: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.backbone = trunk  # any feature extractor with `out_channels` (network.registry.build_trunk)
        self.ocr = OCRBlock(int(cast(int, trunk.out_channels)), num_classes, widths)

    def forward(self, x: torch.Tensor, scales: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
        if scales is not None and tuple(scales) != (1.0,):
            raise ValueError(f"{self.arch} is single-scale; for scales {tuple(scales)} use "
                             "network.predict(model, x, scales=...) (averages the scales' logits)")
        cls_out, aux_out, _ = self.ocr(self.backbone(x))
        out = {"pred": scale_as(cls_out, x, self.align_corners)}
        if self.training:
            out["aux"] = scale_as(aux_out, x, self.align_corners)
        return out


class MscaleOCR(nn.Module):
    """HRNet-OCR with hierarchical multi-scale attention (the reference's ``MscaleOCR``).

    Training: two scales (input and ``mscale_lo_scale``) -> ``pred``, ``aux``, ``pred_lo``,
    ``pred_hi``, ``attn_lo`` (all at input size). Eval: scales ``scales`` (default
    ``eval_scales``; must contain 1.0) combined hierarchically -> ``pred`` and
    ``attn_<s>x`` (at input size) for every scale but the largest, whose attention the
    combination does not use (the reference omits ``attn_2x`` too). With ``eval_scales=None`` eval uses the
    two-scale path, as the reference does without ``N_SCALES``.
    """

    in_channels: int = 3  # input bands (network.first_conv.set_in_channels)

    multiscale = True
    #: per-scale step of ``nscale_forward`` (default ``_fwd``); network.tiling swaps in a windowed one
    scale_fn: Callable[..., dict[str, torch.Tensor]] | None = None

    def __init__(self, arch: str, num_classes: int, trunk: nn.Module,
                 widths: OCRWidths = REFERENCE_WIDTHS, align_corners: bool = False,
                 mscale_lo_scale: float = 0.5, eval_scales: Sequence[float] | None = (0.5, 1.0, 2.0)) -> None:
        super().__init__()
        if not 0.0 < mscale_lo_scale < 1.0:
            raise ValueError(f"mscale_lo_scale must be in (0, 1), got {mscale_lo_scale}")
        self.arch = arch
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.mscale_lo_scale = float(mscale_lo_scale)
        self.eval_scales = _check_scales(eval_scales) if eval_scales else None
        self.backbone = trunk  # any feature extractor with `out_channels` (network.registry.build_trunk)
        self.ocr = OCRBlock(int(cast(int, trunk.out_channels)), num_classes, widths)
        self.scale_attn = make_attn_head(widths.mid, widths.attn_bottleneck, 1)

    def _fwd(self, x: torch.Tensor, with_aux: bool, with_attn: bool = True) -> dict[str, torch.Tensor]:
        """One scale: logits, aux logits and attention (each optional), all at ``x``'s size.

        Eval skips what the combination does not use (aux; the attention of the largest
        scale), which changes no output. Training computes the attention at every scale, as
        the reference does: the attention head's BatchNorm statistics see every scale.
        """
        cls_out, aux_out, ocr_feats = self.ocr(self.backbone(x))
        size, ac = x.shape[-2:], self.align_corners
        out = {"cls": resize_to(cls_out, size, ac)}
        if with_attn or self.training:
            out["attn"] = resize_to(self.scale_attn(ocr_feats), size, ac)
        if with_aux:
            out["aux"] = resize_to(aux_out, size, ac)
        return out

    def forward(self, x: torch.Tensor, scales: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
        if self.training:
            return self.two_scale_forward(x)
        scales = _check_scales(scales) if scales else self.eval_scales
        if scales is None:
            return self.two_scale_forward(x)
        return self.nscale_forward(x, scales)

    def two_scale_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Input scale + ``mscale_lo_scale``; the low scale's attention weighs its prediction."""
        ac, with_aux = self.align_corners, self.training
        lo = self._fwd(resize_by(x, self.mscale_lo_scale, ac), with_aux)
        hi = self._fwd(x, with_aux, with_attn=False)
        attn = lo["attn"]
        p_lo = scale_as(attn * lo["cls"], hi["cls"], ac)
        attn_lo = scale_as(attn, hi["cls"], ac)
        out = {"pred": p_lo + (1 - attn_lo) * hi["cls"],
               "pred_lo": scale_as(lo["cls"], hi["cls"], ac),
               "pred_hi": hi["cls"],
               "attn_lo": attn_lo}
        if with_aux:
            out["aux"] = scale_as(attn * lo["aux"], hi["cls"], ac) + (1 - attn_lo) * hi["aux"]
        return out

    def nscale_forward(self, x: torch.Tensor, scales: Sequence[float]) -> dict[str, torch.Tensor]:
        """Hierarchical combination, highest scale first (the reference's ``nscale_forward``).

        Scales >= 1.0: the running prediction is resized to the current scale and blended
        with the current one by its attention. Scales < 1.0: the current prediction,
        pre-multiplied by its attention, is upsampled and added to ``(1 - attn)`` x running.
        """
        ac, with_aux = self.align_corners, self.training
        pred: torch.Tensor | None = None
        aux: torch.Tensor | None = None
        out: dict[str, torch.Tensor] = {}
        for s in sorted(scales, reverse=True):
            first = pred is None
            cur = (self.scale_fn or self._fwd)(resize_by(x, s, ac), with_aux, with_attn=not first)
            if first:  # the largest scale: its attention is never used
                pred, aux = cur["cls"], cur.get("aux")
                continue
            cls_out, attn = cur["cls"], cur["attn"]
            assert pred is not None
            out[scale_key("attn", s)] = scale_as(attn, x, ac)
            if s >= 1.0:
                pred = attn * cls_out + (1 - attn) * scale_as(pred, cls_out, ac)
                if with_aux and aux is not None:
                    aux = attn * cur["aux"] + (1 - attn) * scale_as(aux, cls_out, ac)
            else:
                up_attn = scale_as(attn, pred, ac)
                if with_aux and aux is not None:
                    aux = scale_as(attn * cur["aux"], pred, ac) + (1 - up_attn) * aux
                pred = scale_as(attn * cls_out, pred, ac) + (1 - up_attn) * pred
        assert pred is not None, "at least one scale"
        out["pred"] = pred
        if with_aux and aux is not None:
            out["aux"] = aux
        return out


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if 1.0 not in scales:
        raise ValueError(f"multi-scale inference needs 1.0 (the target scale) among the scales, got {scales}")
    if any(s <= 0 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"scales must be positive and distinct, got {scales}")
    return scales


def ocr_model(arch: str, multiscale: bool, trunk: str, num_classes: int, trunk_weights: str | None = None,
              mscale_lo_scale: float = 0.5, eval_scales: Sequence[float] | None = (0.5, 1.0, 2.0),
              align_corners: bool = False, widths: OCRWidths | None = None, in_channels: int = 3,
              trunk_weights_partial: bool = False, **trunk_kwargs: Any) -> nn.Module:
    """An OCR (``multiscale``: + scale attention) head on the registered trunk ``trunk``.

    ``trunk_kwargs`` go to the trunk's builder (e.g. ``fuse_upsample`` for the HRNet trunks);
    ``trunk_weights_partial`` loads only the ``trunk_weights`` tensors that fit.
    """
    backbone = build_trunk(trunk, weights=trunk_weights, align_corners=align_corners,
                           weights_partial=trunk_weights_partial, **trunk_kwargs)
    if in_channels != 3:  # N-band input: RGB filters extended (network/first_conv.py)
        set_in_channels(backbone, in_channels)
    widths = widths or HEAD_WIDTHS.get(trunk, REFERENCE_WIDTHS)
    return ocr_on_trunk(arch, multiscale, backbone, num_classes, widths, align_corners=align_corners,
                        mscale_lo_scale=mscale_lo_scale, eval_scales=eval_scales, in_channels=in_channels)


def ocr_on_trunk(arch: str, multiscale: bool, backbone: nn.Module, num_classes: int, widths: OCRWidths,
                 align_corners: bool = False, mscale_lo_scale: float = 0.5,
                 eval_scales: Sequence[float] | None = (0.5, 1.0, 2.0), in_channels: int = 3) -> nn.Module:
    """The OCR (``multiscale``: + scale attention) model around an already built trunk (``out_channels``,
    features at 1/4 resolution) taking ``in_channels`` bands."""
    model: nn.Module
    if multiscale:
        model = MscaleOCR(arch, num_classes, backbone, widths, align_corners, mscale_lo_scale, eval_scales)
    else:
        model = OCRNet(arch, num_classes, backbone, widths, align_corners)
    model.in_channels = in_channels
    return model


# ----------------------------------------------------------------------------- registered models


@register_model("ocrnet.HRNet_Mscale")
def hrnet_mscale(num_classes: int, **kwargs: Any) -> nn.Module:
    return ocr_model("ocrnet.HRNet_Mscale", True, "hrnetv2_w48", num_classes, **kwargs)


@register_model("ocrnet.HRNet")
def hrnet(num_classes: int, **kwargs: Any) -> nn.Module:
    return ocr_model("ocrnet.HRNet", False, "hrnetv2_w48", num_classes, **kwargs)


@register_model("ocrnet.HRNet_Mscale_w18")
def hrnet_mscale_w18(num_classes: int, **kwargs: Any) -> nn.Module:
    return ocr_model("ocrnet.HRNet_Mscale_w18", True, "hrnetv2_w18", num_classes, **kwargs)


@register_model("ocrnet.HRNet_w18")
def hrnet_w18(num_classes: int, **kwargs: Any) -> nn.Module:
    return ocr_model("ocrnet.HRNet_w18", False, "hrnetv2_w18", num_classes, **kwargs)


@register_model("ocrnet.HRNet_Mscale_w18s")
def hrnet_mscale_w18s(num_classes: int, **kwargs: Any) -> nn.Module:
    return ocr_model("ocrnet.HRNet_Mscale_w18s", True, "hrnetv2_w18s", num_classes, **kwargs)


@register_model("ocrnet.HRNet_w18s")
def hrnet_w18s(num_classes: int, **kwargs: Any) -> nn.Module:
    return ocr_model("ocrnet.HRNet_w18s", False, "hrnetv2_w18s", num_classes, **kwargs)
