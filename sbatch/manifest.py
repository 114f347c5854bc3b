"""The experiment manifest (``<LOGROOT>/<exp>/manifest.json``) and what is read back from Slurm.

The manifest lists every submitted run with its job id (``123`` or ``123_4`` for an array task),
the exact command and resources, and the job ids of earlier submissions of the same run. States
come from one batched ``sacct`` call (needs Slurm accounting); the command's own
exit status from the run's ``slurm_events.jsonl``; the last metric from its ``metrics.json`` or
runx ``metrics.csv``.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from utils.errors import UserError

TERMINAL_OK = {"COMPLETED"}
FAILED_STATES = {"FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED"}
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                 "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}
METRIC_KEYS = ("mean_iu", "miou", "mIoU", "val/mean_iu", "best_miou")


class ManifestError(UserError, RuntimeError):
    """No manifest, or Slurm's accounting cannot be read; the message says where it looked."""


@dataclass(frozen=True)
class RunStatus:
    name: str
    job_id: str
    state: str
    exit_code: str
    metric: str
    logdir: str
    requeues: int = 0
    elapsed: str = ""
    progress: str = ""  # "it 120/900 loss 0.8123" while running (from metrics.jsonl)

    def cells(self) -> list[str]:
        return [self.name, self.job_id, self.state, str(self.requeues), self.exit_code or "-",
                self.elapsed or "-", self.progress or "-", self.metric or "-"]

    def line(self) -> str:
        return "  ".join(self.cells())


HEADER = ("RUN", "JOB", "STATE", "REQUEUES", "EXIT", "ELAPSED", "PROGRESS", "METRIC")
_RIGHT = {"JOB", "REQUEUES", "EXIT", "ELAPSED"}


