"""Progress on stdout when stderr is not a terminal, metrics.jsonl, one TensorBoard step."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sbatch.runxconf import render_template
from tests.test_train_helpers import REPO, run_train, scalars, tiny_args
from utils.logger import read_jsonl, truncate_jsonl
from utils.progress import TrainProgress, format_duration


def test_progress_line_has_whole_run_eta(capsys):
    clock = iter([0.0, 10.0, 20.0]).__next__
    p = TrainProgress(total_iters=100, start_iter=0, images_per_step=4, tty=False, clock=clock)
    rates = p.report(10, epoch=0, max_epoch=5, loss=0.5, lr=1e-3)  # 10 steps in 10 s
    assert rates["images_per_s"] == pytest.approx(4.0) and rates["eta_s"] == pytest.approx(90.0)
    assert capsys.readouterr().out == ("[train] it 10/100 (10%) epoch 1/5 loss 0.5000 lr 1.00e-03 "
                                       "4.0 img/s ETA 0:01:30\n")
    p.report(30, epoch=1, max_epoch=5, loss=0.25, lr=5e-4)  # 20 more steps in 10 s
    assert "8.0 img/s ETA 0:00:47" in capsys.readouterr().out  # (100 - 30) x 20 s / 30 steps
    assert format_duration(90061) == "1d 1:01:01"


def test_tty_keeps_the_bar_and_prints_no_lines(capsys):
    p = TrainProgress(total_iters=10, start_iter=0, images_per_step=1, tty=True)
    assert hasattr(p.bar(3, "epoch 0"), "set_postfix")
    p.report(1, 0, 1, 0.1, 0.1)
    assert capsys.readouterr().out == ""


def test_resume_truncates_rows_beyond_the_resume_point(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"phase": "train", "iteration": i} for i in (2, 4, 6, 8)] + [{"phase": "val", "iteration": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"phase": "tr')  # torn last line
    truncate_jsonl(path, 4, epoch_closed=True)
    assert [(r["phase"], r["iteration"]) for r in read_jsonl(path)] == [("train", 2), ("train", 4), ("val", 4)]
    truncate_jsonl(path, 4, epoch_closed=False)  # checkpoint inside the epoch: validation comes again
    assert [(r["phase"], r["iteration"]) for r in read_jsonl(path)] == [("train", 2), ("train", 4)]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two tiny trainings; minutes on a loaded 2-core machine
def test_jsonl_and_one_tensorboard_step_across_a_resume(synthetic_root, tmp_path):
    rd = tmp_path / "run"
    first = run_train(tiny_args(synthetic_root, rd, "--max_epoch", "1", "--ckpt_freq", "0"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "[train] it 4/4 (100%) epoch 1/1" in first.stdout  # stderr is a pipe here
    # train 2 epochs in the same directory: resumes at iteration 4, the epoch-1 rows come once
    second = run_train(tiny_args(synthetic_root, rd, "--max_epoch", "2", "--ckpt_freq", "0"))
    assert second.returncode == 0, second.stderr[-2000:]
    rows = read_jsonl(rd / "metrics.jsonl")
    train = [r["iteration"] for r in rows if r["phase"] == "train"]
    val = [(r["epoch"], r["iteration"]) for r in rows if r["phase"] == "val"]
    assert train == list(range(1, 9)) and val == [(0, 4), (1, 8)]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in rows if r["phase"] == "train")
    assert [s for s, _ in scalars(rd, "val/mean_iu")] == [4, 8]  # iterations, like train/loss
    assert [s for s, _ in scalars(rd, "train/loss")][-1] == 8


@pytest.fixture
def demo_exp(tmp_path, synthetic_root) -> tuple[Path, Path]:
    """A tiny copy of scripts/demo.yml and a .runx with LOGROOT under tmp."""
    exp = yaml.safe_load((REPO / "scripts" / "demo.yml").read_text())
    exp["HPARAMS"].update(max_epoch=2, val_freq=2, crop_size="64,64", class_uniform_pct=0.0, bs_trn=2,
                          num_workers=0, log_freq=1, dataset_root=str(synthetic_root),
                          n_scales="1.0", do_flip=False, dump_num_images=1)
    path = tmp_path / "demo.yml"
    path.write_text(yaml.safe_dump(exp))
    cfg = tmp_path / "runx.yml"
    cfg.write_text(render_template(REPO, logroot=str(tmp_path / "logs")))
    return path, cfg


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_through_real_runx_shows_progress_before_the_end(demo_exp, tmp_path):
    """runx holds stderr until the child ends; the progress lines must come through stdout live."""
    exp, cfg = demo_exp
    proc = subprocess.Popen([sys.executable, "-m", "runx.runx", str(exp), "-i", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: seen.extend((time.monotonic(), ln) for ln in proc.stdout))
    reader.start()
    err = proc.stderr.read()
    proc.wait(timeout=1700)
    ended = time.monotonic()
    reader.join(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    progress = [(t, ln) for t, ln in seen if ln.startswith("[train] it ")]
    assert len(progress) == 8, [ln for _, ln in seen]  # 8 images / batch 2 x 2 epochs, every step
    assert "ETA" in progress[0][1] and "img/s" in progress[0][1]
    assert ended - progress[0][0] > 1.0, "the first progress line arrived only at the end"
    rd, = (tmp_path / "logs" / "demo").glob("*/")
    assert len([r for r in read_jsonl(rd / "metrics.jsonl") if r["phase"] == "train"]) == 8
