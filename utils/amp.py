"""The reference's apex opt levels mapped onto native ``torch.amp`` (apex is never imported).

The dtype of a level comes from ``--amp_dtype`` through the one precision rule,
``inference.settings.resolve_precision`` (``auto``: bf16 where the device computes it natively,
fp16 on older GPUs, else fp32); ``train.training_precision`` puts the two together.

- ``O0``: fp32.
- ``O1``: autocast in that dtype, with a ``GradScaler`` only for fp16 (no autocast when the rule
  gives fp32).
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
    reason: str = ""  # why this dtype (the precision rule's words), for the log

    @property
    def autocast_enabled(self) -> bool:
        return self.level in ("O1", "O2", "O3") and self.dtype != torch.float32

    @property
    def half_model(self) -> bool:
        return self.level == "O3" and self.dtype != torch.float32

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
        if self.level == "O0":
            return "fp32"
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.level} {str(self.dtype).replace('torch.', '')}{why}"


def prepare_model(model: nn.Module, precision: Precision) -> nn.Module:
    """For O3: cast the model to half precision, keeping BatchNorm layers in fp32."""
    if not precision.half_model:
        return model
    model.to(precision.dtype)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.float()
    return model