def format_table(rows: Sequence[RunStatus]) -> str:
    """A header and one line per run; every column as wide as its widest cell."""
    table = [list(HEADER), *[r.cells() for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = []
    for row in table:
        cells = [c.rjust(w) if h in _RIGHT else c.ljust(w) for c, w, h in zip(row, widths, HEADER, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def manifest_path(exp_dir: Path) -> Path:
    return Path(exp_dir) / "manifest.json"


def load(exp_dir: Path) -> dict:
    path = manifest_path(exp_dir)
    if not path.exists():
        raise ManifestError(f"no manifest at {path}: was the experiment submitted with python -m sbatch?")
    return json.loads(path.read_text())


def add_runs(exp_dir: Path, entries: Sequence[dict], source: dict | None = None) -> Path:
    """Add or update runs (by name) in the manifest; earlier job ids move to ``history``.
    ``source``: the YAML and overrides the runs came from (for ``resubmit --from-yaml``)."""
    from utils.io import atomic_write_json

    path = manifest_path(exp_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        data: dict[str, Any] = (json.loads(path.read_text()) if path.exists()
                                else {"experiment": Path(exp_dir).name, "runs": []})
        if source is not None:
            data["source"] = source
        by_name = {r["name"]: r for r in data["runs"]}
        for entry in entries:
            old = by_name.get(entry["name"])
            if old is None:
                data["runs"].append({**entry, "history": [], "submitted": time.time()})
            else:
                history = [*old.get("history", []), old["job_id"]]
                old.update({**entry, "history": history, "submitted": time.time()})
        atomic_write_json(path, data)
    return path


def _sacct(job_ids: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """JobID -> (State, ExitCode, Elapsed) for the given jobs and array tasks, one sacct call."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    if not bases:
        return {}
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode,Elapsed", "-j", ",".join(bases)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ManifestError(f"{' '.join(cmd[:2])} failed ({e}); is SLURM_CONF set and accounting up?") from e
    states: dict[str, tuple[str, str, str]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            for jid in _expand_array_id(parts[0]):
                states[jid] = (parts[1].split()[0], parts[2], parts[3] if len(parts) > 3 else "")
    return states


def lookup(states: dict[str, tuple[str, str, str]], job_id: str) -> tuple[str, str, str] | None:
    """A task's record, else its array's own record (sacct shows a never-started, cancelled
    array as the bare array id)."""
    return states.get(job_id) or states.get(job_id.split("_")[0])


def _expand_array_id(jid: str) -> list[str]:
    """``12_[0-3,7%2]`` (pending tasks shown as one line) -> ``12_0 .. 12_3, 12_7``."""
    m = re.match(r"^(\d+)_\[([^\]]+)\]$", jid)
    if not m:
        return [jid]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def last_metric(logdir: Path) -> str:
    final = logdir / "metrics.json"
    if final.exists():
        try:
            data = json.loads(final.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
        for key in METRIC_KEYS:
            if isinstance(data.get(key), (int, float)):
                return f"{key}={data[key]:.4f}"
    return _last_csv_metric(logdir / "metrics.csv")


def _last_csv_metric(path: Path) -> str:
    """runx logx writes ``phase,key,value,key,value...`` rows; show the last val metric."""
    if not path.exists():
        return ""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError:
        return ""
    for row in reversed(rows):
        pairs = dict(zip(row[1::2], row[2::2], strict=False))
        for key in METRIC_KEYS:
            if key in pairs:
                return f"{key}={float(pairs[key]):.4f}"
    return ""


def command_exit(events: list[dict]) -> str:
    """The command's own exit status from the last ``exit`` event ('' while the latest start,
    e.g. after a requeue, has not exited)."""
    code = ""
    for e in events:
        if e.get("event") == "start":
            code = ""
        elif e.get("event") == "exit":
            code = str(e.get("returncode"))
    return code


def requeue_count(events: list[dict], job_id: str) -> int:
    """Requeues of the current job: the highest ``restart`` its start events recorded."""
    restarts = [e.get("restart", 0) for e in events
                if e.get("event") == "start" and e.get("job_id") == job_id]
    return int(max(restarts, default=0))


def _events(logdir: Path) -> list[dict]:
    """The run's ``slurm_events.jsonl`` (sbatch/task.py writes it); a torn line is skipped."""
    from utils.logger import read_jsonl

    return read_jsonl(logdir / "slurm_events.jsonl")


def training_progress(logdir: Path) -> str:
    """``it 120/900 loss 0.8123`` from the last train row of metrics.jsonl ('' if none)."""
    from utils.logger import read_jsonl

    rows = [r for r in read_jsonl(logdir / "metrics.jsonl") if r.get("phase") == "train"]
    if not rows:
        return ""
    last = rows[-1]
    total = f"/{last['total_iters']}" if last.get("total_iters") else ""
    loss = f" loss {last['loss']:.4f}" if isinstance(last.get("loss"), (int, float)) else ""
    return f"it {last.get('iteration', '?')}{total}{loss}"


def statuses(exp_dir: Path) -> list[RunStatus]:
    runs = load(exp_dir)["runs"]
    states = _sacct(r["job_id"] for r in runs)
    out = []
    for r in runs:
        state, slurm_exit, elapsed = lookup(states, r["job_id"]) or ("UNKNOWN", "", "")
        logdir = Path(r["logdir"])
        events = _events(logdir)
        code = command_exit(events)
        if not code:
            code = "-" if state in ACTIVE_STATES or not slurm_exit else slurm_exit.split(":")[0]
        out.append(RunStatus(name=r["name"], job_id=r["job_id"], state=state, exit_code=code,
                             metric=last_metric(logdir), logdir=r["logdir"],
                             requeues=requeue_count(events, r["job_id"]), elapsed=elapsed,
                             progress=training_progress(logdir)))
    return out


def cancel(exp_dir: Path) -> list[str]:
    """``scancel`` every job of the experiment that is not finished; returns the ids."""
    runs = load(exp_dir)["runs"]
    states = _sacct(r["job_id"] for r in runs)
    ids = [r["job_id"] for r in runs
           if (lookup(states, r["job_id"]) or ("PENDING",))[0] not in TERMINAL_OK | FAILED_STATES]
    if ids:
        done = subprocess.run(["scancel", *ids], capture_output=True, text=True)
        if done.returncode != 0:
            raise ManifestError(f"scancel {' '.join(ids)} failed: {done.stderr.strip()}")
    return ids
