"""Turning SIGTERM/SIGUSR1 (Slurm's warning before a time limit or preemption) into a clean stop.

The handler only sets a flag; the training loop checks it once per optimizer step, all ranks
agree through one all-reduce (:func:`utils.dist.any_rank`), rank 0 writes ``last.pth`` and
the process exits with :data:`EXIT_REQUEUE` (75, ``EX_TEMPFAIL``): "requeue me".
"""

from __future__ import annotations

import contextlib
import signal
import types
from collections.abc import Iterator

EXIT_REQUEUE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Installs handlers for ``signals`` while active; ``requested`` tells whether one arrived."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, _frame: types.FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> StopRequest:
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev)  # type: ignore[arg-type]
        self._previous.clear()


class StartupStop(Exception):
    """A stop signal arrived during start-up, before there was anything to checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signum)  # args stay (signum,): it pickles back from a pool worker
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by signal {self.signum} during start-up"


@contextlib.contextmanager
def stop_raises() -> Iterator[None]:
    """Start-up: a stop signal raises :class:`StartupStop` at once (the caller exits
    :data:`EXIT_REQUEUE`), instead of killing the process with 143, which counts as failed.
    A :class:`StopRequest` entered inside takes over for the training loop."""
    def handler(signum: int, _frame: types.FrameType | None) -> None:
        raise StartupStop(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGTERM/SIGUSR1 to the main process,
    which stops them itself (Slurm signals every process of the step)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
