"""``python -m sbatch``: runx's command line, submitting through submitit to Slurm.

    python -m sbatch EXP.yml [key=value ...] [key=a,b ...] [-n] [-i [--keep-going]] [--tag T]
                             [--exp_name E] [--farm F] [--config_file C] [--no_cooldir]
    python -m sbatch status EXP      a table: state, requeues, exit status, elapsed, progress, metric
    python -m sbatch cancel EXP      scancel the experiment's unfinished jobs
    python -m sbatch resubmit EXP --failed [--from-yaml]   submit the failed/cancelled/timed-out
                                     runs again (--from-yaml: with the YAML's current values)

key=value sets a hyperparameter in every run (key=a,b sweeps it); train.py / predict.py flags
are checked at submission with their own parsers, before anything is created or queued.
    python -m sbatch init [--force] [--logroot DIR]   write ./.runx from the template

EXP is an experiment name (a folder under LOGROOT), its YAML file, or the folder itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.errors import run_cli

from . import launch, manifest
from .expand import Run, check_unique, expand_experiment
from .launch import LaunchError, Planned
from .overrides import apply_overrides
from .resources import farm_spec
from .runxconf import REPO, Settings, load_settings, logroot_of, write_runx

COMMANDS = ("status", "cancel", "resubmit", "init")


def exp_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sbatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exp_yml", help="experiment YAML (CMD + HPARAMS)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="set a hyperparameter in every run; key=a,b sweeps it")
    p.add_argument("--exp_name", help="experiment name (default: the YAML's file name)")
    p.add_argument("--tag", help="put this tag in front of every run name")
    p.add_argument("--no_cooldir", action="store_true", help="run name = tag only (no coolname/date)")
    p.add_argument("-n", "--no_run", action="store_true",
                   help="print each job array's sbatch script and one line per task (with -i: each "
                        "command); create nothing")
    p.add_argument("-i", "--interactive", action="store_true", help="run here, in order")
    p.add_argument("--keep-going", action="store_true", help="with -i: continue after a failed run")
    p.add_argument("--farm", help="farm section of .runx to use (default: its FARM)")
    p.add_argument("-c", "--config_file", help="use this file instead of ./.runx")
    return p


def plan(args: argparse.Namespace) -> tuple[Settings, list[Planned]]:
    """Expand the YAML (with the overrides) and check every run's flags; creates nothing."""
    from .validate import check_runs

    settings = load_settings(args.exp_yml, config_file=args.config_file, farm=args.farm,
                             exp_name=args.exp_name)
    settings = dataclasses.replace(settings, experiment=apply_overrides(settings.experiment, args.overrides))
    runs = expand_experiment(settings.experiment, exp_name=settings.exp_name,
                             logroot=str(settings.logroot), tag=args.tag, no_cooldir=args.no_cooldir)
    check_unique(runs)
    check_runs(runs)
    plans = [Planned(run=r, spec=farm_spec(settings.resources, r.resources),
                     logroot=str(settings.logroot)) for r in runs]
    return settings, plans


def dry_run(settings: Settings, plans: Sequence[Planned], interactive: bool) -> str:
    """``-n``: each job array's script once, then one line per task with what it really runs."""
    exp_dir = settings.logroot / settings.exp_name
    if interactive:
        return "".join(f"cd {p.code_dir} && {p.run.command}\n" for p in plans)
    out: list[str] = []
    for n, group in enumerate(launch.group_plans(plans)):
        script = launch.render_script(group, exp_dir / "submitit", str(manifest.manifest_path(exp_dir)))
        kind = f"job array of {len(group)} runs" if len(group) > 1 else "job of 1 run"
        out.append(f"# ==== {kind} (group {n + 1}): the script sbatch receives ====\n{script}\n")
        out.append(f"# ==== its {'tasks' if len(group) > 1 else 'task'}: index, run, what the task runs "
                   "(in <logdir>/code) ====\n")
        out += [f"# {k} {p.run.name} {launch.task_command(p)}\n" for k, p in enumerate(group)]
    return "".join(out)


def submit(settings: Settings, plans: Sequence[Planned], code_root: Path, source: dict | None = None) -> list[dict]:
    """Create the run directories and submit one job array per resource group. Runs whose group
    could not be submitted leave nothing behind (directories created here are removed)."""
    exp_dir = settings.logroot / settings.exp_name
    mpath = str(manifest.manifest_path(exp_dir))
    fresh = {p.run.logdir for p in plans if not Path(p.run.logdir).exists()}
    index = {p.run.logdir: i for i, p in enumerate(plans)}
    entries: list[dict] = []
    pending = list(plans)
    try:
        for planned in plans:
            launch.write_run_files(planned, code_root, settings.code_ignore_patterns)
        for group in launch.group_plans(plans):
            jobs = launch.submit_group(group, exp_dir / "submitit", mpath)
            done = [launch.record_submission(p, j, exp_dir / "submitit") for p, j in zip(group, jobs, strict=True)]
            for e in done:
                e["index"] = index[e["logdir"]]
            manifest.add_runs(exp_dir, done, source=source)
            entries += done
            pending = [p for p in pending if p not in group]
    except LaunchError as e:
        removed = _remove_unsubmitted(exp_dir, [p for p in pending if p.run.logdir in fresh])
        raise LaunchError(f"{e}\n{len(pending)} runs were not queued; removed {removed} run directories "
                          "created for them") from e
    return entries


