"""``python -m datasets.cvat``: the export's format is found and named, and CVAT subset names
become the splits training uses (issue 22, item 3).

Before: the error for anything but "Segmentation mask 1.1" said ``labelmap.txt not found``,
and subsets ``Train``/``Validation`` became splits of those names, so the printed training
command stopped with ``has no split 'val'``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from datasets.cvat import main as cvat
from datasets.examples import write_cvat_export


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _mask_export(root: Path) -> Path:
    """CVAT's own subset names: Train.txt and Validation.txt."""
    export = write_cvat_export(root, num_train=2, num_val=1)
    sets = export / "ImageSets" / "Segmentation"
    (sets / "train.txt").rename(sets / "Train.txt")
    (sets / "val.txt").rename(sets / "Validation.txt")
    return export


def test_formats_are_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cvat([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert "annotations.xml (CVAT for images 1.1)" in err and "labelmap.txt (Segmentation mask 1.1)" in err
    masks = write_cvat_export(tmp_path / "masks", num_train=2, num_val=1)
    assert cvat([str(masks), str(tmp_path / "out"), "--no_progress"]) == 0
    assert capsys.readouterr().out.startswith("found Segmentation mask 1.1 (labelmap.txt)\n")


def test_segmentation_mask_subsets_map_to_train_and_val_and_the_command_works(tmp_path, capsys):
    from config import parse_config
    from datasets.spec import load_spec
    from train import build_datasets

    out = tmp_path / "my data"  # a space: the printed command quotes it
    assert cvat([str(_mask_export(tmp_path / "export")), str(out), "--no_progress"]) == 0
    captured = capsys.readouterr().out
    assert load_spec(out).splits == {"train": "train", "val": "val"}
    assert "subsets: Train -> train, Validation -> val" in captured
    command = next(line for line in captured.splitlines() if line.startswith("train: "))[len("train: "):]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "train.py"]
    train_ds, val_ds = build_datasets(parse_config(argv[2:]), train=True)
    assert len(train_ds) == 2 and len(val_ds) == 1


def test_split_map_overrides_and_a_missing_val_split_is_said(tmp_path, capsys):
    from datasets.spec import load_spec

    export, out = _mask_export(tmp_path / "export"), tmp_path / "out"
    assert cvat([str(export), str(out), "--split-map", "validation=test", "--no_progress"]) == 0
    captured = capsys.readouterr()
    assert load_spec(out).splits == {"train": "train", "test": "test"}
    assert "train: python" not in captured.out and "no subset maps to 'val'" in captured.err
    assert "--split_map SUBSET=val" in captured.err
    assert cvat([str(export), str(out), "--split_map", "Holdout=val"]) == 2
    assert "subset 'holdout', which the export does not have (it has Train, Validation)" in _one_line_error(capsys)
    assert cvat([str(export), str(out), "--split_map", "Train"]) == 2
    assert "expected SUBSET=SPLIT" in _one_line_error(capsys)
