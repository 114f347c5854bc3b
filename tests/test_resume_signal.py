"""A run stopped by a real SIGTERM at a random iteration and resumed ends with the same weights."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from tests.test_train_helpers import REPO, model_state, run_train, tiny_args

STEPS_PER_EPOCH = 4  # 8 synthetic training images, batch 2
EPOCHS = 2


def _args(root, rd):
    return tiny_args(root, rd, "--max_epoch", str(EPOCHS), "--deterministic", "--val_freq", "100",
                     "--ckpt_freq", "0", "--seed", "3")


def _start(args):
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(64), "")), daemon=True).start()
    return proc, err


def _progress(err: list[str]) -> int:
    """Optimizer steps done so far, read off tqdm's 'epoch E: ... n/4' lines."""
    done = [int(e) * STEPS_PER_EPOCH + int(n)
            for e, n in re.findall(rf"epoch (\d+):[^\r\n]*?(\d+)/{STEPS_PER_EPOCH} \[", "".join(err))]
    return max(done, default=0)


@pytest.mark.slow
def test_sigterm_then_resume_reproduces_uninterrupted_weights(synthetic_root, tmp_path):
    total = STEPS_PER_EPOCH * EPOCHS
    stop_after = random.randint(1, total - 2)
    proc, err = _start(_args(synthetic_root, tmp_path / "interrupted"))
    deadline = time.time() + 600
    while _progress(err) < stop_after and proc.poll() is None:
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # the real signal Slurm sends before a time limit
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, (stop_after, out, "".join(err)[-2000:])
    stopped = torch.load(tmp_path / "interrupted" / "last.pth", weights_only=True)
    assert stop_after <= stopped["iteration"] < total, (stop_after, stopped["iteration"])
    assert f"stopped by signal {int(signal.SIGTERM)}" in out

    resumed = run_train(_args(synthetic_root, tmp_path / "interrupted"))  # same directory: auto-resume
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at epoch {stopped['epoch']}, iteration {stopped['iteration']}" in resumed.stdout

    reference = run_train(_args(synthetic_root, tmp_path / "uninterrupted"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    a, b = model_state(tmp_path / "interrupted"), model_state(tmp_path / "uninterrupted")
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"stopped after iteration {stopped['iteration']}: {differing[:5]} differ"  # bit-exact
    assert torch.load(tmp_path / "interrupted" / "last.pth", weights_only=True)["iteration"] == total
