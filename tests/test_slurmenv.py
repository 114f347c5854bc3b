"""utils/slurmenv.py: node lists as Slurm expands them, Slurm -> torch.distributed, array tasks.

The node-list cases are compared with Slurm's own ``scontrol show hostnames`` (a client-side
expansion: it reads a slurm.conf but talks to no daemon, so a minimal one in tmp_path is enough).
The same comparison on the two-host cluster's real node names is in tests/test_multinode.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.slurm_fixtures import PATH, REPO
from utils import slurmenv
from utils.slurmenv import SlurmEnvError, array_task, distributed_env, expand_hostlist, job_id

# (node list, hosts): real-world shapes (racks x nodes, zero padding that widens, lists inside
# and outside brackets, several bracket groups, a range crossing a power of ten)
CASES = [
    ("node1", ["node1"]),
    ("gpu[01-03,7],login1", ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]),
    ("a[1-2],b3,c[09-10]", ["a1", "a2", "b3", "c09", "c10"]),
    ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[008-011]", ["n008", "n009", "n010", "n011"]),
    ("n[1-02]", ["n1", "n2"]),
    ("n[1-3,5-6]", ["n1", "n2", "n3", "n5", "n6"]),
    ("node[1-2],node[3]", ["node1", "node2", "node3"]),
    ("n[1-2][3-4]", ["n13", "n14", "n23", "n24"]),
    ("cn[0-1]-gpu[1-2]", ["cn0-gpu1", "cn0-gpu2", "cn1-gpu1", "cn1-gpu2"]),
    ("dgx-a100-[001-002],dgx-h100-[1,3]", ["dgx-a100-001", "dgx-a100-002", "dgx-h100-1", "dgx-h100-3"]),
    ("n1,,n2,", ["n1", "n2"]),
]
INVALID = ["x[9-10]y", "n[]", "n[1-2]]", "n[10-8]", "n[a-b]", "n[1-2", "n[[1]]"]


@pytest.mark.parametrize("nodelist, hosts", CASES)
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", INVALID)
def test_expand_hostlist_refuses_what_slurm_refuses(nodelist):
    with pytest.raises(SlurmEnvError, match="node list"):
        expand_hostlist(nodelist)


def scontrol_hostnames(nodelist: str, env: dict[str, str]) -> list[str] | None:
    """Slurm's expansion, or None where Slurm calls the list invalid."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], env=env, capture_output=True,
                         text=True, timeout=30)
    text = out.stdout + out.stderr
    return None if out.returncode or "Invalid hostlist" in text else out.stdout.split()


def test_expansion_equals_scontrol_show_hostnames(tmp_path):
    if shutil.which("scontrol", path=PATH) is None:
        pytest.skip("scontrol not installed: run bash .ci/install.sh --slurm")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=localhost CPUs=1\n"
                    "PartitionName=d Nodes=localhost\n")
    env = {**os.environ, "PATH": PATH, "SLURM_CONF": str(conf)}
    for nodelist, _ in CASES:
        assert expand_hostlist(nodelist) == scontrol_hostnames(nodelist, env), nodelist
    for nodelist in INVALID[:5]:  # the last two: scontrol prints a guess instead of refusing
        assert scontrol_hostnames(nodelist, env) is None, nodelist


def test_distributed_env_from_a_slurm_step():
    env = {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_NODEID": "1",
           "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_JOB_NODELIST": "rack[1-2]-node[01-02]",
           "SLURM_STEP_NODELIST": "rack1-node[02],rack2-node01", "SLURM_JOB_ID": "4242"}
    assert distributed_env(env) == {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16",
                                    "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "rack1-node02",
                                    "MASTER_PORT": str(20000 + 4242)}
    # uneven nodes: SLURM_TASKS_PER_NODE=2(x2),1 -> the third node runs one task
    assert distributed_env({**env, "SLURM_NODEID": "2", "SLURM_TASKS_PER_NODE": "2(x2),1"})[
        "LOCAL_WORLD_SIZE"] == "1"
    assert distributed_env({}) == {}


