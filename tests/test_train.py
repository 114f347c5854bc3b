"""train.py end to end on the synthetic data: loss goes down, files, AMP levels, eval, runx.sumx."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.test_train_helpers import REPO, scalars, tiny_args
from train import cli

pytestmark = pytest.mark.slow  # the module fixture trains three tiny runs


@pytest.fixture(scope="module")
def runs(synthetic_root, tmp_path_factory):
    """Three finished runs of one experiment under a runx LOGROOT: fp32, O1 and O3."""
    exp = tmp_path_factory.mktemp("logroot") / "exp"
    assert cli(tiny_args(synthetic_root, exp / "fp32", "--max_iter", "10", "--max_epoch", "5",
                         "--val_freq", "100", "--deterministic")) == 0
    for level in ("O1", "O3"):
        assert cli(tiny_args(synthetic_root, exp / level, "--max_iter", "2", "--amp_opt_level", level,
                             "--fp16", "--apex", "--amp_dtype", "bf16")) == 0  # not this CPU's choice
    return exp


def test_a_few_iterations_reduce_the_loss(runs):
    losses = [v for _, v in scalars(runs / "fp32", "train/loss")]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    lrs = [v for _, v in scalars(runs / "fp32", "train/lr")]
    assert lrs[0] > lrs[-1] >= 0  # poly schedule per iteration


def test_run_directory_contents(runs):
    rd = runs / "fp32"
    for name in ("config.json", "hparams.json", "last.pth", "best.pth", "metrics.json", "metrics.csv",
                 "per_class_iou.csv", "logging.log"):
        assert (rd / name).is_file(), name
    assert list(rd.glob("events.out.tfevents.*"))
    cfg = json.loads((rd / "config.json").read_text())
    assert cfg["runtime"]["global_batch_size"] == 2 and cfg["runtime"]["world_size"] == 1
    assert cfg["runtime"]["crop_size"] == [64, 64]
    metrics = json.loads((rd / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and len(metrics["per_class_iou"]) == 19
    assert sorted(p.name for p in (rd / "best_images").iterdir())[:1]  # pictures of the best epoch
    assert [v for _, v in scalars(rd, "val/mean_iu")] == [pytest.approx(metrics["miou"])]
    assert not list(rd.glob(".*tmp*")) and not (rd / ".val_images").exists()


@pytest.mark.parametrize("level", ["O1", "O3"])
def test_mixed_precision_levels_run_on_cpu_in_bf16(runs, level):
    metrics = json.loads((runs / level / "metrics.json").read_text())
    assert metrics["precision"].startswith("bf16 autocast" if level == "O1" else "bf16 weights + autocast")
    assert metrics["inference"]["precision"] == "bf16" and metrics["inference"]["half_model"] == (level == "O3")
    runtime = json.loads((runs / level / "config.json").read_text())["runtime"]
    assert runtime["precision"].startswith(f"{level} bfloat16")  # training's
    assert all(math.isfinite(v) for _, v in scalars(runs / level, "train/loss"))


def test_runx_sumx_summarises_the_runs(runs, tmp_path):
    (tmp_path / ".runx").write_text(f"LOGROOT: {runs.parent}\n")
    out = subprocess.run([sys.executable, "-m", "runx.sumx", "exp"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for run in ("fp32", "O1", "O3"):
        assert run in out.stdout
    assert "mean" in out.stdout and "amp" in out.stdout  # a metric column and the differing hparam


def test_eval_val_multiscale_flip_dumps_pictures(runs, synthetic_root, tmp_path):
    args = tiny_args(synthetic_root, tmp_path, "--eval", "val", "--snapshot", str(runs / "fp32" / "best.pth"),
                     "--n_scales", "0.5,1.0", "--do_flip", "--dump_assets", "--dump_all_images",
                     arch="ocrnet.HRNet_w18s")
    assert cli(args) == 0
    names = {p.name for p in (tmp_path / "best_images").iterdir()}
    assert len([n for n in names if n.endswith("_prediction.png")]) == 4  # every val image
    assert any(n.endswith("_overlay.png") for n in names)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["scales"] == [0.5, 1.0] and metrics["flip"] is True
    trained = json.loads((runs / "fp32" / "metrics.json").read_text())
    assert metrics["pixels"] == trained["pixels"]


def test_eval_mscale_writes_attention_maps(synthetic_root, tmp_path):
    args = tiny_args(synthetic_root, tmp_path, "--eval", "val", "--n_scales", "0.5,1.0",
                     "--dump_assets", "--dump_num_images", "1", arch="ocrnet.HRNet_Mscale_w18s")
    with pytest.warns(UserWarning, match="random weights"):
        assert cli(args) == 0
    names = {p.name for p in (tmp_path / "best_images").iterdir()}
    assert any(n.endswith("_attn_0.5x.png") for n in names), names


def test_unknown_arch_is_a_flag_error(synthetic_root, tmp_path, capsys):
    assert cli(tiny_args(synthetic_root, tmp_path, "--eval", "val", arch="ocrnet.NoSuchNet")) == 2
    assert "--arch" in capsys.readouterr().err


def test_train_py_help_runs():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--amp_opt_level" in out.stdout


def test_eval_folder_delegates_to_predict(runs, synthetic_root, tmp_path):
    folder = synthetic_root / "leftImg8bit" / "val"
    args = tiny_args(synthetic_root, tmp_path, "--eval", "folder", "--eval_folder", str(folder),
                     "--snapshot", str(runs / "fp32" / "best.pth"), "--dump_assets")
    assert cli(args) == 0
    images = sorted(folder.rglob("*.png"))
    labels = sorted((tmp_path / "label").rglob("*.png"))
    assert len(labels) == len(images) == 4
    assert len(sorted((tmp_path / "overlay").rglob("*.jpg"))) == 4  # --dump_assets -> overlays


def test_eval_records_the_checkpoint_and_the_resolved_settings(runs, synthetic_root, tmp_path, capsys):
    """Without --n_scales, --eval recorded "scales": [] and nothing said which checkpoint it evaluated.
    Now the scales come from the checkpoint (its run validated with them) and everything is recorded."""
    import torch

    best = runs / "fp32" / "best.pth"
    assert torch.load(best, weights_only=True)["inference"]["scales"] == [1.0]  # recorded by training
    assert cli(tiny_args(synthetic_root, tmp_path, "--eval", "val", "--snapshot", str(best))) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["scales"] == [1.0] and metrics["inference"]["scales_from"] == "the checkpoint's validated scales"
    assert metrics["inference"]["precision"] in ("fp32", "bf16")  # auto, resolved (this CPU decides which)
    assert "auto:" in metrics["inference"]["precision_rule"]
    trained = torch.load(best, weights_only=True)
    assert metrics["checkpoint"] == {"path": str(best.resolve()), "epoch": trained["epoch"],
                                     "iteration": trained["iteration"]}
    out = capsys.readouterr().out
    assert "inference: scales 1 (the checkpoint's validated scales), flip off, " in out
