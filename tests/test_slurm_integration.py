"""End to end on a real local Slurm cluster (sbatch/local_cluster.sh): train.py sweeps as one job
array, FAILED for a failing command, requeue mid-training with resume, cancel, and the container
wrapping (with a stand-in ``apptainer``: no Apptainer on this machine; the stand-in checks its
arguments as Apptainer's CLI defines them and runs the command).

Everything is submitted at once by one module fixture (two CPUs run two jobs at a time), then
each test waits for its own jobs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

from tests.slurm_fixtures import (
    REPO,
    events,
    sacct_states,
    slurm_cluster,
    wait_terminal,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(300)]
__all__ = ["slurm_cluster"]  # the session fixture, re-exported for pytest

TINY = ("OMP_NUM_THREADS=1 python train.py --dataset synthetic --arch ocrnet.HRNet_w18s "
        "--crop_size 64,128 --bs_trn 2 --bs_val 2 --num_workers 0 --device cpu --dump_num_images 0")
TRICKY = "a b 'q' \"dq\"; $(touch PWNED) `touch PWNED2` $HOME"

STANDIN_APPTAINER = r'''#!/usr/bin/env python3
"""Stand-in for `apptainer` (not installed here): checks the documented CLI shape
`apptainer exec [--nv] [--bind a,b] [--pwd DIR] IMAGE CMD...`, records it, runs CMD."""
import json, os, sys
args = sys.argv[1:]
assert args[0] == "exec", args
args = args[1:]
opts = {}
while args and args[0].startswith("--"):
    key = args.pop(0)
    opts[key] = True if key == "--nv" else args.pop(0)
image, cmd = args[0], args[1:]
assert image.endswith(".sif") and cmd, args
with open(os.path.join(opts["--pwd"], "..", "apptainer_call.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "opts": opts, "image": image, "cmd": cmd}, f)
os.chdir(opts["--pwd"])
os.execvp(cmd[0], cmd)
'''


def write_config(tmp: Path) -> Path:
    cfg = tmp / "runx.yml"
    cfg.write_text(textwrap.dedent(f"""\
        LOGROOT: {tmp / 'logs'}
        CODE_IGNORE_PATTERNS: '.git,*.pyc,__pycache__,logs,data,*.pth,tests,docs,bench'
        FARM: local
        local:
          SUBMIT_CMD: 'unused submit_job'
          RESOURCES: {{time: 10, cpus_per_task: 1, mem: 1G, signal_delay_s: 30, max_requeue: 2}}
        boxed:
          SUBMIT_CMD: 'unused submit_job'
          RESOURCES: {{time: 10, cpus_per_task: 1, mem: 1G, image: /images/hmsa.sif,
                      binds: [/data/extra]}}
        """))
    return cfg


def submit(cfg: Path, exp: Path, *extra: str, env: dict[str, str]) -> list[tuple[str, str, str]]:
    """``python -m sbatch`` as a user runs it; returns (job id, run name, logdir) per run."""
    done = subprocess.run([sys.executable, "-m", "sbatch", str(exp), "-c", str(cfg), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [tuple(line.split("\t")) for line in done.stdout.splitlines() if "\t" in line]
    assert rows, done.stdout
    return rows  # type: ignore[return-value]


def yml(path: Path, experiment: str | dict) -> Path:
    text = yaml.safe_dump(experiment) if isinstance(experiment, dict) else textwrap.dedent(experiment)
    path.write_text(text)
    return path


def requeue_after_checkpoint(job_id: str, logdir: Path, env: dict, out: dict) -> None:
    """Preempt the job as soon as it has written its first checkpoint (mid-training)."""
    try:
        # ckpt_freq 1: last.pth after iteration 1 of 12, so the requeue lands mid-training
        wait_until((logdir / "last.pth").exists, 200, "the first checkpoint", poll=0.2)
        out["state_at_requeue"] = sacct_states([job_id])[job_id]
        subprocess.run(["scontrol", "requeue", job_id], check=True, env=env, capture_output=True)
    except Exception as e:  # reported by the test
        out["requeue_error"] = repr(e)


STANDIN_TRAIN = """\
import json, os, signal, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
out, total = args["--result_dir"], int(args["--iters"])
state_path = os.path.join(out, "state.json")
state = json.load(open(state_path)) if os.path.exists(state_path) else {"it": 0, "starts": 0}
state["starts"] += 1
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append("USR1"))
signal.signal(signal.SIGTERM, lambda *_: stop.append("TERM"))
def save():
    json.dump(state, open(state_path + ".tmp", "w")); os.replace(state_path + ".tmp", state_path)
while state["it"] < total:
    if stop:
        state["stopped_by"] = stop[0]; save(); sys.exit(75)
    time.sleep(0.25); state["it"] += 1; save()
