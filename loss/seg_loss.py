"""The training criterion: the reference's total loss, computed from the model's output dict."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from loss.cross_entropy import CrossEntropyLoss2d, ImageBasedCrossEntropyLoss2d
from loss.rmi import EncodedTarget, RMILoss


class SegLoss(nn.Module):
    """``pred_loss + aux_weight * aux_loss [+ mscale_weight * (lo_loss + hi_loss)]``.

    The base criterion is chosen as the reference's ``get_loss`` does: ``RMILoss`` when
    ``rmi`` (its ``do_rmi=False`` form is the sigmoid BCE part), else the image-weighted
    cross-entropy when ``img_wt``, else cross-entropy. ``pred`` gets the full criterion;
    ``aux`` gets it without the RMI term unless ``ocr_aux_rmi``; with ``mscale_weight > 0``
    (the reference's ``supervised_mscale_loss_wt``) ``pred_lo`` and ``pred_hi`` get it
    without the RMI term. Outputs without ``aux``/``pred_lo`` simply skip those terms. With RMI the
    target's one-hot map is built once and shared by the terms.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, rmi: bool = False,
                 img_wt: bool = False, aux_weight: float = 0.4, mscale_weight: float = 0.0,
                 ocr_aux_rmi: bool = False, img_wt_upper_bound: float = 1.0) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        self.mscale_weight = mscale_weight
        self.ocr_aux_rmi = ocr_aux_rmi
        if rmi:
            self.criterion: nn.Module = RMILoss(num_classes, ignore_index=ignore_index)
        elif img_wt:
            self.criterion = ImageBasedCrossEntropyLoss2d(num_classes, ignore_index=ignore_index,
                                                          upper_bound=img_wt_upper_bound)
        else:
            self.criterion = CrossEntropyLoss2d(ignore_index=ignore_index)

    def forward(self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if "pred" not in outputs:
            raise KeyError(f"SegLoss needs the model's 'pred' output; got keys {sorted(outputs)}")
        t: torch.Tensor | EncodedTarget = target
        if isinstance(self.criterion, RMILoss):
            t = self.criterion.encode(target)  # one one-hot map for all terms
        loss = self.criterion(outputs["pred"], t, do_rmi=True)
        if self.aux_weight and "aux" in outputs:
            loss = loss + self.aux_weight * self.criterion(outputs["aux"], t, do_rmi=self.ocr_aux_rmi)
        if self.mscale_weight and "pred_lo" in outputs:
            loss = loss + self.mscale_weight * self.criterion(outputs["pred_lo"], t, do_rmi=False)
            loss = loss + self.mscale_weight * self.criterion(outputs["pred_hi"], t, do_rmi=False)
        return loss
