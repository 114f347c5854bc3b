"""N input bands: widen (or narrow) the trunk's first convolution, keeping RGB-pretrained filters.

The rule (documented in README, "Multi-band rasters"): with ``N >= 3`` bands the first three
input channels keep the RGB filters and every extra band gets the mean of the three RGB
filters; with ``N < 3`` every band gets that mean. All filters are then scaled by ``3 / N``,
so a normalised input of N bands gives first-layer activations of the same size as the
3-band input the weights were trained on.
"""

from __future__ import annotations

import torch
from torch import nn


def expand_rgb_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """``(O, 3, k, k)`` RGB filters -> ``(O, in_channels, k, k)`` by the rule above."""
    if weight.shape[1] != 3:
        raise ValueError(f"expected RGB filters (O, 3, k, k), got {tuple(weight.shape)}")
    mean = weight.mean(dim=1, keepdim=True)
    if in_channels >= 3:
        out = torch.cat([weight, mean.expand(-1, in_channels - 3, -1, -1)], dim=1)
    else:
        out = mean.expand(-1, in_channels, -1, -1)
    return out * (3.0 / in_channels)


def set_in_channels(trunk: nn.Module, in_channels: int) -> None:
    """Replace ``trunk.conv1`` (3 input channels) by one taking ``in_channels``, weights by the rule."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    old = trunk.conv1
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"expected the trunk's first layer conv1 to be a Conv2d, got {type(old).__name__}")
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,  # type: ignore[arg-type]
                    old.dilation, old.groups, old.bias is not None)  # type: ignore[arg-type]
    new.padding_mode = old.padding_mode
    with torch.no_grad():
        new.weight.copy_(expand_rgb_weight(old.weight, in_channels))
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    trunk.conv1 = new
