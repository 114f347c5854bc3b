"""``key=value`` overrides and ``key=a,b`` sweeps after the experiment YAML (Hydra's habit).

    python -m sbatch scripts/demo.yml lr=0.01 bs_trn=2,4 'RUNX.TAG=lr{lr}_bs{bs_trn}'

Each override sets ``key`` in every ``HPARAMS`` set (replacing the YAML's value, keeping its
position in the sweep order; new keys go last). A value with commas is a sweep, crossed like a
YAML list, except for train.py's list-valued flags (``crop_size=96,192``, ``n_scales=0.5,1.0``),
whose commas belong to the value: sweep those in the YAML. Values are read as YAML scalars, as
the YAML's own values are (``true`` is a switch, ``None`` drops the flag). The values end up in
each run's ``hparams.json`` like the YAML's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import yaml

from .expand import ExperimentError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class OverrideError(ExperimentError):
    """An override is not ``key=value``; the message shows the expected form."""


def list_valued_flags() -> set[str]:
    """train.py's flags whose value is a comma list (their commas never mean a sweep)."""
    import dataclasses
    import typing

    import config

    out = set()
    for cls in config.SECTIONS.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp, _ = config._unwrap_optional(hints[f.name])
            if typing.get_origin(tp) is tuple:
                out.add(f.name)
    return out


def _scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def parse_override(item: str, list_flags: set[str]) -> tuple[str, Any]:
    """``lr=0.01`` -> ('lr', 0.01); ``lr=0.01,0.02`` -> ('lr', [0.01, 0.02])."""
    key, sep, text = item.partition("=")
    if not sep or not _KEY.match(key):
        raise OverrideError(f"override {item!r}: expected key=value (e.g. lr=0.01) or key=a,b for a sweep")
    if "," in text and key not in list_flags:
        values = [_scalar(v) for v in text.split(",")]
        if any(v == "" for v in values):
            raise OverrideError(f"override {item!r}: empty value in the sweep")
        return key, values
    return key, _scalar(text)


def apply_overrides(experiment: dict[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """A copy of ``experiment`` with the overrides set in every HPARAMS set."""
    if not items:
        return experiment
    pairs = [parse_override(i, list_valued_flags()) for i in items]
    exp = copy.deepcopy(experiment)
    hp = exp.get("HPARAMS")
    sets: list[Any] = hp if isinstance(hp, list) else [hp]
    if not sets or not all(isinstance(s, dict) for s in sets):
        raise OverrideError("overrides need HPARAMS as a dict or a list of dicts")
    for s in sets:
        for key, value in pairs:
            s[key] = value
    return exp
