"""Multi-node for real: a two-host Slurm cluster on this machine, everything through `python -m sbatch`.

The hosts are rack1-node01 and rack1-node02, each a slurmd in its own network namespace with its
own address and hostname (sbatch/local_cluster.sh with HMSA_SLURM_HOSTS=2). Submitted at once by
one module fixture, then each test waits for its own jobs:

- ``env``: a two-node job that records each rank's environment (test 4: the mapping against
  ``scontrol show hostnames``);
- ``sweep``: a two-run array, each run on both hosts (tests 1 and 3); its seed-0 run is the
  reference of the other two;
- ``one``: the same configuration as the seed-0 run on one host with two processes (test 1);
- ``badrank``: rank 1's command fails while rank 0 sleeps: the job must end FAILED at once on
  both hosts (``srun --kill-on-bad-exit``), not leave rank 0 waiting;
- ``lost``: the same configuration as the sweep's seed-0 run; once it has checkpointed,
  rack1-node02 "crashes" (its link cut, every process in it SIGKILLed); Slurm declares the host
  DOWN and requeues the job, the host comes back, the job resumes (test 2). It waits for the
  other jobs (a Slurm dependency), so the crash hits no other job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.slurm_fixtures import (
    REPO,
    SCRIPT,
    events,
    local_cluster,
    multi_slurm_cluster,
    network_leftovers,
    sacct_states,
    wait_terminal,
    wait_until,
)
from tests.test_slurm_integration import submit, yml
from utils.slurmenv import expand_hostlist

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(600)]
__all__ = ["multi_slurm_cluster"]  # the session fixture, re-exported for pytest

NODES = ["rack1-node01", "rack1-node02"]
TRAIN = ("OMP_NUM_THREADS=1 python train.py --dataset synthetic --arch ocrnet.HRNet_w18s --crop_size 64,64 "
         "--bs_trn 1 --bs_val 2 --num_workers 0 --device cpu --dump_num_images 0 --deterministic "
         "--class_uniform_pct 0")
# 8 training images, one per rank and step: 4 steps per epoch; a checkpoint after every step
HPARAMS = {"max_epoch": 2, "max_iter": 8, "ckpt_freq": 1, "val_freq": 100, "result_dir": "LOGDIR"}
BAD_RANK = """\
import os, sys, time
if os.environ["RANK"] == "1":
    time.sleep(2)
    sys.exit(3)  # a rank that dies on its own (out of memory, a bug) while its host lives
time.sleep(300)  # rank 0: in a collective that will never complete
"""
DUMP_ENV = """\
import json, os, socket, sys
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST", "SLURM_JOB_ID", "SLURM_PROCID")
env = {k: os.environ.get(k) for k in keys}
env["hostname"] = socket.gethostname()
os.makedirs(sys.argv[-1], exist_ok=True)
json.dump(env, open(os.path.join(sys.argv[-1], f"rank{env['RANK']}.json"), "w"))
"""


def write_config(tmp: Path) -> Path:
    cfg = tmp / "runx.yml"
    common = "time: 10, cpus_per_task: 1, mem: 1G, signal_delay_s: 30, max_requeue: 2"
    cfg.write_text(textwrap.dedent(f"""\
        LOGROOT: {tmp / 'logs'}
        CODE_IGNORE_PATTERNS: '.git,*.pyc,__pycache__,logs,data,*.pth,tests,docs,bench'
        FARM: two_nodes
        two_nodes:
          SUBMIT_CMD: 'unused submit_job'
          RESOURCES: {{nodes: 2, tasks_per_node: 1, {common}}}
        one_node:
          SUBMIT_CMD: 'unused submit_job'
          RESOURCES: {{nodes: 1, tasks_per_node: 2, {common}}}
        """))
    return cfg


def crash_and_revive(job_id: str, logdir: Path, env: dict, out: dict) -> None:
    """rack1-node02 dies once the run has checkpointed; it comes back once the job has left it."""
    try:
        wait_until((logdir / "last.pth").exists, 400, "the first checkpoint", poll=0.2)
        out["iteration_at_crash"] = torch.load(logdir / "last.pth", map_location="cpu", weights_only=True)["iteration"]
        out["state_at_crash"] = sacct_states([job_id], env)[job_id]
        t0 = time.monotonic()
        subprocess.run(["bash", str(SCRIPT), "node-down", env["HMSA_SLURM_DIR"], NODES[1]], env=env, check=True,
                       capture_output=True, timeout=60)
        wait_until(lambda: sacct_states([job_id], env)[job_id] != "RUNNING", 150, "the job to end", poll=1)
        out["job_end_s"] = time.monotonic() - t0
        out["state_after_crash"] = sacct_states([job_id], env)[job_id]
        wait_until(lambda: not train_processes(logdir), 60, "no rank left on rack1-node01", poll=1)
        out["ranks_gone_s"] = time.monotonic() - t0
        # NODE_FAIL, then (after KillWait) back in the queue: PENDING until enough hosts are up
        wait_until(lambda: sacct_states([job_id], env)[job_id] == "PENDING", 150, "the requeue", poll=1)
        out["requeued_s"] = time.monotonic() - t0
        out["node_state"] = node_states(env)[NODES[1]]
        subprocess.run(["bash", str(SCRIPT), "node-up", env["HMSA_SLURM_DIR"], NODES[1]], env=env, check=True,
                       capture_output=True, timeout=60)
    except Exception as e:  # reported by the test
        out["crash_error"] = repr(e)


def train_processes(logdir: Path, program: str = "train.py") -> list[int]:
    """PIDs of this run's program (on any host: the namespaces share /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if program.encode() in b" ".join(cmd) and str(logdir).encode() in cmd:
            pids.append(int(proc.name))
    return pids


