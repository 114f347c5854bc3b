"""runx's farm mode, submitting through this launcher: ``python -m sbatch.submit_job``.

runx 0.0.11 (without ``-i``) builds, for a farm whose name contains ``draco``::

    <SUBMIT_CMD> --<resource> <value> ... --name <job> \\
        --command ' cd <logdir>/code; PYTHONPATH=... exec <cmd> <flags> ' --logdir <logdir>/gcf_log

and runs it through ``/bin/sh`` from ``<logdir>`` after copying the code to ``<logdir>/code``.
This module turns that into one Slurm job (same resources schema, container wrapping, requeue
and manifest as ``python -m sbatch``). The command string is runx's, run by ``/bin/sh -c``:
runx pastes values unquoted, so values with spaces or quotes need ``python -m sbatch`` instead.
CMD runs as written (a ``torchrun`` in it starts the GPU processes): one Slurm task per node.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.errors import run_cli

from . import launch, manifest
from .expand import Run, check_name
from .resources import ResourceError, farm_spec


def parse_args(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split runx's ``--key value`` / ``--flag`` words into resources and the three fixed args."""
    fixed_keys = ("name", "command", "logdir")
    resources: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    words = list(argv)
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            raise ResourceError(f"unexpected word {word!r} in runx's submit command")
        key = word[2:]
        value: Any = True if not words or words[0].startswith("--") else words.pop(0)
        if key in fixed_keys:
            fixed[key] = str(value)
        elif key in resources:  # runx repeats a list-valued resource
            old = resources[key]
            resources[key] = [*(old if isinstance(old, list) else [old]), value]
        else:
            resources[key] = value
    missing = [k for k in fixed_keys if k not in fixed]
    if missing:
        raise ResourceError(f"runx's submit command lacks {missing}")
    return resources, fixed


def submit(argv: Sequence[str]) -> int:
    """Submit the one run runx describes; bad words or resources raise sbatch's UserErrors."""
    resources, fixed = parse_args(argv)
    spec = farm_spec(resources, {"tasks_per_node": resources.get("tasks_per_node", 1)})
    logdir = Path(fixed["logdir"]).parent
    exp_dir = logdir.parent
    check_name("experiment name", exp_dir.name, "rename the experiment")
    run = Run(exp_name=exp_dir.name, name=logdir.name, logdir=str(logdir), job_name=fixed["name"],
              hparams={}, argv=("/bin/sh", "-c", fixed["command"].strip()))
    planned = launch.Planned(run=run, spec=spec, logroot=str(exp_dir.parent))
    folder = exp_dir / "submitit"
    jobs = launch.submit_group([planned], folder, str(manifest.manifest_path(exp_dir)))
    entry = launch.record_submission(planned, jobs[0], folder)
    manifest.add_runs(exp_dir, [entry])
    launch.print_jobs([entry])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("sbatch.submit_job", lambda: submit(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
