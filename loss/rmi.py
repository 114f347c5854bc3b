"""Region Mutual Information loss (Zhao et al. 2019) with the reference's semantics
(``loss/rmi.py``, ``loss/rmi_utils.py``): a sigmoid BCE part plus a lower bound of the
mutual information between ``radius x radius`` neighbourhoods of labels and probabilities,
computed on average-pooled maps in float64. Always evaluated in float32/float64, also
under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

CLIP_MIN = 1e-6     # added to the probabilities
POS_ALPHA = 5e-4    # added to the diagonal to keep covariances positive definite


@dataclass(frozen=True)
class EncodedTarget:
    """What the loss needs from a label map, built once per step (:meth:`RMILoss.encode`) and shared
    by every output the criterion scores (pred, aux, pred_lo, pred_hi)."""

    onehot: torch.Tensor  # N, C, H, W float32; all zero at ignored pixels
    mask: torch.Tensor    # N, 1, H, W float32; 1 at valid pixels
    count: torch.Tensor   # number of valid pixels + 1 (the BCE's normaliser)


class RMILoss(nn.Module):
    """``forward(logits, target, do_rmi=True)``; ``do_rmi=False`` returns the BCE part only.

    ``target``: the label map, or :meth:`encode`'s form of it when several outputs are scored against
    one target (the one-hot map is then built once). Labels ``>= num_classes`` (e.g.
    ``ignore_index=255``) are ignored: they count in neither part. ``pool_way``: 0 max-pool,
    1 avg-pool (default), 2 interpolation.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, radius: int = 3, pool_way: int = 1,
                 pool_size: int = 4, loss_weight_lambda: float = 0.5, lambda_way: int = 1) -> None:
        super().__init__()
        if not 1 <= radius <= 10:
            raise ValueError(f"radius must be in 1..10, got {radius}")
        if pool_way not in (0, 1, 2):
            raise ValueError(f"pool_way must be 0 (max), 1 (avg) or 2 (interpolate), got {pool_way}")
        if ignore_index < num_classes:
            raise ValueError(f"ignore_index ({ignore_index}) must be >= num_classes ({num_classes}): "
                             "RMI ignores labels outside 0..num_classes-1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.radius = radius
        self.pool_way = pool_way
        self.pool_size = pool_size
        self.weight_lambda = loss_weight_lambda
        self.lambda_way = lambda_way

    def forward(self, logits: torch.Tensor, target: torch.Tensor | EncodedTarget,
                do_rmi: bool = True) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            enc = target if isinstance(target, EncodedTarget) else self.encode(target)
            return self._forward(logits.float(), enc, do_rmi)

    def encode(self, target: torch.Tensor) -> EncodedTarget:
        """The float32 one-hot map (zero at ignored pixels), the valid mask and count of ``target``.

        Scattered straight into a float32 (N, C, H, W) map: the same values as
        ``one_hot(...).permute(...).float() * valid`` without its int64 (N, H, W, C) intermediate.
        """
        valid = target < self.num_classes                                        # N, H, W
        mask = valid.unsqueeze(1).float()
        onehot = torch.zeros((target.shape[0], self.num_classes, *target.shape[1:]), dtype=torch.float32,
                             device=target.device)
        onehot.scatter_(1, (target * valid).unsqueeze(1), mask)                  # ignored pixels: class 0 <- 0
        return EncodedTarget(onehot, mask, valid.sum() + 1.0)

    def _forward(self, logits: torch.Tensor, target: EncodedTarget, do_rmi: bool) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target.onehot, weight=target.mask, reduction="sum")
        bce = bce / target.count
        if not do_rmi:
            return bce
        probs = logits.sigmoid() * target.mask + CLIP_MIN
        rmi = self.rmi_lower_bound(target.onehot, probs)
        if self.lambda_way:
            return self.weight_lambda * bce + (1 - self.weight_lambda) * rmi
        return bce + self.weight_lambda * rmi

    def _pool(self, labels: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pool_size
        if p <= 1:
            return labels, probs
        if self.pool_way == 0:
            return (F.max_pool2d(labels, p, p, padding=p // 2), F.max_pool2d(probs, p, p, padding=p // 2))
        if self.pool_way == 1:
            return (F.avg_pool2d(labels, p, p, padding=p // 2), F.avg_pool2d(probs, p, p, padding=p // 2))
        size = (labels.shape[2] // p, labels.shape[3] // p)
        return (F.interpolate(labels, size=size, mode="nearest"),
                F.interpolate(probs, size=size, mode="bilinear", align_corners=True))

    def rmi_lower_bound(self, labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Sum over classes of the mean over images of 0.5 log det(Var(Y | P)) / radius^2."""
        labels, probs = self._pool(labels, probs)
        n, c = labels.shape[:2]
        d = self.radius * self.radius
        la = neighbourhoods(labels, self.radius).reshape(n, c, d, -1).double()
        pr = neighbourhoods(probs, self.radius).reshape(n, c, d, -1).double()
        eye = torch.eye(d, dtype=pr.dtype, device=pr.device)
        la = la - la.mean(dim=3, keepdim=True)
        pr = pr - pr.mean(dim=3, keepdim=True)
        la_cov = la @ la.transpose(2, 3)
        pr_cov_inv = torch.linalg.inv(pr @ pr.transpose(2, 3) + POS_ALPHA * eye)
        la_pr_cov = la @ pr.transpose(2, 3)
        appro_var = la_cov - la_pr_cov @ pr_cov_inv @ la_pr_cov.transpose(2, 3)
        rmi_now = 0.5 * log_det_by_cholesky(appro_var + POS_ALPHA * eye)          # N, C
        rmi_per_class = rmi_now.reshape(-1, self.num_classes).mean(dim=0).float() / d
        return rmi_per_class.sum()


def neighbourhoods(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, radius*radius, H-radius+1, W-radius+1): shifted copies, row-major."""
    h, w = x.shape[2] - radius + 1, x.shape[3] - radius + 1
    return torch.stack([x[:, :, y:y + h, xx:xx + w] for y in range(radius) for xx in range(radius)], dim=2)


def log_det_by_cholesky(matrix: torch.Tensor) -> torch.Tensor:
    """log det of symmetric positive-definite matrices via Cholesky (the reference adds 1e-8)."""
    chol = torch.linalg.cholesky(matrix)
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1) + 1e-8).sum(dim=-1)
