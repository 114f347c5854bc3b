"""What a deployed model needs besides its weights, read from the checkpoint.

Checkpoints written by ``train.py`` carry ``dataset_info`` (class names, colours, mean/std,
bands; ``datasets.DatasetInfo``). For older checkpoints and the reference's published
``.pth`` files the class count comes from the checkpoint (or its classifier's shape) and
``datasets.info.info_for_checkpoint`` supplies the project's one fallback (Cityscapes' table
for 19 classes, else ``class_0..`` in generated colours, ImageNet mean/std).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from datasets.info import IMAGENET_MEAN, IMAGENET_STD
from utils.errors import UserError

if TYPE_CHECKING:
    from inference.settings import InferenceSettings

CLASSIFIER_KEY = "ocr.cls_head.weight"


class DeployError(UserError, ValueError):
    """A deploy command asked for something that cannot be done; the message names the flag and fix."""


def _rgb(colour: Sequence[Any]) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in colour)
    return r, g, b


@dataclass(frozen=True)
class ModelInfo:
    """Architecture, classes and preprocessing of a trained model (``source``: where they came from)."""

    arch: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    bands: tuple[int, ...] | None = None
    ignore_index: int = 255
    source: str = "checkpoint dataset_info"
    validated_scales: tuple[float, ...] | None = None  # the scales the checkpoint was validated with, if recorded

    @classmethod
    def from_dataset_info(cls, arch: str, info: Any, source: str) -> ModelInfo:
        """From a ``datasets.DatasetInfo``."""
        return cls(arch, info.num_classes, tuple(info.class_names), tuple(_rgb(c) for c in info.palette.tolist()),
                   tuple(info.mean), tuple(info.std), info.bands, info.ignore_index, source)

    @property
    def palette_array(self) -> np.ndarray:
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)

    @property
    def in_channels(self) -> int:
        return len(self.bands) if self.bands is not None else 3

    def metadata(self) -> dict[str, str]:
        """String key/values for an ONNX file's ``metadata_props`` (JSON where structured)."""
        return {"arch": self.arch, "num_classes": str(self.num_classes),
                "class_names": json.dumps(list(self.class_names)),
                "palette": json.dumps([list(c) for c in self.palette]),
                "mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std)),
                "bands": json.dumps(None if self.bands is None else list(self.bands)),
                "ignore_index": str(self.ignore_index), "metadata_source": self.source}


def _num_classes(ckpt: Mapping[str, Any]) -> int | None:
    if ckpt.get("num_classes"):
        return int(ckpt["num_classes"])
    if isinstance(ckpt.get("dataset_info"), Mapping):
        return len(ckpt["dataset_info"].get("classes") or []) or None
    from network.checkpoint import extract_state_dict

    weight = extract_state_dict(ckpt).get(CLASSIFIER_KEY)
    return int(weight.shape[0]) if weight is not None else None


def model_info(ckpt: Mapping[str, Any], arch: str | None = None, num_classes: int | None = None) -> ModelInfo:
    """:class:`ModelInfo` of a checkpoint dict; ``arch``/``num_classes`` fill in what it lacks."""
    from datasets.info import info_for_checkpoint
    from network.checkpoint import CheckpointError

    saved_arch = ckpt.get("arch")
    if arch and saved_arch and arch != saved_arch:
        raise CheckpointError(f"--arch {arch} but the checkpoint was trained as {saved_arch}: "
                              f"pass --arch {saved_arch} (or omit --arch)")
    arch = arch or saved_arch
    if not arch:
        raise CheckpointError("the checkpoint does not record its architecture: pass --arch "
                              "(e.g. ocrnet.HRNet_Mscale for the reference's published weights)")
    n = num_classes or _num_classes(ckpt)
    if not n:
        raise CheckpointError("the checkpoint records no class count: pass --num_classes")
    recorded = bool(ckpt.get("dataset_info"))
    info = info_for_checkpoint(ckpt, num_classes=None if recorded else n)
    if info.num_classes != n:
        raise CheckpointError(f"--num_classes {n} but the checkpoint's dataset_info lists {info.num_classes} "
                              "classes: omit --num_classes")
    source = "checkpoint dataset_info" if recorded else "defaults (the checkpoint has no dataset_info)"
    return ModelInfo.from_dataset_info(arch, info, source)


def load_model(snapshot: str | Path | None, arch: str | None = None, num_classes: int | None = None,
               eval_scales: Sequence[float] | None = None, trust: bool = False) -> tuple[nn.Module, ModelInfo]:
    """The registered model with the snapshot's weights (strict), in eval mode, and its info.

    ``snapshot`` may be a project checkpoint, slim ``.safetensors`` weights or the reference's
    ``.pth``; ``None`` builds random weights (needs ``arch`` and ``num_classes``; demos only).
    The model's own eval scales (``model(x)``) are ``eval_scales``, else the inference default
    (:func:`inference_settings`: the checkpoint's validated scales, else the documented default).
    """
    from inference.settings import is_multiscale, validated_scales
    from network.checkpoint import build_model, read_checkpoint

    ckpt: dict[str, Any] = read_checkpoint(snapshot, trust=trust) if snapshot else {"num_classes": num_classes or 19}
    info = model_info(ckpt, arch, num_classes)
    # N-band checkpoints (GeoTIFF datasets): the first convolution as trained (a 6-band model failed here)
    model = build_model(info.arch, info.num_classes, ckpt if snapshot else None, trunk_weights=None,
                        in_channels=info.in_channels)
    multiscale = is_multiscale(model)
    info = dataclasses.replace(info, validated_scales=validated_scales(ckpt if snapshot else None, multiscale))
    if multiscale:  # what model(x) combines in eval mode
        scales = tuple(eval_scales) if eval_scales else inference_settings(info, multiscale).scales
        setattr(model, "eval_scales", scales)  # noqa: B010 (an Mscale model's attribute; mypy sees nn.Module)
    return model.eval(), info


def inference_settings(info: ModelInfo, multiscale: bool, scales: Sequence[float] | str | None = None,
                       **fields: Any) -> InferenceSettings:
    """The one inference configuration for a deployed model: ``scales`` as given, else the checkpoint's
    validated ones, else the documented default; its normalisation; ``fields``: flip, precision,
    short_side ... (``inference.settings.build_settings``)."""
    from inference.settings import build_settings

    return build_settings(multiscale=multiscale, scales=parse_scales(scales), validated=info.validated_scales,
                          mean=info.mean, std=info.std, **fields)


def parse_scales(text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """``"0.5,1.0"`` -> ``(0.5, 1.0)``; ``None``/``""`` -> ``None``. Raises ValueError naming the problem."""
    if text is None or text == "":
        return None
    from inference.defaults import scales_problem

    values = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip())
    problem = scales_problem(values)
    if problem:
        raise DeployError(f"--scales {','.join(f'{v:g}' for v in values)}: {problem}")
    return tuple(sorted(values))


def seed_everything(seed: int = 0) -> None:
    """Random weights (no --snapshot) the same on every run, so exports and benches compare."""
    torch.manual_seed(seed)
