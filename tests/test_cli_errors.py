"""One error path for every command: bad input is one line ``prog: error: ...`` on stderr and exit 2.

The dataset tools, the deploy tools and runx's submit command go through ``utils.errors.run_cli``
like train.py and predict.py; sbatch's own errors are ``UserError`` subclasses (and still the
``ValueError``/``RuntimeError`` they were), while ``sbatch`` keeps importing without torch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sbatch.expand import ExperimentError
from sbatch.launch import LaunchError
from sbatch.manifest import ManifestError
from sbatch.overrides import OverrideError
from sbatch.resources import ResourceError
from sbatch.runxconf import ConfigFileError
from sbatch.validate import FlagError
from utils.errors import EXIT_USAGE, UserError

REPO = Path(__file__).resolve().parent.parent
UNWRITABLE = "/proc/hmsa-no-such-dir/out"  # nobody, not even root, creates directories in /proc


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _one_line_usage_error(out: subprocess.CompletedProcess, prog: str) -> str:
    assert out.returncode == EXIT_USAGE, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), out.stderr
    return lines[0]


@pytest.mark.parametrize("args, prog", [
    (("datasets.synthetic", "--root", UNWRITABLE), "python -m datasets.synthetic"),
    (("datasets.examples", "folder", UNWRITABLE), "python -m datasets.examples"),
])
def test_dataset_tools_refuse_an_unwritable_output_in_one_line(args, prog):
    assert UNWRITABLE in _one_line_usage_error(_run(*args), prog)


def test_submit_job_refuses_bad_words_in_one_line():
    line = _one_line_usage_error(_run("sbatch.submit_job", "--name", "x", "stray"), "sbatch.submit_job")
    assert "'stray'" in line


def test_deploy_tool_names_a_missing_checkpoint_in_one_line(tmp_path):
    line = _one_line_usage_error(_run("deploy.slim", "--snapshot", str(tmp_path / "none.pth"),
                                      "--out", str(tmp_path / "x.safetensors")), "deploy.slim")
    assert "none.pth" in line


@pytest.mark.parametrize("error, old_base", [
    (ExperimentError, ValueError), (FlagError, ValueError), (OverrideError, ValueError),
    (ResourceError, ValueError), (ConfigFileError, ValueError),
    (LaunchError, RuntimeError), (ManifestError, RuntimeError),
])
def test_sbatch_errors_are_user_errors(error, old_base):
    assert issubclass(error, UserError) and issubclass(error, old_base)  # existing except clauses still match


def test_sbatch_imports_without_torch():
    code = textwrap.dedent("""\
        import sys; sys.modules["torch"] = None  # any torch import fails
        import sbatch.cli, sbatch.submit_job, sbatch.validate
        """)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
