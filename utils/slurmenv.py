"""Slurm's job environment, read in one place: node lists, torch.distributed's variables, arrays.

Used by the job-side task (:mod:`sbatch.task`), by ``utils/dist.py`` (a program started by
``srun`` directly) and by ``predict.py`` (array tasks as data shards). Standard library only:
the launcher pickles this module by value into every job, so it must import without torch and
without this repository on the job's ``sys.path``.

The node-list grammar is Slurm's hostlist syntax, as ``scontrol show hostnames`` expands it:
comma-separated items; each item is text with any number of ``[...]`` groups, each group a comma
list of numbers or ``lo-hi`` ranges, zero padding kept from ``lo``; several groups multiply
(``rack[1-2]-node[01-02]`` is four hosts, the first group varying slowest); an item with
brackets ends with ``]`` (Slurm refuses ``x[1-2]y``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass

SWEEP_RUN_ENV = "HMSA_SWEEP_RUN"  # set by `python -m sbatch` tasks: the array index is a run, not a shard
MASTER_PORT_BASE = 20000
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_COUNTS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


class SlurmEnvError(ValueError):
    """A Slurm variable does not have the form Slurm documents; the message names it."""


# ---------------------------------------------------------------- node lists


def expand_hostlist(nodelist: str) -> list[str]:
    """``gpu[01-02,7],rack[1-2]-n[1-2]`` -> every host name, in Slurm's order."""
    hosts: list[str] = []
    for item in _split_top(nodelist.strip()):
        hosts += _expand_item(item, nodelist)
    return hosts


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets (``a[1,3],b`` -> ``a[1,3]``, ``b``)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += (ch == "[") - (ch == "]")
        if depth not in (0, 1):
            raise SlurmEnvError(f"node list {text!r}: unbalanced or nested brackets")
        if ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise SlurmEnvError(f"node list {text!r}: unbalanced '['")
    return [item for item in items if item]


def _expand_item(item: str, whole: str) -> list[str]:
    parts = re.split(r"\[([^\]]*)\]", item)  # text, group, text, group, ..., text
    if "]" in "".join(parts[0::2]):
        raise SlurmEnvError(f"node list {whole!r}: unbalanced ']'")
    if len(parts) > 1 and parts[-1]:  # as Slurm: "Invalid hostlist: x[9-10]y"
        raise SlurmEnvError(f"node list {whole!r}: text after the last ']' of {item!r}")
    choices = [[text] if i % 2 == 0 else _expand_ranges(text, whole) for i, text in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def _expand_ranges(group: str, whole: str) -> list[str]:
    out: list[str] = []
    for part in group.split(","):
        m = _RANGE.match(part)
        if not m:
            raise SlurmEnvError(f"node list {whole!r}: {part!r} is not a number or a lo-hi range")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise SlurmEnvError(f"node list {whole!r}: range {part!r} runs backwards")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    return out


def expand_counts(text: str) -> list[int]:
    """``SLURM_TASKS_PER_NODE`` style ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in filter(None, text.split(",")):
        m = _COUNTS.match(part.strip())
        if not m:
            raise SlurmEnvError(f"task counts {text!r}: {part!r} is not N or N(xK)")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


# ---------------------------------------------------------------- torch.distributed


def job_nodes(env: Mapping[str, str]) -> list[str]:
    """The hosts of this step (``srun``), else of the job; rank 0 runs on the first."""
    for key in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(key):
            return expand_hostlist(env[key])
    return []


def master_port(env: Mapping[str, str]) -> int:
    """Equal on every task of a job, different between jobs (each array task is its own job)."""
    return MASTER_PORT_BASE + int(env.get("SLURM_JOB_ID") or 0) % 20000


def local_world_size(env: Mapping[str, str]) -> int:
    """Tasks on this task's node (nodes may hold different counts: ``2(x2),1``)."""
    for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        if env.get(key):
            counts = expand_counts(env[key])
            node = int(env.get("SLURM_NODEID") or 0)
            return counts[node] if node < len(counts) else counts[-1]
    return 1


def distributed_env(env: Mapping[str, str], *, slurm_wins: bool = False) -> dict[str, str]:
    """torch.distributed's ``env://`` variables for this Slurm task (empty outside a task).

    ``slurm_wins=False`` (a program under ``srun``): nothing for a one-task job; a
    ``RANK``/``WORLD_SIZE`` pair already set (torchrun inside the allocation) and
    ``MASTER_ADDR``/``MASTER_PORT`` are kept.
    ``slurm_wins=True`` (the launcher's task): Slurm's step is the authority; values inherited
    from the submitting shell (sbatch exports its environment) are overwritten.
    """
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or 1)
    if "SLURM_PROCID" not in env:
        return {}
    if not slurm_wins and (ntasks <= 1 or ("RANK" in env and "WORLD_SIZE" in env)):
        return {}
    nodes = job_nodes(env)
    out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(ntasks),
           "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "LOCAL_WORLD_SIZE": str(local_world_size(env)),
           "MASTER_ADDR": nodes[0] if nodes else "localhost", "MASTER_PORT": str(master_port(env))}
    if not slurm_wins:
        out = {k: v for k, v in out.items() if k not in ("MASTER_ADDR", "MASTER_PORT") or k not in env}
    return out


# ---------------------------------------------------------------- job ids and arrays


def job_id(env: Mapping[str, str]) -> str:
    """``ARRAY_TASK`` for an array task (what ``scontrol``/``sacct`` accept), else the job id."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


def sweep_run(env: Mapping[str, str]) -> str | None:
    """The sweep run this task executes when ``python -m sbatch`` started it (its array index
    then picks a run of the sweep, not a shard of the data)."""
    return env.get(SWEEP_RUN_ENV) or None


@dataclass(frozen=True)
class ArrayTask:
    """This task's place in its array: ``index`` in ``0..count-1``."""

    index: int
    count: int


def array_task(env: Mapping[str, str]) -> ArrayTask | None:
    """``--array=MIN-MAX[:STEP]`` task ``k`` -> index ``(k - MIN) / STEP`` of the task count.

    None outside an array. Raises :class:`SlurmEnvError` when the array is not one evenly
    stepped range (``--array=1,5,7``), so task ids cannot be numbered 0..count-1.
    """
    if not env.get("SLURM_ARRAY_TASK_ID"):
        return None
    task = int(env["SLURM_ARRAY_TASK_ID"])
    lo = int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
    step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
    if env.get("SLURM_ARRAY_TASK_COUNT"):
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
    else:
        count = (int(env.get("SLURM_ARRAY_TASK_MAX") or task) - lo) // step + 1
    index, rest = divmod(task - lo, step)
    if rest or not 0 <= index < count:
        raise SlurmEnvError(f"Slurm array task {task} (min {lo}, step {step}, count {count}) "
                            "is not on one evenly stepped range")
    return ArrayTask(index, count)
