"""config.py: reference flags parsed into typed dataclasses, validation naming the flag."""

from __future__ import annotations

import json

import pytest

from config import Config, ConfigError, expand_assets, parse_config, save_config

REFERENCE_EVAL = ["--dataset", "mapillary", "--syncbn", "--apex", "--fp16", "--bs_val", "1", "--eval", "val",
                  "--pre_size", "2177", "--amp_opt_level", "O3", "--n_scales", "0.25,0.5,1.0,2.0", "--do_flip",
                  "--snapshot", "ASSETS_PATH/seg_weights/x.pth", "--arch", "ocrnet.HRNet_Mscale",
                  "--result_dir", "/tmp/r"]
REFERENCE_TRAIN = ["--dataset", "cityscapes", "--cv", "0", "--syncbn", "--apex", "--fp16", "--crop_size",
                   "1024,2048", "--bs_trn", "1", "--poly_exp", "2", "--lr", "1e-2", "--max_epoch", "175",
                   "--max_cu_epoch", "150", "--rmi_loss", "--n_scales", "0.5,1.0,2.0",
                   "--supervised_mscale_loss_wt", "0.05", "--arch", "ocrnet.HRNet_Mscale",
                   "--coarse_boost_classes", "3,4,6,7,9,11,12,13,14,15,16,17,18",
                   "--custom_coarse_dropout_classes", "14,15,16", "--mask_out_cityscapes",
                   "--custom_coarse_prob", "0.5", "--gblur", "--lr_schedule", "poly", "--optimizer", "sgd",
                   "--img_wt_loss", "--trunk", "hrnetv2", "--scale_min", "0.5", "--scale_max", "2.0",
                   "--color_aug", "0.25", "--class_uniform_pct", "0.5", "--class_uniform_tile", "1024",
                   "--weight_decay", "1e-4", "--momentum", "0.9", "--num_workers", "4", "--deterministic",
                   "--val_freq", "1", "--max_iter", "100", "--mscale_lo_scale", "0.5", "--dump_assets",
                   "--dump_all_images", "--resume", "x.pth"]


def test_reference_yaml_flags_parse_into_types():
    cfg = parse_config(REFERENCE_TRAIN)
    assert cfg.data.crop_size == (1024, 2048)
    assert cfg.eval.n_scales == (0.5, 1.0, 2.0)
    assert cfg.data.coarse_boost_classes[:3] == (3, 4, 6)
    assert cfg.loss.supervised_mscale_loss_wt == pytest.approx(0.05)
    assert cfg.optim.lr == pytest.approx(0.01) and cfg.optim.poly_exp == 2.0
    assert cfg.amp_level == "O1"  # --fp16 without a level: native autocast O1
    ev = parse_config(REFERENCE_EVAL)
    assert ev.amp_level == "O3" and ev.eval.eval == "val" and ev.eval.do_flip
    assert ev.eval.n_scales == (0.25, 0.5, 1.0, 2.0)


def test_defaults_and_square_crop():
    cfg = parse_config(["--crop_size", "512"])
    assert cfg.data.crop_size == (512, 512)
    assert cfg.amp_level == "O0" and cfg.eval.n_scales is None
    assert parse_config(["--local-rank=3"]).train.local_rank == 3


