"""One checkpoint, one answer through every door.

The same checkpoint and image through ``train.py --eval``, ``predict.py``, ``export.py`` (the ONNX
file, run by onnxruntime), ``deploy.Segmenter`` and ``hubconf.py``: each door resolves the same
inference settings (the scales the checkpoint was validated with, its normalisation, no flip) and
gives identical labels. Before, the doors defaulted to different scales (0.5,1.0 / 0.5,1.0,2.0 /
1.0) and precisions: 88 % argmax agreement between an export and predict.py. Precision is pinned to
fp32 here: ``auto`` depends on the CPU's instruction set, and no test may.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train_helpers import REPO, tiny_args
from train import cli

pytestmark = pytest.mark.slow  # a tiny training run and an ONNX export
ARCH = "ocrnet.HRNet_Mscale_w18s"
SAME = ("scales", "flip", "precision", "half_model", "mean", "std")


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A few steps of training; its validation (default scales, fp32) is recorded in best.pth."""
    rd = tmp_path_factory.mktemp("one_answer") / "run"
    assert cli(tiny_args(synthetic_root, rd, "--max_iter", "3", "--max_epoch", "1", "--amp_opt_level", "O0",
                         arch=ARCH)) == 0
    return rd / "best.pth"


@pytest.fixture(scope="module")
def image(synthetic_root, tmp_path_factory) -> Path:
    src = sorted((synthetic_root / "leftImg8bit" / "val").rglob("*.png"))[0]
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(src, folder / src.name)
    return folder / src.name


def _label_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))  # class ids (predict.py's labels are palette PNGs)


def door_train(checkpoint: Path, image: Path, synthetic_root: Path, out: Path) -> tuple[np.ndarray, dict]:
    args = tiny_args(synthetic_root, out, "--eval", "val", "--snapshot", str(checkpoint), "--amp_opt_level", "O0",
                     "--dump_for_auto_labelling", "--bs_val", "1", arch=ARCH)
    assert cli(args) == 0
    settings = json.loads((out / "metrics.json").read_text())["inference"]
    name = image.name.removesuffix("_leftImg8bit.png") + ".png"  # the dataset's name for the image
    return _label_png(out / "auto_labels" / name), settings


def door_predict(checkpoint: Path, image: Path, out: Path) -> tuple[np.ndarray, dict]:
    import predict

    assert predict.main(["--arch", ARCH, "--snapshot", str(checkpoint), "--eval_folder", str(image.parent),
                         "--result_dir", str(out), "--amp_dtype", "fp32", "--workers", "0", "--batch_size", "1",
                         "--no_progress", "--device", "cpu"]) == 0
    settings = json.loads((out / "predict_manifest.json").read_text())["inference"]
    return _label_png(out / "label" / image.name), settings


def door_export(checkpoint: Path, image: Path, out: Path) -> tuple[np.ndarray, dict]:
    import export
    from datasets.folder import read_rgb, to_model_input
    from deploy.onnx_export import INPUT, OUTPUT, read_metadata, session

    assert export.main(["--snapshot", str(checkpoint), "--out", str(out), "--check-images", str(image.parent),
                        "--check-short-side", "0"]) == 0
    meta = read_metadata(out)
    rgb = read_rgb(image)
    x = to_model_input(rgb, rgb.shape[:2], json.loads(meta["mean"]), json.loads(meta["std"]))
    logits = session(out).run([OUTPUT], {INPUT: x[None].numpy()})[0]
    return logits.argmax(1)[0].astype(np.uint8), json.loads(meta["inference"])


def door_segmenter(checkpoint: Path, image: Path) -> tuple[np.ndarray, dict]:
    from deploy import Segmenter

    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32", device="cpu")
    return seg(image).label, seg.settings.to_dict()


def door_hub(checkpoint: Path, image: Path) -> tuple[np.ndarray, dict]:
    seg = torch.hub.load(str(REPO), "segmenter", source="local", snapshot=str(checkpoint), precision="fp32",
                         device="cpu")
    return seg(image).label, seg.settings.to_dict()


def test_five_doors_give_identical_labels(checkpoint, image, synthetic_root, tmp_path):
    doors = {"train.py --eval": door_train(checkpoint, image, synthetic_root, tmp_path / "eval"),
             "predict.py": door_predict(checkpoint, image, tmp_path / "predict"),
             "export.py": door_export(checkpoint, image, tmp_path / "model.onnx"),
             "Segmenter": door_segmenter(checkpoint, image),
             "hubconf.py": door_hub(checkpoint, image)}
    validated = torch.load(checkpoint, weights_only=True)["inference"]
    assert validated["scales"] == [0.5, 1.0] and validated["precision"] == "fp32"
    for name, (_, settings) in doors.items():
        assert {k: settings[k] for k in SAME} == {k: validated[k] for k in SAME}, name
        assert settings["scales_from"] == "the checkpoint's validated scales", name
    reference = doors["predict.py"][0]
    assert reference.shape == _label_png(image).shape[:2] and len(np.unique(reference)) > 1
    for name, (labels, _) in doors.items():
        assert labels.shape == reference.shape, name
        assert np.array_equal(labels, reference), (name, float((labels == reference).mean()))
