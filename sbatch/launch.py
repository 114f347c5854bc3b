"""Turn expanded runs into run directories, local processes, or Slurm job arrays via submitit.

Per run: ``<logdir>/code`` (snapshot of the code, as runx makes it), ``hparams.json``,
``command.sh`` (the exact command, every value quoted) and, once submitted, ``sbatch.sh`` (the
script Slurm received) and ``slurm.log`` (a link to the job's output).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError

from .expand import Run
from .resources import FarmSpec, submitit_parameters
from .task import RunTask, TaskSpec, same_python

PREEMPT_SIGNAL = "USR1"  # what train.py checkpoints on (with SIGTERM)
LAUNCHERS = {"torchrun", "torch.distributed.run", "torch.distributed.launch"}
_LAUNCHER_FLAGS = {"--standalone", "--no_python", "--no-python", "--run_path", "--run-path",
                   "--module", "-m", "--use_env", "--use-env"}
# the data a job reads: every dataset's root variable (datasets/info.py) and the asset paths


@functools.cache
def data_env() -> tuple[str, ...]:
    """Every dataset's root variable plus ASSETS_PATH, DATA_ROOT (bound into containers), read from
    the registrations alone (no class table, no torch: ``-n`` and ``status`` stay fast)."""
    from datasets.info import root_env_vars

    return (*root_env_vars(), "ASSETS_PATH", "DATA_ROOT")


class LaunchError(UserError, RuntimeError):
    """Preparing or submitting runs failed; the message names the run and the cause."""


@dataclass(frozen=True)
class Planned:
    """A run with the settings it is submitted with."""

    run: Run
    spec: FarmSpec
    logroot: str

    @property
    def code_dir(self) -> str:
        return os.path.join(self.run.logdir, "code")


# ---------------------------------------------------------------- commands


def strip_launcher(argv: Sequence[str]) -> list[str]:
    """``torchrun [opts] train.py args`` -> ``python train.py args`` (Slurm starts one task per
    GPU and :func:`utils.slurmenv.distributed_env` gives each its rank)."""
    argv = list(argv)
    if argv[:2] == ["python", "-m"] or (len(argv) > 2 and argv[1] == "-m" and "python" in argv[0]):
        head, rest = argv[2:3], argv[3:]
    else:
        head, rest = [os.path.basename(argv[0])], argv[1:]
    if not head or head[0] not in LAUNCHERS:
        return argv
    module = False
    while rest and rest[0].startswith("-"):
        opt = rest.pop(0)
        module |= opt in ("--module", "-m")
        if "=" not in opt and opt not in _LAUNCHER_FLAGS and rest:
            rest.pop(0)
    if not rest:
        raise LaunchError(f"no program after the launcher in {shlex.join(argv)}")
    return ["python", "-m", *rest] if module else ["python", *rest]


def container_argv(argv: Sequence[str], spec: FarmSpec, *, binds: Sequence[str], cwd: str) -> list[str]:
    """``apptainer exec [--nv] --bind a,b --pwd CWD IMAGE argv...`` (Apptainer's documented CLI;
    the host environment passes through, as Apptainer does by default). ``--nv`` only when the
    farm requests GPUs."""
    if not spec.image:
        return list(argv)
    uniq = list(dict.fromkeys(b for b in binds if b))
    bad = [b for b in uniq if "," in b or ":" in b]
    if bad:
        raise LaunchError(f"bind path {bad[0]!r} contains ',' or ':', which Apptainer's --bind reads as "
                          "separators; rename it or bind a parent directory (resource binds, LOGROOT, "
                          f"{'/'.join(data_env())})")
    cmd = [spec.container_runtime, "exec"]
    cmd += ["--nv"] if spec.container_nv and spec.gpus_per_node > 0 else []  # no GPU, no driver to bind
    cmd += ["--bind", ",".join(uniq)] if uniq else []
    return [*cmd, "--pwd", cwd, spec.image, *argv]


def default_binds(logroot: str, spec: FarmSpec, environ: dict[str, str]) -> list[str]:
    data = [environ[k] for k in data_env() if environ.get(k)]
    return [logroot, *data, *spec.binds]


def task_spec(planned: Planned, environ: dict[str, str] | None = None) -> TaskSpec:
    environ = dict(os.environ if environ is None else environ)
    run, spec = planned.run, planned.spec
    argv = strip_launcher(run.argv)
    argv = container_argv(argv, spec, binds=default_binds(planned.logroot, spec, environ),
                          cwd=planned.code_dir)
    env = {**run.env, "PYTHONPATH": planned.code_dir}
    return TaskSpec(name=run.name, logdir=run.logdir, argv=argv, cwd=planned.code_dir, env=env,
                    max_requeue=spec.max_requeue)


def task_command(planned: Planned) -> str:
    """What a task runs, as one shell line: CMD's env words, then the argv (container included)."""
    env = [f"{k}={shlex.quote(v)}" for k, v in planned.run.env.items()]
    return " ".join([*env, shlex.join(task_spec(planned).argv)])


