"""Shipping a trained model: ONNX export, int8/fp16 quantisation, slim weights, a Python API.

    python export.py --arch ocrnet.HRNet_Mscale --snapshot best.pth --out model.onnx --scales 0.5,1.0
    python -m deploy.quantize --onnx model.onnx --calib DIR --dataset cityscapes --split val
    python -m deploy.slim --snapshot best.pth --out best.safetensors
    from deploy import Segmenter; seg = Segmenter.from_checkpoint("best.safetensors")

See README.md ("Deploy") and docs/INTERFACES.md (``deploy/``).
"""

from deploy.meta import ModelInfo, load_model, model_info
from deploy.segmenter import Segmentation, Segmenter

__all__ = ["ModelInfo", "Segmentation", "Segmenter", "load_model", "model_info"]
