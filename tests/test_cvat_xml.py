"""``python -m datasets.cvat`` on a "CVAT for images 1.1" export (annotations.xml; issue 22, item 2).

Before: annotations.xml was not read (the error said ``labelmap.txt not found``, later that
the format is not imported yet).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.cvat import main as cvat

W, H = 40, 30
LABELS = (("road", "#808080"), ("car", "#ff0000"), ("person", "#00ff00"))  # ids 1, 2, 3; background 0
BG, ROAD, CAR, PERSON = 0, 1, 2, 3

# a.jpg: road under the left half (z 0); a car square (z 2) written BEFORE a person rectangle (z 1)
# that it overlaps: z_order, not document order, puts the car on top; a 4x3 RLE mask (z 3) whose
# rows are 0110 / 1111 / 0001; a box (z 0) in the top right corner.
IMAGE_A = """
    <polygon label="road" source="manual" points="0.00,0.00;20.00,0.00;20.00,30.00;0.00,30.00" z_order="0"/>
    <polygon label="car" source="manual" points="10.00,10.00;30.00,10.00;30.00,20.00;10.00,20.00" z_order="2">
      <attribute name="parked">true</attribute>
    </polygon>
    <polygon label="person" occluded="1" points="5.00,5.00;15.00,5.00;15.00,25.00;5.00,25.00" z_order="1"/>
    <mask label="person" source="manual" rle="1, 2, 1, 4, 3, 1" left="30" top="22" width="4" height="3" z_order="3"/>
    <box label="car" source="manual" occluded="0" xtl="34.00" ytl="0.00" xbr="40.00" ybr="6.00" z_order="0"/>
    <tag label="person" source="manual"/>"""
IMAGE_B = """
    <polygon label="road" points="0,30;40,30;40,20;0,20" z_order="0"/>"""


def write_xml_export(root: Path, extra_a: str = "", labels: bool = True, project: bool = True,
                     subsets: tuple[str, str, str] = ("Train", "Validation", "Validation")) -> Path:
    """A project export: labels under <project>, a subset on every image; b.png in a subfolder."""
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "sub/b.png", "c.jpg"):
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 255, (H, W, 3), np.uint8))
    label_xml = "".join(f"<label><name>{n}</name><color>{c}</color><type>any</type><attributes/></label>"
                        for n, c in LABELS) if labels else ""
    owner = "project" if project else "task"
    subset = ' subset="{}"' if project else ""
    (root / "annotations.xml").write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><{owner}><id>3</id><name>streets</name>{'' if project else '<subset>Validation</subset>'}
    <labels>{label_xml}</labels></{owner}><dumped>2024-05-01</dumped></meta>
  <image id="0" name="a.jpg" width="{W}" height="{H}"{subset.format(subsets[0])}>{IMAGE_A}{extra_a}
  </image>
  <image id="1" name="sub/b.png" width="{W}" height="{H}"{subset.format(subsets[1])}>{IMAGE_B}
  </image>
  <image id="2" name="c.jpg" width="{W}" height="{H}"{subset.format(subsets[2])}>
  </image>
</annotations>
""")
    return root