save()
"""


def signal_when_running(job_id: str, logdir: Path, env: dict, out: dict) -> None:
    """Slurm's time-limit warning, sent now: USR1 to the job's steps (not the batch shell)."""
    try:
        wait_until(lambda: (logdir / "state.json").exists(), 200, "the stand-in to run", poll=0.2)
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True, env=env, capture_output=True)
    except Exception as e:  # reported by the test
        out["usr1_error"] = repr(e)


@pytest.fixture(scope="module")
def jobs(slurm_cluster, synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm_exps")
    cfg = write_config(tmp)
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "apptainer").write_text(STANDIN_APPTAINER)
    (bindir / "apptainer").chmod(0o755)
    env = {**os.environ, **slurm_cluster, "SYNTHETIC_ROOT": str(synthetic_root),
           "PATH": f"{bindir}:{slurm_cluster['PATH']}"}
    out = {"tmp": tmp, "cfg": cfg, "env": env}
    out["requeue"] = submit(cfg, yml(tmp / "requeue.yml", f"""\
        CMD: "{TINY}"
        HPARAMS: {{max_epoch: 3, max_iter: 12, ckpt_freq: 1, val_freq: 10, result_dir: LOGDIR}}
        """), env=env)
    (job_id, _, logdir), = out["requeue"]
    out["requeuer"] = threading.Thread(target=requeue_after_checkpoint, daemon=True,
                                       args=(job_id, Path(logdir), env, out))
    out["requeuer"].start()
    standin = tmp / "standin_train.py"
    standin.write_text(STANDIN_TRAIN)
    out["usr1"] = submit(cfg, yml(tmp / "usr1.yml", {
        "CMD": f"python {standin}", "HPARAMS": {"iters": 40, "result_dir": "LOGDIR"}}), env=env)
    (job_id, _, logdir), = out["usr1"]
    out["signaller"] = threading.Thread(target=signal_when_running, daemon=True,
                                        args=(job_id, Path(logdir), env, out))
    out["signaller"].start()
    out["sweep"] = submit(cfg, yml(tmp / "sweep.yml", f"""\
        CMD: "{TINY}"
        HPARAMS:
          lr: [0.01, 0.02]
          seed: [0, 1]
          max_epoch: 1
          max_iter: 2
          result_dir: LOGDIR
          RUNX.TAG: 'lr{{lr}}_s{{seed}}'
        """), env=env)
    out["fail"] = submit(cfg, yml(tmp / "fail.yml", f"""\
        CMD: "{TINY}"
        HPARAMS: {{dataset: cityscapes, dataset_root: /nonexistent/cityscapes, result_dir: LOGDIR}}
        """), env=env)
    dump = tmp / "dump_args.py"
    dump.write_text("import json, sys\njson.dump(sys.argv[1:], open(sys.argv[-1], 'w'))\n")
    out["boxed"] = submit(cfg, yml(tmp / "boxed.yml", {
        "CMD": f"python {dump}", "HPARAMS": {"name": TRICKY, "out": "LOGDIR/args.json"}}),
        "--farm", "boxed", env=env)
    return out


def status_lines(jobs, exp: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "sbatch", "status", exp, "-c", str(jobs["cfg"])],
                          cwd=REPO, env=jobs["env"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and lines[0].split()[:5] == ["RUN", "JOB", "STATE", "REQUEUES", "EXIT"], lines
    return lines[1:]  # one row per run, under the header


def test_cancel_ends_the_jobs(jobs):
    """First in this file: the sleeping jobs are cancelled before they take a CPU."""
    rows = submit(jobs["cfg"], yml(jobs["tmp"] / "cancel.yml", {
        "CMD": "python -c 'import time; time.sleep(600)'", "HPARAMS": {"x": [1, 2]}}), env=jobs["env"])
    ids = [r[0] for r in rows]
    done = subprocess.run([sys.executable, "-m", "sbatch", "cancel", "cancel", "-c", str(jobs["cfg"])],
                          cwd=REPO, env=jobs["env"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "cancelled 2 jobs" in done.stdout, done.stdout + done.stderr
    states = wait_terminal(ids, timeout=90)
    assert set(states.values()) == {"CANCELLED"}, states


def test_sweep_is_one_array_and_completes_with_metrics(jobs):
    ids = [r[0] for r in jobs["sweep"]]
    assert len({i.split("_")[0] for i in ids}) == 1 and sorted(ids)[-1].endswith("_3")
    states = wait_terminal(ids, timeout=240)
    assert set(states.values()) == {"COMPLETED"}, states
    tags = ["_".join(r[1].split("_")[:2]) for r in jobs["sweep"]]
    assert tags == ["lr0.01_s0", "lr0.01_s1", "lr0.02_s0", "lr0.02_s1"]  # runx's order
    for _, _, logdir in jobs["sweep"]:
        metrics = json.loads((Path(logdir) / "metrics.json").read_text())
        assert metrics["iteration"] == 2 and 0.0 <= metrics["miou"] <= 1.0
        assert (Path(logdir) / "hparams.json").exists() and (Path(logdir) / "code" / "train.py").exists()
        assert "--array=0-3" in (Path(logdir) / "sbatch.sh").read_text()
    lines = status_lines(jobs, "sweep")
    assert len(lines) == 4 and all(ln.split()[2:5:2] == ["COMPLETED", "0"] and "=" in ln.split()[-1]
                                   for ln in lines), lines  # STATE, EXIT and a METRIC column


def test_failing_command_is_failed_not_completed(jobs):
    (job_id, _, logdir), = jobs["fail"]
    assert wait_terminal([job_id], timeout=240)[job_id] == "FAILED"
    assert [e["returncode"] for e in events(logdir) if e["event"] == "exit"] == [2]
    line, = status_lines(jobs, "fail")
    assert line.split()[2:5:2] == ["FAILED", "2"], line


def test_resubmit_failed_keeps_the_run_and_its_history(jobs):
    (job_id, name, logdir), = jobs["fail"]
    wait_terminal([job_id], timeout=240)
    done = subprocess.run([sys.executable, "-m", "sbatch", "resubmit", "fail", "--failed", "-c",
                           str(jobs["cfg"])], cwd=REPO, env=jobs["env"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    new_id, new_name, new_logdir = done.stdout.split("\n")[0].split("\t")
    assert new_id != job_id and (new_name, new_logdir) == (name, logdir)
    run, = json.loads((Path(logdir).parent / "manifest.json").read_text())["runs"]
    assert run["job_id"] == new_id and run["history"] == [job_id]
    assert wait_terminal([new_id], timeout=120)[new_id] == "FAILED"


def test_requeue_mid_training_resumes_from_checkpoint(jobs):
    (job_id, _, logdir), = jobs["requeue"]
    last = Path(logdir) / "last.pth"
    log = Path(logdir) / "slurm.log"
    jobs["requeuer"].join(timeout=220)
    assert "requeue_error" not in jobs, jobs.get("requeue_error")
    assert jobs["state_at_requeue"] == "RUNNING"
    assert wait_terminal([job_id], timeout=240)[job_id] == "COMPLETED"
    ev = events(logdir)
    assert [(e["event"], e.get("returncode"), e["restart"]) for e in ev] == [
        ("start", None, 0), ("exit", 75, 0), ("start", None, 1), ("exit", 0, 1)], ev
    text = log.read_text()
    stopped = re.search(r"stopped by signal \d+ at iteration (\d+)", text)
    resumed = re.search(r"resumed at epoch \d+, iteration (\d+)", text)
    assert stopped and resumed and stopped.group(1) == resumed.group(1), text[-3000:]
    assert json.loads((Path(logdir) / "metrics.json").read_text())["iteration"] == 12
    assert last.exists() and not list(Path(logdir).glob("*.tmp*"))


def test_container_wrapping_with_standin_apptainer(jobs):
    (job_id, _, logdir), = jobs["boxed"]
    assert wait_terminal([job_id], timeout=240)[job_id] == "COMPLETED"
    call = json.loads((Path(logdir) / "apptainer_call.json").read_text())
    # the boxed farm requests no GPUs: no --nv (it would bind driver libraries that are not there)
    assert call["argv"][:2] == ["exec", "--bind"] and "--nv" not in call["argv"]
    assert call["image"] == "/images/hmsa.sif"
    binds = call["opts"]["--bind"].split(",")
    assert str(jobs["tmp"] / "logs") in binds and "/data/extra" in binds
    assert call["opts"]["--pwd"] == str(Path(logdir) / "code")
    args = json.loads((Path(logdir) / "args.json").read_text())
    assert args == ["--name", TRICKY, "--out", str(Path(logdir) / "args.json")]
    assert not list(Path(logdir).rglob("PWNED*")) and not list(REPO.glob("PWNED*"))


def test_time_limit_warning_checkpoints_and_requeues_through_submitit(jobs):
    """USR1 (what --signal=USR1@N sends before the limit) reaches the program, which saves and
    exits 75; submitit's checkpoint hook on the host requeues; the next start resumes."""
    (job_id, _, logdir), = jobs["usr1"]
    jobs["signaller"].join(timeout=220)
    assert "usr1_error" not in jobs, jobs.get("usr1_error")
    assert wait_terminal([job_id], timeout=240)[job_id] == "COMPLETED"
    ev = events(logdir)
    assert [(e["event"], e.get("returncode"), e["restart"]) for e in ev] == [
        ("start", None, 0), ("exit", 75, 0), ("start", None, 1), ("exit", 0, 1)], ev
    assert ev[1].get("signal") is True  # recorded by the checkpoint hook
    state = json.loads((Path(logdir) / "state.json").read_text())
    assert state == {"it": 40, "starts": 2, "stopped_by": "USR1"}

