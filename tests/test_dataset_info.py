"""datasets.info: one answer for class tables, root variables and the class-count rule."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets import DatasetInfo, dataset_info, info_for_checkpoint, list_datasets
from datasets.cityscapes_labels import CLASS_NAMES, PALETTE
from datasets.info import root_env_vars


@pytest.mark.parametrize("name", ["cityscapes", "synthetic", "mapillary", "folder"])
def test_every_dataset_answers_and_round_trips_through_json(name, monkeypatch):
    monkeypatch.delenv("MAPILLARY_ROOT", raising=False)
    info = dataset_info(name)
    assert info.num_classes == len(info.class_names) == len(info.palette) > 0
    assert info.palette.dtype == np.uint8 and info.palette.shape == (info.num_classes, 3)
    assert info.in_channels == 3 and info.ignore_index == 255
    assert DatasetInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_known_tables_and_root_variables(monkeypatch):
    monkeypatch.delenv("MAPILLARY_ROOT", raising=False)
    city = dataset_info("cityscapes")
    assert city.class_names == CLASS_NAMES and np.array_equal(city.palette, PALETTE)
    assert city.root_env == "CITYSCAPES_ROOT" and dataset_info("synthetic").root_env == "SYNTHETIC_ROOT"
    assert dataset_info("mapillary").num_classes == 65  # no config.json at hand: Vistas v1.2's count
    assert dataset_info("mapillary").root_env == "MAPILLARY_ROOT"
    assert {"CITYSCAPES_ROOT", "MAPILLARY_ROOT", "SYNTHETIC_ROOT"} <= set(root_env_vars())
    assert set(list_datasets()) >= {"cityscapes", "mapillary", "synthetic", "folder"}
    with pytest.raises(KeyError, match="cityscapes"):
        dataset_info("citiscapes")


def test_mapillary_classes_come_from_its_config_json(tmp_path, monkeypatch):
    labels = [{"name": "a", "readable": "Bird", "color": [1, 2, 3], "evaluate": True},
              {"name": "u", "readable": "Unlabeled", "color": [0, 0, 0], "evaluate": False},
              {"name": "b", "readable": "Road", "color": [9, 8, 7], "evaluate": True}]
    (tmp_path / "config.json").write_text(json.dumps({"labels": labels}))
    monkeypatch.setenv("MAPILLARY_ROOT", str(tmp_path))
    for info in (dataset_info("mapillary"), dataset_info("mapillary", root=tmp_path)):
        assert info.class_names == ("Bird", "Road") and info.palette.tolist() == [[1, 2, 3], [9, 8, 7]]


def test_class_count_rule_for_checkpoints():
    custom = DatasetInfo.generic(3, "mine").to_dict()
    assert info_for_checkpoint({"dataset_info": custom, "num_classes": 3}).to_dict() == custom
    assert info_for_checkpoint(None).class_names == CLASS_NAMES  # nothing recorded: the reference's
    assert info_for_checkpoint({"num_classes": 65}, "mapillary").num_classes == 65
    assert info_for_checkpoint({"num_classes": 5}).class_names == tuple(f"class_{i}" for i in range(5))
    assert info_for_checkpoint({"dataset_info": custom}, num_classes=19).class_names == CLASS_NAMES


def test_predict_draws_the_classes_a_checkpoint_records(tmp_path):
    """A checkpoint carrying dataset_info: predict.py takes its class count, names and colours."""
    from network import get_model
    from network.checkpoint import FORMAT
    from predict import main

    info = DatasetInfo.from_table("mine", ["sky", "tree", "roof"], np.array([[0, 0, 255], [0, 255, 0], [255, 0, 0]]))
    model = get_model("ocrnet.HRNet_w18s", num_classes=3)
    torch.save({"format": FORMAT, "arch": model.arch, "num_classes": 3, "model": model.state_dict(),
                "dataset_info": info.to_dict()}, tmp_path / "m.pth")
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    out = tmp_path / "out"
    assert main(["--arch", "ocrnet.HRNet_w18s", "--snapshot", str(tmp_path / "m.pth"), "--eval_folder",
                 str(tmp_path / "in"), "--result_dir", str(out), "--workers", "0", "--no_progress",
                 "--probs", "--device", "cpu"]) == 0
    assert list(np.load(out / "prob" / "a.npz")["class_names"]) == ["sky", "tree", "roof"]
    colors = {tuple(c) for c in cv2.imread(str(out / "color" / "a.png"))[..., ::-1].reshape(-1, 3).tolist()}
    assert colors <= {tuple(c) for c in info.palette.tolist()}
    assert Path(out / "label" / "a.png").is_file()
