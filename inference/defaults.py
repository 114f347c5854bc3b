"""The documented inference defaults and the checks of their values (standard library only).

``config.py`` parses ``--n_scales``/``--amp_dtype`` with these checks, so a bad value is refused
where the flag is parsed (``python -m sbatch`` at submission) instead of by the model after the
queue wait.

Scales, when neither the command line nor the checkpoint names them (the reference's published
checkpoints record none):
    multi-scale (``*_Mscale*``) models: 0.5,1.0 (the reference's two-scale evaluation)
    single-scale models:                1.0
A checkpoint written by ``train.py`` records the scales its run validated with, and those are the
default for it (``inference.settings.validated_scales``).

Precision ``auto`` (every door): bf16 autocast where the device computes bf16 natively (CUDA GPUs
that support it, CPUs with AVX-512 BF16 or AMX), fp16 autocast on older CUDA GPUs, fp32 elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SCALES_MSCALE = (0.5, 1.0)
DEFAULT_SCALES_SINGLE = (1.0,)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SIZE_DIVISOR = 32  # HRNet's lowest branch is 1/32 of the input

SCALES_HELP = ("inference scales, must include 1.0; default: the scales the checkpoint was validated with, "
               "else 0.5,1.0 for multi-scale models and 1.0 for single-scale ones")
AUTO_HELP = ("auto: bf16 autocast where the device computes bf16 natively (CUDA GPUs that support it, CPUs with "
             "AVX-512 BF16/AMX), fp16 on older GPUs, else fp32")


def requested_precision(amp_dtype: str, amp_opt_level: str | None) -> tuple[str, bool]:
    """``(precision, half_model)`` an inference door takes from the flags train.py and predict.py share:
    ``--amp_opt_level O0`` fp32; ``O3`` ``--amp_dtype`` with the weights cast too; otherwise (O1, O2,
    ``--fp16``, nothing) ``--amp_dtype`` (``auto`` by default)."""
    if amp_opt_level == "O0":
        return "fp32", False
    return amp_dtype, amp_opt_level == "O3"


def default_scales(multiscale: bool, lo_scale: float = 0.5) -> tuple[float, ...]:
    """The documented default: ``(lo_scale, 1.0)`` for multi-scale models (``--mscale_lo_scale``, 0.5), else 1.0."""
    return (float(lo_scale), 1.0) if multiscale else DEFAULT_SCALES_SINGLE


def scales_problem(scales: Sequence[float]) -> str | None:
    """What the models would refuse in ``scales`` (one line), or None when they are fine."""
    values = tuple(float(s) for s in scales)
    if not values:
        return "give at least one scale, e.g. 0.5,1.0"
    if any(s <= 0 for s in values):
        return f"scales must be positive, got {','.join(f'{s:g}' for s in values)}"
    if len(set(values)) != len(values):
        return f"scales must be distinct, got {','.join(f'{s:g}' for s in values)}"
    if 1.0 not in values:
        return (f"the scales must include 1.0 (the scale the others are combined into), got "
                f"{','.join(f'{s:g}' for s in values)}; e.g. {','.join(f'{s:g}' for s in sorted({*values, 1.0}))}")
    return None


def canonical_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Sorted floats: 1.0,0.5 and 0.5,1 are the same setting (the combination order is fixed)."""
    return tuple(sorted(float(s) for s in scales))
