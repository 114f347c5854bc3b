"""The one checkpoint module: format, writing, reading, building a model from a checkpoint.

Format (docs/INTERFACES.md): ``format: "hmsa-ckpt/1"``, ``arch``, ``num_classes``,
``dataset_info``, ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``iteration``,
``sampler``, ``rng``, ``config``, ``best_miou``. Everything in it is a tensor or a plain Python
value, so it loads with ``torch.load(weights_only=True)``. Two files only (``last.pth``,
``best.pth``), each replaced atomically, so they never pile up and a crash never leaves a
half-written one. Reading also accepts the reference's published ``.pth`` files.
"""

from __future__ import annotations

import contextlib
import pickle
import random
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

# the error and the tensors of a checkpoint dict are defined in the lower weights.py (slim files use them)
from network.weights import CheckpointError, extract_state_dict, read_weights
from utils.io import atomic_torch_save

FORMAT = "hmsa-ckpt/1"
LAST = "last.pth"
BEST = "best.pth"


def allowed_globals() -> list[Any]:
    """The non-tensor types a checkpoint may hold, unpickled without running code from the file.

    The reference's published ``.pth`` files hold, besides tensors, NumPy scalars (its
    ``mean_iu``) and an ``argparse.Namespace``; NumPy arrays and dtypes come with them. Each
    is rebuilt from plain data; any other global in the pickle (a function such as
    ``os.system``, a class with a custom ``__reduce__``) is refused by ``weights_only=True``.
    """
    import argparse

    core = np._core if hasattr(np, "_core") else np.core  # NumPy 2 / 1
    scalar, rebuild = core.multiarray.scalar, core.multiarray._reconstruct
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [argparse.Namespace, np.dtype, np.ndarray, scalar, rebuild, *dtypes,
            # files pickled under NumPy 1 name the same functions numpy.core.*
            (scalar, "numpy.core.multiarray.scalar"), (rebuild, "numpy.core.multiarray._reconstruct")]


