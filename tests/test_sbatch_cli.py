"""``python -m sbatch`` for the daily loop: the status table, ``-n`` text (golden files), flags
checked at submission, ``key=value`` overrides and sweeps, clean-up after a failed submission,
``resubmit --from-yaml``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sbatch import cli, manifest
from sbatch.expand import expand_experiment
from sbatch.launch import LaunchError, Planned, container_argv
from sbatch.overrides import OverrideError, apply_overrides, parse_override
from sbatch.resources import farm_spec
from sbatch.runxconf import Settings
from sbatch.validate import FlagError, check_runs

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "sbatch"
DATA_ENV = ("CITYSCAPES_ROOT", "MAPILLARY_ROOT", "SYNTHETIC_ROOT", "ASSETS_PATH", "DATA_ROOT")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HMSA_REGEN_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


def runs_of(experiment: dict, logroot: str = "/logs") -> list:
    return expand_experiment(experiment, exp_name="exp", logroot=logroot, slug=lambda: "cool-name",
                             now=__import__("datetime").datetime(2024, 1, 2, 3, 4))


# ---------------------------------------------------------------- status


def _status(name: str, **kw) -> manifest.RunStatus:
    base = {"job_id": "", "state": "", "exit_code": "", "metric": "", "logdir": "/x"}
    return manifest.RunStatus(name=name, **{**base, **kw})


def test_status_table_golden():
    rows = [_status("lr0.01_bs8_crop1024_abundant-puffin_2026.11.30_01.44", job_id="1234_0", state="RUNNING",
                    exit_code="-", requeues=2, elapsed="01:02:03", progress="it 1200/9000 loss 0.4123"),
            _status("lr0.02_bs8_crop1024_gentle-otter_2026.11.30_01.44", job_id="1234_1", state="COMPLETED",
                    exit_code="0", elapsed="2-03:04:05", progress="it 9000/9000 loss 0.2010",
                    metric="mean_iu=0.7712"),
            _status("x", job_id="1235", state="PENDING")]
    golden("status.txt", manifest.format_table(rows))


def test_status_reads_requeues_progress_and_elapsed(tmp_path, monkeypatch):
    """sacct is replaced by its parsed output (no Slurm here); the run files are real."""
    run = tmp_path / "exp" / "r1"
    run.mkdir(parents=True)
    events = [{"event": "start", "job_id": "7_0", "restart": 0}, {"event": "exit", "job_id": "7_0", "returncode": 75},
              {"event": "start", "job_id": "7_0", "restart": 1}]
    (run / "slurm_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / "metrics.jsonl").write_text(json.dumps({"phase": "train", "iteration": 40, "total_iters": 90,
                                                   "loss": 0.5}) + "\n")
    manifest.add_runs(tmp_path / "exp", [{"name": "r1", "logdir": str(run), "job_id": "7_0"}])
    monkeypatch.setattr(manifest, "_sacct", lambda _ids: {"7_0": ("RUNNING", "0:0", "00:10:00")})
    row, = manifest.statuses(tmp_path / "exp")
    assert (row.requeues, row.elapsed, row.progress, row.exit_code) == (1, "00:10:00", "it 40/90 loss 0.5000", "-")


# ---------------------------------------------------------------- -n


def test_dry_run_golden_one_script_per_array_and_env_words(tmp_path, monkeypatch):
    for key in DATA_ENV:
        monkeypatch.delenv(key, raising=False)
    exp = {"CMD": "OMP_NUM_THREADS=1 python train.py",
           "HPARAMS": {"lr": [0.01, 0.02], "max_epoch": [1, 2], "dataset": "synthetic", "result_dir": "LOGDIR",
                       "RUNX.TAG": "lr{lr}_e{max_epoch}"}}
    logroot = str(tmp_path / "logs")
    plans = [Planned(run=r, spec=farm_spec({"time": 10}), logroot=logroot) for r in runs_of(exp, logroot)]
    settings = Settings(config_path=None, logroot=Path(logroot), exp_name="exp", farm=None, resources={},
                        code_ignore_patterns=())
    text = cli.dry_run(settings, plans, interactive=False)
    assert text.count("#!/bin/bash") == 1 and "--wckey" not in text
    assert text.count("OMP_NUM_THREADS=1 python train.py --lr") == 8  # 4 script comments + 4 task lines
    golden("dry_run.txt", text.replace(str(tmp_path), "<TMP>").replace(sys.executable, "<PYTHON>"))


@pytest.mark.parametrize("bind", ["/data/a,b", "/data/x:y"])
def test_bind_paths_with_separators_are_refused(bind):
    with pytest.raises(LaunchError, match="contains ',' or ':'"):
        container_argv(["p"], farm_spec({"image": "/i.sif"}), binds=[bind], cwd="/c")


# ---------------------------------------------------------------- flags checked at submission


def test_scripts_pass_submission_checks():
    for path in sorted((REPO / "scripts").glob("*.yml")):
        check_runs(runs_of(yaml.safe_load(path.read_text())))


def test_bad_flags_refused_one_line_per_run():
    runs = runs_of({"CMD": "torchrun --nproc_per_node=2 train.py",
                    "HPARAMS": {"lr": ["notanumber", 0.1, "x"], "RUNX.TAG": "r{lr}"}})
    with pytest.raises(FlagError) as e:
        check_runs(runs)
    lines = str(e.value).splitlines()
    assert lines[0] == ("run rnotanumber_cool-name_2024.01.02_03.04: train.py: argument --lr: "
                        "invalid float value: 'notanumber'")
    assert lines[1].startswith("run rx_") and lines[2].startswith("2 of 3 runs have bad flags")
    check_runs(runs_of({"CMD": "python other.py", "HPARAMS": {"lr": "notanumber"}}))  # not our program


def test_predict_flags_checked_with_predicts_parser():
    with pytest.raises(FlagError, match="predict.py: .*--eval_folder"):
        check_runs(runs_of({"CMD": "python predict.py", "HPARAMS": {"arch": "ocrnet.HRNet_w18s", "result_dir": "x"}}))


# ---------------------------------------------------------------- key=value overrides


def test_parse_overrides():
    lists = {"crop_size", "n_scales"}
    assert parse_override("lr=0.01", lists) == ("lr", 0.01)
    assert parse_override("lr=0.01,0.02", lists) == ("lr", [0.01, 0.02])
    assert parse_override("crop_size=96,192", lists) == ("crop_size", "96,192")
    assert parse_override("do_flip=true", lists) == ("do_flip", True)
    assert parse_override("RUNX.TAG=lr{lr}", lists) == ("RUNX.TAG", "lr{lr}")
    for bad in ("lr", "=1", "lr=1,,2", "a b=1"):
        with pytest.raises(OverrideError):
            parse_override(bad, lists)


def test_overrides_replace_in_place_and_sweep():
    exp = {"CMD": "python train.py", "HPARAMS": [{"lr": 0.1, "bs_trn": 2}, {"bs_trn": 4}]}
    out = apply_overrides(exp, ["bs_trn=8,16", "seed=3"])
    assert exp["HPARAMS"][0]["bs_trn"] == 2  # the YAML's dict is not changed
    runs = runs_of(out)
    assert [r.argv[2:] for r in runs][:2] == [("--lr", "0.1", "--bs_trn", "8", "--seed", "3"),
                                              ("--lr", "0.1", "--bs_trn", "16", "--seed", "3")]
    assert len(runs) == 4 and all(r.hparams["seed"] == 3 for r in runs)


def sbatch_cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "sbatch", *args], cwd=root, env=full, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text("import sys; sys.exit(0)\n")
    (root / ".runx").write_text(yaml.safe_dump({"LOGROOT": "logs", "CODE_IGNORE_PATTERNS": "logs", "FARM": "f",
                                                "f": {"SUBMIT_CMD": "x", "RESOURCES": {"time": 5}}}))
    (root / "exp.yml").write_text(yaml.safe_dump({"CMD": "python train.py",
                                                  "HPARAMS": {"lr": 0.1, "result_dir": "LOGDIR"}}))
    return root


def test_dry_run_and_status_do_not_import_torch(project):
    """`-n` and `status` answer in about a second: reading the datasets' root variables must not
    load a class table (Mapillary's imported torch, 5 s per call, slow enough that a status
    watcher missed two short runs running side by side)."""
    for args in (("exp.yml", "-n"), ("status", "exp")):
        done = sbatch_cli(project, *args, env={"PYTHONPROFILEIMPORTTIME": "1"})
        imported = {ln.rsplit("|", 1)[-1].strip() for ln in done.stderr.splitlines() if ln.startswith("import time")}
        assert "sbatch.cli" in imported and "torch" not in imported, (args, done.stdout[-500:])


def test_cli_overrides_with_dry_run_and_interactive(project):
    done = sbatch_cli(project, "exp.yml", "-n", "lr=0.01,0.02", "max_epoch=1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#!/bin/bash") == 1 and "python train.py --lr 0.02 --result_dir" in done.stdout
    ran = sbatch_cli(project, "exp.yml", "-i", "lr=0.5")
    assert ran.returncode == 0, ran.stderr
    hp, = (project / "logs" / "exp").glob("*/hparams.json")
    assert json.loads(hp.read_text())["lr"] == 0.5


def test_cli_refuses_bad_flags_before_creating_anything(project):
    done = sbatch_cli(project, "exp.yml", "lr=notanumber,0.1,zero")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 3 and all(ln.startswith("python -m sbatch: error: ") for ln in lines)
    assert "invalid float value: 'notanumber'" in lines[0] and "'zero'" in lines[1]
    assert not (project / "logs").exists()


def test_failed_submission_leaves_no_run_directories(project):
    """The real sbatch client with no reachable cluster (SLURM_CONF names no file)."""
    done = sbatch_cli(project, "exp.yml", "lr=0.1,0.2", env={"SLURM_CONF": str(project / "missing.conf")})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "2 runs were not queued; removed 2 run directories" in done.stderr
    assert not (project / "logs" / "exp").exists()


# ---------------------------------------------------------------- resubmit --from-yaml


def test_resubmit_from_yaml_takes_current_values(project):
    logroot = project / "logs"
    old = runs_of({"CMD": "python train.py", "HPARAMS": {"lr": ["bad", 0.2], "result_dir": "LOGDIR"}}, str(logroot))
    entries = [{"name": r.name + str(i), "logdir": r.logdir + str(i), "job_id": f"5_{i}", "argv": list(r.argv),
                "index": i} for i, r in enumerate(old)]
    for e in entries:
        Path(e["logdir"]).mkdir(parents=True)
    (project / "exp.yml").write_text(yaml.safe_dump({"CMD": "python train.py",
                                                     "HPARAMS": {"lr": [0.1, 0.2], "result_dir": "LOGDIR"}}))
    manifest.add_runs(logroot / "exp", entries, source={"yaml": str(project / "exp.yml"), "overrides": ["seed=4"]})
    plans = cli.plans_from_yaml(logroot / "exp", entries[:1], str(project / ".runx"))
    assert plans[0].run.argv == ("python", "train.py", "--lr", "0.1", "--result_dir", entries[0]["logdir"],
                                 "--seed", "4")
    assert plans[0].run.name == entries[0]["name"]
    assert json.loads((Path(entries[0]["logdir"]) / "hparams.json").read_text())["lr"] == 0.1
    (project / "exp.yml").write_text(yaml.safe_dump({"CMD": "python train.py", "HPARAMS": {"lr": 0.1}}))
    with pytest.raises(manifest.ManifestError, match="no counterpart"):
        cli.plans_from_yaml(logroot / "exp", entries[1:], str(project / ".runx"))


def test_interactive_reports_failed_succeeded_and_not_run(project):
    """`-i` said "3 of 4 runs succeeded" when the first run failed and the other three never ran."""
    (project / "train.py").write_text("import sys; sys.exit(1 if '--lr' in sys.argv and '0.1' in sys.argv else 0)\n")
    done = sbatch_cli(project, "exp.yml", "-i", "lr=0.1,0.2,0.3,0.4")
    assert done.returncode == 1
    assert "[sbatch] 1 failed, 0 succeeded, 3 not run" in done.stderr, done.stderr
    kept = sbatch_cli(project, "exp.yml", "-i", "--keep-going", "lr=0.1,0.2,0.3,0.4", "--tag", "k")
    assert kept.returncode == 1 and "[sbatch] 1 failed, 3 succeeded, 0 not run" in kept.stderr, kept.stderr


@pytest.mark.parametrize("program, hparams, needle", [
    ("train.py", {"n_scales": "0.5,2.0"}, "argument --n_scales: the scales must include 1.0"),
    ("train.py", {"multi_scale_inference": True, "default_scale": 2.0, "extra_scales": "0.5"},
     "--n_scales 0.5,2: the scales must include 1.0"),
    ("train.py", {"n_scales": "0.5,1.0,1.0"}, "distinct"),
    ("predict.py", {"n_scales": "0.5,2.0"}, "argument --n_scales: the scales must include 1.0"),
    ("predict.py", {"tile": 128, "overlap": 128}, "--tile 128 must be larger than --overlap 128"),
    ("predict.py", {"infer_short_side": 0}, "argument --infer_short_side: must be > 0"),
    ("predict.py", {"image_std": "0.2,0,0.2"}, "argument --image_std: must be > 0"),
    ("predict.py", {"shard": "4/4"}, "--shard '4/4'"),
])
def test_values_the_model_would_refuse_are_refused_at_submission(program, hparams, needle):
    """--n_scales without 1.0 passed the submission check; the job waited in the queue, then died
    with a traceback (exit 1) when the model refused the scales."""
    base = {"arch": "ocrnet.HRNet_w18s", "result_dir": "x"}
    if program == "predict.py":
        base["eval_folder"] = "y"
    with pytest.raises(FlagError) as e:
        check_runs(runs_of({"CMD": f"python {program}", "HPARAMS": {**base, **hparams}}))
    assert needle in str(e.value).splitlines()[0], str(e.value)
