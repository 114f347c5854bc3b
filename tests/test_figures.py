"""Labelled pictures: panel with legend, attention colour bar, confusion matrix files, curves.
(Their look was checked by eye at 3, 19 and 65 classes; these tests pin what is written.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.cityscapes_labels import CLASS_NAMES, PALETTE
from training.dump import ImageDumper
from utils.figures import confusion_figure, curves_figure, labelled_panel, normalise_rows
from utils.metrics import ConfusionMatrix, write_metrics


def test_confusion_matrix_saved_with_the_metrics(tmp_path):
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 0, 1, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1, 0, 2]))
    m = cm.compute()
    write_metrics(tmp_path, {**m, "epoch": 1, "iteration": 8}, ["road", "car", "sky"])
    saved = np.load(tmp_path / "confusion_matrix.npy")
    assert saved.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 1]]
    lines = (tmp_path / "confusion_matrix.csv").read_text().splitlines()
    assert lines[0] == "true \\ predicted,road,car,sky" and lines[1] == "road,2,1,0"
    assert "confusion_matrix" not in (tmp_path / "metrics.json").read_text()
    import cv2
    assert cv2.imread(str(tmp_path / "confusion_matrix.png")).shape[2] == 3


def test_rows_normalised_absent_classes_nan():
    norm = normalise_rows(np.array([[3, 1], [0, 0]]))
    assert norm[0].tolist() == [0.75, 0.25] and np.isnan(norm[1]).all()


@pytest.mark.parametrize("k", [3, 19, 65])
def test_confusion_figure_grows_with_classes(k):
    img = confusion_figure(np.eye(k, dtype=np.int64) * 10 + 1, [f"c{i}" for i in range(k)])
    assert img.dtype == np.uint8 and img.shape[0] >= (500 if k < 20 else 2000)


def test_dumper_writes_panel_with_legend_and_attention(tmp_path):
    d = ImageDumper(tmp_path, PALETTE, limit=1, attention=True, class_names=CLASS_NAMES)
    mask = torch.zeros(1, 64, 128, dtype=torch.long)
    mask[:, 32:] = 13
    pred = torch.zeros(1, 64, 128, dtype=torch.long)
    out = {"attn_0.5x": torch.rand(1, 1, 64, 128)}
    d.dump({"image": torch.zeros(1, 3, 64, 128), "mask": mask, "name": ["a/b.png"]}, out, pred)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["b_attn_0.5x.png", "b_gt.png", "b_input.png", "b_overlay.png", "b_panel.png", "b_prediction.png"]
    assert d._classes_in([mask.numpy(), pred.numpy()]) == [0, 13]


def test_panel_and_curves_render():
    rgb = np.zeros((64, 128, 3), np.uint8)
    assert labelled_panel([("input", rgb), ("prediction", rgb)], [0, 1], CLASS_NAMES, PALETTE).shape[1] == 800
    rows = [{"phase": "train", "iteration": i, "loss": 1.0 / i, "lr": 0.1} for i in range(1, 10)]
    rows.append({"phase": "val", "iteration": 9, "mean_iu": 0.5, "pixel_acc": 0.9})
    assert curves_figure(rows).shape == (360, 1200, 3)


def test_smoothed_loss_runs_through_the_data_of_a_short_run():
    """curves.png's smoothed loss was an EMA (0.1) started at the first value: on a falling loss of a
    short run it lagged above almost every raw point. The centred mean runs through the data."""
    from utils.figures import smooth_curve

    raw = [2.0 - 0.075 * i + 0.05 * (-1) ** i for i in range(20)]
    smooth = smooth_curve(raw)
    above = sum(r > s for r, s in zip(raw, smooth, strict=True))
    assert 5 <= above <= 15  # about half the points on either side (the EMA: 1 of 20 below it)
    assert abs(float(np.mean(np.subtract(smooth, raw)))) < 0.02
    assert (smooth[0], smooth[-1]) == pytest.approx((raw[0], raw[-1]))
    line = [1.0 + 0.5 * i for i in range(9)]
    assert smooth_curve(line, 2) == pytest.approx(line)  # exactly through a straight line
