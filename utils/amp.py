"""The reference's apex opt levels mapped onto native ``torch.amp`` (apex is never imported).

- ``O0``: fp32.
- ``O1``: autocast in the half dtype of ``--amp_dtype`` (``auto``: bf16 on GPUs that support it
  and on the CPU, fp16 on older GPUs) with a ``GradScaler`` only for fp16.
- ``O2``: the same autocast; the fp32 parameters *are* the master weights natively, so it
  behaves like ``O1`` (apex's O2 kept a half model plus fp32 master copies).
- ``O3``: the whole model in the same half dtype except BatchNorm, which stays
  fp32; inputs are cast too. Meant for evaluation (the reference's ``--amp_opt_level O3`` eval
  YAMLs): it roughly halves weight and activation memory. Training at O3 runs without a scaler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Precision:
    level: str
    device_type: str
    dtype: torch.dtype  # the low-precision dtype in use (float32 for O0)

    @property
    def autocast_enabled(self) -> bool:
        return self.level in ("O1", "O2", "O3")

    @property
    def half_model(self) -> bool:
        return self.level == "O3"

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 autocast training; None where none is needed (fp32, bf16, O3)."""
        if self.level in ("O1", "O2") and self.dtype == torch.float16:
            return torch.amp.GradScaler(self.device_type)
        return None

    def cast_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype) if self.half_model else x

    def describe(self) -> str:
        return "fp32" if self.level == "O0" else f"{self.level} {str(self.dtype).replace('torch.', '')}"


def resolve_precision(level: str, device: torch.device, amp_dtype: str = "auto") -> Precision:
    """The half dtype for ``level``: ``amp_dtype`` if given (``fp16``/``bf16``); ``auto`` picks bf16
    on GPUs that support it and on the CPU (no GradScaler needed, the fast path of Ampere and
    newer) and fp16 on other GPUs. O3 casts the model to the same dtype."""
    if level == "O0":
        return Precision(level, device.type, torch.float32)
    return Precision(level, device.type, half_dtype(device, amp_dtype))


def half_dtype(device: torch.device, amp_dtype: str = "auto") -> torch.dtype:
    """``fp16``/``bf16`` as asked; ``auto``: bf16 on the CPU and on bf16-capable GPUs, else fp16."""
    if amp_dtype in _DTYPES:
        return _DTYPES[amp_dtype]
    if amp_dtype != "auto":
        raise ValueError(f"--amp_dtype must be auto, fp16 or bf16, got {amp_dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
INFERENCE_DTYPES = ("auto", "fp16", "bf16", "fp32")


def inference_dtype(device: torch.device, amp_dtype: str = "auto", amp: bool = True) -> torch.dtype:
    """The dtype evaluation autocasts to; float32 means no autocast (the exact path).

    ``amp=False`` or ``fp32``: float32. ``fp16``/``bf16``: that dtype on any device. ``auto``: on
    GPUs as training's :func:`half_dtype` (bf16 where supported, else fp16); on the CPU bf16 only
    where it runs natively (AVX-512 BF16 or AMX), float32 elsewhere, where bf16 is emulated and
    slower than fp32 (bench/RESULTS.md, gpu_speed (CPU): a few % of the fp32 matmul rate).
    """
    if amp_dtype not in INFERENCE_DTYPES:
        raise ValueError(f"--amp_dtype must be one of {', '.join(INFERENCE_DTYPES)}, got {amp_dtype!r}")
    if not amp or amp_dtype == "fp32":
        return torch.float32
    if amp_dtype != "auto" or device.type == "cuda":
        return half_dtype(device, amp_dtype)
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32  # other devices (mps, xpu): fp32 unless a half dtype is asked for


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX-512 BF16 or AMX tiles)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def prepare_model(model: nn.Module, precision: Precision) -> nn.Module:
    """For O3: cast the model to half precision, keeping BatchNorm layers in fp32."""
    if not precision.half_model:
        return model
    model.to(precision.dtype)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.float()
    return model
