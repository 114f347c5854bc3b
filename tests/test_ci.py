"""The install is what CI proves: every module `.ci/run` calls comes from what `.ci/install.sh`
installs, and the installer never writes into a Python that is not a virtual environment."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parent.parent
RUN = (REPO / ".ci" / "run").read_text()
INSTALL = (REPO / ".ci" / "install.sh").read_text()


def _requirement_names(extras: str) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras.split(","):
        reqs += project["optional-dependencies"][extra]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _called_modules(script: str) -> set[str]:
    """Top-level modules a shell script runs as ``python[3] -m MODULE``."""
    lines = [line.split("#", 1)[0] for line in script.splitlines()]
    return {m.split(".")[0] for line in lines for m in re.findall(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)", line)}


def test_every_module_ci_calls_is_installed_by_the_default_extras():
    """mypy sat in the deploy extra while install.sh installed `.[test]`: CI passed only where mypy had
    been installed by hand."""
    default_extras = re.search(r"else pip_install '\.\[([a-z,]+)\]'", INSTALL)
    assert default_extras, "install.sh must name its default extras"
    installed = _requirement_names(default_extras.group(1))
    local = {p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    dists = importlib.metadata.packages_distributions()
    called = _called_modules(RUN) - local
    assert {"pytest", "ruff", "mypy"} <= called
    for module in sorted(called):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        assert names & installed, f".ci/run calls `python -m {module}` but `.ci/install.sh` does not install it"


def test_ci_builds_a_fresh_environment_and_runs_inside_it():
    assert re.search(r"install\.sh --slurm --venv", RUN), "CI must install into its own fresh environment"
    assert re.search(r'rm -rf "\$venv"|mktemp -d', RUN)
    activate = RUN.index("/bin/activate")
    assert all(RUN.index(f"-m {tool}") > activate for tool in ("ruff", "mypy", "pytest"))
    assert "--system-site-packages" not in RUN + INSTALL


@pytest.mark.parametrize("how", ["--venv", "VIRTUAL_ENV"])
def test_install_refuses_a_python_that_is_not_a_virtual_environment(tmp_path, how):
    """Debian's python3 is externally managed (PEP 668): install.sh must never pip into such an interpreter,
    whether it is named with --venv or through VIRTUAL_ENV."""
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    fake = tmp_path / "not-a-venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "python").symlink_to(base)  # a system interpreter under another name: no pyvenv.cfg
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    # if the guard failed, pip would find nothing to install (and exit 1, not 2)
    env["TORCH_SPEC"] = "--dry-run --no-index hmsa-no-such-package"
    args = ["bash", str(REPO / ".ci" / "install.sh")]
    if how == "--venv":
        args += ["--venv", str(fake)]
    else:
        env["VIRTUAL_ENV"] = str(fake)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is not a virtual environment" in done.stderr and "--venv DIR" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_install_rejects_unknown_arguments():
    done = subprocess.run(["bash", str(REPO / ".ci" / "install.sh"), "--slrum"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "unknown argument '--slrum'" in done.stderr