# ---------------------------------------------------------------- run directories


def _ignore(patterns: Sequence[str]) -> Callable[[str, list[str]], set[str]]:
    """``CODE_IGNORE_PATTERNS``, and every Python environment whatever its name (a folder holding
    ``pyvenv.cfg`` or ``conda-meta``): install.sh creates ``./.venv``, gigabytes that no run needs."""
    by_name = shutil.ignore_patterns(*patterns)

    def ignore(folder: str, names: list[str]) -> set[str]:
        envs = {n for n in names if os.path.isfile(os.path.join(folder, n, "pyvenv.cfg"))
                or os.path.isdir(os.path.join(folder, n, "conda-meta"))}
        return set(by_name(folder, names)) | envs

    return ignore


def snapshot_code(src: Path, dst: Path, patterns: Sequence[str]) -> None:
    """runx's copy of the code into ``<logdir>/code`` (``CODE_IGNORE_PATTERNS`` and Python
    environments left out)."""
    if dst.exists():
        return  # a resubmitted run keeps the code it started with
    # copy beside dst, then rename: an interrupted copy never passes for a complete snapshot
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp, ignore=_ignore(patterns), symlinks=True)
        os.rename(tmp, dst)
    except (OSError, shutil.Error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LaunchError(f"copying {src} to {dst} failed: {e}") from e


def write_run_files(planned: Planned, code_root: Path, patterns: Sequence[str]) -> None:
    logdir = Path(planned.run.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    snapshot_code(code_root, Path(planned.code_dir), patterns)
    if not (logdir / "hparams.json").exists():
        _write_hparams(planned, str(code_root))
    _write_command(planned)


def refresh_run_files(planned: Planned) -> None:
    """``resubmit --from-yaml``: hparams.json and command.sh follow the new flags; the code
    snapshot stays the one the run started with."""
    import json

    path = Path(planned.run.logdir) / "hparams.json"
    srcdir = json.loads(path.read_text()).get("srcdir", "") if path.exists() else ""
    _write_hparams(planned, srcdir)
    _write_command(planned)


def _write_hparams(planned: Planned, srcdir: str) -> None:
    from utils.io import atomic_write_json

    atomic_write_json(Path(planned.run.logdir) / "hparams.json", {**planned.run.hparams, "srcdir": srcdir})


def _write_command(planned: Planned) -> None:
    from utils.io import atomic_write_text

    atomic_write_text(Path(planned.run.logdir) / "command.sh", "#!/bin/sh\n# the run's exact command (runx semantics)\n"
                      f"cd {shlex.quote(planned.code_dir)} && PYTHONPATH={shlex.quote(planned.code_dir)} "
                      f"exec env {planned.run.command}\n")  # env: CMD may start with NAME=value words


# ---------------------------------------------------------------- local (-i)


@dataclass(frozen=True)
class LocalOutcome:
    """What ``-i`` did: runs that failed, succeeded, and were never started (stopped at a failure)."""

    failed: int
    succeeded: int
    not_run: int

    def line(self) -> str:
        if not self.failed and not self.not_run:
            return f"all {self.succeeded} runs succeeded"
        why = " (stopped at the first failure; --keep-going runs the rest)" if self.not_run else ""
        return f"{self.failed} failed, {self.succeeded} succeeded, {self.not_run} not run{why}"


def run_local(plans: Sequence[Planned], *, keep_going: bool, code_root: Path,
              patterns: Sequence[str]) -> LocalOutcome:
    """Run in order on this machine; stop at the first failure unless ``keep_going``."""
    failed = succeeded = 0
    for i, planned in enumerate(plans):
        run = planned.run
        write_run_files(planned, code_root, patterns)
        print(f"[sbatch] run {i + 1}/{len(plans)} {run.name}: {run.command}", flush=True)
        argv, env = same_python(list(run.argv), {**os.environ, **run.env, "PYTHONPATH": planned.code_dir})
        try:
            code = subprocess.call(argv, cwd=planned.code_dir, env=env)
        except OSError as e:
            print(f"[sbatch] {run.name}: cannot start {run.argv[0]!r}: {e}", file=sys.stderr)
            code = 127
        if code == 0:
            succeeded += 1
            continue
        failed += 1
        print(f"[sbatch] {run.name} FAILED with exit status {code}", file=sys.stderr, flush=True)
        if not keep_going:
            break
    return LocalOutcome(failed, succeeded, len(plans) - failed - succeeded)


# ---------------------------------------------------------------- Slurm


def group_plans(plans: Sequence[Planned]) -> list[list[Planned]]:
    """Runs with identical resources go into one job array, in order of first appearance."""
    groups: dict[FarmSpec, list[Planned]] = {}
    for planned in plans:
        groups.setdefault(planned.spec, []).append(planned)
    return list(groups.values())


def _comment(text: str) -> str:
    """A script comment that cannot break out of its line."""
    return "# " + text.encode("unicode_escape").decode("ascii")


def setup_lines(group: Sequence[Planned], manifest: str) -> list[str]:
    lines = [f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}", _comment(f"manifest: {manifest}")]
    for i, planned in enumerate(group[:20]):
        lines.append(_comment(f"task {i}: {planned.run.name}: {task_command(planned)}"))
    if len(group) > 20:
        lines.append(_comment(f"... {len(group) - 20} more tasks: see the manifest"))
    return lines


def group_parameters(group: Sequence[Planned], manifest: str) -> dict:
    """submitit ``SlurmExecutor`` parameters of one group (the same for every run in it)."""
    params = submitit_parameters(group[0].spec, job_name=group[0].run.exp_name,
                                 preempt_signal=PREEMPT_SIGNAL)
    # submitit writes --wckey=submitit by default: on a site that tracks WCKeys that is an
    # invalid key or misfiled accounting; set one with sbatch_extra: ["--wckey=NAME"]
    return {**params, "wckey": None, "setup": setup_lines(group, manifest)}


def executor_for(group: Sequence[Planned], folder: Path, manifest: str):
    import submitit

    executor = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=group[0].spec.max_requeue)
    executor.update_parameters(**group_parameters(group, manifest))
    return executor


def render_script(group: Sequence[Planned], folder: Path, manifest: str) -> str:
    """The sbatch script that submitting ``group`` sends (an array when > 1 run), rendered by
    submitit's own template; needs no Slurm installation (``-n`` works anywhere)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = group_parameters(group, manifest)
    if len(group) > 1:
        params["map_count"] = len(group)
    folder = Path(folder).expanduser().absolute() / "%j"
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)


def submit_group(group: Sequence[Planned], folder: Path, manifest: str) -> list:
    """Submit one group as a job array (or a single job) and return submitit's jobs."""
    import cloudpickle

    from utils import slurmenv

    from . import task as task_module

    for module in (task_module, slurmenv):  # the job needs neither this checkout nor its sys.path
        cloudpickle.register_pickle_by_value(module)
    executor = executor_for(group, folder, manifest)
    try:
        return executor.map_array(RunTask(), [task_spec(p) for p in group])
    except Exception as e:  # submitit raises bare Exceptions / FailedJobError on sbatch errors
        raise LaunchError(f"submitting {len(group)} runs of {group[0].run.exp_name} failed: {e}") from e


def record_submission(planned: Planned, job, folder: Path) -> dict:
    """Write ``sbatch.sh`` and ``slurm.log`` into the run directory; return the manifest entry."""
    logdir = Path(planned.run.logdir)
    paths = job.paths
    shutil.copyfile(submission_file(folder, str(job.job_id)), logdir / "sbatch.sh")
    link = logdir / "slurm.log"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(paths.stdout)
    entry = {"name": planned.run.name, "logdir": planned.run.logdir, "job_id": job.job_id,
             "command": planned.run.command, "argv": list(planned.run.argv), "env": planned.run.env,
             "task_argv": task_spec(planned).argv,
             "hparams": planned.run.hparams, "resources": dataclasses.asdict(planned.spec),
             "log": str(paths.stdout)}
    return entry


def print_jobs(entries: Sequence[dict]) -> None:
    for e in entries:
        print(f"{e['job_id']}\t{e['name']}\t{e['logdir']}")
    sys.stdout.flush()


def planned_from_entry(entry: dict, logroot: Path) -> Planned:
    """Rebuild a run from its manifest entry (for ``resubmit``): same directory, same command."""
    from .resources import farm_spec

    logdir = entry["logdir"]
    exp_name = Path(logdir).parent.name
    run = Run(exp_name=exp_name, name=entry["name"], logdir=logdir,
              job_name=f"{exp_name}_{entry['name']}", hparams=entry.get("hparams", {}),
              argv=tuple(entry["argv"]), env=dict(entry.get("env", {})))
    return Planned(run=run, spec=farm_spec(entry["resources"]), logroot=str(logroot))


def submission_file(folder: Path, job_id: str) -> Path:
    """The script submitit sent for ``job_id`` (array tasks share their array's script)."""
    from submitit.core.utils import JobPaths

    return JobPaths(folder / "%j", job_id=job_id.split("_")[0]).submission_file
