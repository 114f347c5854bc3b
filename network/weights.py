"""Slim weights: a checkpoint's model tensors plus metadata as one ``.safetensors`` file.

A training checkpoint (``best.pth``) is about two thirds optimizer state. :func:`slim_checkpoint`
keeps the weights and what a user needs to run them (``arch``, ``num_classes``,
``dataset_info``: class names, colours, mean/std, bands; ``inference``: the settings it was
validated with, whose scales are every door's default) in the safetensors header, and writes
``<file>.sha256`` beside it (``sha256sum`` format, so ``sha256sum -c`` checks it too).
:func:`read_weights` checks that digest when the file is present and returns a dict shaped
like a project checkpoint, so ``network.load_checkpoint`` and every ``--snapshot`` accept the
file. safetensors holds tensors only: loading it never runs code.

    python -m deploy.slim --snapshot logs/exp/run/best.pth --out best.safetensors
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError

WEIGHTS_FORMAT = "hmsa-weights/1"
# checkpoint entries kept (as JSON) in the safetensors header, besides the tensors
META_KEYS = ("arch", "num_classes", "dataset_info", "epoch", "iteration", "best_miou", "inference")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message says why and what to do."""


def extract_state_dict(ckpt: Mapping[str, Any], where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint dict, with any ``module.`` prefix removed."""
    for name in ("model", "state_dict"):
        if isinstance(ckpt.get(name), Mapping):
            state = ckpt[name]
            break
    else:
        state = ckpt
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{where} holds no tensors (keys: {sorted(ckpt)[:10]}); expected a "
                              "project checkpoint ('model'), a reference .pth ('state_dict') or a state dict")
    return {_strip_module(k): v for k, v in tensors.items()}


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def sha256_path(path: str | Path) -> Path:
    """The digest file written beside ``path``: ``<name>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights can be hundreds of MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path) -> bool:
    """Check ``path`` against ``<path>.sha256`` when that file exists; False when there is none.

    Raises :class:`CheckpointError` (one line) on a mismatch or an
    unreadable digest file.
    """
    path, digest_file = Path(path), sha256_path(path)
    if not digest_file.is_file():
        return False
    words = digest_file.read_text().split()
    if not words or len(words[0]) != 64:
        raise CheckpointError(f"{digest_file} is not a sha256 file ('<64 hex digits>  <name>'); "
                              "rewrite it with `sha256sum` or delete it")
    actual = sha256_file(path)
    if actual != words[0].lower():
        raise CheckpointError(f"{path}: sha256 {actual[:12]}... does not match {digest_file.name} "
                              f"({words[0][:12]}...): the file is damaged or not the one published; "
                              "copy it again (or delete the .sha256 file if you changed the weights on purpose)")
    return True


def slim_checkpoint(ckpt: Mapping[str, Any], out: str | Path) -> Path:
    """Write the weights and metadata of ``ckpt`` to ``out`` (.safetensors) and ``out.sha256``."""
    from safetensors.torch import save

    from utils.io import atomic_write_bytes, atomic_write_text

    out = Path(out)
    # clone: safetensors refuses tensors sharing storage, and views of bigger buffers
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in extract_state_dict(ckpt).items()}
    meta = {"format": WEIGHTS_FORMAT}
    meta.update({k: json.dumps(ckpt[k]) for k in META_KEYS if ckpt.get(k) is not None})
    data = save(state, metadata=meta)
    atomic_write_bytes(out, data)
    atomic_write_text(sha256_path(out), f"{hashlib.sha256(data).hexdigest()}  {out.name}\n")
    return out


def read_weights(path: str | Path) -> dict[str, Any]:
    """A ``.safetensors`` file as a checkpoint dict: ``model`` (tensors) plus the header's metadata.

    The sha256 beside it is checked first when present. Files without this project's
    metadata (e.g. a bare state dict saved elsewhere) load too, with only ``model``.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    verify_sha256(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    ckpt: dict[str, Any] = {"format": meta.get("format", "safetensors"), "model": state}
    for key in META_KEYS:
        if key in meta:
            ckpt[key] = json.loads(meta[key])
    return ckpt


def slimmed_size(ckpt: Mapping[str, Any]) -> int:
    """Bytes of tensor data the slim file will hold (for the command's summary line)."""
    return sum(v.numel() * v.element_size() for v in extract_state_dict(ckpt).values()
               if isinstance(v, torch.Tensor))