def node_states(env: dict) -> dict[str, str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True, text=True, timeout=30)
    return dict(line.split() for line in out.stdout.splitlines())


def sbatch_status(cfg: Path, exp: str, env: dict) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "sbatch", "status", exp, "-c", str(cfg)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and lines[0].split()[:5] == ["RUN", "JOB", "STATE", "REQUEUES", "EXIT"], lines
    return lines[1:]  # one row per run, under the header


def watch_status(cfg: Path, env: dict, out: dict) -> None:
    """The sweep's `status` at the first moment both runs are RUNNING (they run side by side)."""
    try:
        out["sweep_status"] = wait_until(lambda: (lambda lines: lines if len(lines) == 2 and all(
            " RUNNING " in ln for ln in lines) else None)(sbatch_status(cfg, "sweep", env)), 300,
            "both sweep runs RUNNING", poll=1)
    except Exception as e:
        out["status_error"] = repr(e)


@pytest.fixture(scope="module")
def jobs(multi_slurm_cluster, synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    cfg = write_config(tmp)
    env = {**os.environ, **multi_slurm_cluster, "SYNTHETIC_ROOT": str(synthetic_root)}
    out: dict = {"tmp": tmp, "cfg": cfg, "env": env}
    (tmp / "dump_env.py").write_text(DUMP_ENV)
    out["env_job"] = submit(cfg, yml(tmp / "env.yml", {
        "CMD": f"python {tmp / 'dump_env.py'}", "HPARAMS": {"out": "LOGDIR/env"}}), env=env)
    (tmp / "bad_rank.py").write_text(BAD_RANK)
    out["badrank"] = submit(cfg, yml(tmp / "badrank.yml", {
        "CMD": f"python {tmp / 'bad_rank.py'}", "HPARAMS": {"result_dir": "LOGDIR"}}), env=env)
    out["sweep"] = submit(cfg, yml(tmp / "sweep.yml", {
        "CMD": TRAIN, "HPARAMS": {**HPARAMS, "seed": [0, 1], "RUNX.TAG": "s{seed}"}}), env=env)
    out["one"] = submit(cfg, yml(tmp / "one.yml", {"CMD": TRAIN, "HPARAMS": {**HPARAMS, "seed": 0}}),
                        "--farm", "one_node", env=env)
    others = ":".join([out["sweep"][0][0].split("_")[0], out["badrank"][0][0], out["one"][0][0]])
    out["lost"] = submit(cfg, yml(tmp / "lost.yml", {
        "CMD": TRAIN, "HPARAMS": {**HPARAMS, "seed": 0}, "RESOURCES": {"dependency": f"afterany:{others}"}}),
        env=env)
    (job_id, _, logdir), = out["lost"]
    out["watchers"] = [threading.Thread(target=watch_status, args=(cfg, env, out), daemon=True),
                       threading.Thread(target=crash_and_revive, args=(job_id, Path(logdir), env, out), daemon=True)]
    for t in out["watchers"]:
        t.start()
    return out


def rank_logs(logdir: str) -> dict[int, str]:
    """Each Slurm task's own log (submitit writes one per task: ``<job>_<task>_log.out``)."""
    submitit_dir = Path(logdir).parent / "submitit"
    link = Path(logdir, "slurm.log").resolve()
    stem = link.name[: -len("_0_log.out")]
    return {t: (submitit_dir / link.parent.name / f"{stem}_{t}_log.out").read_text() for t in (0, 1)}


def model_of(logdir: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(logdir) / "last.pth", map_location="cpu", weights_only=True)["model"]


def test_env_mapping_matches_scontrol_on_real_node_names(jobs):
    """Test 4: Slurm -> torch.distributed on the cluster's real node names."""
    (job_id, _, logdir), = jobs["env_job"]
    assert wait_terminal([job_id], 240, jobs["env"])[job_id] == "COMPLETED"
    ranks = [json.loads((Path(logdir) / "env" / f"rank{r}.json").read_text()) for r in (0, 1)]
    nodelist = ranks[0]["SLURM_JOB_NODELIST"]
    slurm_says = subprocess.run(["scontrol", "show", "hostnames", nodelist], env=jobs["env"], capture_output=True,
                                text=True, check=True, timeout=30).stdout.split()
    assert nodelist == "rack1-node[01-02]" and expand_hostlist(nodelist) == slurm_says == NODES
    assert [r["hostname"] for r in ranks] == NODES  # rank r runs on the r-th host
    for r, env in enumerate(ranks):
        assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (str(r), "2", "0", "1")
        assert env["MASTER_ADDR"] == slurm_says[0]
        assert env["MASTER_PORT"] == str(20000 + int(env["SLURM_JOB_ID"]) % 20000) == ranks[0]["MASTER_PORT"]


def test_a_failed_rank_ends_the_job_on_both_hosts(jobs):
    """A rank whose command fails ends its sibling on the other host at once (job FAILED)."""
    (job_id, _, logdir), = jobs["badrank"]
    assert wait_terminal([job_id], 240, jobs["env"])[job_id] == "FAILED"
    elapsed = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "ElapsedRaw", "-j", job_id], env=jobs["env"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert int(elapsed[0]) < 60, f"rank 0 lived {elapsed[0]} s after rank 1 failed"  # it would sleep 300 s
    wait_until(lambda: not [p for p in train_processes(Path(logdir), "bad_rank.py")], 30, "rank 0 to go")
    logs = rank_logs(logdir)
    assert "rank 1/2 on rack1-node02" in logs[1] and "exit status 3" in logs[1], logs[1][-2000:]


def test_two_node_run_equals_one_node_two_processes(jobs):
    """Test 1: ranks on both hosts join one gloo group; weights equal a one-host 2-process run."""
    (_, _, two), = [r for r in jobs["sweep"] if r[1].startswith("s0")]
    (one_id, _, one), = jobs["one"]
    ids = [r[0] for r in jobs["sweep"]] + [one_id]
    assert set(wait_terminal(ids, 400, jobs["env"]).values()) == {"COMPLETED"}
    logs = rank_logs(two)
    for rank, host in enumerate(NODES):
        assert f"rank {rank}/2 on {host}, master {NODES[0]}:" in logs[rank], logs[rank][-2000:]
    config = json.loads((Path(two) / "config.json").read_text())["runtime"]
    assert (config["world_size"], config["backend"]) == (2, "gloo")
    a, b = model_of(two), model_of(one)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "two hosts and one host ended with different weights"


def test_two_node_array_runs_side_by_side_in_status(jobs):
    """Test 3: two runs of a sweep, each on both hosts, RUNNING together in `status`."""
    ids = [r[0] for r in jobs["sweep"]]
    assert set(wait_terminal(ids, 400, jobs["env"]).values()) == {"COMPLETED"}
    jobs["watchers"][0].join(timeout=10)
    assert "status_error" not in jobs, jobs.get("status_error")
    names = sorted(r[1] for r in jobs["sweep"])
    assert sorted(ln.split()[0] for ln in jobs["sweep_status"]) == names
    nodelists = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,NodeList", "-j", ids[0].split("_")[0]],
                               env=jobs["env"], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(nodelists) == sorted(f"{i}|rack1-node[01-02]" for i in ids)
    for _, _, logdir in jobs["sweep"]:
        logs = rank_logs(logdir)
        assert [re.search(r"rank (\d)/2 on (\S+),", logs[t]).groups() for t in (0, 1)] == [("0", NODES[0]),
                                                                                           ("1", NODES[1])]
    lines = sbatch_status(jobs["cfg"], "sweep", jobs["env"])
    assert len(lines) == 2 and all(ln.split()[2:5:2] == ["COMPLETED", "0"] for ln in lines), lines


def test_lost_node_ends_the_job_requeues_and_resumes_to_the_same_weights(jobs):
    """Test 2: a host crash mid-run ends the job on both hosts in bounded time; Slurm requeues it;
    it resumes from the last checkpoint to the uninterrupted run's weights."""
    (job_id, _, logdir), = jobs["lost"]
    jobs["watchers"][1].join(timeout=500)
    assert "crash_error" not in jobs, jobs.get("crash_error")
    assert jobs["state_at_crash"] == "RUNNING" and 1 <= jobs["iteration_at_crash"] < HPARAMS["max_iter"]
    # bounded: SlurmdTimeout (6 s) + the controller's ping cycle, then KillWait (10 s) for a
    # rank stuck in a collective with the lost host
    print({k: jobs[k] for k in ("iteration_at_crash", "job_end_s", "ranks_gone_s", "requeued_s")})
    assert jobs["job_end_s"] < 120 and jobs["ranks_gone_s"] < 150 and jobs["requeued_s"] < 150, jobs
    assert jobs["state_after_crash"] == "NODE_FAIL" and jobs["node_state"].startswith("down"), jobs
    assert wait_terminal([job_id], 400, jobs["env"])[job_id] == "COMPLETED"
    starts = [e["restart"] for e in events(logdir) if e["event"] == "start"]
    assert starts[0] == 0 and starts[-1] >= 1, events(logdir)
    text = Path(logdir, "slurm.log").read_text()
    resumed = re.search(r"resumed at epoch \d+, iteration (\d+)", text)
    assert resumed and int(resumed.group(1)) >= jobs["iteration_at_crash"], text[-3000:]
    (_, _, reference), = [r for r in jobs["sweep"] if r[1].startswith("s0")]
    a, b = model_of(logdir), model_of(reference)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run ended with different weights"


def test_a_second_two_host_cluster_coexists_and_leaves_nothing(multi_slurm_cluster, tmp_path):
    """Concurrent test sessions each start their own cluster: names and subnets must not
    collide, and `stop` must remove namespaces, links, /etc/netns files and daemons."""
    def subnet(conf: str) -> str:
        m = re.search(r"NodeAddr=(\d+\.\d+\.\d+)\.", Path(conf).read_text())
        assert m, conf
        return m.group(1)

    with local_cluster(tmp_path / "c2", HMSA_SLURM_HOSTS="2") as client:
        env = {**os.environ, **client}
        out = subprocess.run(["srun", "-N2", "--ntasks-per-node=1", "sh", "-c", 'echo "$(hostname) $(hostname -i)"'],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        own = subnet(client["SLURM_CONF"])
        assert sorted(out.stdout.splitlines()) == [f"{NODES[0]} {own}.2", f"{NODES[1]} {own}.3"]
        assert own != subnet(multi_slurm_cluster["SLURM_CONF"])
        assert network_leftovers(tmp_path / "c2")  # its namespaces exist while it runs
        pids = [int(p.read_text()) for p in (tmp_path / "c2" / "run").glob("*.pid")]
    assert not network_leftovers(tmp_path / "c2")
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    assert not alive, f"daemons still running: {alive}"
    assert set(node_states(multi_slurm_cluster)) == set(NODES)  # the first cluster still answers
