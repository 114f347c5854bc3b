"""Losses: cross-entropy (plain and image-weighted), RMI and the combined training criterion.

See docs/INTERFACES.md (``loss/``).
"""

from loss.cross_entropy import CrossEntropyLoss2d, ImageBasedCrossEntropyLoss2d
from loss.rmi import RMILoss
from loss.seg_loss import SegLoss

__all__ = ["CrossEntropyLoss2d", "ImageBasedCrossEntropyLoss2d", "RMILoss", "SegLoss"]
