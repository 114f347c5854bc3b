"""Your own data end to end: a described folder dataset, a 6-band GeoTIFF pair, a CVAT export;
best-k checkpoints, early stopping, and evaluation that leaves the training run's files alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.examples import CLASSES, write_cvat_export, write_folder_dataset, write_raster_dataset
from train import cli

pytestmark = pytest.mark.slow  # each module fixture trains a tiny model for a few iterations

NAMES = [n for n, _ in CLASSES]


def args(root: Path, rd: Path, *extra: str, arch: str = "ocrnet.HRNet_w18s") -> list[str]:
    return ["--dataset", "custom", "--dataset_root", str(root), "--arch", arch, "--crop_size", "48",
            "--scale_min", "0.75", "--scale_max", "1.25", "--bs_trn", "2", "--num_workers", "0",
            "--class_uniform_pct", "0.5", "--class_uniform_tile", "32", "--centroid_cache", str(rd.parent / "cache"),
            "--optimizer", "adamw", "--lr", "0.003", "--log_freq", "1", "--result_dir", str(rd),
            "--dump_num_images", "1", *extra]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("custom")
    root = write_folder_dataset(tmp / "mydata", num_train=2, num_val=1)
    rd = tmp / "run"
    assert cli(args(root, rd, "--max_epoch", "3", "--save_top_k", "2", "--monitor", "miou")) == 0
    return root, rd


def test_folder_dataset_trains_with_its_classes(folder_run):
    root, rd = folder_run
    ckpt = torch.load(rd / "best.pth", map_location="cpu", weights_only=True)
    info = ckpt["dataset_info"]
    assert [c[1] for c in info["classes"]] == NAMES
    assert [tuple(c[2]) for c in info["classes"]] == [c for _, c in CLASSES]
    metrics = json.loads((rd / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == NAMES
    assert (rd / "per_class_iou.csv").read_text().splitlines()[1].split(",")[0] in ("0", "background")


def test_top_k_checkpoints_are_kept_and_listed(folder_run):
    _, rd = folder_run
    top = json.loads((rd / "checkpoints" / "top_k.json").read_text())
    files = sorted(p.name for p in (rd / "checkpoints").glob("*.pth"))
    assert top["metric"] == "miou" and top["k"] == 2
    assert sorted(e["file"] for e in top["checkpoints"]) == files and 1 <= len(files) <= 2
    values = [e["miou"] for e in top["checkpoints"]]
    assert values == sorted(values, reverse=True)


def test_eval_into_the_run_keeps_training_metrics(folder_run, capsys):
    root, rd = folder_run
    before = (rd / "metrics.json").read_text()
    pictures = sorted(p.name for p in (rd / "best_images").iterdir())
    assert cli(args(root, rd, "--eval", "val")) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in NAMES)  # the per-class table names the classes
    assert (rd / "metrics.json").read_text() == before
    assert sorted(p.name for p in (rd / "best_images").iterdir()) == pictures
    ev = json.loads((rd / "eval_val" / "metrics.json").read_text())
    assert list(ev["per_class_iou"]) == NAMES and (rd / "eval_val" / "best_images").is_dir()


def test_predict_colours_with_the_dataset_palette(folder_run, tmp_path):
    import cv2

    from predict import main as predict

    root, rd = folder_run
    out = tmp_path / "pred"
    assert predict(["--arch", "ocrnet.HRNet_w18s", "--snapshot", str(rd / "best.pth"), "--eval_folder",
                    str(root / "images" / "val"), "--result_dir", str(out), "--workers", "0", "--no_progress"]) == 0
    from tests.test_predict import read_label

    label = read_label(out / "label" / "val_000.png")
    color = cv2.imread(str(out / "color" / "val_000.png"))[..., ::-1]
    palette = np.array([c for _, c in CLASSES], np.uint8)
    assert label.max() < len(CLASSES) and (color == palette[label]).all()


def test_early_stopping_ends_the_run(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "d", num_train=2, num_val=1, size=(48, 48))
    rd = tmp_path / "run"
    # lr 1e-9: the weights barely move, so the first validation that does not improve ends the run
    assert cli(args(root, rd, "--max_epoch", "40", "--lr", "1e-9", "--early_stop_patience", "1")) == 0
    out = capsys.readouterr().out
    assert "early stop: miou did not improve for 1 validation(s)" in out
    ckpt = torch.load(rd / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] < 40 and ckpt["monitor"]["bad_evals"] == 1


def test_six_band_raster_trains_and_predicts_a_georeferenced_raster(tmp_path):
    import rasterio

    from datasets.check import main as check
    from predict import main as predict

    root = write_raster_dataset(tmp_path / "r", size=(96, 128), bands=6, tile=48)
    assert check(["--dataset_root", str(root), "--write_stats", "--no_progress"]) == 0
    rd = tmp_path / "run"
    assert cli(args(root, rd, "--max_iter", "3", "--crop_size", "48", "--scale_min", "1.0")) == 0
    ckpt = torch.load(rd / "best.pth", map_location="cpu", weights_only=True)
    assert ckpt["dataset_info"]["bands"] == [0, 1, 2, 3, 4, 5]
    assert ckpt["model"]["backbone.conv1.weight"].shape[1] == 6
    out = tmp_path / "pred"
    assert predict(["--arch", "ocrnet.HRNet_w18s", "--snapshot", str(rd / "best.pth"), "--eval_folder",
                    str(root / "images" / "val"), "--result_dir", str(out), "--tile", "64", "--overlap", "16",
                    "--workers", "0", "--no_progress"]) == 0
    with rasterio.open(root / "images" / "val" / "scene_val.tif") as src, \
            rasterio.open(out / "label" / "scene_val.tif") as lab:
        assert (lab.crs, lab.transform, lab.width, lab.height) == (src.crs, src.transform, src.width, src.height)
        assert lab.read(1).max() < len(CLASSES)
        assert [lab.colormap(1)[i][:3] for i in range(len(CLASSES))] == [c for _, c in CLASSES]


def test_cvat_export_converts_and_trains(tmp_path):
    from datasets.cvat import main as cvat

    export = write_cvat_export(tmp_path / "export", num_train=2, num_val=1)
    assert cvat([str(export), str(tmp_path / "mydata"), "--no_progress"]) == 0
    assert cli(args(tmp_path / "mydata", tmp_path / "run", "--max_iter", "2")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == NAMES


def test_bad_dataset_yaml_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "dataset.yaml").write_text("classes:\n  - {id: 0, name: bg, color: [0, 0]}\n")
    assert cli(args(tmp_path, tmp_path / "run", "--max_iter", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'classes[0].color'" in err


def test_pictures_undo_the_datasets_own_normalisation(tmp_path):
    """A dataset with its own mean/std (dataset.yaml) was de-normalised with ImageNet's for the saved
    pictures: the input pictures came out in wrong colours."""
    import cv2

    root = write_folder_dataset(tmp_path / "own", num_train=2, num_val=1)
    with open(root / "dataset.yaml", "a") as f:
        f.write("mean: [0.3, 0.5, 0.7]\nstd: [0.1, 0.2, 0.4]\n")
    rd = tmp_path / "run"
    with pytest.warns(UserWarning, match="random weights"):
        assert cli(args(root, rd, "--eval", "val", "--amp_opt_level", "O0")) == 0
    saved = cv2.imread(str(next((rd / "best_images").glob("*_input.png"))))
    original = cv2.imread(str(root / "images" / "val" / "val_000.jpg"))
    assert saved.shape == original.shape
    assert np.abs(saved.astype(int) - original.astype(int)).max() <= 1