def _label(out: Path, split: str, stem: str) -> np.ndarray:
    return cv2.imread(str(out / "labels" / split / f"{stem}.png"), cv2.IMREAD_UNCHANGED)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_polygons_masks_and_boxes_are_drawn_in_z_order(tmp_path, capsys):
    export, out = write_xml_export(tmp_path / "export"), tmp_path / "out"
    assert cvat([str(export), str(out), "--boxes", "--no_progress"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("found CVAT for images 1.1 (annotations.xml)\n")
    a = _label(out, "train", "a")
    assert a.shape == (H, W) and a.dtype == np.uint8
    at = {(x, y): int(a[y, x]) for x, y in [(2, 2), (7, 7), (12, 15), (25, 15), (35, 15), (19, 29), (20, 29)]}
    assert at == {(2, 2): ROAD, (7, 7): PERSON, (12, 15): CAR, (25, 15): CAR, (35, 15): BG,
                  (19, 29): ROAD, (20, 29): BG}  # car (z 2) over person (z 1) over road (z 0)
    assert a[9, 12] == PERSON and a[10, 12] == CAR  # the car's edge y=10: rows whose centre is inside
    # the mask: rows 0110 / 1111 / 0001 at (30, 22), run lengths row by row
    assert a[22:25, 30:34].tolist() == [[0, 3, 3, 0], [3, 3, 3, 3], [0, 0, 0, 3]]
    assert (a[0:6, 34:40] == CAR).all() and a[6, 36] == BG  # --boxes: filled
    b = _label(out, "val", "sub__b")
    assert (b[20:] == ROAD).all() and (b[:20] == BG).all()
    assert (_label(out, "val", "c") == BG).all()
    assert (out / "images" / "train" / "a.jpg").is_file() and (out / "images" / "val" / "sub__b.png").is_file()


def test_classes_splits_and_the_printed_command_work_as_printed(tmp_path, capsys):
    from config import parse_config
    from datasets.spec import load_spec
    from train import build_datasets

    export, out = write_xml_export(tmp_path / "export"), tmp_path / "my data"  # a space: quoted
    assert cvat([str(export), str(out), "--boxes", "--no_progress"]) == 0
    captured = capsys.readouterr()
    spec = load_spec(out)
    assert spec.splits == {"train": "train", "val": "val"}
    assert [(c.id, c.name, c.color) for c in spec.classes] == [
        (0, "background", (0, 0, 0)), (1, "road", (128, 128, 128)), (2, "car", (255, 0, 0)), (3, "person", (0, 255, 0))]
    assert "subsets: Train -> train, Validation -> val" in captured.out
    assert "1 image(s) have no shapes" in captured.err
    command = next(line for line in captured.out.splitlines() if line.startswith("train: "))[len("train: "):]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "train.py"]
    train_ds, val_ds = build_datasets(parse_config(argv[2:]), train=True)
    assert len(train_ds) == 1 and len(val_ds) == 2 and val_ds.class_names == ("background", "road", "car", "person")


@pytest.mark.parametrize(("extra", "shape"), [
    ('<polyline label="road" points="0,0;5,5" z_order="0"/>', "polyline"),
    ('<points label="person" points="3,3" z_order="0"/>', "points"),
    ('<ellipse label="car" cx="5" cy="5" rx="2" ry="3" z_order="0"/>', "ellipse"),
    ('<skeleton label="body" z_order="0"><points label="head" points="1,1"/></skeleton>', "skeleton"),
])
def test_shapes_without_an_area_are_refused_in_one_line(tmp_path, capsys, extra, shape):
    export, out = write_xml_export(tmp_path / "export", extra_a=extra), tmp_path / "out"
    assert cvat([str(export), str(out), "--boxes", "--no_progress"]) == 2
    err = _one_line_error(capsys)
    assert f"1 {shape}" in err and "image 'a.jpg'" in err and "--skip_unsupported" in err
    assert not out.exists()  # refused before anything is written
    assert cvat([str(export), str(out), "--boxes", "--skip_unsupported", "--no_progress"]) == 0
    assert f"left out (--skip_unsupported): 1 {shape}" in capsys.readouterr().err
    assert _label(out, "train", "a")[2, 2] == ROAD


def test_boxes_are_refused_unless_asked_for_or_skipped(tmp_path, capsys):
    export = write_xml_export(tmp_path / "export")
    assert cvat([str(export), str(tmp_path / "out"), "--no_progress"]) == 2
    err = _one_line_error(capsys)
    assert "1 box" in err and "--boxes" in err and "--skip_unsupported" in err
    assert cvat([str(export), str(tmp_path / "out"), "--skip-unsupported", "--no_progress"]) == 0
    assert (_label(tmp_path / "out", "train", "a")[0:6, 34:40] == BG).all()


def test_video_export_and_foreign_xml_are_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "annotations.xml").write_text(
        '<annotations><version>1.1</version><meta/><track id="0" label="car"/></annotations>')
    assert cvat([str(tmp_path / "video"), str(tmp_path / "out")]) == 2
    assert "'CVAT for video 1.1' export" in _one_line_error(capsys)
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "annotations.xml").write_text("<annotation><object/></annotation>")
    assert cvat([str(tmp_path / "voc"), str(tmp_path / "out")]) == 2
    assert "not a CVAT XML export" in _one_line_error(capsys)


def test_classes_file_for_an_export_without_labels(tmp_path, capsys):
    from datasets.spec import load_spec

    export = write_xml_export(tmp_path / "export", labels=False, project=False)  # a task export: one subset
    assert cvat([str(export), str(tmp_path / "out"), "--boxes", "--no_progress"]) == 2
    assert "no <labels>" in (err := _one_line_error(capsys)) and "--classes FILE" in err
    classes = tmp_path / "classes.txt"
    classes.write_text("# our classes\nperson #00ff00\ncar\nroad\n")
    assert cvat([str(export), str(tmp_path / "out"), "--boxes", "--classes", str(classes), "--no_progress"]) == 0
    spec = load_spec(tmp_path / "out")
    assert [c.name for c in spec.classes] == ["background", "person", "car", "road"]
    assert spec.classes[1].color == (0, 255, 0) and len({c.color for c in spec.classes}) == 4
    assert spec.splits == {"val": "val"}  # <task><subset>Validation</subset>
    assert _label(tmp_path / "out", "val", "a")[15, 12] == 2  # car is id 2 in this file's order
    assert "no subset maps to 'train'" in capsys.readouterr().err  # only Validation: said, no command printed
    classes.write_text("person\nroad\n")
    assert cvat([str(export), str(tmp_path / "out2"), "--boxes", "--classes", str(classes)]) == 2
    assert "label 'car' is not in --classes" in _one_line_error(capsys)


@pytest.mark.slow
def test_imported_xml_export_trains_with_the_printed_command(tmp_path, capsys):
    """The printed command, plus only CPU-sized model and run settings, trains and validates."""
    from train import cli

    export = write_xml_export(tmp_path / "export", subsets=("Train", "Train", "Validation"))  # batches of 2
    out = tmp_path / "mydata"
    assert cvat([str(export), str(out), "--boxes", "--no_progress"]) == 0
    command = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("train: "))
    argv = shlex.split(command[len("train: "):])[2:]
    small = ["--arch", "ocrnet.HRNet_w18s", "--crop_size", "32", "--max_iter", "2",
             "--num_workers", "0", "--centroid_cache", str(tmp_path / "cache"), "--result_dir", str(tmp_path / "run")]
    assert cli(argv + small) == 0
    metrics = (tmp_path / "run" / "metrics.json").read_text()
    assert all(name in metrics for name in ("background", "road", "car", "person"))
