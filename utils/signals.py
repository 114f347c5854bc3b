"""Turning SIGTERM/SIGUSR1 (Slurm's warning before a time limit or preemption) into a clean stop.

The handler only sets a flag; the training loop checks it once per optimizer step, all ranks
agree through one all-reduce (:func:`utils.dist.any_rank`), rank 0 writes ``last.pth`` and
the process exits with :data:`EXIT_REQUEUE` (75, ``EX_TEMPFAIL``): "requeue me".
"""

from __future__ import annotations

import contextlib
import signal
import sys
import types
from collections.abc import Iterator
from typing import NoReturn

EXIT_REQUEUE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_deferred: list[int] = []  # stop signals that arrived while the program was still importing
_settled: list[bool] = [False]  # the run's outcome is decided (a settled StopRequest ended): signals change nothing


def defer_stop_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
    """The first thing ``train.py``/``predict.py`` do as programs, before their heavy imports.

    Importing torch takes seconds; a SIGTERM then used to kill the process with 143 (counted as
    failed, not requeued). Now the signal is only recorded, and :func:`stop_raises` or
    :func:`exit_on_signal` acts on it as soon as the program enters them.
    """
    for s in signals:
        signal.signal(s, _defer)


def _defer(signum: int, _frame: types.FrameType | None) -> None:
    _deferred.append(signum)


def take_deferred() -> int | None:
    """The first stop signal recorded by :func:`defer_stop_signals` (and forget them all), if any."""
    signum = _deferred[0] if _deferred else None
    _deferred.clear()
    return signum


class StopRequest:
    """Installs handlers for ``signals`` while active; ``requested`` tells whether one arrived.

    ``settled=True``: leaving the block settles the run's outcome (training finished, or ``last.pth``
    written for exit 75), so the signals are then ignored instead of handed back: a burst of
    SIGTERMs after "wrote last.pth, exit 75" cannot turn the exit into 143 (a failure, no requeue).
    An enclosing :func:`stop_raises` puts the caller's handlers back at its own end.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS, settled: bool = False):
        self.signals = signals
        self.settled = settled
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
        if self.settled:
            _settled[0] = True
        for s, prev in self._previous.items():
            signal.signal(s, signal.SIG_IGN if self.settled else prev)  # type: ignore[arg-type]
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
        if not _settled[0]:  # after a settled StopRequest the exit status is decided: ignore
            raise StartupStop(signum)

    _settled[0] = False
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        deferred = take_deferred()
        if deferred is not None:
            raise StartupStop(deferred)
        yield
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev)


@contextlib.contextmanager
def exit_on_signal(signals: tuple[signal.Signals, ...] = (signal.SIGTERM,), prog: str = "") -> Iterator[None]:
    """While active, a signal raises ``SystemExit(128 + signum)`` (what a kill would report) instead of
    killing the process: ``finally`` blocks still run, so reports are written and pending writes finish.
    The previous handlers come back on exit (tests and notebooks call ``predict.main`` in-process).
    A stop signal deferred during the imports ends the program here, before any work."""
    def handler(signum: int, _frame: types.FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        deferred = take_deferred()
        if deferred is not None:
            print(f"{prog}: stopped by signal {deferred} during start-up, before any work: nothing written; "
                  f"rerun the same command; exit {128 + deferred}", file=sys.stderr, flush=True)
            raise SystemExit(128 + deferred)
        yield
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev)


def exit_settled(code: int) -> NoReturn:
    """``sys.exit(code)`` for a program whose outcome is decided: stop signals are ignored from here on.

    During interpreter shutdown Python resets signals that have Python handlers to their default
    action, so a SIGTERM then would kill the process with 143 whatever ``code`` was; ignored
    signals stay ignored.
    """
    ignore_stop_signals()
    sys.exit(code)


@contextlib.contextmanager
def stop_handlers_kept() -> Iterator[None]:
    """The stop signals' handlers as they were on entry, also after a settled :class:`StopRequest`
    (which ignores them): ``train.main`` called in-process leaves the caller's handlers alone."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, prev in previous.items():
            if prev is not None:
                signal.signal(s, prev)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGTERM/SIGUSR1 to the main process,
    which stops them itself (Slurm signals every process of the step)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
