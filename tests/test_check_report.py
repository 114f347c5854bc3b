"""``python -m datasets.check``: each bad file listed once, and bad data exits 2 (issue 22, item 4).

Before: a raster whose undeclared label values fell in two read strips was listed twice (once
per strip, each line with that strip's pixel count), a file in two splits twice, and bad data
exited 1.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.check import main as check

CLASSES = "classes:\n  - {id: 0, name: bg, color: [0, 0, 0]}\n  - {id: 1, name: roof, color: [200, 0, 0]}\n"


def _ids_dataset(root: Path, splits: str = "{train: train, val: val}") -> Path:
    """Two 16x16 photos per split with class-id labels (bg and a roof square)."""
    label = np.zeros((16, 16), np.uint8)
    label[4:8, 4:8] = 1
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem in ("a", "b"):
            cv2.imwrite(str(root / "images" / split / f"{stem}.png"), np.full((16, 16, 3), 90, np.uint8))
            cv2.imwrite(str(root / "labels" / split / f"{stem}.png"), label)
    (root / "dataset.yaml").write_text(CLASSES + "label_encoding: ids\nimages: images/{split}/*.png\n"
                                       f"splits: {splits}\n")
    return root


def _listed(out: str, path: Path) -> list[str]:
    return [line for line in out.splitlines() if line.strip().startswith(f"{path}:")]


def test_undefined_label_value_is_listed_once_and_exits_2(tmp_path, capsys):
    root = _ids_dataset(tmp_path / "d")
    bad = root / "labels" / "train" / "b.png"
    label = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    label[0, :3] = 7  # not in dataset.yaml
    cv2.imwrite(str(bad), label)
    assert check(["--dataset_root", str(root), "--no_progress"]) == 2
    captured = capsys.readouterr()
    lines = _listed(captured.out, bad)
    assert len(lines) == 1 and "3 pixels hold values outside the class table (e.g. 7)" in lines[0]
    assert "problems (1):" in captured.out
    err = captured.err.strip()
    assert "\n" not in err and "1 bad file(s)" in err and "fix or remove" in err
    cv2.imwrite(str(bad), np.zeros((16, 16), np.uint8))  # fixed: exit 0, nothing on stderr
    assert check(["--dataset_root", str(root), "--no_progress"]) == 0
    assert capsys.readouterr().err == ""


def test_a_file_in_two_splits_is_listed_once(tmp_path, capsys):
    root = _ids_dataset(tmp_path / "d", splits="{train: train, val: train}")
    bad = root / "labels" / "train" / "a.png"
    cv2.imwrite(str(bad), np.full((16, 16), 9, np.uint8))
    assert check(["--dataset_root", str(root), "--no_progress"]) == 2
    out = capsys.readouterr().out
    assert len(_listed(out, bad)) == 1 and "problems (1):" in out


def test_raster_with_bad_values_in_two_strips_is_listed_once(tmp_path, capsys):
    pytest.importorskip("rasterio")
    import rasterio

    from datasets.examples import write_raster_dataset

    root = write_raster_dataset(tmp_path / "r", size=(300, 64), bands=3, tile=64)  # strips of 128 rows: 3
    bad = root / "labels" / "train" / "scene_train.tif"
    with rasterio.open(bad, "r+") as m:
        label = m.read(1)
        label[0, 0], label[200, 0], label[299, :2] = 9, 9, 11
        m.write(label, 1)
    assert check(["--dataset_root", str(root), "--no_progress"]) == 2
    lines = _listed(capsys.readouterr().out, bad)
    assert len(lines) == 1, lines
    assert "4 pixels hold values outside the class table (e.g. 9, 11)" in lines[0]
