"""The launcher's expansion against the runx package's own output on the same files.

Golden files (tests/golden/runx/<case>.txt) are runx 0.0.11's ``-n`` output in farm mode (a
``draco`` farm, so that resources are printed too), with the log root and the random
coolname/date parts normalised. ``test_golden_is_what_runx_prints`` re-runs runx to prove the
files are runx's; ``HMSA_REGEN_GOLDEN=1`` rewrites them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sbatch.expand import ExperimentError, check_unique, expand_experiment

GOLDEN = Path(__file__).resolve().parent / "golden" / "runx"
COOL = re.compile(r"[a-z]+-[a-z]+_\d{4}\.\d\d\.\d\d_\d\d\.\d\d")
FARM_RESOURCES = {"gpu": 1}

CASES: dict[str, tuple[dict, list[str]]] = {
    "cross": ({"CMD": "python train.py --fixed 1", "HPARAMS": {
        "lr": ["5e-3", 1e-2, 0.5], "bs": [1, 2], "syncbn": True, "apex": False,
        "snapshot": "None", "crop_size": "1024,2048", "result_dir": "LOGDIR",
        "dump": "LOGDIR/dump"}}, []),
    "inherit": ({"CMD": "torchrun --nproc_per_node=8 train.py", "HPARAMS": [
        {"dataset": "cityscapes", "lr": 0.01, "fp16": True, "result_dir": "LOGDIR"},
        {"lr": [0.02, 0.03], "fp16": False},
        {"dataset": "mapillary", "max_epoch": 200}]}, []),
    "tag_skip": ({"CMD": "python train.py", "HPARAMS": [
        {"arch": "ocrnet.HRNet_Mscale", "lr": [0.1, 0.2], "RUNX.TAG": "{arch}-lr{lr}",
         "result_dir": "LOGDIR"},
        {"arch": "ocrnet.HRNet", "RUNX.SKIP": True},
        {"arch": "ocrnet.HRNet_w18", "RUNX.SKIP": False}]}, []),
    "resources": ({"CMD": "python train.py", "HPARAMS": {
        "SUBMIT_JOB.NODES": [1, 2], "SUBMIT_JOB.PARTITION": "batch", "x": "LOGDIR"}}, []),
    "cli_tag": ({"CMD": "python train.py", "HPARAMS": {"a": [1, 2]}}, ["--tag", "mytag"]),
    "no_cooldir": ({"CMD": "python train.py", "HPARAMS": {"a": [1, 2], "RUNX.TAG": "a{a}"}},
                   ["--no_cooldir", "--exp_name", "renamed"]),
}


def runx_dry_run(tmp: Path, case: str) -> str:
    """runx's ``-n`` output for a case, normalised (log root, coolname, date)."""
    experiment, flags = CASES[case]
    logroot = tmp / "logroot"
    (tmp / "golden.runx").write_text(yaml.safe_dump({
        "LOGROOT": str(logroot), "FARM": "golden_draco",
        "golden_draco": {"SUBMIT_CMD": "submit_job", "RESOURCES": FARM_RESOURCES}}))
    exp = tmp / f"{case}.yml"
    exp.write_text(yaml.safe_dump(experiment, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "runx.runx", str(exp), "-n", "-c", "golden.runx", *flags],
                          cwd=tmp, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout.replace(str(logroot), "<LOGROOT>")
    return COOL.sub("<COOL>", text)


def parse_runx(text: str) -> list[dict]:
    """One record per printed run: resources, job name, logdir and the command's words."""
    records = []
    for line in text.splitlines():
        head, _, rest = line.partition(" --name ")
        job, _, rest = rest.partition(" --command ' ")
        command, _, logdir = rest.rpartition(" ' --logdir ")
        words = head.split()[1:]
        resources = dict(zip(words[0::2], words[1::2], strict=True))
        cd, _, cmd = command.partition("; ")
        _, _, cmd = cmd.partition(" exec ")  # after PYTHONPATH=...
        records.append({"job": job, "logdir": logdir.removesuffix("/gcf_log"),
                        "code": cd.removeprefix("cd "), "resources": resources, "argv": cmd.split()})
    return records


def ours(case: str) -> list[dict]:
    experiment, flags = CASES[case]
    opts = {f: flags[i + 1] for i, f in enumerate(flags) if f in ("--tag", "--exp_name")}
    exp_name = opts.get("--exp_name", case)
    runs = expand_experiment(experiment, exp_name=exp_name, logroot="<LOGROOT>",
                             tag=opts.get("--tag"), no_cooldir="--no_cooldir" in flags,
                             slug=lambda: "a-b")
    out = []
    for run in runs:
        logdir = COOL.sub("<COOL>", run.logdir)
        resources = {f"--{k}": str(v) for k, v in {**FARM_RESOURCES, **run.resources}.items()}
        out.append({"job": COOL.sub("<COOL>", run.job_name), "logdir": logdir, "code": f"{logdir}/code",
                    "resources": resources, "argv": [COOL.sub("<COOL>", a) for a in run.argv]})
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_expansion_matches_runx_golden(case):
    golden = (GOLDEN / f"{case}.txt").read_text()
    assert ours(case) == parse_runx(golden)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_is_what_runx_prints(case, tmp_path):
    text = runx_dry_run(tmp_path, case)
    path = GOLDEN / f"{case}.txt"
    if os.environ.get("HMSA_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_values_stay_single_arguments_where_runx_splits_them():
    runs = expand_experiment({"CMD": "python t.py", "HPARAMS": {"name": "a b; $(x) `y` 'q'"}},
                             exp_name="e", logroot="/l", slug=lambda: "a-b")
    assert runs[0].argv[-2:] == ("--name", "a b; $(x) `y` 'q'")
    assert shlex.split(runs[0].command) == list(runs[0].argv)


def test_cmd_environment_prefix_becomes_env():
    run, = expand_experiment({"CMD": "OMP_NUM_THREADS=1 FOO='a b' python t.py", "HPARAMS": {"x": 1}},
                             exp_name="e", logroot="/l", slug=lambda: "a-b")
    assert run.env == {"OMP_NUM_THREADS": "1", "FOO": "a b"} and run.argv == ("python", "t.py", "--x", "1")


def test_shared_directory_is_refused():
    runs = expand_experiment({"CMD": "p", "HPARAMS": {"x": [1, 2]}}, exp_name="e", logroot="/l",
                             no_cooldir=True, tag="same")
    with pytest.raises(ExperimentError, match="share the directory"):
        check_unique(runs)


def test_missing_keys_are_named():
    with pytest.raises(ExperimentError, match="HPARAMS"):
        expand_experiment({"CMD": "p"}, exp_name="e", logroot="/l")
