"""What runs inside a Slurm job: one run's command, on the host side of the container.

submitit starts one Python process per Slurm task (``srun``); each calls :class:`RunTask` with
its run's :class:`TaskSpec`. The command is started as an argv list (no shell), inside the
container when the farm has an ``image``; the torch.distributed variables come from Slurm.

Requeue happens here, on the host, where ``scontrol`` exists (it usually does not inside an
image):
- Slurm's warning signal (``--signal=USR1@N``) reaches every process of the step: the training
  program checkpoints and exits 75; submitit calls :meth:`RunTask.checkpoint`, which waits for
  the program and lets submitit requeue the job.
- A program that exits 75 on its own (SIGTERM from ``scontrol requeue``/preemption, or USR1) is
  requeued by :meth:`RunTask.__call__` while ``SLURM_RESTART_COUNT < max_requeue``.
- Any other non-zero exit raises :class:`CommandFailedError`: submitit exits non-zero and Slurm
  records the job as FAILED.

This module and :mod:`utils.slurmenv` (Slurm's variables) are pickled by value into the job
(only the standard library and submitit are imported), so the job does not depend on where this
repository lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from utils import slurmenv

EX_REQUEUE = 75  # train.py: "checkpointed, requeue me" (EX_TEMPFAIL)


class CommandFailedError(RuntimeError):
    """The run's command exited non-zero (and not with the requeue status)."""


@dataclass
class TaskSpec:
    """One run as the job executes it."""

    name: str
    logdir: str
    argv: list[str]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    max_requeue: int = 3
    grace_s: float = 60.0  # how long checkpoint() waits for the program to save and exit


PYTHON_NAMES = ("python", "python3")


def same_python(argv: list[str], environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Run a command's bare ``python``/``python3`` with this process's interpreter, and put that
    interpreter's directory first on PATH for whatever the command starts in turn.

    ``python -m sbatch`` (and so the job, which submitit starts with the submitting interpreter)
    may run from a virtual environment that was never activated (``.venv/bin/python -m sbatch``):
    PATH would then find another ``python``, one without torch. Any other program (``apptainer``,
    a named interpreter such as ``python3.12``, an absolute path) is left as it is.
    """
    bindir = os.path.dirname(sys.executable)
    if not argv or argv[0] not in PYTHON_NAMES or not bindir:
        return list(argv), environ
    path = environ.get("PATH", os.defpath)
    return [sys.executable, *argv[1:]], {**environ, "PATH": os.pathsep.join([bindir, path])}


def wait_exit_status(pid: int, timeout: float) -> int | None:
    """The exit status of child ``pid`` once it exits, *without* reaping it (``WNOWAIT``).

    Runs inside a signal handler that interrupted ``Popen.wait()`` in the same thread: that wait
    holds the Popen's lock (so ``poll``/``wait`` cannot work here) and must still reap the child.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None  # already reaped by the interrupted wait
        if info is not None and info.si_pid == pid:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        time.sleep(0.1)
    return None


def record(logdir: str, **fields: object) -> None:
    """Append one event to ``<logdir>/slurm_events.jsonl`` (what ``status`` reads)."""
    fields = {"time": time.time(), "host": socket.gethostname(), **fields}
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, "slurm_events.jsonl"), "a") as f:
        f.write(json.dumps(fields) + "\n")


class RunTask:
    """The callable submitit pickles: runs one :class:`TaskSpec` and handles requeue."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._signalled = False

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._proc = None
        self._signalled = False

    def __call__(self, spec: TaskSpec) -> int:
        environ = dict(os.environ)
        # SWEEP_RUN_ENV tells the program that an array task id is "which run of the sweep",
        # not "which shard of the data" (predict.py shards by array task only without it).
        # slurm_wins: RANK/MASTER_* exported from the submitting shell are not this job's.
        env = {**environ, **spec.env, **slurmenv.distributed_env(environ, slurm_wins=True),
               slurmenv.SWEEP_RUN_ENV: spec.name}
        restarts = int(environ.get("SLURM_RESTART_COUNT", "0"))
        rank0 = env.get("RANK", "0") == "0"
        if "RANK" in env:  # where each rank runs: the first thing to check on a multi-node job
            print(f"[sbatch] {spec.name}: rank {env['RANK']}/{env['WORLD_SIZE']} on {socket.gethostname()}, "
                  f"master {env['MASTER_ADDR']}:{env['MASTER_PORT']}", flush=True)
        if rank0:
            record(spec.logdir, event="start", job_id=slurmenv.job_id(environ), restart=restarts)
        argv, env = same_python(spec.argv, env)
        self._proc = subprocess.Popen(argv, cwd=spec.cwd, env=env)
        code = self._proc.wait()
        if rank0:
            record(spec.logdir, event="exit", job_id=slurmenv.job_id(environ), returncode=code,
                   restart=restarts)
        if code == 0:
            return 0
        if code == EX_REQUEUE and restarts < spec.max_requeue:
            if rank0:
                self._requeue(environ)
            return code
        why = "asked for a requeue but the bound is reached" if code == EX_REQUEUE else "failed"
        raise CommandFailedError(f"{spec.name}: command {why} (exit status {code}, "
                                 f"{restarts} requeues so far)")

    def checkpoint(self, spec: TaskSpec) -> object:
        """submitit's hook on the warning signal: let the program save, then requeue."""
        import submitit

        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)  # in case the signal did not reach it directly
            code = wait_exit_status(proc.pid, spec.grace_s)
            if code is None:
                print(f"[sbatch] {spec.name}: no exit {spec.grace_s}s after the signal", file=sys.stderr)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if not self._signalled:  # srun may deliver the signal twice: record the exit once
            self._signalled = True
            record(spec.logdir, event="exit", job_id=slurmenv.job_id(os.environ), returncode=code,
                   restart=restarts, signal=True)
        if restarts >= spec.max_requeue:
            return None  # submitit then ends the job as failed
        return submitit.helpers.DelayedSubmission(self, spec)

    @staticmethod
    def _requeue(environ: dict[str, str]) -> None:
        job_id = slurmenv.job_id(environ)
        try:
            done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise CommandFailedError(f"requeue of {job_id} impossible here ({e})") from e
        # Fails harmlessly when an outside `scontrol requeue` already put the job back in the queue.
        print(f"[sbatch] requeue {job_id}: rc={done.returncode} {done.stderr.strip()}", file=sys.stderr)
