"""Atomic file output: a reader never sees a half-written file.

Every writer goes through :func:`atomic_path`: the data is written to a
temporary file in the destination directory, flushed and fsync'ed, then
renamed over the destination (``os.replace`` is atomic on POSIX). A crash at
any point leaves either the previous file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    ``suffix`` defaults to ``dest``'s own suffix so that libraries that pick a
    format from the file name (OpenCV, rasterio) keep working.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = dest.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def remove_stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left beside ``dest`` when its writer was killed.

    Call it only where no other process is writing ``dest`` right now (e.g. the shard that owns it).
    """
    dest = Path(dest)
    stale = sorted(dest.parent.glob(f".{glob_escape(dest.name)}.*.tmp*")) if dest.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters bracketed, so a file called ``a[1].tif`` matches itself."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def ensure_output_dir(path: str | os.PathLike, flag: str = "--result_dir") -> Path | None:
    """Create ``path`` if needed and check that files can be written in it; returns the highest
    directory created here (``path`` itself or one of its parents), None if ``path`` existed.

    Raises :class:`utils.errors.UserError` naming ``flag`` for a dangling symlink, a file in
    the way, a directory that cannot be created or is not writable (read-only, immutable).
    """
    from utils.errors import UserError

    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise UserError(f"{flag} {p} is a symlink to {os.readlink(p)}, which does not exist: create the "
                        f"target or pass another {flag}")
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is a file, not a directory: move it away or pass another {flag}")
    missing = [d for d in (p, *p.absolute().parents) if not d.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {p} cannot be created or written to ({e.strerror or e}): fix its "
                        f"permissions or pass another {flag}") from e
    return missing[-1] if missing else None


def remove_created(path: str | os.PathLike, top: Path | None) -> None:
    """Undo :func:`ensure_output_dir` for a run that could not start: ``path`` and its parents up to
    ``top`` (what it created), each only while empty."""
    if top is None:
        return
    for d in (Path(path).absolute(), *Path(path).absolute().parents):
        try:
            d.rmdir()
        except OSError:
            return
        if d == top.absolute():
            return


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask is process-wide, so toggling it later would race with threads.
_UMASK = _read_umask()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Valid JSON always: NaN and infinities (an absent class's IoU) are written as ``null``."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(dest, text + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_torch_save(obj: Any, dest: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import torch

    with atomic_path(dest) as tmp:
        try:  # a file object, so that a full disk is an OSError (ENOSPC), not "unexpected pos ..."
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except (OSError, RuntimeError) as e:  # torch may raise its own error while unwinding
            cause = _os_error(e)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror, str(dest)) from e


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error`` (itself, or in its context/cause chain), if any."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno:
            return error
        error, seen = error.__context__ or error.__cause__, seen + 1
    return None


def atomic_imwrite(dest: str | os.PathLike, image: np.ndarray, params: list[int] | None = None) -> None:
    """Encode ``image`` (OpenCV channel order: BGR) by ``dest``'s extension and write atomically."""
    import cv2

    ext = Path(dest).suffix or ".png"
    ok, buf = cv2.imencode(ext, image, params or [])
    if not ok:
        raise OSError(f"OpenCV could not encode an image as {ext!r} for {dest}")
    atomic_write_bytes(dest, buf.tobytes())


def atomic_write_label_png(dest: str | os.PathLike, label: np.ndarray, palette: np.ndarray) -> None:
    """``label`` (uint8 class ids) as a palette PNG: the pixel values stay the ids (PIL's
    ``np.asarray(Image.open(p))``), image viewers show the classes in ``palette``'s colours
    (``(K, 3)`` uint8 RGB). OpenCV's ``imread`` expands palette PNGs to colour: read ids with PIL."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="P")
    colours = np.zeros((256, 3), np.uint8)
    colours[: min(256, len(palette))] = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
    img.putpalette(colours.reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    atomic_write_bytes(dest, buf.getvalue())
