"""The one inference configuration (inference/): documented defaults, the checkpoint's scales,
records that are never null, the resume comparison, and --help that shows the real defaults."""

from __future__ import annotations

import json
import re

import pytest

from inference.defaults import DEFAULT_SCALES_MSCALE, default_scales, requested_precision, scales_problem
from inference.settings import InferenceSettings, build_settings, settings_diff, validated_scales


def test_documented_defaults_and_where_the_scales_come_from():
    assert build_settings(multiscale=True).scales == DEFAULT_SCALES_MSCALE == (0.5, 1.0)
    assert build_settings(multiscale=False).scales == (1.0,)
    s = build_settings(multiscale=True, validated=(1.0, 0.5, 2.0))
    assert s.scales == (0.5, 1.0, 2.0) and s.scales_from == "the checkpoint's validated scales"
    s = build_settings(multiscale=True, scales=(1.0, 0.25), validated=(0.5, 1.0))
    assert s.scales == (0.25, 1.0) and s.scales_from == "--n_scales"
    assert default_scales(True, 0.25) == (0.25, 1.0)


def test_validated_scales_of_checkpoints_old_and_new():
    assert validated_scales(None, True) is None
    assert validated_scales({"state_dict": {}}, True) is None  # the reference's published files
    assert validated_scales({"inference": {"scales": [1.0, 0.5]}}, True) == (0.5, 1.0)
    old_run = {"config": {"eval": {"n_scales": None}, "model": {"mscale_lo_scale": 0.25}}}
    assert validated_scales(old_run, True) == (0.25, 1.0)  # what its validation used
    assert validated_scales(old_run, False) == (1.0,)
    assert validated_scales({"config": {"eval": {"n_scales": [0.5, 1.0, 2.0]}}}, True) == (0.5, 1.0, 2.0)


def test_scales_the_models_refuse_are_named():
    assert scales_problem((0.5, 1.0)) is None
    assert "include 1.0" in scales_problem((0.5, 2.0))
    assert "distinct" in scales_problem((1.0, 1.0))
    assert "positive" in scales_problem((0.0, 1.0))
    with pytest.raises(ValueError, match="--n_scales"):
        InferenceSettings(scales=(0.5, 2.0))


def test_records_are_resolved_and_never_null():
    rec = build_settings(multiscale=True).resolve("cpu").to_dict()
    assert None not in rec.values(), rec
    assert rec["scales"] == [0.5, 1.0] and rec["precision"] in ("fp32", "bf16") and rec["precision_rule"]
    json.dumps(rec)
    assert requested_precision("auto", "O0") == ("fp32", False)
    assert requested_precision("bf16", "O3") == ("bf16", True) and requested_precision("auto", None) == ("auto", False)
    pinned = build_settings(multiscale=True, precision="fp32", half_model=True).resolve("cpu")
    assert pinned.to_dict()["precision"] == "fp32" and pinned.to_dict()["half_model"] is False


def test_diff_names_what_changed_and_skips_keys_an_old_record_lacks():
    a = build_settings(multiscale=True, precision="fp32").resolve("cpu").to_dict()
    b = build_settings(multiscale=True, scales=(0.5, 1.0, 2.0), precision="fp32").resolve("cpu").to_dict()
    assert settings_diff(a, b) == ["scales: 0.5,1 there, 0.5,1,2 now"]
    assert settings_diff({"scales": [0.5, 1.0]}, b) == ["scales: 0.5,1 there, 0.5,1,2 now"]
    assert settings_diff(a, a) == []


@pytest.mark.parametrize("prog", ["train.py", "predict.py"])
def test_help_shows_the_real_defaults(prog):
    """--help said "default: None" for --n_scales (the programs then used different scales)."""
    import config
    import predict

    text = (config.build_parser() if prog == "train.py" else predict.build_parser()).format_help()
    text = re.sub(r"\s+", " ", text)
    entry = text[text.index("--n_scales A,B,... "):][:400]  # the option, not the usage line
    assert "else 0.5,1.0 for multi-scale models and 1.0 for single-scale ones" in entry
    assert "default: None" not in text
    amp = text[text.index("--amp_dtype {auto,fp32,bf16,fp16} "):][:500]
    assert "bf16 autocast where the device computes bf16 natively" in amp and "(default: auto)" in amp


def test_list_missing_exit_code_is_in_the_help():
    import predict

    text = re.sub(r"\s+", " ", predict.build_parser().format_help())
    assert "0 when nothing is left, 1 otherwise" in text[text.index("--list_missing "):][:300]
