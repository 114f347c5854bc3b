#!/usr/bin/env bash
# Install what the project needs on a fresh Debian machine.
#   bash .ci/install.sh          Python dependencies (torch, timm, runx, submitit, ...)
#   bash .ci/install.sh --slurm  also Debian's Slurm 22.05, munge, slurmdbd and MariaDB,
#                                which tests/ start as a single-node and a two-host
#                                cluster (needs root; iproute2 for the namespaces)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# torch first and pinned where this machine keeps a local build; on a GPU cluster
# use the CUDA build that matches your driver instead (pyproject.toml holds ranges).
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
# shellcheck disable=SC2086
"$PY" -m pip install --quiet --disable-pip-version-check $TORCH_SPEC
"$PY" -m pip install --quiet --disable-pip-version-check '.[test]'
# pip leaves a build/ folder behind for the metadata-only install
rm -rf build hmsa_seg.egg-info
# runx needs an absolute LOGROOT: write ./.runx (untracked) from sbatch/runx_template.yml
"$PY" -m sbatch init

if [[ "${1:-}" == "--slurm" ]]; then
  # iproute2: `ip netns` for the two-host cluster (tests/test_multinode.py)
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null && command -v munged >/dev/null && PATH=$PATH:/usr/sbin command -v ip >/dev/null; then
    echo "Slurm, munge and MariaDB already installed"
  else
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2 >/dev/null
  fi
fi
