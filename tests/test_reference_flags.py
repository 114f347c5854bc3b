"""The reference train.py's flags: each accepted one parses and does what it says (a small check
each), every other one stops with one line naming its replacement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from config import ConfigError, parse_config
from datasets.cityscapes_labels import CLASS_NAMES, PALETTE, TRAIN_LABELS
from tests.test_train_helpers import REPO, run_train, tiny_args
from training.dump import LabelWriter, WorstImages, eval_dumps, image_miou
from training.finetune import apply_start_flags, freeze_trunk, restore_optimizer
from utils.optim import poly_schedule
from utils.reference_flags import REFUSED, TEST_MODE_ITERS

REFERENCE_FLAGS = (REPO / "tests" / "data" / "reference" / "train_flags.txt").read_text().split()


def test_every_reference_flag_is_accepted_or_names_its_replacement():
    assert len(REFERENCE_FLAGS) == 103  # the HMSA reference train.py, -wb/--wt_bound counted once
    for flag in REFERENCE_FLAGS:
        if flag in REFUSED:
            with pytest.raises(ConfigError, match=rf"^--{flag} \(a reference flag\) is not supported: \S"):
                parse_config([f"--{flag}", "1"])
        else:
            assert f"--{flag}" in _known_flags(), flag


def _known_flags() -> set[str]:
    from config import build_parser

    return {s for a in build_parser()._actions for s in a.option_strings}


def test_short_wb_alias_refused_by_name():
    with pytest.raises(ConfigError, match="-wb .*--ocr_alpha"):
        parse_config(["-wb", "2"])


def test_multi_scale_inference_and_extra_scales():
    assert parse_config(["--multi_scale_inference"]).eval.n_scales == (0.5, 1.0, 2.0)
    cfg = parse_config(["--multi_scale_inference", "--extra_scales", "0.25,1.5", "--default_scale", "1.0"])
    assert cfg.eval.n_scales == (0.25, 1.0, 1.5)
    assert parse_config(["--multi_scale_inference", "--n_scales", "1.0,2.0"]).eval.n_scales == (1.0, 2.0)
    assert parse_config(["--extra_scales", "0.5"]).eval.n_scales is None  # only with --multi_scale_inference


def test_test_mode_is_two_short_epochs():
    cfg = parse_config(["--test_mode", "--max_iter", "1000"])
    assert (cfg.train.max_epoch, cfg.train.max_iter) == (2, TEST_MODE_ITERS)


@pytest.mark.parametrize("argv, match", [
    (["--restore_net"], "--restore_net .*--snapshot"),
    (["--restore_optimizer"], "--restore_optimizer .*--snapshot"),
    (["--dump_for_submission"], "--eval val or --eval test"),
    (["--dump_for_submission", "--eval", "val", "--dataset", "mapillary"], "--dataset cityscapes"),
    (["--dump_topn", "-1"], "--dump_topn"),
    (["--start_epoch", "2", "--resume", "x.pth"], "--start_epoch"),
])
def test_impossible_combinations_refused(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(argv)


def test_freeze_trunk_leaves_only_heads_trainable():
    from network import get_model

    assert parse_config(["--freeze_trunk"]).train.freeze_trunk
    net = get_model("ocrnet.HRNet_w18s", num_classes=3, trunk_weights=None)
    assert freeze_trunk(net) > 0
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("backbone."))


def test_restore_optimizer_and_start_epoch(tmp_path):
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.grad = torch.ones(2)
    opt.step()
    torch.save({"optimizer": opt.state_dict(), "model": {}}, tmp_path / "s.pth")
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    restore_optimizer(fresh, str(tmp_path / "s.pth"))
    assert int(fresh.state_dict()["state"][0]["step"]) == 1

    cfg = parse_config(["--snapshot", str(tmp_path / "s.pth"), "--restore_net", "--restore_optimizer",
                        "--start_epoch", "3"])
    sched = poly_schedule(fresh, total_iters=100, power=1.0)

    class State:
        epoch = iteration = consumed = 0

    st = State()
    said = apply_start_flags(cfg, fresh, sched, st, steps_per_epoch=10)
    assert (st.epoch, st.iteration) == (3, 30) and "epoch 3" in said
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.1 * 0.7)  # poly at iteration 30 of 100


def test_label_writer_submission_ids_and_auto_label_confidence(tmp_path):
    lut = np.zeros(256, np.uint8)
    lut[: len(TRAIN_LABELS)] = [lb.id for lb in TRAIN_LABELS]
    pred = torch.tensor([[[0, 13], [10, 0]]])
    logits = torch.zeros(1, 19, 2, 2)
    logits[0, 0, 0, 0] = 10.0
    batch = {"name": ["x/berlin_000001_000019"]}
    LabelWriter(tmp_path / "submit", lut=lut).dump(batch, {"pred": logits}, pred)
    LabelWriter(tmp_path / "auto", confidence=True).dump(batch, {"pred": logits}, pred)
    import cv2

    ids = cv2.imread(str(tmp_path / "submit" / "berlin_000001_000019.png"), cv2.IMREAD_UNCHANGED)
    assert ids.tolist() == [[7, 26], [23, 7]]  # road, car, sky as Cityscapes label ids
    train_ids = cv2.imread(str(tmp_path / "auto" / "berlin_000001_000019.png"), cv2.IMREAD_UNCHANGED)
    conf = cv2.imread(str(tmp_path / "auto" / "berlin_000001_000019_prob.png"), cv2.IMREAD_UNCHANGED)
    assert train_ids.tolist() == [[0, 13], [10, 0]] and conf[0, 0] == 255 and conf[1, 1] == 13  # 255/19


def test_dump_topn_keeps_the_worst(tmp_path):
    assert image_miou(np.array([0, 0, 1]), np.array([0, 0, 1]), 19, 255) == 1.0
    w = WorstImages(tmp_path, 2, PALETTE, CLASS_NAMES)
    masks = torch.zeros(3, 8, 8, dtype=torch.long)
    preds = masks.clone()
    preds[1, :4] = 1  # half wrong
    preds[2] = 1  # all wrong
    w.dump({"mask": masks, "image": torch.zeros(3, 3, 8, 8), "name": ["a", "b", "c"]}, {}, preds)
    w.finish()
    rows = (tmp_path / "worst_images.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["c", "b"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["000_c.png", "001_b.png"]


def test_eval_dumps_follow_the_flags(tmp_path):
    cfg = parse_config(["--eval", "test", "--dump_for_submission", "--dump_for_auto_labelling", "--dump_topn", "3",
                        "--no_metrics"])

    class DS:
        palette, class_names, ignore_index = PALETTE, CLASS_NAMES, 255

    dumps = eval_dumps(cfg.eval, tmp_path, tmp_path / "pics", DS, is_main=False, rank=1)
    kinds = [type(p).__name__ for p in dumps.parts]
    assert kinds == ["LabelWriter", "LabelWriter", "WorstImages"]  # not the main rank: no pictures
    assert not dumps.done()


def test_dump_cityscapes_script_counterpart():
    exp = yaml.safe_load((REPO / "scripts" / "dump_cityscapes.yml").read_text())
    test_run = {**exp["HPARAMS"][0], **exp["HPARAMS"][1]}
    assert exp["HPARAMS"][0]["dump_all_images"] and exp["HPARAMS"][0]["eval"] == "val"
    assert test_run["dump_for_submission"] and test_run["no_metrics"] and test_run["eval"] == "test"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_eval_with_submission_topn_and_no_metrics(synthetic_root, tmp_path):
    """train.py end to end: a few steps with --freeze_trunk --test_mode, then --eval val with the dumps."""
    rd = tmp_path / "run"
    done = run_train(tiny_args(synthetic_root, rd, "--freeze_trunk", "--test_mode", "--max_iter", "2"))
    assert done.returncode == 0, done.stderr[-2000:]
    ev = run_train(tiny_args(synthetic_root, tmp_path / "ev", "--eval", "val", "--snapshot", str(rd / "last.pth"),
                             "--dump_for_submission", "--dump_topn", "2", "--no_metrics"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert len(list((tmp_path / "ev" / "submit").glob("*.png"))) == 4  # every val image
    assert len(list((tmp_path / "ev" / "worst_images").glob("*.png"))) == 2
    assert not (tmp_path / "ev" / "metrics.json").exists()  # --no_metrics
