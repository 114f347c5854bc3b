"""Shared fixtures. Tests run from the repository root's modules (no install)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Keep CPU tests predictable on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Hermetic: the suite passes whatever the caller's environment holds. The variables users are
# told to set (data roots, cache, assets, debug), Slurm's and torch.distributed's are removed
# once, before any test module or fixture runs (subprocesses inherit the cleaned environment);
# fixtures that need one (the local Slurm cluster's SLURM_CONF) set their own.
KEEP = {"HMSA_REGEN_GOLDEN"}  # a switch of the tests themselves
CLEARED = ("SYNTHETIC_ROOT", "CITYSCAPES_ROOT", "MAPILLARY_ROOT", "ASSETS_PATH", "DATA_ROOT",
           "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
           "TORCHELASTIC_RUN_ID", "SUBMITIT_EXECUTOR", "SUBMITIT_PREEMPT_SIGNAL")


def _foreign(name: str) -> bool:
    return name not in KEEP and (name in CLEARED or name.startswith(("HMSA_", "SLURM_", "SBATCH_", "SALLOC_")))


for _name in [n for n in os.environ if _foreign(n)]:
    del os.environ[_name]


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory) -> None:
    """Centroid caches built by the tests stay out of the user's ~/.cache."""
    os.environ["HMSA_CACHE_DIR"] = str(tmp_path_factory.mktemp("hmsa_cache"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic Cityscapes-layout dataset shared by the whole session (read-only)."""
    from datasets.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, num_train=8, num_val=4, size=(64, 128), seed=0)
    return root
