"""One policy for how a command line ends on an error (train.py, predict.py, ``python -m sbatch``).

- An error the user can fix (a bad flag, a missing dataset root, a broken checkpoint) is a
  :class:`UserError` (``config.ConfigError``, ``datasets.DatasetError``,
  ``network.CheckpointError`` ... derive from it): one line ``prog: error: <message>`` on
  stderr, exit status 2 (:data:`EXIT_USAGE`), no traceback.
- A full disk (ENOSPC/EDQUOT) is named plainly in one line, exit 1: the files written before
  (the previous ``last.pth``) are intact because every writer is atomic.
- Anything else is a bug: the traceback is printed and the exit status is 1.
- On any error the process's child processes (DataLoader workers, which ignore SIGTERM so
  that the main process can checkpoint first) are killed, so the program ends in seconds
  instead of waiting for them forever.

Under torchrun or Slurm every rank runs the same command line and meets the same user error; only
local rank 0 (``LOCAL_RANK`` unset or 0: once per node) prints its line, the other ranks exit 2
silently (with ``HMSA_DEBUG=1`` they print theirs too).

``HMSA_DEBUG=1`` or ``--debug`` on the command line prints the traceback of user errors too.
Stdlib only: ``config.py`` and ``sbatch/`` import it without torch.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import re
import signal
import sys
import traceback
import typing
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_WORKER = re.compile(r"^Caught (\w+) in (DataLoader worker process \d+)\.")
_TRACEBACK = "Original Traceback (most recent call last):"


class UserError(Exception):
    """Base of the errors a user can fix; the message names the flag (``--dataset_root``) and the fix."""


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    """Tracebacks for user errors too: ``HMSA_DEBUG`` set to anything but ``""``/``0``, or ``--debug``."""
    return os.environ.get("HMSA_DEBUG", "") not in ("", "0") or "--debug" in argv


def one_line(error: BaseException) -> str:
    """The message on one line (multi-line messages joined with ``; ``), never empty.

    An error re-raised from a DataLoader worker carries the worker's traceback in its
    message; only the original message is kept (and which worker raised it).
    """
    text = str(error)
    worker = _WORKER.match(text)
    if worker and _TRACEBACK in text:
        head = f"{worker.group(1)}: "
        text = text[text.rindex(head) + len(head):] if head in text else text
        text = f"{text.strip()} (in {worker.group(2)})"
    lines = [part.strip() for part in text.splitlines() if part.strip()]
    return "; ".join(lines) or type(error).__name__


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL


def disk_full_message(error: OSError) -> str:
    where = f" writing {error.filename}" if error.filename else ""
    return (f"disk full (ENOSPC){where}: {os.strerror(error.errno or errno.ENOSPC)}; free space there and "
            "rerun the same command (files written before, e.g. the previous last.pth, are intact)")


def end_children(timeout: float = 2.0) -> None:
    """Kill this process's multiprocessing children (DataLoader/pool workers) and reap them."""
    children = multiprocessing.active_children()
    if not children:
        return
    previous = None
    # the DataLoader's SIGCHLD handler would raise about workers killed on purpose
    # (no SIGCHLD on Windows; signal.signal only works in the main thread)
    with contextlib.suppress(AttributeError, ValueError):
        previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout)
    if previous is not None:
        signal.signal(signal.SIGCHLD, previous)


def speaks_for_the_ranks(env: typing.Mapping[str, str] | None = None) -> bool:
    """True in the one process per node that prints a user error: no ``LOCAL_RANK``, or local rank 0."""
    env = os.environ if env is None else env
    return env.get("LOCAL_RANK", "0").strip() in ("", "0")


def report(prog: str, message: str, error: BaseException | None = None, debug: bool = False) -> None:
    if debug and error is not None:
        traceback.print_exception(error)
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def run_cli(prog: str, main: Callable[[], int], argv: Sequence[str] = (),
            extra: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main()`` under the policy above and return the exit status.

    ``extra`` adds exception types treated as user errors (e.g. sbatch's YAML errors).
    """
    debug = debug_enabled(argv)
    user_errors: tuple[type[BaseException], ...] = (UserError, *extra)
    try:
        return main()
    except user_errors as e:
        end_children()
        if debug or speaks_for_the_ranks():  # the other ranks of this node meet the same error
            report(prog, one_line(e), e, debug)
        return EXIT_USAGE
    except OSError as e:
        end_children()
        if not is_disk_full(e):
            raise
        report(prog, disk_full_message(e), e, debug)
        return EXIT_FAILED
    except BaseException:
        end_children()
        raise