def _safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with :func:`allowed_globals` allowed (torch >= 2.5)."""
    allow = getattr(torch.serialization, "safe_globals", None)
    with allow(allowed_globals()) if allow is not None else contextlib.nullcontext():
        return torch.load(path, map_location="cpu", weights_only=True)


def _refused(path: Path, error: Exception) -> CheckpointError:
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in allowed_globals() if not isinstance(g, tuple)}
        names = [n for n in find(path) if n not in allowed] if find else []
    except Exception:  # noqa: BLE001 - only for the message
        names = []
    what = ", ".join(names[:5]) if names else str(error).splitlines()[0]
    return CheckpointError(f"{path} holds Python objects outside the allow-list ({what}): unpickling them could "
                           "run code from the file, so it was not loaded; if you trust where the file comes "
                           "from, pass --trust_checkpoint (a full unpickle)")


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """``torch.load`` a file on the CPU without running code from it.

    ``weights_only=True`` with :func:`allowed_globals`, which covers the project's files and
    the reference's published ones. Anything else is refused with :class:`CheckpointError`
    unless ``trust`` (``--trust_checkpoint``): then a full unpickle, with a warning.
    """
    path = Path(path)
    if path.suffix == ".safetensors":  # slim weights (network/weights.py): sha256-checked, no pickle
        return read_weights(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file: check the path "
                              "(--snapshot / --resume)")
    try:
        obj = _safe_load(path)
    except pickle.UnpicklingError as safe_error:
        if not trust:
            raise _refused(path, safe_error) from safe_error
        obj = _full_unpickle(path)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: it is empty, truncated or not a torch file "
                              f"({first}); restore or re-download it (a run's last.pth: move it away to "
                              "start that run over)") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return dict(obj)


def _full_unpickle(path: Path) -> Any:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    warnings.warn(f"{path} was read with a full unpickle (--trust_checkpoint), which runs code from the "
                  "file: do this only for files you trust", stacklevel=4)
    return obj


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensor state dict from a file: ``.safetensors``, or a torch file holding a state dict
    directly or under ``model``/``state_dict``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    return extract_state_dict(read_checkpoint(path), str(path))


def load_checkpoint(model: nn.Module, path_or_dict: str | Path | Mapping[str, Any],
                    strict: bool = True, trust: bool = False, partial_flag: str | None = None) -> dict[str, Any]:
    """Load weights into ``model`` and return the checkpoint dict.

    Accepts the project's checkpoints (``format: hmsa-ckpt/1``, weights under ``model``),
    the reference's ``.pth`` (``{"state_dict": {"module.…": …}}``) and bare state dicts.
    A different architecture or class count raises :class:`CheckpointError` naming the
    mismatching keys. ``strict=False`` loads only the tensors whose name and shape fit
    (e.g. a trunk for fine-tuning with another class count) and warns about the rest;
    :func:`loaded_fraction` tells how much that was. ``trust``: see :func:`read_checkpoint`.
    ``partial_flag``: the caller's flag for ``strict=False`` (``--snapshot_partial``), named in the
    refusal; None where the program has none.
    """
    if isinstance(path_or_dict, Mapping):
        ckpt, where = dict(path_or_dict), "checkpoint dict"
    else:
        ckpt, where = read_checkpoint(path_or_dict, trust=trust), str(path_or_dict)
    state = extract_state_dict(ckpt, where)
    _check_compatible(model, state, ckpt, where, strict, partial_flag)
    if strict:
        model.load_state_dict(state, strict=True)
    else:
        _load_fitting(model, state)
    return ckpt


def build_model(arch: str, num_classes: int, ckpt: str | Path | Mapping[str, Any] | None = None, *,
                strict: bool = True, **model_kwargs: Any) -> nn.Module:
    """The one way a model is built from a checkpoint: ``get_model(arch, num_classes, ...)`` with
    ``ckpt``'s weights loaded (none: the model's initial weights). Unknown ``arch``: ``KeyError``."""
    from network.registry import get_model

    model = get_model(arch, num_classes=num_classes, **model_kwargs)
    if ckpt is not None:
        load_checkpoint(model, ckpt, strict=strict)
    return model


def loaded_fraction(model: nn.Module, ckpt: Mapping[str, Any]) -> tuple[int, int, float]:
    """(tensors of ``model`` that ``ckpt`` fits by name and shape, tensors of the model,
    fraction of the model's weight elements they hold)."""
    state = extract_state_dict(ckpt)
    own = model.state_dict()
    fit = [k for k, v in own.items() if k in state and state[k].shape == v.shape]
    total = sum(v.numel() for v in own.values()) or 1
    return len(fit), len(own), sum(own[k].numel() for k in fit) / total


def say_once(text: str) -> None:
    """Print ``text`` once per job: on rank 0 when torch.distributed is running (weights-loading reports)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        print(text, flush=True)


def _load_fitting(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)


def _check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], ckpt: Mapping[str, Any],
                      where: str, strict: bool, partial_flag: str | None = None) -> None:
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not (wrong or missing or unexpected):
        return
    if not strict:
        warnings.warn(f"{where}: skipped {len(wrong)} tensors of another shape, {len(missing)} model "
                      f"tensors not in the checkpoint, {len(unexpected)} unexpected "
                      f"(e.g. {(wrong + missing + unexpected)[:3]})", stacklevel=3)
        return
    arch, ncls = getattr(model, "arch", type(model).__name__), getattr(model, "num_classes", "?")
    counts = ", ".join(f"{len(keys)} {label} (e.g. {keys[0]})" for label, keys in
                       (("of another shape", wrong), ("missing", missing), ("unexpected", unexpected)) if keys)
    saved = ckpt.get("arch")
    fix = f"pass --arch {saved}" if saved and saved != arch else "pass the checkpoint's --arch"
    also = f", or {partial_flag} to load only the tensors that fit (fine-tuning)" if partial_flag else ""
    raise CheckpointError(f"{where} does not fit {arch} with {ncls} classes (checkpoint: arch {saved or '?'}, "
                          f"{ckpt.get('num_classes', '?')} classes; tensors {counts}): {fix} and its class "
                          f"count{also}")


# ----------------------------------------------------------------------------- writing

def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG state the training loop touches, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = cast(tuple, np.random.get_state())
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def build_checkpoint(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: Any, epoch: int, iteration: int,
                     sampler: dict[str, Any], config: dict[str, Any], best_miou: float,
                     device: torch.device | None = None, dataset_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict; ``model`` must be the unwrapped model (no ``module.`` prefix).

    ``dataset_info``: ``datasets.DatasetInfo.to_dict()`` of the classes the model predicts.
    """
    return {
        "format": FORMAT,
        "arch": getattr(model, "arch", type(model).__name__),
        "num_classes": getattr(model, "num_classes", None),
        "dataset_info": dataset_info,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "iteration": int(iteration),
        "sampler": sampler,
        "rng": capture_rng(device),
        "config": config,
        "best_miou": float(best_miou),
    }


def save_checkpoint(ckpt: dict[str, Any], result_dir: str | Path, name: str = LAST) -> Path:
    """Write ``ckpt`` to ``result_dir/name`` through a temporary file and a rename."""
    dest = Path(result_dir) / name
    atomic_torch_save(ckpt, dest)
    return dest


def remove_stale_temps(result_dir: str | Path) -> list[Path]:
    """Delete temporary files left by a writer that was killed mid-write (only rank 0 writes)."""
    stale = [p for name in (LAST, BEST) for p in Path(result_dir).glob(f".{name}.*.tmp*")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def is_training_checkpoint(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == FORMAT and "optimizer" in ckpt and "iteration" in ckpt
