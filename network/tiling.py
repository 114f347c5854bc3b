"""Evaluation under a memory budget: per scale, the whole image when it fits, else overlapping windows.

The budget is compared with an estimate: the peak bytes of live tensors per input pixel, measured
once per model and dtype by a probe forward on a small crop (:class:`LiveBytes`, device-agnostic:
it counts the tensors the forward creates, not the weights), times the pixels of the scale,
plus the full-size output canvases. A scale that does not fit runs in windows whose outputs
(logits, attention) are stitched at that scale's resolution *before* the multi-scale attention
combination: each output pixel is taken from the window in which it lies farthest from a cut, so
a model whose receptive field is smaller than half the overlap gives exactly the whole-image
output. HRNet-OCR is not such a model (its object-context step pools over the whole input), so
windows change its logits slightly; the choice is logged.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from network.ops import unwrap

Outputs = dict[str, torch.Tensor]
GB = 1024 ** 3


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created under it that are still alive; ``peak`` is the max."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                del self.live[ptr]
                self.current -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr not in self.live:
                    self.live[ptr] = [0, storage.nbytes()]
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                self.live[ptr][0] += 1
                weakref.finalize(t, self._release, ptr)
        return out


def default_budget_bytes(device: torch.device, gb: float | None = None) -> int | None:
    """``gb`` GiB if given; else on CUDA the memory torch can still get (free + cached); else None."""
    if gb is not None:
        return int(gb * GB)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.9 * (free + cached))
    return None


def memory_plan(device: torch.device, gb: float | None = None) -> MemoryPlan | None:
    """The evaluation memory plan for ``device`` (:func:`default_budget_bytes`); None: unlimited."""
    budget = default_budget_bytes(device, gb)
    return None if budget is None else MemoryPlan(budget)


def tile_starts(length: int, window: int, overlap: int, align: int = 32) -> list[int]:
    """Window starts covering ``[0, length)``; the stride is a multiple of ``align`` (the trunk's
    output stride) so that all but the last window see the whole image's pixel grid."""
    if window >= length:
        return [0]
    stride = max(align, (window - overlap) // align * align)
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def _cuts(starts: Sequence[int], window: int, length: int) -> list[tuple[int, int]]:
    """The part of each window that is kept: cut in the middle of each overlap."""
    bounds = [0] + [(b + a + window) // 2 for a, b in zip(starts, starts[1:], strict=False)] + [length]
    return list(itertools.pairwise(bounds))


def run_windows(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, window: tuple[int, int],
                overlap: int, align: int = 32) -> Outputs:
    """``fn`` (outputs at its input's size) over overlapping windows of ``x``, stitched."""
    h, w = x.shape[-2:]
    ys, xs = tile_starts(h, window[0], overlap, align), tile_starts(w, window[1], overlap, align)
    wh, ww = min(window[0], h), min(window[1], w)
    out: Outputs = {}
    for (y0, (ya, yb)) in zip(ys, _cuts(ys, wh, h), strict=True):
        for (x0, (xa, xb)) in zip(xs, _cuts(xs, ww, w), strict=True):
            part = fn(x[..., y0:y0 + wh, x0:x0 + ww])
            for k, v in part.items():
                if k not in out:
                    out[k] = v.new_empty((*v.shape[:-2], h, w))
                out[k][..., ya:yb, xa:xb] = v[..., ya - y0:yb - y0, xa - x0:xb - x0]
    return out


@dataclass
class MemoryPlan:
    """Decides, per scale, whole image or windows, so evaluation fits ``budget`` bytes (None: no limit)."""

    budget: int | None
    overlap: int = 128
    align: int = 32
    probe: int = 256
    safety: float = 1.25
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))
    _bpp: dict[tuple, float] = field(default_factory=dict, repr=False)
    _said: set[str] = field(default_factory=set, repr=False)

    # -- estimates
    def bytes_per_pixel(self, fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor, key: tuple) -> float:
        """Peak live bytes per input pixel of ``fn``, probed once on a small crop of ``x``."""
        if key not in self._bpp:
            crop = x[:1, :, :self.probe, :self.probe]
            tracker = LiveBytes()
            with torch.inference_mode(), tracker:
                out = fn(crop)
                del out
            self._bpp[key] = tracker.peak / (crop.shape[-2] * crop.shape[-1])
        return self._bpp[key]

    def estimate(self, bpp: float, n: int, h: int, w: int, channels: int) -> float:
        """Bytes to evaluate one scale: the forward's peak plus float32 output canvases."""
        return self.safety * bpp * n * h * w + 3 * 4 * channels * n * h * w

    def window_for(self, bpp: float, n: int, h: int, w: int, channels: int) -> tuple[int, int] | None:
        """None when the whole ``h`` x ``w`` fits; else the largest aligned window that does."""
        if self.budget is None or self.estimate(bpp, n, h, w, channels) <= self.budget:
            return None
        canvas = 3 * 4 * channels * n * h * w
        room = max(self.budget - canvas, 0) / (self.safety * bpp * n)
        side = max(2 * self.overlap + self.align, int(math.sqrt(room)) // self.align * self.align)
        wh = min(h, side)
        ww = min(w, max(side, int(room / wh) // self.align * self.align))
        return wh, ww

    def _say(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log(text)

    # -- running
    def run(self, model: nn.Module, x: torch.Tensor, label: str = "image", *, kind: str = "image",
            fn: Callable[[torch.Tensor], Outputs] | None = None, net: nn.Module | None = None) -> Outputs:
        """``fn(x)`` (default ``model(x)``) whole when it fits the budget, else in windows."""
        net = net or unwrap(model)
        fn = fn or model
        channels = int(getattr(net, "num_classes", 1)) + 1
        bpp = self.bytes_per_pixel(fn, x, (id(net), x.dtype, x.device, kind))
        n, (h, w) = x.shape[0], x.shape[-2:]
        window = self.window_for(bpp, n, h, w, channels)
        need = self.estimate(bpp, n, h, w, channels) / GB
        budget = "unlimited" if self.budget is None else f"{self.budget / GB:.1f} GB"
        if window is not None and window[0] >= h and window[1] >= w:
            window = None  # no smaller window: run whole and say it exceeds the budget
            self._say(f"over {label} {n}x{h}x{w}", f"eval memory: {label} {h}x{w} whole image, estimated "
                      f"{need:.2f} GB > budget {budget}, and no smaller window fits")
        if window is None:
            self._say(f"whole {label} {n}x{h}x{w}", f"eval memory: {label} {h}x{w} whole image "
                      f"(estimated {need:.2f} GB, budget {budget})")
            return fn(x)
        tiles = len(tile_starts(h, window[0], self.overlap, self.align)) * len(
            tile_starts(w, window[1], self.overlap, self.align))
        self._say(f"win {label} {n}x{h}x{w}", f"eval memory: {label} {h}x{w} in {tiles} windows of "
                  f"{window[0]}x{window[1]} (overlap {self.overlap}; whole image estimated {need:.2f} GB "
                  f"> budget {budget})")
        return run_windows(fn, x, window, self.overlap, self.align)

    def fits_batch(self, model: nn.Module, x: torch.Tensor, n: int, scales: Sequence[float] | None) -> bool:
        """Whether a batch of ``n`` at the largest scale fits whole (used to batch the flip)."""
        if self.budget is None:
            return True
        net = unwrap(model)
        top = max(scales or getattr(net, "eval_scales", None) or (1.0,))
        fn = self._scale_fn(net) if getattr(net, "multiscale", False) else net
        bpp = self.bytes_per_pixel(fn, x, (id(net), x.dtype, x.device, "scale"))
        h, w = (round(d * top) for d in x.shape[-2:])
        return self.window_for(bpp, n, h, w, int(getattr(net, "num_classes", 1)) + 1) is None

    @staticmethod
    def _scale_fn(net: nn.Module) -> Callable[[torch.Tensor], Outputs]:
        return lambda t: cast(Any, net)._fwd(t, with_aux=False, with_attn=True)

    @contextlib.contextmanager
    def windowed_scales(self, net: nn.Module, x: torch.Tensor) -> Iterator[None]:
        """Inside, ``net``'s multi-scale forward runs each scale through :meth:`run`."""
        def scale_fn(t: torch.Tensor, with_aux: bool, with_attn: bool = True) -> Outputs:
            s = t.shape[-1] / x.shape[-1]
            return self.run(net, t, f"scale {s:.3g}x", kind="scale", net=net,
                            fn=lambda u: cast(Any, net)._fwd(u, with_aux, with_attn))

        old = net.__dict__.get("scale_fn")
        cast(Any, net).scale_fn = scale_fn
        try:
            yield
        finally:
            cast(Any, net).scale_fn = old
