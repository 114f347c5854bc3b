"""Slurm resources and container settings of a farm, validated in one place.

A farm's ``RESOURCES`` (in ``.runx``), the experiment's ``RESOURCES`` and per-run overrides
(``SUBMIT_JOB.NODES``/``SUBMIT_JOB.PARTITION``) are merged in that order into one
:class:`FarmSpec`. Unknown keys are errors that list every valid key. Values end up in
``#SBATCH`` lines, so control characters (a newline would start a new script line) are refused.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from utils.errors import UserError

_FLAG_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_TIME = re.compile(r"^(\d+-)?\d+(:\d\d){0,2}$")
CONTAINER_RUNTIMES = ("apptainer", "singularity")


class ResourceError(UserError, ValueError):
    """A resource key or value is not usable; the message lists the valid choices."""


@dataclass(frozen=True)
class FarmSpec:
    """Everything that decides how a run is placed on Slurm and wrapped in a container."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # default: gpus_per_node (one task per GPU), at least 1
    cpus_per_task: int | None = None
    mem: str | None = None  # Slurm syntax: "32G", "0" = whole node
    time: str = "60"  # minutes, or [D-]HH:MM[:SS]
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    mail_type: str | None = None
    mail_user: str | None = None
    dependency: str | None = None
    array_parallelism: int = 256
    sbatch_extra: tuple[str, ...] = ()  # extra "#SBATCH" arguments: "--reservation=x"
    signal_delay_s: int = 120
    max_requeue: int = 3
    image: str | None = None
    container_runtime: str = "apptainer"
    container_nv: bool = True
    binds: tuple[str, ...] = ()

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return max(1, self.gpus_per_node)


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(FarmSpec)]


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    return tuple(str(v) for v in value)


# values written into "#SBATCH --key=value" lines: a space would end the value there
_DIRECTIVE_KEYS = ("partition", "mem", "time", "account", "qos", "constraint", "mail_type", "mail_user",
                   "dependency")


def _check_text(key: str, value: Any) -> None:
    texts = value if isinstance(value, tuple) else (value,)
    for text in texts:
        if isinstance(text, str) and any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ResourceError(f"resource {key}={text!r} contains a control character")
        if key in _DIRECTIVE_KEYS and isinstance(text, str) and (not text.strip() or any(c.isspace() for c in text)):
            raise ResourceError(f"resource {key}={text!r} must be one word (it becomes an #SBATCH line)")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Turn a YAML value into the field's type (YAML gives ints, strings, lists)."""
    if value is None and default is None:
        return None
    if isinstance(default, tuple):
        return _as_tuple(value)
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ResourceError(f"resource {key} must be true or false, got {value!r}")
        return value
    if key in ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "array_parallelism",
               "signal_delay_s", "max_requeue"):
        try:
            return int(value)
        except (TypeError, ValueError) as e:
            raise ResourceError(f"resource {key} must be an integer, got {value!r}") from e
    return None if value is None else str(value)


def farm_spec(*layers: Mapping[str, Any]) -> FarmSpec:
    """Merge resource dicts (later wins) into a validated :class:`FarmSpec`."""
    defaults = {f.name: f.default for f in dataclasses.fields(FarmSpec)}
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in defaults:
                raise ResourceError(
                    f"unknown resource {key!r}; valid resources: {', '.join(valid_keys())}")
            values[key] = _coerce(key, value, defaults[key])
            _check_text(key, values[key])
    spec = FarmSpec(**values)
    validate(spec)
    return spec


def validate(spec: FarmSpec) -> None:
    if spec.nodes < 1 or spec.ntasks_per_node < 1 or spec.gpus_per_node < 0:
        raise ResourceError(f"need nodes >= 1, tasks_per_node >= 1, gpus_per_node >= 0: {spec}")
    if not _TIME.match(spec.time):
        raise ResourceError(f"time {spec.time!r}: use minutes (240) or [D-]HH:MM[:SS]")
    if spec.container_runtime not in CONTAINER_RUNTIMES:
        raise ResourceError(
            f"container_runtime {spec.container_runtime!r}: use one of {CONTAINER_RUNTIMES}")
    if spec.max_requeue < 0 or spec.signal_delay_s < 0 or spec.array_parallelism < 1:
        raise ResourceError("max_requeue and signal_delay_s must be >= 0, array_parallelism >= 1")
    for arg in spec.sbatch_extra:
        _, value = parse_sbatch_arg(arg)
        if isinstance(value, str) and (not value or any(c.isspace() for c in value)):
            raise ResourceError(f"sbatch_extra item {arg!r}: the value must be one word (it becomes an #SBATCH line)")


def parse_sbatch_arg(arg: str) -> tuple[str, str | bool]:
    """``--name=value`` / ``--name value`` / ``--flag`` -> (name, value or True)."""
    text = arg.strip()
    if not text.startswith("--"):
        raise ResourceError(f"sbatch_extra item {arg!r} must be a long option such as --reservation=x")
    name, sep, value = text[2:].replace(" ", "=", 1).partition("=")
    if not _FLAG_NAME.match(name):
        raise ResourceError(f"sbatch_extra item {arg!r}: bad option name {name!r}")
    return name, (value if sep else True)


def submitit_parameters(spec: FarmSpec, *, job_name: str, preempt_signal: str) -> dict[str, Any]:
    """The spec as ``submitit.SlurmExecutor.update_parameters`` keywords."""
    from .expand import check_name

    params: dict[str, Any] = {
        "job_name": check_name("Slurm job name", job_name, "pass another --exp_name"), "nodes": spec.nodes,
        "ntasks_per_node": spec.ntasks_per_node,
        "time": int(spec.time) if spec.time.isdigit() else spec.time,
        "array_parallelism": spec.array_parallelism, "signal_delay_s": spec.signal_delay_s,
        "stderr_to_stdout": True,
        # one task failing (e.g. rank 0 on a full disk) ends its siblings at once instead of
        # leaving them in a collective until the NCCL/gloo timeout
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    if spec.gpus_per_node:
        params["gpus_per_node"] = spec.gpus_per_node
    optional = {"partition": spec.partition, "cpus_per_task": spec.cpus_per_task, "mem": spec.mem,
                "account": spec.account, "qos": spec.qos, "constraint": spec.constraint,
                "mail_type": spec.mail_type, "mail_user": spec.mail_user,
                "dependency": spec.dependency}
    params.update({k: v for k, v in optional.items() if v is not None})
    if spec.exclusive:
        params["exclusive"] = True
    extra: dict[str, Any] = {"requeue": True, "signal": f"{preempt_signal}@{spec.signal_delay_s}"}
    extra.update(dict(parse_sbatch_arg(a) for a in spec.sbatch_extra))
    params["additional_parameters"] = extra
    return params


