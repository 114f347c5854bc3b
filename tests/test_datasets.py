"""Datasets on small trees written in their real on-disk layouts, and their errors."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets import DatasetError, build_dataset, list_datasets
from datasets.cityscapes_labels import ID_TO_TRAINID, PALETTE, id_to_trainid_lut
from datasets.transforms import MEAN, STD, build_train_transform


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def make_cityscapes(root: Path, cities: dict[str, list[str]], size=(16, 32), packaged=False) -> dict:
    """A Cityscapes tree; each label uses every label id 0..33 so the mapping is fully exercised."""
    img_dir = root / ("leftImg8bit_trainvaltest/leftImg8bit" if packaged else "leftImg8bit")
    gt_dir = root / ("gtFine_trainvaltest/gtFine" if packaged else "gtFine")
    labels = {}
    rng = np.random.default_rng(0)
    for split, names in cities.items():
        for k, city in enumerate(names):
            stem = f"{city}_{k:06d}_000019"
            ids = rng.integers(0, 34, size, dtype=np.uint8)
            rgb = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            _write_png(img_dir / split / city / f"{stem}_leftImg8bit.png", rgb)
            _write_png(gt_dir / split / city / f"{stem}_gtFine_labelIds.png", ids)
            labels[stem] = ids
    return labels


def test_registry_lists_all_datasets():
    assert {"cityscapes", "mapillary", "synthetic", "folder"} <= set(list_datasets())
    with pytest.raises(KeyError, match="cityscapes"):
        build_dataset("citiscapes")


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    labels = make_cityscapes(tmp_path, {"train": ["aachen", "bochum"], "val": ["frankfurt"]})
    ds = build_dataset("cityscapes", root=tmp_path, split="train")
    assert len(ds) == 2 and ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.class_names[0] == "road" and ds.class_names[18] == "bicycle"
    assert ds.palette.shape == (19, 3) and ds.palette.dtype == np.uint8
    item = ds[0]
    ids = labels[item["name"]]
    expected = np.vectorize(lambda v: ID_TO_TRAINID.get(int(v), 255))(ids)
    assert item["mask"].dtype == torch.long
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    assert set(np.unique(expected)) == set(range(19)) | {255}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 32)


def test_image_is_imagenet_normalised(tmp_path):
    make_cityscapes(tmp_path, {"train": ["aachen"], "val": ["frankfurt"]})
    ds = build_dataset("cityscapes", root=tmp_path)
    raw = cv2.imread(str(ds.items[0].image))[:, :, ::-1].astype(np.float32) / 255.0
    expected = ((raw - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(ds[0]["image"].numpy(), expected, atol=1e-5)


def test_cityscapes_cv_splits_rotate_cities(tmp_path):
    train = [f"t{i:02d}" for i in range(6)]
    make_cityscapes(tmp_path, {"train": train, "val": ["v0", "v1", "v2"]}, size=(8, 8), packaged=True)
    cities = {}
    for cv in (0, 1, 2):
        val = {it.name.split("_")[0] for it in build_dataset("cityscapes", root=tmp_path, split="val", cv=cv).items}
        trn = {it.name.split("_")[0] for it in build_dataset("cityscapes", root=tmp_path, split="train", cv=cv).items}
        assert not val & trn and len(val) == 3 and len(val | trn) == 9
        cities[cv] = val
    # order: val cities then sorted train cities; cv k takes 3 cities from offset 9k//3
    assert cities[0] == {"v0", "v1", "v2"}
    assert cities[1] == {"t00", "t01", "t02"}
    assert cities[2] == {"t03", "t04", "t05"}
    assert len(build_dataset("cityscapes", root=tmp_path, split="trainval")) == 9


def test_cityscapes_coarse_extra(tmp_path):
    make_cityscapes(tmp_path, {"train": ["aachen"], "val": ["frankfurt"]}, size=(8, 8))
    img = tmp_path / "leftImg8bit/train_extra/erlangen/erlangen_000000_000019_leftImg8bit.png"
    _write_png(img, np.zeros((8, 8, 3), np.uint8))
    _write_png(tmp_path / "gtCoarse/train_extra/erlangen/erlangen_000000_000019_gtCoarse_labelIds.png",
               np.full((8, 8), 26, np.uint8))
    ds = build_dataset("cityscapes", root=tmp_path, split="train", coarse=True)
    assert len(ds) == 2
    assert (ds[1]["mask"] == 13).all()  # car


def test_roots_come_from_environment(tmp_path, monkeypatch):
    make_cityscapes(tmp_path, {"train": ["aachen"], "val": ["frankfurt"]}, size=(8, 8))
    monkeypatch.setenv("CITYSCAPES_ROOT", str(tmp_path))
    assert len(build_dataset("cityscapes")) == 1
    monkeypatch.delenv("CITYSCAPES_ROOT")
    with pytest.raises(DatasetError, match="CITYSCAPES_ROOT"):
        build_dataset("cityscapes")
    monkeypatch.delenv("MAPILLARY_ROOT", raising=False)
    with pytest.raises(DatasetError, match="MAPILLARY_ROOT"):
        build_dataset("mapillary")


def test_missing_root_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="nowhere.*CITYSCAPES_ROOT") as err:
        build_dataset("cityscapes", root=missing)
    assert isinstance(err.value, ValueError)


def test_missing_label_names_image_and_expected_label(tmp_path):
    make_cityscapes(tmp_path, {"train": ["aachen"], "val": ["frankfurt"]}, size=(8, 8))
    label = next((tmp_path / "gtFine/train/aachen").glob("*.png"))
    label.unlink()
    with pytest.raises(DatasetError, match="no label file") as err:
        build_dataset("cityscapes", root=tmp_path)
    assert str(label) in str(err.value) and "gtFine" in str(err.value)


def test_size_mismatch_and_corrupt_files(tmp_path):
    make_cityscapes(tmp_path, {"train": ["aachen", "bochum"], "val": ["frankfurt"]}, size=(8, 8))
    ds = build_dataset("cityscapes", root=tmp_path)
    _write_png(ds.items[0].label, np.zeros((9, 8), np.uint8))
    with pytest.raises(DatasetError, match="size mismatch") as err:
        ds[0]
    assert str(ds.items[0].label) in str(err.value)
    data = ds.items[1].image.read_bytes()
    ds.items[1].image.write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetError, match="cannot read image") as err:
        ds[1]
    assert str(ds.items[1].image) in str(err.value)
    ds.items[1].label.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="cannot read label"):
        ds.load_label(1)


# ------------------------------------------------------------------ Mapillary


def make_mapillary(root: Path, n=2, size=(12, 20)) -> list[np.ndarray]:
    names = [f"class {i}" for i in range(65)] + ["Unlabeled"]
    config = {"labels": [{"name": f"c--{i}", "readable": nm, "color": [i, 2 * i % 256, 255 - i],
                          "instances": False, "evaluate": nm != "Unlabeled"} for i, nm in enumerate(names)]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    palette = [c for lb in config["labels"] for c in lb["color"]]
    rng = np.random.default_rng(1)
    out = []
    for split in ("training", "validation"):
        for k in range(n):
            _write_png(root / split / "images" / f"img{k}.jpg", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
            ids = rng.integers(0, 66, size, dtype=np.uint8)
            im = Image.fromarray(ids, mode="P")
            im.putpalette(palette)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            im.save(root / split / "labels" / f"img{k}.png")
            out.append(ids)
    return out


def test_mapillary_parses_config_and_ignores_unlabeled(tmp_path):
    ids = make_mapillary(tmp_path)
    ds = build_dataset("mapillary", root=tmp_path, split="train")
    assert ds.num_classes == 65 and len(ds.class_names) == 65 and ds.class_names[3] == "class 3"
    assert ds.palette.shape == (65, 3) and tuple(ds.palette[3]) == (3, 6, 252)
    mask = ds[0]["mask"].numpy()
    expected = np.where(ids[0] == 65, 255, ids[0])
    np.testing.assert_array_equal(mask, expected)
    assert len(build_dataset("mapillary", root=tmp_path, split="val")) == 2


def test_mapillary_pre_size_eval(tmp_path):
    make_mapillary(tmp_path, n=1, size=(12, 20))
    item = build_dataset("mapillary", root=tmp_path, split="val", pre_size=40)[0]
    assert item["image"].shape == (3, 24, 40) and item["mask"].shape == (24, 40)


def test_mapillary_test_split_and_v2_layout(tmp_path):
    make_mapillary(tmp_path, n=1)
    _write_png(tmp_path / "testing/images/t0.jpg", np.zeros((12, 20, 3), np.uint8))
    item = build_dataset("mapillary", root=tmp_path, split="test")[0]
    assert "mask" not in item and item["image"].shape == (3, 12, 20)
    (tmp_path / "config.json").rename(tmp_path / "config_v1.2.json")  # Vistas 2.0 package, v1.2 view
    (tmp_path / "training/v1.2").mkdir()
    (tmp_path / "training/labels").rename(tmp_path / "training/v1.2/labels")
    assert build_dataset("mapillary", root=tmp_path).num_classes == 65


def test_mapillary_bad_config(tmp_path):
    make_mapillary(tmp_path, n=1)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(DatasetError, match="config.json"):
        build_dataset("mapillary", root=tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(DatasetError, match="config.json"):
        build_dataset("mapillary", root=tmp_path)


# ------------------------------------------------------------------ synthetic


def test_synthetic_layout_and_all_classes(synthetic_root):
    lut = id_to_trainid_lut()
    for split, n in (("train", 8), ("val", 4)):
        labels = sorted((synthetic_root / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
        images = sorted((synthetic_root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(labels) == len(images) == n
        present = set()
        for f in labels:
            ids = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            assert ids.shape == (64, 128) and ids.dtype == np.uint8
            present |= set(np.unique(lut[ids]).tolist())
        assert set(range(19)) <= present, f"{split}: missing {set(range(19)) - present}"


def test_synthetic_uses_label_ids_including_ignored(synthetic_root):
    raw = set()
    for f in (synthetic_root / "gtFine" / "train").glob("*/*.png"):
        raw |= set(np.unique(cv2.imread(str(f), cv2.IMREAD_UNCHANGED)).tolist())
    assert 7 in raw and 26 in raw and 0 not in raw  # road, car as label ids (not train ids 0, 13)


def test_synthetic_is_deterministic_and_seeded(tmp_path):
    from datasets.synthetic import generate

    a, b, c = (generate(tmp_path / n, num_train=2, num_val=1, size=(32, 64), seed=s)
               for n, s in (("a", 3), ("b", 3), ("c", 4)))
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 6
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_synthetic_colours_follow_classes(synthetic_root):
    """Mean colour of each class is closest to its palette colour for most classes (learnable)."""
    ds = build_dataset("synthetic", root=synthetic_root, split="train")
    sums, counts = np.zeros((19, 3)), np.zeros(19)
    for i in range(len(ds)):
        img, mask = ds.load(i)
        for c in np.unique(mask[mask < 19]):
            sel = mask == c
            sums[c] += img[sel].sum(0)
            counts[c] += sel.sum()
    means = sums / counts[:, None]
    nearest = np.argmin(((means[:, None, :] - PALETTE[None].astype(float)) ** 2).sum(-1), axis=1)
    assert (nearest == np.arange(19)).sum() >= 15


def test_synthetic_cli(tmp_path):
    from datasets.synthetic import is_complete, main

    assert main(["--root", str(tmp_path / "s"), "--num-train", "2", "--num-val", "1", "--size", "32x48"]) == 0
    assert is_complete(tmp_path / "s")
    img = cv2.imread(str(next((tmp_path / "s/leftImg8bit/val").rglob("*.png"))))
    assert img.shape == (32, 48, 3)


def _ensure(root: str, barrier) -> None:
    from datasets.synthetic import ensure

    barrier.wait()
    ensure(root, num_train=3, num_val=1, size=(32, 64))


def test_build_synthetic_generates_on_first_use_once(tmp_path):
    root = tmp_path / "gen"
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_ensure, args=(str(root), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    ds = build_dataset("synthetic", root=root, split="train")  # already there: no regeneration
    assert len(ds) == 3 and ds.name == "synthetic"
    assert not list(root.rglob("*.tmp*"))


def test_synthetic_refuses_a_foreign_non_empty_root(tmp_path):
    (tmp_path / "leftImg8bit").mkdir()
    (tmp_path / "leftImg8bit" / "real.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not empty"):
        build_dataset("synthetic", root=tmp_path)
    assert [p.name for p in (tmp_path / "leftImg8bit").iterdir()] == ["real.png"]


def test_dataloader_with_workers_and_class_uniform_keys(synthetic_root, tmp_path):
    from datasets import build_sampler

    ds = build_dataset("synthetic", root=synthetic_root, transform=build_train_transform(48))
    sampler = build_sampler(ds, class_uniform_pct=0.5, class_uniform_tile=32, cache_dir=tmp_path, seed=1)
    assert any(isinstance(k, tuple) for k in sampler)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["image"].shape == (4, 3, 48, 48) and batches[0]["mask"].shape == (4, 48, 48)
    assert batches[0]["mask"].dtype == torch.long and len(batches[0]["name"]) == 4


def test_coarse_boost_classes_only_feed_class_uniform_samples(tmp_path):
    from datasets import build_sampler

    make_cityscapes(tmp_path, {"train": ["aachen", "bochum", "bremen", "dresden"], "val": ["frankfurt"]}, size=(8, 8))
    for k in range(4):  # coarse images: left half road (7), right half bus (28)
        stem = f"erlangen_{k:06d}_000019"
        _write_png(tmp_path / f"leftImg8bit/train_extra/erlangen/{stem}_leftImg8bit.png", np.zeros((8, 8, 3), np.uint8))
        ids = np.full((8, 8), 7, np.uint8)
        ids[:, 4:] = 28
        _write_png(tmp_path / f"gtCoarse/train_extra/erlangen/{stem}_gtCoarse_labelIds.png", ids)
    ds = build_dataset("cityscapes", root=tmp_path, coarse_boost_classes=[15])
    assert len(ds) == 8 and ds.num_primary == 4 and ds.boost_classes == (15,)
    s = build_sampler(ds, class_uniform_pct=1.0, class_uniform_tile=8, cache_dir=tmp_path / "c")
    by_class = s.centroids_by_class()
    assert set(by_class[15][:, 0].tolist()) >= {4, 5, 6, 7}  # bus centroids from coarse images
    assert not (by_class[0][:, 0] >= 4).any()  # coarse road is not boosted
    assert len(list(s)) == 4  # epoch length stays fine-only
    s.class_uniform_pct = 0.0
    assert sorted(s) == list(range(8))  # without class-uniform sampling coarse images are plain items
    with pytest.raises(DatasetError, match="custom"):
        build_dataset("cityscapes", root=tmp_path, custom_coarse_prob=0.5)
