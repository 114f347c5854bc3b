"""Turning SIGTERM/SIGUSR1 (Slurm's warning before a time limit or preemption) into a clean stop.

The handler only sets a flag; the training loop checks it once per optimizer step, all ranks
agree through one all-reduce (:func:`utils.dist.any_rank`), rank 0 writes ``last.pth`` and
the process exits with :data:`EXIT_REQUEUE` (75, ``EX_TEMPFAIL``): "requeue me".
"""

from __future__ import annotations

import signal
import types

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


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGTERM/SIGUSR1 to the main process,
    which stops them itself (Slurm signals every process of the step)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
