"""``python -m sbatch``: runx's command line, submitting through submitit to Slurm.

    python -m sbatch EXP.yml [-n] [-i [--keep-going]] [--tag T] [--exp_name E] [--farm F]
                             [--config_file C] [--no_cooldir]
    python -m sbatch status EXP      one line per run: state, exit status, last metric
    python -m sbatch cancel EXP      scancel the experiment's unfinished jobs
    python -m sbatch resubmit EXP --failed   submit the failed/cancelled/timed-out runs again
    python -m sbatch init [--force] [--logroot DIR]   write ./.runx from the template

EXP is an experiment name (a folder under LOGROOT), its YAML file, or the folder itself.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.errors import run_cli

from . import launch, manifest
from .expand import ExperimentError, check_unique, expand_experiment
from .launch import LaunchError, Planned
from .resources import ResourceError, farm_spec
from .runxconf import REPO, ConfigFileError, Settings, load_settings, logroot_of, write_runx

COMMANDS = ("status", "cancel", "resubmit", "init")
ERRORS = (ExperimentError, ResourceError, ConfigFileError, LaunchError, manifest.ManifestError)


def exp_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sbatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exp_yml", help="experiment YAML (CMD + HPARAMS)")
    p.add_argument("--exp_name", help="experiment name (default: the YAML's file name)")
    p.add_argument("--tag", help="put this tag in front of every run name")
    p.add_argument("--no_cooldir", action="store_true", help="run name = tag only (no coolname/date)")
    p.add_argument("-n", "--no_run", action="store_true",
                   help="print every run's sbatch script (with -i: its command); create nothing")
    p.add_argument("-i", "--interactive", action="store_true", help="run here, in order")
    p.add_argument("--keep-going", action="store_true", help="with -i: continue after a failed run")
    p.add_argument("--farm", help="farm section of .runx to use (default: its FARM)")
    p.add_argument("-c", "--config_file", help="use this file instead of ./.runx")
    return p


def plan(args: argparse.Namespace) -> tuple[Settings, list[Planned]]:
    settings = load_settings(args.exp_yml, config_file=args.config_file, farm=args.farm,
                             exp_name=args.exp_name)
    runs = expand_experiment(settings.experiment, exp_name=settings.exp_name,
                             logroot=str(settings.logroot), tag=args.tag, no_cooldir=args.no_cooldir)
    check_unique(runs)
    plans = [Planned(run=r, spec=farm_spec(settings.resources, r.resources),
                     logroot=str(settings.logroot)) for r in runs]
    return settings, plans


def dry_run(settings: Settings, plans: Sequence[Planned], interactive: bool) -> str:
    exp_dir = settings.logroot / settings.exp_name
    out: list[str] = []
    if interactive:
        return "".join(f"cd {p.code_dir} && {p.run.command}\n" for p in plans)
    for group in launch.group_plans(plans):
        script = launch.render_script(group, exp_dir / "submitit", str(manifest.manifest_path(exp_dir)))
        for k, planned in enumerate(group):
            out.append(f"# ==== run {planned.run.name} (array task {k} of {len(group)}) ====\n"
                       f"# logdir:  {planned.run.logdir}\n# command: {planned.run.command}\n"
                       f"# task runs: {shlex.join(launch.task_spec(planned).argv)}\n{script}\n")
    return "".join(out)


def submit(settings: Settings, plans: Sequence[Planned], code_root: Path) -> list[dict]:
    exp_dir = settings.logroot / settings.exp_name
    mpath = str(manifest.manifest_path(exp_dir))
    entries: list[dict] = []
    for planned in plans:
        launch.write_run_files(planned, code_root, settings.code_ignore_patterns)
    for group in launch.group_plans(plans):
        jobs = launch.submit_group(group, exp_dir / "submitit", mpath)
        entries += [launch.record_submission(p, j, exp_dir / "submitit")
                    for p, j in zip(group, jobs, strict=True)]
        manifest.add_runs(exp_dir, entries[-len(group):])
    return entries


def main_experiment(argv: Sequence[str]) -> int:
    args = exp_parser().parse_args(argv)
    ensure_runx_file(args.config_file)
    settings, plans = plan(args)
    if args.no_run:
        sys.stdout.write(dry_run(settings, plans, args.interactive))
        return 0
    code_root = Path.cwd()
    if args.interactive:
        failed = launch.run_local(plans, keep_going=args.keep_going, code_root=code_root,
                                  patterns=settings.code_ignore_patterns)
        print(f"[sbatch] {len(plans) - failed} of {len(plans)} runs succeeded" if failed else
              f"[sbatch] all {len(plans)} runs succeeded", file=sys.stderr)
        return 1 if failed else 0
    entries = submit(settings, plans, code_root)
    launch.print_jobs(entries)
    return 0


def ensure_runx_file(config_file: str | None) -> None:
    """Write ./.runx from the template in a fresh checkout, so that runx itself works too."""
    if config_file is None and Path.cwd().resolve() == REPO and not (REPO / ".runx").exists():
        path = write_runx(REPO)
        print(f"[sbatch] wrote {path} from sbatch/runx_template.yml", file=sys.stderr)


def exp_dir_of(exp: str, config_file: str | None = None) -> Path:
    """An experiment given as a folder, a YAML file or a name under LOGROOT."""
    path = Path(exp)
    if path.is_dir() and manifest.manifest_path(path).exists():
        return path
    if path.suffix in (".yml", ".yaml") and path.is_file():
        settings = load_settings(path, config_file=config_file)
        return settings.logroot / settings.exp_name
    return logroot_of(config_file) / exp


def main_status(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m sbatch status")
    p.add_argument("exp")
    p.add_argument("-c", "--config_file")
    args = p.parse_args(argv)
    rows = manifest.statuses(exp_dir_of(args.exp, args.config_file))
    for row in rows:
        print(row.line())
    return 0


def main_cancel(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m sbatch cancel")
    p.add_argument("exp")
    p.add_argument("-c", "--config_file")
    args = p.parse_args(argv)
    ids = manifest.cancel(exp_dir_of(args.exp, args.config_file))
    print(f"cancelled {len(ids)} jobs: {' '.join(ids)}" if ids else "nothing to cancel")
    return 0


def main_resubmit(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m sbatch resubmit")
    p.add_argument("exp")
    p.add_argument("--failed", action="store_true", required=True,
                   help="resubmit runs that ended FAILED, TIMEOUT, CANCELLED, OUT_OF_MEMORY ...")
    p.add_argument("-c", "--config_file")
    args = p.parse_args(argv)
    exp_dir = exp_dir_of(args.exp, args.config_file)
    failed = {s.name for s in manifest.statuses(exp_dir) if s.state in manifest.FAILED_STATES}
    runs = [r for r in manifest.load(exp_dir)["runs"] if r["name"] in failed]
    if not runs:
        print("no failed runs")
        return 0
    plans = [launch.planned_from_entry(r, exp_dir.parent) for r in runs]
    mpath = str(manifest.manifest_path(exp_dir))
    entries: list[dict] = []
    for group in launch.group_plans(plans):
        jobs = launch.submit_group(group, exp_dir / "submitit", mpath)
        entries += [launch.record_submission(pl, j, exp_dir / "submitit")
                    for pl, j in zip(group, jobs, strict=True)]
    manifest.add_runs(exp_dir, entries)
    launch.print_jobs(entries)
    return 0


def main_init(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m sbatch init")
    p.add_argument("--force", action="store_true", help="overwrite an existing .runx")
    p.add_argument("--logroot", help="LOGROOT to write (default: <repo>/logs)")
    args = p.parse_args(argv)
    existed = (REPO / ".runx").exists()
    path = write_runx(REPO, force=args.force, logroot=args.logroot)
    print(f"{'kept existing' if existed and not args.force else 'wrote'} {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    handlers = {"status": main_status, "cancel": main_cancel, "resubmit": main_resubmit,
                "init": main_init}
    if argv and argv[0] in handlers:
        return run_cli("python -m sbatch", lambda: handlers[argv[0]](argv[1:]), argv, extra=ERRORS)
    return run_cli("python -m sbatch", lambda: main_experiment(argv), argv, extra=ERRORS)
