"""runx's own farm mode (``python -m runx.runx exp.yml`` without -i) submitting through
``sbatch.submit_job`` to the real local Slurm cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.slurm_fixtures import REPO, slurm_cluster, wait_terminal

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]
__all__ = ["slurm_cluster"]


def test_runx_farm_mode_submits_through_the_launcher(slurm_cluster, tmp_path):
    cfg = tmp_path / "runx.yml"
    cfg.write_text(yaml.safe_dump({
        "LOGROOT": str(tmp_path / "logs"),
        "CODE_IGNORE_PATTERNS": ".git,*.pyc,__pycache__,logs,data,tests,docs,bench",
        "FARM": "local_draco",  # runx 0.0.11 builds farm commands only for names with "draco"/"ngc"
        "local_draco": {"SUBMIT_CMD": f"PYTHONPATH=code {sys.executable} -m sbatch.submit_job",
                        "RESOURCES": {"time": 5, "cpus_per_task": 1, "mem": "500M"}}}))
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""\
        import json, os, sys
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, open(sys.argv[sys.argv.index("--out") + 1], "w"))
        """))
    exp = tmp_path / "farm.yml"
    exp.write_text(yaml.safe_dump({"CMD": f"python {probe}", "HPARAMS": {"k": [1, 2], "out": "LOGDIR/p.json"}}))
    env = {**__import__("os").environ, **slurm_cluster}
    done = subprocess.run([sys.executable, "-m", "runx.runx", str(exp), "-c", str(cfg)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    rows = [ln.split("\t") for ln in done.stdout.splitlines() if ln.count("\t") == 2]
    assert len(rows) == 2, done.stdout + done.stderr
    states = wait_terminal([r[0] for r in rows], timeout=120)
    assert set(states.values()) == {"COMPLETED"}, states
    for _, _, logdir in rows:
        got = json.loads((tmp_path / "logs" / "farm" / logdir.rsplit("/", 1)[1] / "p.json").read_text())
        assert got["cwd"] == f"{logdir}/code" and got["argv"][0] == "--k"
    status = subprocess.run([sys.executable, "-m", "sbatch", "status", str(tmp_path / "logs" / "farm")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout.count(" COMPLETED ") == 2, status.stdout + status.stderr
