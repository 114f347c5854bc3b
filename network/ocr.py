"""OCR head (object-contextual representations) and the scale-attention head.

Module and parameter names follow the reference (``NVIDIA/semantic-segmentation``
``network/ocrnet.py``, ``network/ocr_utils.py``, ``network/utils.py``) so that its
published state dicts load key for key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class OCRWidths:
    """Channel widths of the OCR and attention heads (reference: 512 / 256 / 256)."""

    mid: int = 512
    key: int = 256
    attn_bottleneck: int = 256


def bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm + ReLU as one block (the reference's ``BNReLU``; keys ``<i>.0.*``)."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def conv1x1(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=bias)


def spatial_gather(feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Class-region context: softmax over pixels of each class map, weighted sum of features.

    ``feats`` (N, C, H, W), ``probs`` (N, K, H, W) -> (N, C, K, 1). No parameters.
    """
    weights = F.softmax(probs.flatten(2), dim=2)          # N, K, HW
    pixels = feats.flatten(2).transpose(1, 2)              # N, HW, C (a view for channels_last)
    context = torch.matmul(weights, pixels)                # N, K, C
    return context.transpose(1, 2).unsqueeze(3)            # N, C, K, 1


class ObjectAttentionBlock(nn.Module):
    """Pixel-to-object-region attention (scale 1, as the reference uses it)."""

    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(conv1x1(in_channels, key_channels), bn_relu(key_channels),
                                     conv1x1(key_channels, key_channels), bn_relu(key_channels))
        self.f_object = nn.Sequential(conv1x1(in_channels, key_channels), bn_relu(key_channels),
                                      conv1x1(key_channels, key_channels), bn_relu(key_channels))
        self.f_down = nn.Sequential(conv1x1(in_channels, key_channels), bn_relu(key_channels))
        self.f_up = nn.Sequential(conv1x1(key_channels, in_channels), bn_relu(in_channels))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        query = self.f_pixel(x).flatten(2).transpose(1, 2)       # N, HW, Ck
        key = self.f_object(proxy).flatten(2)                    # N, Ck, K
        value = self.f_down(proxy).flatten(2).transpose(1, 2)    # N, K, Ck
        sim = F.softmax((self.key_channels ** -0.5) * torch.matmul(query, key), dim=-1)
        context = torch.matmul(sim, value)                       # N, HW, Ck
        # (N, H, W, Ck) viewed as NCHW: channels_last layout without a copy.
        context = context.view(n, h, w, self.key_channels).permute(0, 3, 1, 2)
        return self.f_up(context)


class SpatialOCRModule(nn.Module):
    """Object context + the pixel features -> 1x1 conv, BN-ReLU, Dropout2d."""

    def __init__(self, in_channels: int, key_channels: int, out_channels: int,
                 dropout: float = 0.05) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(conv1x1(2 * in_channels, out_channels),
                                             bn_relu(out_channels), nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy)
        return self.conv_bn_dropout(torch.cat([context, feats], dim=1))


class OCRBlock(nn.Module):
    """The reference's ``OCR_block``: returns (cls_out, aux_out, ocr_feats) at 1/4 resolution."""

    def __init__(self, high_level_ch: int, num_classes: int, widths: OCRWidths) -> None:
        super().__init__()
        mid = widths.mid
        self.conv3x3_ocr = nn.Sequential(nn.Conv2d(high_level_ch, mid, kernel_size=3, padding=1),
                                         bn_relu(mid))
        self.ocr_distri_head = SpatialOCRModule(mid, widths.key, mid, dropout=0.05)
        self.cls_head = conv1x1(mid, num_classes, bias=True)
        self.aux_head = nn.Sequential(conv1x1(high_level_ch, high_level_ch, bias=True),
                                      bn_relu(high_level_ch),
                                      conv1x1(high_level_ch, num_classes, bias=True))

    def forward(self, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.conv3x3_ocr(high)
        aux_out = self.aux_head(high)
        context = spatial_gather(feats, aux_out)
        ocr_feats = self.ocr_distri_head(feats, context)
        return self.cls_head(ocr_feats), aux_out, ocr_feats


def make_attn_head(in_ch: int, bot_ch: int, out_ch: int = 1) -> nn.Sequential:
    """Scale-attention head: (3x3 conv, BN, ReLU) x2, 1x1 conv, sigmoid (reference defaults)."""
    return nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(in_ch, bot_ch, kernel_size=3, padding=1, bias=False)),
        ("bn0", nn.BatchNorm2d(bot_ch)),
        ("re0", nn.ReLU(inplace=True)),
        ("conv1", nn.Conv2d(bot_ch, bot_ch, kernel_size=3, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(bot_ch)),
        ("re1", nn.ReLU(inplace=True)),
        ("conv2", nn.Conv2d(bot_ch, out_ch, kernel_size=1, bias=False)),
        ("sig", nn.Sigmoid()),
    ]))
