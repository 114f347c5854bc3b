"""Expand a runx experiment YAML into runs: a pure function with runx 0.0.11's semantics.

What runx does (and this module reproduces, tested against runx's own ``-n`` output):
- ``HPARAMS`` is a dict whose list values are crossed (``itertools.product`` in key order, the
  last key varying fastest), or a list of such dicts where every dict is the *first* dict
  updated with its own keys.
- ``RUNX.SKIP: true`` drops a run; ``RUNX.TAG: 'x{lr}'`` names the run, ``{field}`` replaced by
  that run's value of ``field`` (the tag replaces ``--tag``).
- The string ``LOGDIR`` inside any string value becomes the run's log directory.
- ``SUBMIT_JOB.NODES`` / ``SUBMIT_JOB.PARTITION`` leave the flags and become resources.
- Flags: ``--k v`` per key in order; ``true`` gives ``--k``, ``false`` nothing, the string
  ``'None'`` nothing.
- Run directory: ``LOGROOT/EXP/[tag_]coolname_YYYY.MM.DD_HH.MM``; with ``no_cooldir`` only
  ``tag_``.

One addition runx does not have: ``subdirs: 939-986`` with ``subdirs_chunk: 15`` becomes one run
per chunk of 15 subdirectories (``--subdirs 939-953``, ``954-968``, ``969-983``, ``984-986``), so
a division of a folder tree is one array task per chunk without typing every range.

Differences, on purpose: values become argv items (never pasted into a shell), and a tag set
by one run's ``RUNX.TAG`` does not leak into the following runs as it does in runx.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from utils.errors import UserError

RESOURCE_KEYS = {"SUBMIT_JOB.NODES": "nodes", "SUBMIT_JOB.PARTITION": "partition"}
_ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class ExperimentError(UserError, ValueError):
    """The experiment YAML cannot be expanded; the message names the key and the fix."""


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,+=@%:-]{0,199}$")


def check_name(what: str, value: str, fix: str) -> str:
    """``value`` if it is safe as one path component and in a ``#SBATCH --job-name`` line.

    Names become directories under LOGROOT and Slurm job names: a newline would start a new
    script line (injection; sbatch also stops reading directives there), ``/`` or ``..``
    would put a run outside LOGROOT, a space or a leading ``-`` would split or become an option.
    """
    if not _NAME.match(value) or value in (".", ".."):
        raise ExperimentError(f"{what} {value!r} is not a safe name: use letters, digits and _ . , + = @ % : - "
                              f"(not first), at most 200 characters; {fix}")
    return value


@dataclass(frozen=True)
class Run:
    """One run of an experiment: where it writes and exactly what it executes."""

    exp_name: str
    name: str
    logdir: str
    job_name: str
    hparams: dict[str, Any]
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The run as one copy-pasteable shell line (every value quoted)."""
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*env, shlex.join(self.argv)])


def date_suffix(now: datetime) -> str:
    return now.strftime("_%Y.%m.%d_%H.%M")


def hparam_sets(hparams: Any) -> list[dict[str, Any]]:
    """runx's list inheritance: every set is the first set updated with its own keys."""
    if isinstance(hparams, Mapping):
        return [dict(hparams)]
    if isinstance(hparams, Sequence) and not isinstance(hparams, str) and hparams:
        if not all(isinstance(h, Mapping) for h in hparams):
            raise ExperimentError("HPARAMS as a list must hold only dicts (one per run group)")
        first = dict(hparams[0])
        return [{**first, **h} for h in hparams]
    raise ExperimentError(
        f"HPARAMS must be a dict or a non-empty list of dicts, got {type(hparams).__name__}")


