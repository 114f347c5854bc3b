"""Progress where the user looks: tqdm bars on a terminal, plain lines on stdout otherwise.

runx (``python -m runx.runx x.yml -i``) holds a child's stderr until the child ends, but
passes its stdout through live, and Slurm logs are files: so when stderr is not a terminal,
progress is printed as one flushed line per log step on stdout instead of tqdm frames.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``d`` days in front when longer."""
    s = max(0, int(round(seconds)))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


class TrainProgress:
    """Rate and ETA of the whole run (not per epoch), measured since this process started training.

    ``images_per_step`` is the global batch (all ranks, all accumulation steps).
    """

    def __init__(self, total_iters: int, start_iter: int, images_per_step: int, *,
                 tty: bool | None = None, enabled: bool = True, clock: Any = time.monotonic):
        self.total = total_iters
        self.start = start_iter
        self.images_per_step = images_per_step
        self.tty = stderr_is_tty() if tty is None else tty
        self.enabled = enabled
        self.clock = clock
        self.t0 = clock()
        self._last = (start_iter, self.t0)

    def bar(self, steps: int, desc: str) -> Iterable[int]:
        """The steps of one epoch: a tqdm bar on a terminal, a plain range otherwise."""
        if not (self.enabled and self.tty):
            return range(steps)
        from tqdm import tqdm

        return tqdm(range(steps), desc=desc, dynamic_ncols=True, leave=False)

    def rates(self, iteration: int) -> dict[str, float]:
        """images/s since the previous call and the whole run's remaining seconds."""
        now = self.clock()
        last_it, last_t = self._last
        self._last = (iteration, now)
        ips = self.images_per_step * (iteration - last_it) / max(now - last_t, 1e-9)
        done = iteration - self.start
        eta = (self.total - iteration) * (now - self.t0) / done if done > 0 else float("nan")
        return {"images_per_s": ips, "eta_s": eta, "total_iters": self.total}

    def line(self, iteration: int, epoch: int, max_epoch: int, loss: float, lr: float,
             rates: dict[str, float]) -> str:
        pct = 100.0 * iteration / max(self.total, 1)
        eta = rates["eta_s"]
        ips = rates["images_per_s"]
        return (f"[train] it {iteration}/{self.total} ({pct:.0f}%) epoch {epoch + 1}/{max_epoch} "
                f"loss {loss:.4f} lr {lr:.2e} {ips:.{1 if ips >= 1 else 3}f} img/s "
                f"ETA {format_duration(eta) if eta == eta else '?'}")

    def report(self, iteration: int, epoch: int, max_epoch: int, loss: float, lr: float,
               bar: Any = None) -> dict[str, float]:
        """Measure, then show: the bar's postfix on a terminal, a stdout line otherwise."""
        rates = self.rates(iteration)
        if not self.enabled:
            return rates
        if self.tty:
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ips=f"{rates['images_per_s']:.1f}")
        else:
            print(self.line(iteration, epoch, max_epoch, loss, lr, rates), flush=True)
        return rates


def progress_iter(items: Iterable[T], desc: str, total: int | None = None, *, enabled: bool = True,
                  every_s: float = 30.0, tty: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar on a terminal, else a stdout line at most every ``every_s``
    seconds (and one at the end), so long evaluations show they are alive in logs too."""
    tty = stderr_is_tty() if tty is None else tty
    if not enabled:
        yield from items
        return
    if tty:
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, dynamic_ncols=True, leave=False)
        return
    t0 = last = time.monotonic()
    n = 0
    of = f"/{total}" if total is not None else ""
    for item in items:
        yield item
        n += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            print(f"[{desc}] {n}{of} batches, {format_duration(now - t0)} elapsed", flush=True)
    print(f"[{desc}] {n}{of} batches in {format_duration(time.monotonic() - t0)}", flush=True)


class CountProgress:
    """Progress over a known number of items (``predict.py``'s images).

    A tqdm bar on a terminal when ``bar`` is true; otherwise (Slurm logs, runx, or ``--no_progress``)
    a flushed stdout line at most every ``every_s`` seconds and one at the end, as train.py does:
    ``[predict] 120/5000 images (2%), 3.20 images/s, ETA 0:25:03``.
    """

    def __init__(self, total: int, desc: str, *, bar: bool = True, tty: bool | None = None,
                 every_s: float = 30.0, clock: Any = time.monotonic, unit: str = "images") -> None:
        self.total, self.desc, self.unit, self.every_s, self.clock = total, desc, unit, every_s, clock
        self.n = 0
        self.t0 = self.last = clock()
        self.bar = None
        if bar and (stderr_is_tty() if tty is None else tty):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, desc=desc)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(refresh=False, **postfix)
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            print(self.line(now), flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = format_duration((self.total - self.n) / rate) if rate > 0 else "?"
        pct = 100.0 * self.n / max(self.total, 1)
        return f"[{self.desc}] {self.n}/{self.total} {self.unit} ({pct:.0f}%), {rate:.2f} {self.unit}/s, ETA {eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.total:
            print(self.line(), flush=True)
