"""Cross-entropy losses with the reference's semantics (``loss/utils.py``)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CrossEntropyLoss2d(nn.Module):
    """Pixel-wise cross-entropy averaged over pixels whose label is not ``ignore_index``.

    Returns 0 (with a graph) when every pixel is ignored, where plain ``NLLLoss`` gives NaN.
    """

    weight: torch.Tensor | None  # a non-persistent buffer (moves with .to(device))

    def __init__(self, ignore_index: int = 255, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, do_rmi: bool | None = None) -> torch.Tensor:
        del do_rmi  # accepted for a uniform criterion call; CE has no RMI part
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=self.ignore_index)


class ImageBasedCrossEntropyLoss2d(nn.Module):
    """The reference's ``img_wt_loss``: class-weighted cross-entropy, weights from label frequency.

    Class weights are ``1 + upper_bound * (1 - freq_c)`` for classes present in the labels
    (``1 + upper_bound / freq_c`` with ``norm=True``), 1 for absent ones. As in the
    reference code, the frequencies are computed over the whole batch's labels and the
    loss is the *sum* over images of each image's weighted mean cross-entropy.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, upper_bound: float = 1.0,
                 norm: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.upper_bound = upper_bound
        self.norm = norm

    def class_weights(self, target: torch.Tensor) -> torch.Tensor:
        """Weights from the histogram of valid labels (ignored labels are outside the range)."""
        bins = torch.histc(target.float(), bins=self.num_classes, min=0.0, max=float(self.num_classes))
        freq = bins / bins.sum().clamp_min(1.0)
        present = (bins != 0).float()
        if self.norm:
            return present * self.upper_bound / freq.clamp_min(1e-12) + 1.0
        return present * self.upper_bound * (1.0 - freq) + 1.0

    def forward(self, logits: torch.Tensor, target: torch.Tensor, do_rmi: bool | None = None) -> torch.Tensor:
        del do_rmi
        weights = self.class_weights(target)
        loss = logits.sum() * 0.0
        for i in range(logits.shape[0]):
            if (target[i] != self.ignore_index).any():
                loss = loss + F.cross_entropy(logits[i:i + 1].float(), target[i:i + 1], weight=weights,
                                              ignore_index=self.ignore_index)
        return loss
