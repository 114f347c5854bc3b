#!/usr/bin/env bash
# Install what the project needs, always into a virtual environment (never into a system or
# "externally managed" Python, PEP 668):
#   bash .ci/install.sh               into the active environment ($VIRTUAL_ENV, or a conda env's
#                                     $CONDA_PREFIX) if there is one, else into ./.venv (created)
#   bash .ci/install.sh --venv DIR    into DIR (created if missing; what .ci/run does with a fresh one)
#   bash .ci/install.sh --slurm       also Debian's Slurm 22.05, munge, slurmdbd and MariaDB, which
#                                     tests/ start as a single-node and a two-host cluster (root or
#                                     sudo; iproute2 for the namespaces)
# Environment:
#   PYTHON      the interpreter that creates ./.venv (default python3; Debian's /usr/bin/python3 works)
#   TORCH_SPEC  pip arguments for torch and torchvision, installed first. Default below: the
#               builds this project is tested with (from PyPI: a CUDA build, about 5.5 GB installed).
#               CPU-only machines, where download.pytorch.org is reachable (about 0.7 GB):
#                 TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
#               GPU clusters: the CUDA build matching the driver, e.g.
#                 TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu126"
#   EXTRAS      pyproject extras to install (default: test, which includes geo and deploy)
# Afterwards: `. .venv/bin/activate` (or the environment you named), so that the `python` that
# runx, `python -m sbatch` and submitit start is this environment's.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "install.sh: $*" >&2; exit 2; }

slurm=0; venv=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --slurm) slurm=1 ;;
    --venv) [[ $# -ge 2 ]] || die "--venv needs a directory"; venv=$2; shift ;;
    --venv=*) venv=${1#--venv=} ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (use --slurm, --venv DIR)" ;;
  esac
  shift
done

SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
apt_install() {  # Debian packages, quietly; the package lists are read once
  if [[ -z "${_apt_updated:-}" ]]; then $SUDO apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- the environment: an active one, the one named, or ./.venv
if [[ -z "$venv" && -n "${VIRTUAL_ENV:-}" ]]; then
  venv=$VIRTUAL_ENV
elif [[ -z "$venv" && -n "${CONDA_PREFIX:-}" ]]; then
  venv=$CONDA_PREFIX  # a conda env is not externally managed: pip installs into it
elif [[ -z "$venv" ]]; then
  venv=.venv
fi
if [[ ! -x "$venv/bin/python" ]]; then
  base=${PYTHON:-python3}
  command -v "$base" >/dev/null || die "no '$base' on PATH: install Python >= 3.10 or set PYTHON=/path/to/python3"
  "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$base is older than Python 3.10"
  if ! "$base" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian/Ubuntu split venv and ensurepip out of python3 (python3-venv)
    command -v apt-get >/dev/null || die "$base cannot create virtual environments (no ensurepip): install its venv package"
    ver=$("$base" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "install.sh: $base has no venv module; installing Debian's python$ver-venv"
    apt_install "python$ver-venv" || apt_install python3-venv
  fi
  echo "install.sh: creating the virtual environment $venv (from $("$base" -c 'import sys; print(sys.executable)'))"
  "$base" -m venv "$venv"
fi
PY=$venv/bin/python
"$PY" - <<'EOF' || die "$venv is not a virtual environment; name one with --venv DIR (pip must not write into a system Python)"
import os, sys
# a venv (prefix != base_prefix) or a conda env; anything else may be an externally managed system Python
sys.exit(0 if sys.prefix != sys.base_prefix or os.path.isdir(os.path.join(sys.prefix, "conda-meta")) else 1)
EOF

pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }
# torch first and pinned; pyproject.toml holds ranges, so another build installed here stays
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
# shellcheck disable=SC2086  # TORCH_SPEC is a list of pip arguments
pip_install $TORCH_SPEC
if [[ -n "${EXTRAS:-}" ]]; then pip_install ".[$EXTRAS]"; else pip_install '.[test]'; fi  # test: all .ci/run calls
# pip leaves a build/ folder behind for the metadata-only install
rm -rf build hmsa_seg.egg-info
# runx needs an absolute LOGROOT: write ./.runx (untracked) from sbatch/runx_template.yml
"$PY" -m sbatch init

if [[ $slurm == 1 ]]; then
  # iproute2: `ip netns` for the two-host cluster (tests/test_multinode.py)
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
     && command -v munged >/dev/null && PATH=$PATH:/usr/sbin command -v ip >/dev/null; then
    echo "install.sh: Slurm, munge and MariaDB already installed"
  else
    apt_install slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2
  fi
fi
case "$venv" in /*) shown=$venv ;; *) shown=./$venv ;; esac
[[ "${VIRTUAL_ENV:-}" == "$venv" || "${CONDA_PREFIX:-}" == "$venv" ]] \
  && echo "install.sh: installed into the active environment $venv" \
  || echo "install.sh: installed into $shown; activate it with: . $shown/bin/activate"
