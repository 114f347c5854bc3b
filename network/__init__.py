"""Models: HRNet-OCR and HRNet-OCR with hierarchical multi-scale attention; any timm trunk under the same heads.

See docs/INTERFACES.md (``network/``) for the contract.
"""

from network import ocrnet as _ocrnet  # noqa: F401  (registers the architectures)
from network import timm_trunk as _timm_trunk  # noqa: F401  (registers the ocrnet.timm.* family)
from network.checkpoint import CheckpointError, load_checkpoint
from network.inference import fuse_conv_bn, optimize_for_inference, predict
from network.ocr import OCRWidths
from network.registry import get_model, list_families, list_models, register_model

__all__ = ["CheckpointError", "OCRWidths", "fuse_conv_bn", "get_model", "list_families", "list_models",
           "load_checkpoint", "optimize_for_inference", "predict", "register_model"]
