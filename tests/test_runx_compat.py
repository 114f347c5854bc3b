"""The real runx package on this repository: the scripts print (-i -n), a run executes from its
staged code copy (absolute LOGROOT from the generated .runx), sweeps stay in place across runs.
runx's farm mode through ``sbatch.submit_job`` is tested against real Slurm in
tests/test_slurm_runx.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sbatch.runxconf import render_template

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ["eval_cityscapes", "eval_mapillary", "train_cityscapes", "train_cityscapes_sota", "train_mapillary"]


@pytest.fixture
def runx_config(tmp_path) -> Path:
    """The repository's .runx as `python -m sbatch init` writes it, with LOGROOT under tmp."""
    cfg = tmp_path / "runx.yml"
    cfg.write_text(render_template(REPO, logroot=str(tmp_path / "logs")))
    return cfg


def runx(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runx.runx", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_print_with_runx(name, runx_config, tmp_path):
    done = runx(f"scripts/{name}.yml", "-i", "-n", "-c", str(runx_config))
    assert done.returncode == 0, done.stderr
    line, = [ln for ln in done.stdout.splitlines() if ln.startswith("cd ")]
    logdir = line.split()[1].removesuffix("/code;")
    assert logdir.startswith(str(tmp_path / "logs" / name) + "/")
    assert "torchrun --nproc_per_node=8 train.py" in line and "torch.distributed.launch" not in line
    assert f"--result_dir {logdir}" in line and "--arch ocrnet.HRNet_Mscale" in line
    assert not (tmp_path / "logs").exists()  # -n creates nothing


def test_script_hyperparameters_follow_the_reference():
    sota = yaml.safe_load((REPO / "scripts" / "train_cityscapes_sota.yml").read_text())["HPARAMS"][0]
    assert sota["lr"] == "1e-2" and sota["max_cu_epoch"] == 150 and sota["custom_coarse_prob"] == 0.5
    mapi = yaml.safe_load((REPO / "scripts" / "eval_mapillary.yml").read_text())["HPARAMS"][0]
    assert mapi["n_scales"] == "0.25,0.5,1.0,2.0" and mapi["pre_size"] == 2177 and mapi["do_flip"] is True


def test_runx_interactive_sweep_runs_from_staged_code(runx_config, tmp_path):
    """Two runs: runx chdirs into the first run's directory before the second, which only works
    with an absolute LOGROOT; the command imports this repository's packages from the copy."""
    exp = tmp_path / "staged.yml"
    probe = ("python -c 'import json,os,sys,sbatch; json.dump([os.getcwd(), sbatch.__file__], "
             "open(sys.argv[-1], \"w\"))'")
    exp.write_text(yaml.safe_dump({"CMD": probe, "HPARAMS": {"k": [1, 2], "out": "LOGDIR/where.json"}}))
    done = runx(str(exp), "-i", "-c", str(runx_config))
    assert done.returncode == 0, done.stderr
    runs = sorted((tmp_path / "logs" / "staged").glob("*/where.json"))
    assert len(runs) == 2, done.stdout + done.stderr
    for where in runs:
        cwd, module = json.loads(where.read_text())
        assert cwd == str(where.parent / "code") and module.startswith(cwd)
        assert not (where.parent / "code" / "logs").exists() and not (where.parent / "code" / ".git").exists()