def test_round_trip_through_dict():
    cfg = parse_config(REFERENCE_TRAIN)
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize("argv, needle", [
    (["--lrr", "0.1"], "unknown flag --lrr; did you mean --lr"),
    (["--n_scale", "0.5"], "did you mean --n_scales"),
    (["--lr", "abc"], "--lr"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--amp_opt_level", "O5"], "--amp_opt_level"),
    (["--crop_size", "1,2,3"], "--crop_size"),
    (["--n_scales", "0.5,x"], "--n_scales"),
    (["--scale_min", "2", "--scale_max", "1"], "--scale_max must be >="),
    (["--class_uniform_pct", "1.5"], "--class_uniform_pct"),
    (["--eval", "folder"], "--eval_folder"),
    (["--optimizer", "lamb"], "--optimizer"),
    (["--bs_trn", "2", "--global_batch_size", "3"], "--global_batch_size"),
])
def test_bad_flags_fail_naming_the_flag(argv, needle):
    with pytest.raises(ConfigError, match=None) as e:
        parse_config(argv)
    assert needle in str(e.value)


def test_train_cli_exits_2_on_bad_flag(capsys):
    from train import cli

    assert cli(["--max_epochs", "3"]) == 2
    assert "did you mean --max_epoch" in capsys.readouterr().err


@pytest.mark.parametrize("prog", ["train.py", "predict.py"])
def test_scales_without_one_are_one_line_exit_2_before_any_work(prog, tmp_path):
    """--n_scales 0.5,2.0 was accepted, then the model raised ValueError: a traceback, exit 1."""
    import subprocess
    import sys

    from tests.test_train_helpers import REPO

    args = ["--arch", "ocrnet.HRNet_Mscale_w18s", "--n_scales", "0.5,2.0", "--result_dir", str(tmp_path / "out")]
    args += ["--eval_folder", str(tmp_path)] if prog == "predict.py" else ["--eval", "val"]
    done = subprocess.run([sys.executable, str(REPO / prog), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines == [f"{prog}: error: argument --n_scales: the scales must include 1.0 (the scale the others are "
                     "combined into), got 0.5,2; e.g. 0.5,1,2"], done.stderr
    assert not (tmp_path / "out").exists()


def test_known_architectures_are_the_registry_and_a_typo_is_refused_while_parsing():
    import network
    from config import ARCH_FAMILIES, ARCHS

    assert sorted(ARCHS) == sorted(network.list_models())
    assert sorted(ARCH_FAMILIES.values()) == network.list_families()
    with pytest.raises(ConfigError, match="did you mean ocrnet.HRNet_Mscale"):
        parse_config(["--arch", "ocrnet.HRNet_MScale"])
    assert parse_config(["--arch", "ocrnet.timm.resnet18_Mscale"]).model.arch == "ocrnet.timm.resnet18_Mscale"
    with pytest.raises(ConfigError, match="ocrnet.timm.<timm_name>"):
        parse_config(["--arch", "ocrnet.timm."])


def test_assets_path_expansion(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSETS_PATH", str(tmp_path))
    assert expand_assets("ASSETS_PATH/seg_weights/a.pth") == f"{tmp_path}/seg_weights/a.pth"
    assert expand_assets("ASSETS_PATH/a.pth", "/other") == "/other/a.pth"
    monkeypatch.delenv("ASSETS_PATH")
    with pytest.raises(ConfigError, match="ASSETS_PATH"):
        expand_assets("ASSETS_PATH/a.pth")


def test_save_config_writes_resolved_json(tmp_path):
    cfg = parse_config(["--crop_size", "64,128", "--fp16"])
    save_config(cfg, tmp_path / "config.json", {"world_size": 2, "global_batch_size": 8})
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["data"]["crop_size"] == [64, 128]
    assert data["amp_level"] == "O1" and data["runtime"]["global_batch_size"] == 8


def test_hydra_style_key_value_words_are_the_flags_they_name():
    """`python train.py max_epoch=5` said "unexpected value": key=value worked only through python -m sbatch."""
    cfg = parse_config(["max_epoch=5", "lr=0.01", "do_flip=true", "n_scales=0.5,1.0", "--snapshot", "a=b.pth"])
    assert cfg.train.max_epoch == 5 and cfg.optim.lr == 0.01 and cfg.eval.do_flip is True
    assert cfg.eval.n_scales == (0.5, 1.0) and cfg.model.snapshot == "a=b.pth"  # a flag's value stays a value
    assert parse_config(["do_flip=false"]).eval.do_flip is False
    with pytest.raises(ConfigError, match=r"override 'max_epoc=5': no flag --max_epoc; did you mean max_epoch=\.\.\."):
        parse_config(["max_epoc=5"])
    with pytest.raises(ConfigError, match="n_scales"):  # validated like the flag
        parse_config(["n_scales=0.5,2"])
    with pytest.raises(ConfigError, match="do_flip=true or do_flip=false"):
        parse_config(["do_flip=maybe"])


def test_predict_py_takes_key_value_words_too(tmp_path, capsys):
    import predict

    assert predict.main(["infer_short_side=-3", "--eval_folder", str(tmp_path), "--result_dir", str(tmp_path / "o"),
                         "--arch", "ocrnet.HRNet_w18s"]) == 2
    assert "--infer_short_side" in capsys.readouterr().err
    assert predict.main(["batch_sise=2", "--eval_folder", str(tmp_path), "--result_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no flag --batch_sise" in err and len(err.strip().splitlines()) == 1
