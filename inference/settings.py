"""The one inference configuration: scales, flip, precision, normalisation, short side, memory budget.

Every door (``train.py`` validation and ``--eval``, ``predict.py``, ``export.py``, ``deploy``'s
``Segmenter`` and ``quantize``, ``hubconf.py``) builds its :class:`InferenceSettings` with
:func:`build_settings`, so the same checkpoint and the same settings give the same labels
whichever door is used. Defaults (``inference.defaults``): the scales the checkpoint was validated
with (:func:`validated_scales`), else the documented ones; normalisation from the checkpoint's
``dataset_info``; precision ``auto`` resolved by :func:`resolve_precision`, the one rule for
inference and for training's mixed precision.

:meth:`InferenceSettings.to_dict` is what runs record (resolved: ``metrics.json``,
``predict_manifest.json``, ONNX metadata, the checkpoint's ``inference`` entry);
:func:`settings_diff` names what differs between two records (predict.py refuses such a resume).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from datasets.info import IMAGENET_MEAN, IMAGENET_STD
from inference.defaults import PRECISIONS, SIZE_DIVISOR, canonical_scales, default_scales, scales_problem

if TYPE_CHECKING:
    import torch

# the record keys that change the pixels of an output (compared when a result folder is resumed)
COMPARED = ("scales", "flip", "precision", "half_model", "mean", "std", "short_side", "size_divisor")


# ----------------------------------------------------------------------------- precision

def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX-512 BF16 or AMX tiles)."""
    import torch

    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


