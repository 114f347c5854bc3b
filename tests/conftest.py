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