def test_torchrun_wins_under_srun_but_not_in_the_launchers_task():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "7",
           "RANK": "5", "WORLD_SIZE": "8", "MASTER_ADDR": "elsewhere"}
    assert distributed_env(env) == {}  # torchrun inside the allocation set them
    srun_only = distributed_env({k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE")})
    assert srun_only["RANK"] == "1" and "MASTER_ADDR" not in srun_only  # a user's MASTER_ADDR is kept
    # the launcher's task: values exported from the submitting shell are not this job's
    got = distributed_env(env, slurm_wins=True)
    assert (got["RANK"], got["WORLD_SIZE"], got["MASTER_ADDR"]) == ("1", "2", "n1")
    assert distributed_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == {}  # one task: no DDP
    assert distributed_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "RANK": "3"},
                           slurm_wins=True)["RANK"] == "0"


def test_array_tasks_get_distinct_rendezvous_ports_and_ids():
    tasks = [{"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": str(j), "SLURM_ARRAY_JOB_ID": "123",
              "SLURM_ARRAY_TASK_ID": str(j - 124)} for j in (124, 125)]
    assert len({distributed_env(t)["MASTER_PORT"] for t in tasks}) == 2
    assert [job_id(t) for t in tasks] == ["123_0", "123_1"]
    assert job_id({"SLURM_JOB_ID": "9"}) == "9"


def test_array_task_index_and_count():
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2",
           "SLURM_ARRAY_TASK_COUNT": "5"}
    assert array_task(env) == slurmenv.ArrayTask(3, 5)
    assert array_task({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MAX": "9"}) == slurmenv.ArrayTask(4, 10)
    assert array_task({}) is None
    with pytest.raises(SlurmEnvError, match="evenly stepped"):  # --array=1,5,7
        array_task({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3",
                    "SLURM_ARRAY_TASK_STEP": "1"})
    assert slurmenv.sweep_run({slurmenv.SWEEP_RUN_ENV: "run_a"}) == "run_a"
    assert slurmenv.sweep_run({}) is None


def test_imports_without_torch_and_travels_by_value(tmp_path):
    """The job unpickles the task with neither torch nor this checkout importable."""
    pickled = tmp_path / "fn.pkl"
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""\
        import sys; sys.modules["torch"] = None  # any torch import fails
        import cloudpickle
        from sbatch import task
        from utils import slurmenv
        for m in (slurmenv, task):
            cloudpickle.register_pickle_by_value(m)
        open({str(pickled)!r}, "wb").write(cloudpickle.dumps(slurmenv.distributed_env))
        """)], cwd=REPO, check=True, timeout=60)
    out = subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(f"""\
        import pickle, sys; sys.modules["torch"] = None
        fn = pickle.load(open({str(pickled)!r}, "rb"))
        assert "sbatch" not in sys.modules and "utils" not in sys.modules, "unpickling imported the checkout"
        print(fn({{"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "r[1-2]-n[1-2]"}})["MASTER_ADDR"])
        """)], cwd=Path(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "r1-n1"


def test_two_host_cluster_skips_with_the_reason(monkeypatch):
    """No root, or no iproute2: tests/test_multinode.py skips and says why (it never half-starts)."""
    from tests import slurm_fixtures

    monkeypatch.setattr(slurm_fixtures, "missing_binaries", lambda: [])
    monkeypatch.setattr(slurm_fixtures.os, "geteuid", lambda: 1000)
    assert "not root" in slurm_fixtures.multi_skip_reason()
    monkeypatch.setattr(slurm_fixtures.os, "geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr(slurm_fixtures.shutil, "which",
                        lambda b, path=None: None if b == "ip" else real_which(b, path=path))
    assert "needs ip" in slurm_fixtures.multi_skip_reason()