@dataclass(frozen=True)
class ResolvedPrecision:
    """What ``--amp_dtype`` (``requested``) means on one device: ``name`` fp32, bf16 or fp16, and why."""

    name: str
    device_type: str
    reason: str
    requested: str = "auto"
    half_model: bool = False  # O3: the weights in ``name`` too (BatchNorm folded or kept fp32)

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def autocast_enabled(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def cast_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input in the weights' dtype when they are cast (O3)."""
        return x.to(self.dtype) if self.half_model else x

    def describe(self) -> str:
        """E.g. ``bf16 autocast (auto: native bf16 on this CPU)``."""
        how = "fp32" if self.name == "fp32" else f"{self.name} {'weights + ' if self.half_model else ''}autocast"
        return f"{how} ({self.reason})"


def _auto(device_type: str) -> tuple[str, str]:
    import torch

    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: native bf16 on this GPU"
        return "fp16", "auto: this GPU has no bf16"
    if device_type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "auto: native bf16 on this CPU (AVX-512 BF16/AMX)"
        return "fp32", "auto: no native bf16 on this CPU (emulated bf16 is slower than fp32)"
    return "fp32", f"auto: no half precision on {device_type}"


def resolve_precision(requested: str, device: torch.device | str, half_model: bool = False) -> ResolvedPrecision:
    """The one precision rule (``inference.defaults``): ``fp32``/``bf16``/``fp16`` as asked on any
    device; ``auto``: bf16 where the device computes it natively, fp16 on older CUDA GPUs, else fp32.
    ``half_model`` (O3) casts the weights too; it means nothing in fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"--amp_dtype must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device_type = device if isinstance(device, str) else device.type
    name, reason = _auto(device_type) if requested == "auto" else (requested, f"--amp_dtype {requested}")
    return ResolvedPrecision(name, device_type, reason, requested, half_model and name != "fp32")


# ----------------------------------------------------------------------------- the settings

@dataclass(frozen=True)
class InferenceSettings:
    """How a model is run on an image; ``scales`` always resolved (never None)."""

    scales: tuple[float, ...]
    flip: bool = False
    precision: str = "auto"  # as asked: auto, fp32, bf16, fp16 (resolved per device by resolve())
    half_model: bool = False  # O3
    mean: tuple[float, ...] = IMAGENET_MEAN  # per input band, RGB on a 0..1 scale
    std: tuple[float, ...] = IMAGENET_STD
    short_side: int | None = None  # resize the shorter side to this (None: the image's own size)
    size_divisor: int = SIZE_DIVISOR
    memory_gb: float | None = None  # None: the free GPU memory; unlimited on the CPU
    scales_from: str = "default"  # where the scales came from: --n_scales, checkpoint, default
    resolved: ResolvedPrecision | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problem = scales_problem(self.scales)
        if problem:
            raise ValueError(f"--n_scales: {problem}")
        object.__setattr__(self, "scales", canonical_scales(self.scales))

    def resolve(self, device: torch.device | str) -> InferenceSettings:
        """These settings with the precision resolved for ``device`` (what :meth:`to_dict` records)."""
        return replace(self, resolved=resolve_precision(self.precision, device, self.half_model))

    @property
    def run_precision(self) -> ResolvedPrecision:
        assert self.resolved is not None, "call resolve(device) first"
        return self.resolved

    def to_dict(self) -> dict[str, Any]:
        """The record (JSON-able; the precision resolved when :meth:`resolve` was called)."""
        p = self.resolved
        return {"scales": list(self.scales), "scales_from": self.scales_from, "flip": self.flip,
                "precision": p.name if p else self.precision, "precision_rule": p.reason if p else "unresolved",
                "half_model": p.half_model if p else self.half_model,
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "short_side": self.short_side if self.short_side else "original",
                "size_divisor": self.size_divisor,
                "memory_budget": f"{self.memory_gb:g} GB" if self.memory_gb else "auto"}

    def describe(self) -> str:
        """One log line with every setting, e.g. for ``predict: inference: ...``."""
        p = self.resolved.describe() if self.resolved else self.precision
        side = f"short side {self.short_side}" if self.short_side else "original size"
        scales = ",".join(f"{s:g}" for s in self.scales)
        memory = f"{self.memory_gb:g} GB" if self.memory_gb else "auto"
        return (f"scales {scales} ({self.scales_from}), flip {'on' if self.flip else 'off'}, {p}, "
                f"mean {_fmt(self.mean)} std {_fmt(self.std)}, {side} (multiple of {self.size_divisor}), "
                f"memory budget {memory}")


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: <old> there, <new> now`` for every :data:`COMPARED` key that differs (keys ``old`` lacks
    are not compared: a record written before the key existed)."""
    def norm(v: Any) -> Any:
        return json.loads(json.dumps(v))

    return [f"{k}: {_shown(old[k])} there, {_shown(new.get(k))} now" for k in COMPARED
            if k in old and norm(old[k]) != norm(new.get(k))]


def _shown(v: Any) -> str:
    return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else str(v)


# ----------------------------------------------------------------------------- defaults from a checkpoint

def validated_scales(ckpt: Mapping[str, Any] | None, multiscale: bool) -> tuple[float, ...] | None:
    """The scales a checkpoint's run validated with, or None when it does not say.

    ``ckpt["inference"]["scales"]`` (train.py records it with every checkpoint); else, for older
    train.py checkpoints, its ``config``: ``--n_scales``, or without it the default of its
    ``--mscale_lo_scale``. The reference's published files record neither.
    """
    if not ckpt:
        return None
    recorded = ckpt.get("inference")
    if isinstance(recorded, Mapping) and recorded.get("scales"):
        return canonical_scales(recorded["scales"])
    cfg = ckpt.get("config")
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("eval"), Mapping):
        return None
    scales = cfg["eval"].get("n_scales")
    if scales:
        return canonical_scales(scales)
    lo = (cfg.get("model") or {}).get("mscale_lo_scale", 0.5)
    return default_scales(multiscale, lo)


def build_settings(*, multiscale: bool, scales: Sequence[float] | None = None,
                   validated: Sequence[float] | None = None, lo_scale: float = 0.5, **fields: Any) -> InferenceSettings:
    """The settings of one door: ``scales`` as given (``--n_scales``), else ``validated`` (the
    checkpoint's, :func:`validated_scales`), else the documented default
    (:func:`inference.defaults.default_scales`); ``fields``: the other :class:`InferenceSettings`
    fields (``None`` values keep their defaults)."""
    if scales:
        chosen, source = canonical_scales(scales), "--n_scales"
    elif validated:
        chosen, source = canonical_scales(validated), "the checkpoint's validated scales"
    else:
        chosen, source = default_scales(multiscale, lo_scale), "default"
    given: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items() if v is not None}
    return InferenceSettings(scales=chosen, scales_from=source, **given)


def is_multiscale(model: Any) -> bool:
    """Whether ``model`` (possibly wrapped) combines scales with attention (an Mscale model)."""
    while True:
        if hasattr(model, "multiscale"):
            return bool(model.multiscale)
        inner = getattr(model, "_modules", {}).get("module", getattr(model, "_modules", {}).get("eager"))
        if inner is None:
            return False
        model = inner
