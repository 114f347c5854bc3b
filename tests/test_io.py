import json
import os

import numpy as np
import pytest

from utils.io import atomic_imwrite, atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "sub" / "a.json"
    atomic_write_json(dest, {"x": 1})
    atomic_write_json(dest, {"x": 2})
    assert json.loads(dest.read_text()) == {"x": 2}
    assert os.listdir(dest.parent) == ["a.json"]


def test_crash_while_writing_keeps_previous_file(tmp_path):
    dest = tmp_path / "last.txt"
    atomic_write_text(dest, "old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed mid-write")
    assert dest.read_text() == "old"
    assert os.listdir(tmp_path) == ["last.txt"]


def test_atomic_imwrite_roundtrip(tmp_path):
    import cv2

    img = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    atomic_imwrite(tmp_path / "x.png", img)
    assert np.array_equal(cv2.imread(str(tmp_path / "x.png")), img)


def test_atomic_files_get_the_umask_mode_not_0600(tmp_path):
    from utils import io

    atomic_write_text(tmp_path / "m.txt", "x")
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o666 & ~io._UMASK
