"""utils.metrics: confusion matrix and mIoU against a case computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from utils.metrics import ConfusionMatrix, format_table, write_metrics


def test_confusion_matrix_hand_computed(tmp_path):
    # 3 classes; class 2 never appears nor is predicted -> excluded from the mean
    target = torch.tensor([[0, 0, 1, 1], [0, 1, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 0]])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(target, pred)
    assert cm.mat.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    m = cm.compute()
    # class 0: tp 2, gt 3, pred 3 -> 2/4; class 1: same -> 2/4
    assert m["per_class_iou"][:2] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert math.isnan(m["per_class_iou"][2])
    assert m["miou"] == pytest.approx(0.5)
    assert m["pixel_acc"] == pytest.approx(4 / 6)
    assert m["pixels"] == 6
    names = ["road", "car", "sky"]
    table = format_table(m, names)
    assert "mIoU" in table and " 50.00" in table and "n/a" in table
    write_metrics(tmp_path, m, names)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["per_class_iou"] == {"road": 0.5, "car": 0.5, "sky": None}
    assert (tmp_path / "per_class_iou.csv").read_text().splitlines()[1] == "0,road,0.500000"


def test_accumulates_and_predicted_only_class_counts():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0]), torch.tensor([0, 1]))
    cm.update(torch.tensor([0]), torch.tensor([0]))
    m = cm.compute()
    # class 1 predicted once but absent from the target: IoU 0 and it counts in the mean
    assert m["per_class_iou"] == [pytest.approx(2 / 3), 0.0]
    assert m["miou"] == pytest.approx(1 / 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        ConfusionMatrix(2).update(torch.zeros(2, 2), torch.zeros(4))
