"""Check every run's flags at submission, with the parsers train.py and predict.py use.

A bad value (``lr: notanumber``) would otherwise be found only when the job starts, after the
queue wait. Commands of other programs are not checked. ``config`` imports no torch; ``predict``
does (imported only when a run calls predict.py).
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Sequence

from .expand import ExperimentError, Run


class FlagError(ExperimentError):
    """One or more runs have flags their program refuses; one line per bad run."""


@functools.cache
def _train_parser() -> argparse.ArgumentParser:
    from config import build_parser

    return build_parser()


def _check_train(args: Sequence[str]) -> None:
    from config import parse_config

    parse_config(list(args), parser=_train_parser())  # building the parser is most of the cost


@functools.cache
def _predict_parser() -> argparse.ArgumentParser:
    import predict

    return predict.build_parser()  # its errors are config.ConfigError, like train.py's


def _check_predict(args: Sequence[str]) -> None:
    import predict
    from config import ConfigError

    opts = predict.options_from_args(_predict_parser().parse_args(list(args)))  # built once: most of the cost
    try:
        predict.check_options(opts)
    except predict.PredictError as e:
        raise ConfigError(str(e)) from e


CHECKERS: dict[str, Callable[[Sequence[str]], None]] = {"train.py": _check_train, "predict.py": _check_predict}


def program_args(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(program, its arguments)`` for a train.py / predict.py command (launchers stripped)."""
    from .launch import LaunchError, strip_launcher

    try:
        words = strip_launcher(argv)
    except LaunchError:
        return None
    for i, word in enumerate(words[:3]):  # python [-u] train.py ...
        if os.path.basename(word) in CHECKERS:
            return os.path.basename(word), words[i + 1:]
    return None


def check_run(run: Run) -> str | None:
    """The program's own error message for this run's flags, or None when they parse."""
    from config import ConfigError

    found = program_args(run.argv)
    if found is None:
        return None
    program, args = found
    try:
        CHECKERS[program](args)
    except ConfigError as e:
        return f"{program}: {e}"
    return None


def check_runs(runs: Sequence[Run]) -> None:
    """Raise :class:`FlagError` (one line per bad run) before anything is created or queued."""
    bad = [(run, msg) for run in runs if (msg := check_run(run)) is not None]
    if bad:
        lines = [f"run {run.name or run.exp_name}: {msg}" for run, msg in bad]
        lines.append(f"{len(bad)} of {len(runs)} runs have bad flags; fix the YAML (or the key=value "
                     "overrides): nothing was created or queued")
        raise FlagError("\n".join(lines))
