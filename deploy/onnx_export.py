"""ONNX export of a trained model, checked against PyTorch with onnxruntime.

The graph maps a normalised ``float32 (N, C, H, W)`` image (``(x / 255 - mean) / std``, the
checkpoint's mean/std, stored in the file) to ``logits (N, K, H, W)``, with height and width
dynamic. Multi-scale graphs contain the chosen scales and the hierarchical attention
combination (Mscale models) or the reference's logit averaging (single-scale models), and
optionally the flip average, all through ``network.predict``: the same arithmetic as
evaluation. The exported model is the inference-prepared one (``optimize_for_inference``:
conv+BN folded), which gives a smaller graph.

Exporter: torch's dynamo exporter (``torch.export``). The TorchScript exporter traces the
skip of no-op resizes and the multi-scale sizes as constants and gives wrong logits at other
input sizes, so it is not used.

The check compares onnxruntime with the exact (float64) evaluation of the original PyTorch
model, not with its float32 one: float32 is not a yardstick. An untrained model (BatchNorm
statistics that do not normalise, activations of 1e4, saturated attention softmaxes in the OCR
head) amplifies float32 round-off to ~1e-3 of the largest logit, so two correct float32
implementations (PyTorch, onnxruntime) disagree by the sum of their errors while each is close
to the exact logits. PyTorch float32's own error is reported beside the file's for scale, and it widens the
tolerance where this machine's kernels round more (:data:`FP32_FACTOR`): the check must pass on any CPU.

Opset 17 by default: TensorRT 8.5/8.6 (JetPack 5 and 6.0 on Jetson) parse opsets up to 17,
TensorRT 10 and onnxruntime >= 1.14 accept it too, and nothing in this model needs a newer
op. Every op is checked against :data:`TENSORRT_OPS` after export.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from deploy.meta import DeployError, ModelInfo
from inference.defaults import SIZE_DIVISOR
from inference.settings import InferenceSettings

DEFAULT_OPSET = 17
INPUT, OUTPUT = "image", "logits"
# ONNX ops the TensorRT ONNX parser (8.5+) implements that this model family can produce;
# QuantizeLinear/DequantizeLinear: the explicit (QDQ) int8 graphs of deploy.quantize.
TENSORRT_OPS = frozenset({
    "Add", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "Div", "Equal", "Expand", "Flatten",
    "Floor", "Gather", "Identity", "MatMul", "Max", "Min", "Mul", "Pad", "ReduceMax", "ReduceMean",
    "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Softmax", "Split", "Squeeze", "Sub",
    "Transpose", "Unsqueeze", "Where", "QuantizeLinear", "DequantizeLinear",
    # ocrnet.timm.* trunks: MaxPool (ResNet stems), Clip (ReLU6), HardSigmoid/HardSwish (MobileNetV3),
    # Erf (GELU), Pow/Sqrt/Tanh, LayerNormalization (ConvNeXt, transformers; TensorRT >= 8.6)
    "MaxPool", "Clip", "HardSigmoid", "HardSwish", "Erf", "Pow", "Sqrt", "Tanh", "LayerNormalization"})


class ExportError(DeployError):
    """The model cannot be exported as asked (op outside TensorRT's set, onnx checker failure)."""


class LogitsModel(nn.Module):
    """``image -> logits`` with fixed scales and flip: what the ONNX graph computes."""

    def __init__(self, model: nn.Module, scales: Sequence[float] | None, flip: bool) -> None:
        super().__init__()
        self.model = model.eval()
        self.scales = tuple(scales) if scales else (1.0,)
        self.flip = flip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from network import predict

        return predict(self.model, image, scales=self.scales, flip=self.flip)["pred"]


@dataclass
class ExportSpec:
    """What to export: the inference settings (scales and flip go into the graph; float32), opset,
    example input size."""

    settings: InferenceSettings
    opset: int = DEFAULT_OPSET
    example_size: tuple[int, int] = (128, 256)
    min_side: int = 64  # smallest H/W the dynamic graph is guaranteed for (scale 0.5 -> 32 px)

    @property
    def scales(self) -> tuple[float, ...]:
        return self.settings.scales

    @property
    def flip(self) -> bool:
        return self.settings.flip


def export(model: nn.Module, info: ModelInfo, out: Path, spec: ExportSpec) -> LogitsModel:
    """Write the ONNX file ``out`` (unverified: see :func:`compare`, :func:`judge`); returns the exported module."""
    import onnx
    from torch.export import Dim

    from network import optimize_for_inference

    fast = LogitsModel(optimize_for_inference(model, channels_last=False), spec.scales, spec.flip)
    x = torch.randn(1, info.in_channels, *spec.example_size)
    side = {"min": spec.min_side, "max": 16384}
    dims = {"image": {2: Dim("height", **side), 3: Dim("width", **side)}}
    with warnings.catch_warnings(), torch.no_grad(), _quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")  # the exporter's notes on opset 18 -> 17 conversion; checked below
        torch.onnx.export(fast, (x,), str(out), dynamo=True, opset_version=spec.opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_shapes=dims, external_data=False, verbose=False)
    proto = onnx.load(str(out))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset != spec.opset:
        raise ExportError(f"--opset {spec.opset}: the exporter could only write opset {opset}; "
                          f"pass --opset {opset} if your runtime accepts it")
    _add_metadata(proto, info, spec)
    onnx.save(proto, str(out))
    check(out)
    return fast


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Raise ``loggers`` to ERROR for the block (the exporter logs warnings it then resolves)."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _add_metadata(proto: Any, info: ModelInfo, spec: ExportSpec) -> None:
    meta = info.metadata()
    record = spec.settings.to_dict()
    meta.update(scales=json.dumps(record["scales"]), flip=json.dumps(record["flip"]), precision=record["precision"],
                inference=json.dumps(record),
                input=f"{INPUT}: float32 (N, {info.in_channels}, H, W), (x / 255 - mean) / std per band",
                output=f"{OUTPUT}: float32 (N, {info.num_classes}, H, W); argmax over axis 1 = class id",
                input_size_rule=f"H and W multiples of {SIZE_DIVISOR}, each >= {spec.min_side}",
                size_divisor=str(SIZE_DIVISOR), exporter=f"torch {torch.__version__} dynamo, opset {spec.opset}")
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{info.arch} semantic segmentation ({info.num_classes} classes), hmsa-seg export"


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported file (class names etc. are JSON strings)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def check(path: Path) -> set[str]:
    """onnx's full checker (with shape inference), and every op within TensorRT's set."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejects the exported file: {str(e).splitlines()[0]}") from e
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    outside = sorted(ops - TENSORRT_OPS)
    if outside:
        raise ExportError(f"the graph uses ops outside TensorRT's ONNX parser set: {outside}; "
                          "try another --opset")
    return ops


def session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session (CUDA first when onnxruntime-gpu is installed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), opts, providers=providers)


@dataclass
class Agreement:
    """onnxruntime vs exact (float64) PyTorch on one image; ``torch_fp32_diff``: PyTorch float32's own error."""

    name: str
    size: tuple[int, int]
    max_abs_diff: float
    max_abs_ref: float
    argmax_agreement: float
    torch_fp32_diff: float = float("nan")


def compare(sess: Any, reference: nn.Module, images: Iterable[tuple[str, torch.Tensor]]) -> list[Agreement]:
    """Logits of ``sess`` against ``reference`` evaluated in float64, on each ``(name, (C, H, W) tensor)``.

    ``reference`` itself (float32) runs too, to report how far PyTorch float32 is from exact.
    """
    exact = copy.deepcopy(reference).double()
    rows = []
    for name, x in images:
        with torch.inference_mode():
            ref = exact(x[None].double()).numpy()
            fp32 = reference(x[None]).double().numpy()
        got = sess.run([OUTPUT], {INPUT: x[None].numpy()})[0].astype(np.float64)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        rows.append(Agreement(name, size, float(np.abs(got - ref).max()), float(np.abs(ref).max()),
                              float((got.argmax(1) == ref.argmax(1)).mean()), float(np.abs(fp32 - ref).max())))
    return rows


# How far a correct float32 engine may be from exact, as a multiple of PyTorch float32's own distance on the same
# image and machine. Both are float32 evaluations of one graph with different kernels (summation order, fused
# multiply-add, oneDNN vs MLAS); the model itself amplifies their round-off (an untrained one: BatchNorm that does
# not normalise, saturated OCR attention), by an amount that depends on the CPU's kernels. PyTorch float32's error
# measures that amplification here; a correct export lands within a small multiple of it (seen: 0.45 vs PyTorch's
# 0.243 with logits of 420 on an AVX-512/AMX Xeon, below 1x on AVX2-only EPYCs), while a wrong graph (a missing
# op, a misplaced resize) is off by the size of the logits.
FP32_FACTOR = 4.0


def tolerance(row: Agreement, rtol: float) -> float:
    """The largest max |diff| accepted for ``row``: ``rtol`` x max |logit|, or :data:`FP32_FACTOR` x PyTorch
    float32's own error on the same image when round-off on this machine is larger than that."""
    fp32 = 0.0 if math.isnan(row.torch_fp32_diff) else row.torch_fp32_diff
    return max(rtol * max(1.0, row.max_abs_ref), FP32_FACTOR * fp32)


def judge(rows: Sequence[Agreement], rtol: float, min_agreement: float) -> str | None:
    """None when every image is within :func:`tolerance`, else the one-line reason."""
    for r in rows:
        tol = tolerance(r, rtol)
        if r.max_abs_diff > tol or r.argmax_agreement < min_agreement:
            return (f"onnxruntime differs from exact (float64) PyTorch on {r.name} ({r.size[0]}x{r.size[1]}): "
                    f"max |diff| {r.max_abs_diff:.3g} (tolerance {tol:.3g}: the larger of --rtol x max |logit| and "
                    f"{FP32_FACTOR:g} x PyTorch float32's own {r.torch_fp32_diff:.3g}), argmax agreement "
                    f"{r.argmax_agreement:.4%} (need {min_agreement:.2%})")
    return None


def folder_images(folder: str | Path, info: ModelInfo, count: int,
                  short_side: int | None) -> list[tuple[str, torch.Tensor]]:
    """Up to ``count`` images of ``folder`` (sorted), preprocessed as the model was trained."""
    from datasets.folder import discover_images, inference_size, read_rgb, to_model_input

    out = []
    for rel in discover_images(folder)[:count]:
        rgb = read_rgb(Path(folder) / rel)
        size = inference_size(rgb.shape[0], rgb.shape[1], short_side, SIZE_DIVISOR)
        out.append((rel, to_model_input(rgb, size, info.mean, info.std)))
    return out


def synthetic_images(info: ModelInfo, sizes: Sequence[tuple[int, int]] = ((128, 256), (192, 128)),
                     seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Generated street scenes (datasets.synthetic) at two aspect ratios, when no folder is given."""
    from datasets.folder import to_model_input
    from datasets.synthetic import render_scene

    out = []
    for i, size in enumerate(sizes):
        rgb, _ = render_scene(size, np.random.default_rng([seed, i]), {"car", "person", "vegetation"})
        out.append((f"synthetic scene {size[0]}x{size[1]}", to_model_input(rgb, size, info.mean, info.std)))
    return out