def cross_product(hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All combinations of list-valued hyperparameters, in runx's order."""
    keys = list(hparams)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in hparams.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


CHUNK_KEY = "subdirs_chunk"


def subdir_chunks(spec: str, size: int) -> list[str]:
    """``"939-986"``, 15 -> ``["939-953", "954-968", "969-983", "984-986"]`` (names count as one each)."""
    items: list[int | str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m and int(m.group(1)) > int(m.group(2)):
            raise ExperimentError(f"subdirs range {part!r} is empty: write it low-high")
        items += list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else [int(part) if part.isdigit() else part]
    if not items:
        raise ExperimentError(f"subdirs {spec!r} selects nothing to split by {CHUNK_KEY}")
    return [_compress(items[i:i + size]) for i in range(0, len(items), size)]


def _compress(items: Sequence[int | str]) -> str:
    """Consecutive numbers back into ``lo-hi`` ranges: ``[1, 2, 3, 7, "x"]`` -> ``"1-3,7,x"``."""
    out: list[str] = []
    run: list[int] = []
    for item in [*items, None]:
        if isinstance(item, int) and run and item == run[-1] + 1:
            run.append(item)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [item] if isinstance(item, int) else []
        if isinstance(item, str):
            out.append(item)
    return ",".join(out)


def chunk_runs(hparams: dict[str, Any]) -> list[dict[str, Any]]:
    """One hparam set per chunk when ``subdirs_chunk`` is given (the key itself is not a flag)."""
    if CHUNK_KEY not in hparams:
        return [hparams]
    size, spec = hparams.pop(CHUNK_KEY), hparams.get("subdirs")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ExperimentError(f"{CHUNK_KEY} must be a positive integer (subdirectories per run), got {size!r}")
    if not isinstance(spec, (str, int)) or spec in ("", "None"):
        raise ExperimentError(f"{CHUNK_KEY} needs a subdirs range to split, e.g. subdirs: 939-986")
    return [{**hparams, "subdirs": chunk} for chunk in subdir_chunks(str(spec), size)]


def substitute_tag(tag: str, hparams: Mapping[str, Any]) -> str:
    for key, value in hparams.items():
        tag = tag.replace("{" + str(key) + "}", str(value))
    return tag


def replace_logdir(values: Mapping[str, Any], logdir: str) -> dict[str, Any]:
    return {k: v.replace("LOGDIR", logdir) if isinstance(v, str) else v for k, v in values.items()}


def hparam_flags(hparams: Mapping[str, Any]) -> list[str]:
    """runx's flag rules; every value stays one argv item."""
    flags: list[str] = []
    for key, value in hparams.items():
        if isinstance(value, bool):
            flags += [f"--{key}"] if value else []
        elif value != "None":
            flags += [f"--{key}", str(value)]
    return flags


def split_cmd(cmd: str) -> tuple[dict[str, str], list[str]]:
    """``CMD`` as written in the YAML: leading ``NAME=value`` words become environment."""
    try:
        words = shlex.split(cmd)
    except ValueError as e:
        raise ExperimentError(f"CMD {cmd!r} is not a valid shell word list: {e}") from e
    env: dict[str, str] = {}
    while words and _ENV_ASSIGN.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if not words:
        raise ExperimentError(f"CMD {cmd!r} has no program to run")
    return env, words


def run_name(tag: str | None, slug: str, now: datetime, no_cooldir: bool) -> str:
    tagname = f"{tag}_" if tag else ""
    return tagname if no_cooldir else tagname + slug + date_suffix(now)


def expand_experiment(
    experiment: Mapping[str, Any],
    *,
    exp_name: str,
    logroot: str,
    tag: str | None = None,
    no_cooldir: bool = False,
    slug: Callable[[], str] | None = None,
    now: datetime | None = None,
) -> list[Run]:
    """Expand ``experiment`` (the parsed YAML: ``CMD``, ``HPARAMS``) into runs, in runx's order.

    ``slug`` returns the random part of a run name (default: two coolname words) and ``now``
    fixes the date, so that the expansion is reproducible in tests.
    """
    if "CMD" not in experiment or "HPARAMS" not in experiment:
        missing = [k for k in ("CMD", "HPARAMS") if k not in experiment]
        raise ExperimentError(f"experiment is missing {missing} (runx needs CMD and HPARAMS)")
    slug = slug or _coolname_slug
    now = now or datetime.now()
    check_name("experiment name", exp_name, "pass another --exp_name or rename the YAML file")
    if tag is not None:
        check_name("--tag", tag, "pass another --tag")
    env, cmd = split_cmd(str(experiment["CMD"]))
    runs: list[Run] = []
    for hset in hparam_sets(experiment["HPARAMS"]):
        for hparams in (c for h in cross_product(hset) for c in chunk_runs(h)):
            if hparams.get("RUNX.SKIP"):
                continue
            run_tag = tag
            if "RUNX.TAG" in hparams:
                run_tag = substitute_tag(str(hparams.pop("RUNX.TAG")), hparams)
            name = check_name("run name", run_name(run_tag, slug(), now, no_cooldir),
                              "change RUNX.TAG (its {field} values) or --tag")
            logdir = os.path.join(logroot, exp_name, name)
            hparams = replace_logdir(hparams, logdir)
            resources = {res: hparams.pop(key) for key, res in RESOURCE_KEYS.items() if key in hparams}
            runs.append(Run(exp_name=exp_name, name=name, logdir=logdir,
                            job_name=f"{exp_name}_{name}", hparams=hparams,
                            argv=tuple(cmd + hparam_flags(hparams)), env=dict(env),
                            resources=resources))
    return runs


def check_unique(runs: Sequence[Run]) -> None:
    """Two runs writing into one directory would overwrite each other's checkpoints."""
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        if run.logdir in seen:
            raise ExperimentError(
                f"runs {seen[run.logdir]} and {i} share the directory {run.logdir}: give RUNX.TAG a "
                "{field} that differs between them, or drop --no_cooldir")
        seen[run.logdir] = i


def _coolname_slug() -> str:
    from coolname import generate_slug

    return generate_slug(2)
