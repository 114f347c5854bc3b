"""Described datasets (dataset.yaml), the check command, CVAT import, raster windows, N-band input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import DatasetError, build_dataset
from datasets.errors import DatasetConfigError
from datasets.examples import CLASSES, write_cvat_export, write_folder_dataset, write_raster_dataset
from datasets.spec import load_spec

GOOD = """classes:
  - {id: 0, name: bg, color: [0, 0, 0]}
  - {id: 7, name: roof, color: [200, 0, 0]}
"""


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("mydata"), num_train=4, num_val=2)


@pytest.fixture(scope="module")
def raster_root(tmp_path_factory) -> Path:
    from datasets.check import main as check

    root = write_raster_dataset(tmp_path_factory.mktemp("myraster"), size=(128, 160), bands=6, tile=64)
    assert check(["--dataset_root", str(root), "--write_stats", "--no_progress"]) == 0
    return root


def _spec_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(DatasetConfigError) as e:
        load_spec(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(("text", "field"), [
    ("name: x\n", "'classes'"),
    ("classes: 3\n", "'classes'"),
    ("classes:\n  - {id: 0, name: bg}\n", "'classes[0].color'"),
    ("classes:\n  - {id: 0, name: bg, color: [0, 0, 300]}\n", "'classes[0].color'"),
    ("classes:\n  - {id: 0, name: a, color: [0, 0, 0]}\n  - {id: 0, name: b, color: [1, 0, 0]}\n",
     "'classes[1].id'"),
    (GOOD + "label_encoding: colours\n", "'label_encoding'"),
    (GOOD + "splits: {train: ../elsewhere}\n", "'splits'"),
    (GOOD + "labels: labels/{split}/{name}.png\n", "'labels'"),
    (GOOD + "raster: {bands: [0, 0]}\n", "'raster.bands'"),
    (GOOD + "raster: {bands: [0, 1], mean: [1.0]}\n", "'raster.mean'"),
    (GOOD + "label_encoding: rgb\nraster: {bands: [0]}\n", "'label_encoding'"),
    (GOOD + "colour_map: x\n", "'colour_map'"),
])
def test_wrong_fields_are_named_in_one_line(tmp_path, text, field):
    assert field in _spec_error(tmp_path, text)


def test_missing_yaml_names_the_flag(tmp_path):
    with pytest.raises(DatasetConfigError, match="--dataset_root .*dataset.yaml"):
        load_spec(tmp_path)
    with pytest.raises(DatasetConfigError, match="--dataset_config"):
        load_spec(None, tmp_path / "nope.yaml")


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(DatasetError, match="one of .*cityscapes.*custom"):
        build_dataset("mydata")


def test_rgb_labels_map_through_the_class_table(folder_root):
    ds = build_dataset("custom", root=folder_root, split="train")
    assert ds.class_names == tuple(n for n, _ in CLASSES)
    assert ds.palette.tolist() == [list(c) for _, c in CLASSES]
    mask = ds.load_label(0)
    colours = np.asarray(ds.decoder.read_raw(ds.items[0].label))
    for k, (_, c) in enumerate(CLASSES):
        assert (mask[(colours == c).all(-1)] == k).all()
    assert set(np.unique(mask)) <= set(range(len(CLASSES)))


def test_ids_with_gaps_and_ignore_value(tmp_path):
    from datasets.custom import LabelDecoder

    (tmp_path / "dataset.yaml").write_text(GOOD + "ignore_index: 9\n")
    dec = LabelDecoder.from_spec(load_spec(tmp_path))
    raw = np.array([[0, 7, 9, 3]], np.uint8)
    assert dec.decode(raw).tolist() == [[0, 1, 255, 255]]


def test_list_file_splits(folder_root, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(folder_root, root)
    (root / "few.txt").write_text("# two of them\nimages/train/train_000.jpg\nimages/train/train_002.jpg\n")
    text = (root / "dataset.yaml").read_text().replace("splits: {train: train, val: val}",
                                                      "splits: {train: few.txt, val: val}")
    text = text.replace("labels/{split}/{stem}.png", "labels/*/{stem}.png".replace("*", "train"))
    (root / "dataset.yaml").write_text(text)
    ds = build_dataset("custom", root=root, split="train")
    assert [it.name for it in ds.items] == ["train_000", "train_002"]
    with pytest.raises(DatasetConfigError, match="'splits' has no split 'test'"):
        build_dataset("custom", root=root, split="test")


def test_check_lists_bad_files_and_still_summarises(folder_root, tmp_path, capsys):
    import shutil

    import cv2

    from datasets.check import main as check

    root = tmp_path / "d"
    shutil.copytree(folder_root, root)
    (root / "images" / "train" / "train_001.jpg").write_bytes(b"not a jpeg")
    lab = cv2.imread(str(root / "labels" / "train" / "train_002.png"))
    lab[:3, :3] = (1, 2, 3)  # BGR of an unknown colour
    cv2.imwrite(str(root / "labels" / "train" / "train_002.png"), lab)
    cv2.imwrite(str(root / "labels" / "train" / "train_003.png"), lab[:10])
    assert check(["--dataset_root", str(root), "--no_progress"]) == 2
    out = capsys.readouterr().out
    assert "split train: 4 images, 2 readable pairs, 3 problem(s)" in out
    assert "train_001.jpg: cannot read image" in out
    assert "9 pixels hold values outside the class table (e.g. rgb(3,2,1))" in out
    assert "size mismatch" in out
    assert "building" in out and "band mean (train, 0..1 scale, RGB)" in out


def test_check_writes_band_stats_that_the_raster_dataset_reads(raster_root):
    stats = json.loads((raster_root / "dataset_stats.json").read_text())
    assert stats["bands"] == [0, 1, 2, 3, 4, 5] and len(stats["mean"]) == 6
    spec = load_spec(raster_root)
    assert spec.raster.mean == tuple(stats["mean"])
    info = spec.info()
    assert info.bands == (0, 1, 2, 3, 4, 5) and info.in_channels == 6 and info.mean == tuple(stats["mean"])


def test_raster_without_stats_says_how_to_measure(tmp_path):
    root = write_raster_dataset(tmp_path / "r", size=(64, 64), bands=4, tile=32)
    with pytest.raises(DatasetConfigError, match="raster.mean.*python -m datasets.check .*--write_stats"):
        build_dataset("custom", root=root, split="train")


def test_cvat_export_converts(tmp_path):
    from datasets.cvat import main as cvat

    export = write_cvat_export(tmp_path / "export", num_train=3, num_val=2)
    assert cvat([str(export), str(tmp_path / "out"), "--no_progress"]) == 0
    ds = build_dataset("custom", root=tmp_path / "out", split="train")
    assert len(ds) == 3 and ds.class_names == tuple(n for n, _ in CLASSES)
    assert len(build_dataset("custom", root=tmp_path / "out", split="val")) == 2
    from datasets.custom import LabelDecoder

    colours = LabelDecoder("rgb", tuple(range(5)), tuple(c for _, c in CLASSES))
    assert (ds.load_label(0) == colours(export / "SegmentationClass" / "frame_train_0000.png")).all()


def test_cvat_bad_labelmap_is_one_line(tmp_path, capsys):
    from datasets.cvat import main as cvat

    (tmp_path / "labelmap.txt").write_text("background:0,0\n")
    assert cvat([str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "labelmap.txt:1: expected 'name:r,g,b:parts:actions'" in err


def test_raster_samples_are_windows(raster_root, monkeypatch):
    from datasets.raster_pairs import RasterDataset
    from datasets.transforms import build_train_transform

    ds = build_dataset("custom", root=raster_root, split="train", transform=build_train_transform(32, 0.5, 1.5))
    assert isinstance(ds, RasterDataset) and len(ds) == 2 * 3  # 128x160 in 64-pixel cells
    reads = []
    orig = ds.read_window
    monkeypatch.setattr(ds, "read_window", lambda *a: reads.append(a[3:]) or orig(*a))
    out = ds[(4, (150, 120))]
    assert out["image"].shape == (6, 32, 32) and reads == [(64, 64)]  # ceil(32 / 0.5), not 128x160
    assert out["image"].dtype == torch.float32 and abs(float(out["image"].mean())) < 3


def test_raster_centroids_by_strips_equal_whole_mask(raster_root):
    import rasterio

    from datasets.centroids import class_centroids
    from datasets.custom import LabelDecoder
    from datasets.raster_pairs import RasterCentroids

    mask_path = raster_root / "labels" / "train" / "scene_train.tif"
    with rasterio.open(mask_path) as m:
        whole = class_centroids(m.read(1), 5, 32)
    dec = LabelDecoder.from_spec(load_spec(raster_root))
    strips = RasterCentroids(dec)(str(mask_path), 5, 32)
    assert sorted(map(tuple, whole.tolist())) == sorted(map(tuple, strips.tolist()))


def test_first_conv_rule():
    from network.first_conv import expand_rgb_weight

    w = torch.randn(4, 3, 3, 3)
    six = expand_rgb_weight(w, 6)
    assert torch.allclose(six[:, :3], w * 0.5) and torch.allclose(six[:, 5], w.mean(1) * 0.5)
    assert torch.allclose(expand_rgb_weight(w, 1)[:, 0], w.mean(1) * 3)
    assert torch.equal(expand_rgb_weight(w, 3), w)


class _Conv(torch.nn.Module):
    """A one-layer stand-in model: the temp-file handling does not depend on the network."""

    arch = "test.Conv"

    def __init__(self, in_channels: int = 3, k: int = 5) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, k, 3, padding=1)
        self.num_classes = k

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": self.conv(x)}


def test_predict_removes_the_temp_files_of_a_killed_run(tmp_path):
    from datasets.examples import write_raster_pair
    from predict import PredictOptions, predict_folder

    write_raster_pair(tmp_path / "in" / "scene.tif", tmp_path / "mask.tif", (40, 48), bands=3)
    out = tmp_path / "out"
    stale = [out / "label" / ".scene.tif.k1ll3d.tmp.tif", out / "prob" / ".scene.tif.x.tmp.tif"]
    other = tmp_path / "out" / "label" / ".other.tif.abc.tmp.tif"  # not this run's raster: kept
    for p in [*stale, other]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a GeoTIFF")
    opts = PredictOptions(eval_folder=str(tmp_path / "in"), result_dir=str(tmp_path / "out"), tile=32, overlap=8,
                          workers=0, probs=True, progress=False, band_mean=(3000.0,) * 3, band_std=(1000.0,) * 3)
    s = predict_folder(_Conv(), opts)
    assert (s.done, s.failed) == (1, 0)
    assert not any(p.exists() for p in stale) and other.exists()
    assert (tmp_path / "out" / "label" / "scene.tif").is_file()


def test_monitor_keeps_the_best_k_and_counts_patience():
    from utils.monitor import Monitor

    m = Monitor("miou", top_k=2, patience=2)
    d = [m.update(v, e, 10 * e) for e, v in enumerate([0.1, 0.3, 0.2, 0.25, 0.05])]
    assert [x.improved for x in d] == [True, True, False, False, False]
    assert d[2].drop == [d[0].keep] and d[3].drop == [d[2].keep] and d[4].keep is None
    assert [v for v, _ in m.kept] == [0.3, 0.25] and m.exhausted and m.bad_evals == 3
    again = Monitor("miou", top_k=2, patience=2)
    again.load_state_dict(m.state_dict())
    assert again.kept == m.kept and again.best == 0.3 and again.exhausted
    other = Monitor("pixel_acc")
    other.load_state_dict(m.state_dict())  # another metric starts afresh
    assert other.bad_evals == 0 and other.kept == []


def test_eval_output_dir_only_moves_inside_a_training_run(tmp_path):
    from utils.monitor import eval_output_dir

    assert eval_output_dir(tmp_path, "val") == tmp_path
    (tmp_path / "last.pth").write_bytes(b"x")
    assert eval_output_dir(tmp_path, "val") == tmp_path / "eval_val"



def test_photos_are_normalised_as_in_training_with_the_checkpoints_mean_std(tmp_path, monkeypatch):
    """Before: predict.py normalised photos with ImageNet's mean/std whatever dataset.yaml said;
    now train, eval and predict hand the model the same tensor for the same image."""
    import predict
    from config import parse_config
    from network.checkpoint import build_model
    from train import build_datasets

    root = write_folder_dataset(tmp_path / "mydata", num_train=2, num_val=1)  # 64x96: no resize anywhere
    (root / "dataset.yaml").write_text((root / "dataset.yaml").read_text() + "mean: [0.3, 0.5, 0.7]\n"
                                       "std: [0.1, 0.2, 0.4]\n")
    cfg = parse_config(["--dataset", "custom", "--dataset_root", str(root), "--arch", "ocrnet.HRNet_w18s",
                        "--crop_size", "64,96", "--scale_min", "1", "--scale_max", "1", "--color_aug", "0",
                        "--result_dir", str(tmp_path / "run")])
    train_ds, val_ds = build_datasets(cfg, train=True)  # training's scale 1 and full-size crop: the image itself
    trained = next(train_ds[i]["image"] for i in range(len(train_ds)) if "train_000" in train_ds[i]["name"])
    evaluated = val_ds[0]["image"]
    info = load_spec(root).info()
    ckpt = tmp_path / "best.pth"
    net = build_model("ocrnet.HRNet_w18s", info.num_classes, trunk_weights=None)
    torch.save({"state_dict": net.state_dict(), "arch": "ocrnet.HRNet_w18s", "num_classes": info.num_classes,
                "dataset_info": info.to_dict()}, ckpt)
    seen: list[torch.Tensor] = []
    real = predict._infer_batch

    def recording(fn, batch, probs):
        seen.extend(s["image"] for s in batch)
        return real(fn, batch, probs)

    monkeypatch.setattr(predict, "_infer_batch", recording)
    for split in ("val", "train"):  # val_000, then train_000 and train_001
        assert predict.main(["--arch", "ocrnet.HRNet_w18s", "--snapshot", str(ckpt), "--eval_folder",
                             str(root / "images" / split), "--result_dir", str(tmp_path / f"out_{split}"),
                             "--num_workers", "0", "--bs_val", "1", "--no_progress", "--device", "cpu"]) == 0
    assert torch.equal(seen[0], evaluated)
    assert torch.equal(seen[1], trained) or torch.equal(seen[1].flip(-1), trained)  # training flips at random


def test_photo_stats_flags_override_and_older_result_folders_still_resume(tmp_path):
    import predict
    from datasets.info import DatasetInfo
    from predict import PredictOptions, check_manifest, with_data_defaults

    info = DatasetInfo.from_dict({**DatasetInfo.generic(3).to_dict(), "mean": [0.3, 0.5, 0.7], "std": [0.1, 0.2, 0.4]})
    opts = PredictOptions(eval_folder=str(tmp_path), result_dir=str(tmp_path / "out"))
    assert predict.photo_stats(with_data_defaults(opts, info)) == ((0.3, 0.5, 0.7), (0.1, 0.2, 0.4))
    given = with_data_defaults(PredictOptions(eval_folder="x", result_dir="y", image_mean=(0.5, 0.5, 0.5)), info)
    assert predict.photo_stats(given) == ((0.5, 0.5, 0.5), (0.1, 0.2, 0.4))  # --image_mean alone: std as saved
    with pytest.raises(predict.PredictError, match="--image_mean"):
        predict.photo_stats(PredictOptions(eval_folder="x", result_dir="y", image_mean=(0.5,)))
    # a manifest written before the settings were recorded (flat keys, no photo statistics) meant
    # ImageNet's: same settings, resumes; other statistics: other pixels, refused
    import torch.nn as nn

    (tmp_path / "out").mkdir()
    legacy = {"arch": None, "snapshot": None, "num_classes": 3, "infer_short_side": None, "size_divisor": 32,
              "scales": None, "flip": False, "bands": None, "band_mean": None, "band_std": None, "tile": 1024,
              "overlap": 128}
    (tmp_path / "out" / predict.MANIFEST).write_text(json.dumps(legacy))
    check_manifest(opts, 3, predict.inference_settings(opts, nn.Identity()), multiscale=False)
    (tmp_path / "out" / predict.MANIFEST).write_text(json.dumps(legacy))
    other = with_data_defaults(opts, info)
    with pytest.raises(predict.PredictError, match="--image_mean, --image_std"):
        check_manifest(other, 3, predict.inference_settings(other, nn.Identity()), multiscale=False)


def test_bad_photo_stats_are_named_before_the_model_is_loaded(tmp_path, capsys):
    """Before: a wrong --image_mean was reported only after the checkpoint was read and the model
    built (seconds, or another error first)."""
    import predict

    (tmp_path / "in").mkdir()
    rc = predict.main(["--eval_folder", str(tmp_path / "in"), "--result_dir", str(tmp_path / "out"),
                       "--arch", "ocrnet.HRNet_Mscale_w18s", "--snapshot", str(tmp_path / "missing.pth"),
                       "--image_mean", "0.5,0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "--image_mean" in err and "missing.pth" not in err, err


def test_measured_rgb_stats_are_used_for_photos_unless_dataset_yaml_sets_them(tmp_path):
    """Before: `datasets.check --write_stats` on a photo dataset wrote dataset_stats.json, which
    nothing read: training, evaluation and predict.py kept ImageNet's mean/std."""
    from datasets.check import main as check

    root = write_folder_dataset(tmp_path / "photos", num_train=2, num_val=1)
    assert check(["--dataset_root", str(root), "--write_stats", "--no_progress"]) == 0
    measured = json.loads((root / "dataset_stats.json").read_text())
    spec = load_spec(root)
    assert spec.mean == tuple(measured["mean"]) and spec.std == tuple(measured["std"])
    assert spec.info().mean == spec.mean  # and so into every checkpoint, and predict.py
    assert spec.mean != (0.485, 0.456, 0.406)
    (root / "dataset.yaml").write_text((root / "dataset.yaml").read_text() + "mean: [0.5, 0.5, 0.5]\n")
    assert load_spec(root).mean == (0.5, 0.5, 0.5)  # dataset.yaml wins
