"""How many CPU threads this process may really use, and torch's thread count set to it.

PyTorch sizes its OpenMP pool by the machine's cores, not by what the process is allotted. Under
a CPU affinity mask (``taskset``, Slurm's ``--cpu-bind``), a cgroup CPU quota (containers,
Slurm's cgroup plugin) or a Slurm allocation of ``--cpus-per-task``, that oversubscribes the CPUs,
and OpenMP's spin-waiting then makes every thread wait for the slowest: a 4-minute demo took
43 minutes on a shared 2-core machine (load average 10-18). The rule here: the fewest CPUs any
of these sources grants, divided among the processes of this node's job (``LOCAL_WORLD_SIZE``),
at least 1 (a Slurm task's ``SLURM_CPUS_PER_TASK`` is per process already and is not divided).
``OMP_NUM_THREADS``, when set, is the user's word and wins (torch reads it itself).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for this process and why: ``source`` names the limit that decided."""

    threads: int
    source: str

    def describe(self) -> str:
        return f"{self.threads} CPU thread{'s' if self.threads != 1 else ''} ({self.source})"


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def _cgroup_quota(root: Path) -> float | None:
    """CPUs granted by the cgroup CPU quota (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _positive_int(environ: Mapping[str, str], name: str) -> int | None:
    try:
        value = int(environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def allotted_cpus(environ: Mapping[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT) -> ThreadPlan:
    """The CPUs this process's job may use on this node: the smallest of affinity, cgroup quota and
    ``SLURM_CPUS_PER_TASK``, shared among ``LOCAL_WORLD_SIZE`` processes."""
    environ = os.environ if environ is None else environ
    limits: dict[str, float] = {"os.cpu_count": float(os.cpu_count() or 1)}
    for source, value in (("CPU affinity", _affinity()), ("cgroup CPU quota", _cgroup_quota(cgroup_root)),
                          ("SLURM_CPUS_PER_TASK", _positive_int(environ, "SLURM_CPUS_PER_TASK"))):
        if value is not None:
            limits[source] = float(value)
    source = min(limits, key=lambda k: limits[k])
    cpus = max(1, int(limits[source]))  # a quota of 1.5 CPUs: 1 thread that does not wait on a second
    # Slurm's tasks (one process each, as `python -m sbatch` starts them) are allotted per task already;
    # torchrun's processes share the node's allotment
    per_task = source == "SLURM_CPUS_PER_TASK" or "SLURM_CPUS_PER_TASK" in limits
    local = 1 if per_task else (_positive_int(environ, "LOCAL_WORLD_SIZE") or 1)
    if local > 1:
        return ThreadPlan(max(1, cpus // local), f"{source}: {cpus}, shared by {local} local processes")
    return ThreadPlan(cpus, f"{source}: {cpus}")


def configure_threads(requested: int | None = None, environ: Mapping[str, str] | None = None,
                      cgroup_root: Path = CGROUP_ROOT) -> ThreadPlan:
    """Set torch's intra-op threads: ``requested`` if given, else ``OMP_NUM_THREADS`` if set, else
    :func:`allotted_cpus`. Returns what was chosen, for the run's log."""
    environ = os.environ if environ is None else environ
    if requested is not None and requested > 0:
        plan = ThreadPlan(requested, "asked for")
    elif _positive_int(environ, "OMP_NUM_THREADS"):
        plan = ThreadPlan(torch.get_num_threads(), "OMP_NUM_THREADS")
    else:
        plan = allotted_cpus(environ, cgroup_root)
    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    return plan