def _remove_unsubmitted(exp_dir: Path, plans: Sequence[Planned]) -> int:
    for p in plans:
        shutil.rmtree(p.run.logdir, ignore_errors=True)
    if not manifest.manifest_path(exp_dir).exists():  # nothing of this experiment was ever queued
        shutil.rmtree(exp_dir / "submitit", ignore_errors=True)
        Path(str(manifest.manifest_path(exp_dir)) + ".lock").unlink(missing_ok=True)
        if exp_dir.is_dir() and not any(exp_dir.iterdir()):
            exp_dir.rmdir()
    return len(plans)


def main_experiment(argv: Sequence[str]) -> int:
    args = exp_parser().parse_intermixed_args(argv)
    ensure_runx_file(args.config_file)
    settings, plans = plan(args)
    if args.no_run:
        sys.stdout.write(dry_run(settings, plans, args.interactive))
        return 0
    code_root = Path.cwd()
    if args.interactive:
        outcome = launch.run_local(plans, keep_going=args.keep_going, code_root=code_root,
                                   patterns=settings.code_ignore_patterns)
        print(f"[sbatch] {outcome.line()}", file=sys.stderr)
        return 1 if outcome.failed else 0
    source = {"yaml": str(Path(args.exp_yml).resolve()), "overrides": list(args.overrides),
              "tag": args.tag, "no_cooldir": args.no_cooldir, "farm": args.farm}
    entries = submit(settings, plans, code_root, source)
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
    sys.stdout.write(manifest.format_table(manifest.statuses(exp_dir_of(args.exp, args.config_file))))
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
    p.add_argument("--from-yaml", action="store_true",
                   help="take each run's flags and resources from the experiment YAML as it is now "
                        "(plus the submission's key=value overrides), not from the manifest")
    p.add_argument("-c", "--config_file")
    args = p.parse_args(argv)
    exp_dir = exp_dir_of(args.exp, args.config_file)
    failed = {s.name for s in manifest.statuses(exp_dir) if s.state in manifest.FAILED_STATES}
    runs = [r for r in manifest.load(exp_dir)["runs"] if r["name"] in failed]
    if not runs:
        print("no failed runs")
        return 0
    if args.from_yaml:
        plans = plans_from_yaml(exp_dir, runs, args.config_file)
    else:
        plans = [launch.planned_from_entry(r, exp_dir.parent) for r in runs]
    from .validate import check_runs

    check_runs([pl.run for pl in plans])
    mpath = str(manifest.manifest_path(exp_dir))
    entries: list[dict] = []
    for group in launch.group_plans(plans):
        jobs = launch.submit_group(group, exp_dir / "submitit", mpath)
        entries += [launch.record_submission(pl, j, exp_dir / "submitit")
                    for pl, j in zip(group, jobs, strict=True)]
    manifest.add_runs(exp_dir, entries)
    launch.print_jobs(entries)
    return 0


_SLUG = "resubmit-slug"


def plans_from_yaml(exp_dir: Path, entries: Sequence[dict], config_file: str | None) -> list[Planned]:
    """The runs' flags and resources re-expanded from the YAML the experiment was submitted from
    (matched by position in the expansion); each keeps its name and run directory."""
    source = manifest.load(exp_dir).get("source") or {}
    yaml_path = source.get("yaml")
    if not yaml_path or not Path(yaml_path).is_file():
        raise manifest.ManifestError(f"--from-yaml: the manifest in {exp_dir} names no readable experiment "
                                     f"YAML ({yaml_path!r}); resubmit without --from-yaml")
    settings = load_settings(yaml_path, config_file=config_file, farm=source.get("farm"), exp_name=exp_dir.name)
    experiment = apply_overrides(settings.experiment, source.get("overrides", []))
    fresh = expand_experiment(experiment, exp_name=exp_dir.name, logroot=str(exp_dir.parent),
                              tag=source.get("tag"), no_cooldir=False, slug=lambda: _SLUG)
    plans = []
    for entry in entries:
        k = entry.get("index")
        if k is None or k >= len(fresh):
            raise manifest.ManifestError(
                f"--from-yaml: run {entry['name']} (position {k}) has no counterpart in {yaml_path}, which now "
                f"expands to {len(fresh)} runs; submit the YAML as a new experiment instead")
        run = _moved(fresh[k], entry)
        plans.append(Planned(run=run, spec=farm_spec(settings.resources, run.resources), logroot=str(exp_dir.parent)))
        launch.refresh_run_files(plans[-1])
    return plans


def _moved(run: Run, entry: dict) -> Run:
    """``run`` expanded under a placeholder directory, put into the manifest entry's directory."""
    def fix(v: object) -> object:
        return v.replace(run.logdir, entry["logdir"]) if isinstance(v, str) else v

    return dataclasses.replace(run, name=entry["name"], logdir=entry["logdir"],
                               job_name=f"{run.exp_name}_{entry['name']}", argv=tuple(str(fix(a)) for a in run.argv),
                               hparams={k: fix(v) for k, v in run.hparams.items()})


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
        return run_cli("python -m sbatch", lambda: _lines(handlers[argv[0]], argv[1:]), argv)
    return run_cli("python -m sbatch", lambda: _lines(main_experiment, argv), argv)


def _lines(handler: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    """Bad flags in several runs: one error line per run (other errors: run_cli's one line)."""
    from .validate import FlagError

    try:
        return handler(argv)
    except FlagError as e:
        for line in str(e).splitlines():
            print(f"python -m sbatch: error: {line}", file=sys.stderr)
        return 2
