"""The CPU threads a process may use: affinity, cgroup quota, Slurm's allocation, local processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.threads import allotted_cpus, configure_threads

REPO = Path(__file__).resolve().parent.parent


def _cgroup(tmp_path: Path, cpu_max: str | None) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    if cpu_max is not None:
        (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def test_cgroup_quota_and_slurm_allocation_limit_the_threads(tmp_path):
    many = os.cpu_count() or 1
    assert allotted_cpus({}, _cgroup(tmp_path, "max 100000")).threads == min(many, len(os.sched_getaffinity(0)))
    one = allotted_cpus({}, _cgroup(tmp_path / "q", "150000 100000"))  # 1.5 CPUs: one thread, no spin-wait
    assert one.threads == 1 and "cgroup CPU quota" in one.source
    slurm = allotted_cpus({"SLURM_CPUS_PER_TASK": "1"}, _cgroup(tmp_path / "s", None))
    assert slurm.threads == 1 and "SLURM_CPUS_PER_TASK" in slurm.source


def test_cgroup_v1_quota(tmp_path):
    root = _cgroup(tmp_path, None)
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert allotted_cpus({}, root).threads == 1
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert allotted_cpus({}, root).source != "cgroup CPU quota: 1"


def test_local_processes_share_the_cpus(tmp_path):
    """torchrun's processes share the node's CPUs; a Slurm task's SLURM_CPUS_PER_TASK is its own already."""
    cg = _cgroup(tmp_path, "800000 100000")  # 8 CPUs for the job
    plan = allotted_cpus({"LOCAL_WORLD_SIZE": "4"}, cg)
    expect = max(1, min(8, len(os.sched_getaffinity(0)), os.cpu_count() or 1) // 4)
    assert plan.threads == expect
    if min(len(os.sched_getaffinity(0)), os.cpu_count() or 1) >= 8:
        assert "shared by 4 local processes" in plan.source
    slurm = allotted_cpus({"SLURM_CPUS_PER_TASK": "1", "LOCAL_WORLD_SIZE": "4"}, cg)
    assert slurm.threads == 1 and "shared" not in slurm.source


@pytest.mark.parametrize("junk", ["", "0", "-3", "two"])
def test_malformed_slurm_values_are_ignored(tmp_path, junk):
    assert "SLURM" not in allotted_cpus({"SLURM_CPUS_PER_TASK": junk}, _cgroup(tmp_path, None)).source


def test_affinity_mask_sets_torchs_threads_in_a_fresh_process():
    """A process pinned to one CPU (taskset, Slurm's --cpu-bind) gets one torch thread, whatever the machine has."""
    code = ("import json, os, torch; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from utils.threads import configure_threads; p = configure_threads(environ={}); "
            "print(json.dumps([p.threads, p.source, torch.get_num_threads()]))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK",
                                                            "LOCAL_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    threads, source, torch_threads = json.loads(out)
    assert threads == 1 == torch_threads
    assert source.startswith(("CPU affinity", "os.cpu_count", "cgroup"))


def test_omp_num_threads_and_an_explicit_count_win():
    import torch

    before = torch.get_num_threads()
    try:
        assert configure_threads(1, environ={"SLURM_CPUS_PER_TASK": "4"}).source == "asked for"
        assert torch.get_num_threads() == 1
        plan = configure_threads(environ={"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "1"})
        assert plan.source == "OMP_NUM_THREADS"
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # a train.py subprocess
def test_train_py_uses_the_allotted_cpus_and_says_so(tmp_path, synthetic_root):
    """PyTorch sized its pool by the machine: under a 1-CPU allotment OpenMP spin-waiting made a 4-minute demo
    take 43 minutes. train.py now sets torch's threads to the allotment and names it in its start line."""
    from tests.test_train_helpers import run_train, tiny_args

    env = {"SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": ""}
    done = run_train(tiny_args(synthetic_root, tmp_path / "run", "--max_iter", "1", "--val_freq", "100"), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 CPU thread (SLURM_CPUS_PER_TASK: 1)" in done.stdout + done.stderr
