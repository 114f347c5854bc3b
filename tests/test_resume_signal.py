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
    out: list[str] = []
    err: list[str] = []
    proc.readers = [threading.Thread(target=lambda s=stream, k=sink: k.extend(iter(lambda: s.read(64), "")),
                                     daemon=True) for stream, sink in ((proc.stdout, out), (proc.stderr, err))]
    for t in proc.readers:
        t.start()
    return proc, out, err


def _progress(out: list[str]) -> int:
    """Optimizer steps done so far, read off the '[train] it N/T' lines (stderr is a pipe: no tqdm)."""
    return max((int(n) for n in re.findall(r"\[train\] it (\d+)/", "".join(out))), default=0)


@pytest.mark.slow
def test_sigterm_then_resume_reproduces_uninterrupted_weights(synthetic_root, tmp_path):
    total = STEPS_PER_EPOCH * EPOCHS
    stop_after = random.randint(1, total - 2)
    proc, chunks, err = _start(_args(synthetic_root, tmp_path / "interrupted"))
    deadline = time.time() + 600
    while _progress(chunks) < stop_after and proc.poll() is None:
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # the real signal Slurm sends before a time limit
    proc.wait(timeout=300)
    for t in proc.readers:
        t.join(timeout=60)
    out = "".join(chunks)
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


@pytest.mark.slow
def test_checkpoint_at_the_final_iteration_still_closes_the_epoch(synthetic_root, tmp_path):
    # A job stopped after `last.pth` was written at the final iteration but before the epoch's
    # close (ckpt_freq hit the last step, then the job was killed or requeued during validation):
    # the resumed run must still validate and write the final metrics, not exit at once.
    done = tmp_path / "done"
    args = tiny_args(synthetic_root, done, "--max_epoch", "1", "--val_freq", "100", "--ckpt_freq", "0")
    first = run_train(args)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = torch.load(done / "last.pth", weights_only=True)
    assert ckpt["iteration"] == STEPS_PER_EPOCH and ckpt["sampler"]["consumed"] == 0
    ckpt["epoch"] = ckpt["sampler"]["epoch"] = 0  # as written inside the epoch, at its last step
    ckpt["sampler"]["consumed"] = STEPS_PER_EPOCH * 2
    ckpt["best_miou"] = -1.0  # that epoch was never validated
    cut = tmp_path / "cut"
    cut.mkdir()
    torch.save(ckpt, cut / "last.pth")
    resumed = run_train(tiny_args(synthetic_root, cut, "--max_epoch", "1", "--val_freq", "100",
                                  "--ckpt_freq", "0"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (cut / "metrics.json").exists() and (cut / "best.pth").exists()
    assert torch.load(cut / "last.pth", weights_only=True)["sampler"]["consumed"] == 0
