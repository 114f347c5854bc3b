"""export.py (ONNX, checked with onnxruntime) and deploy.quantize (int8 / fp16 report).

Exports take tens of seconds each on 2 CPU cores (torch.export + onnxscript), so each graph is
exported once per module and shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

MSCALE, SINGLE = "ocrnet.HRNet_Mscale_w18s", "ocrnet.HRNet_w18s"
NAMES = [f"thing_{i}" for i in range(19)]


def _ckpt(arch: str, path: Path) -> Path:
    from datasets.info import DatasetInfo
    from network import get_model

    torch.manual_seed(0)
    model = get_model(arch, num_classes=19)
    palette = np.array([[i, 2 * i, 3 * i] for i in range(19)], np.uint8)
    info = DatasetInfo.from_table("toy", NAMES, palette, mean=(0.45,) * 3, std=(0.25,) * 3).to_dict()
    torch.save({"format": "hmsa-ckpt/1", "arch": arch, "num_classes": 19, "model": model.state_dict(),
                "dataset_info": info}, path)
    return path


@pytest.fixture(scope="module")
def mscale_onnx(tmp_path_factory, synthetic_root) -> Path:
    import export

    d = tmp_path_factory.mktemp("mscale")
    out = d / "m.onnx"
    rc = export.main(["--snapshot", str(_ckpt(MSCALE, d / "best.pth")), "--out", str(out), "--scales", "0.5,1.0",
                      "--check-images", str(synthetic_root / "leftImg8bit" / "val"), "--check-short-side", "0"])
    assert rc == 0 and out.is_file()
    return out


def _ort_vs_torch(onnx_path: Path, arch: str, scales, flip: bool, size: tuple[int, int]):
    """onnxruntime's logits against float64 PyTorch, judged as export.py judges them (on any CPU's kernels)."""
    from deploy.meta import load_model
    from deploy.onnx_export import LogitsModel, compare, session, tolerance

    model, _ = load_model(onnx_path.parent / "best.pth", arch)
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(1))  # not the suite's global RNG state
    row = compare(session(onnx_path), LogitsModel(model, scales, flip), [("x", x)])[0]
    return row.max_abs_diff <= tolerance(row, 1e-3), row.argmax_agreement, row


@pytest.mark.slow
@pytest.mark.timeout(1800)  # exports take minutes on a loaded 2-core machine
def test_multiscale_export_agrees_at_other_sizes_and_carries_metadata(mscale_onnx):
    import onnx

    from deploy.onnx_export import TENSORRT_OPS, read_metadata

    meta = read_metadata(mscale_onnx)
    assert json.loads(meta["class_names"]) == NAMES and json.loads(meta["palette"])[2] == [2, 4, 6]
    assert json.loads(meta["mean"]) == [0.45] * 3 and json.loads(meta["scales"]) == [0.5, 1.0]
    assert meta["precision"] == "fp32" and json.loads(meta["inference"])["scales_from"] == "--n_scales"
    assert meta["arch"] == MSCALE and "32" in meta["input_size_rule"]
    proto = onnx.load(str(mscale_onnx))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert {n.op_type for n in proto.graph.node} <= TENSORRT_OPS
    for size in ((96, 160), (160, 96)):  # dynamic H/W: sizes the export never saw
        close, agree, row = _ort_vs_torch(mscale_onnx, MSCALE, (0.5, 1.0), False, size)
        # the tolerance bounds the numerics; argmax of an untrained model has near-ties that round-off may flip
        assert close and agree > 0.99, (size, row)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # exports take minutes on a loaded 2-core machine
def test_single_scale_export_with_flip(tmp_path):
    """An untrained model's float32 round-off reaches ~1e-3 of its largest logit on the 128x256 check scene;
    judged against PyTorch float32 instead of float64, this export was refused."""
    import export

    out = tmp_path / "s.onnx"
    assert export.main(["--snapshot", str(_ckpt(SINGLE, tmp_path / "best.pth")), "--out", str(out), "--flip"]) == 0
    close, agree, row = _ort_vs_torch(out, SINGLE, None, True, (64, 96))
    assert close and agree > 0.99, row


def test_tolerance_follows_this_cpus_float32_round_off():
    """On an AVX-512/AMX Xeon an untrained model's logits reached 420; onnxruntime was 0.45 from float64 and
    PyTorch float32 itself 0.243: 1e-3 x 420 = 0.42 refused a correct export there. The bound now also allows
    a small multiple of PyTorch float32's own error on the same machine, and still refuses a wrong graph."""
    from deploy.onnx_export import FP32_FACTOR, Agreement, judge

    xeon = Agreement("scene", (128, 256), max_abs_diff=0.45, max_abs_ref=420.0, argmax_agreement=0.9995,
                     torch_fp32_diff=0.243)
    assert judge([xeon], rtol=1e-3, min_agreement=0.999) is None
    wrong = Agreement("scene", (128, 256), max_abs_diff=FP32_FACTOR * 0.243 + 0.5, max_abs_ref=420.0,
                      argmax_agreement=0.9995, torch_fp32_diff=0.243)
    problem = judge([wrong], rtol=1e-3, min_agreement=0.999)
    assert problem is not None and "PyTorch float32's own 0.243" in problem and "\n" not in problem
    exact_machine = Agreement("scene", (128, 256), max_abs_diff=0.5, max_abs_ref=420.0, argmax_agreement=1.0,
                              torch_fp32_diff=0.0)  # float32 exact here: only rtol x max |logit| = 0.42 is allowed
    assert judge([exact_machine], rtol=1e-3, min_agreement=0.999) is not None


def test_check_measures_the_file_against_float64_not_pytorch_float32(tmp_path):
    """A file that computes the exact result passes even where PyTorch float32 is off by round-off.

    Real onnxruntime on a one-node graph (``Identity``); the reference computes the same function with
    float32 cancellation, ``(x + 1e6) - 1e6``, whose round-off (~0.03) is far above the 1e-3 tolerance.
    """
    import onnx
    from onnx import TensorProto, helper

    from deploy.onnx_export import INPUT, OUTPUT, compare, judge, session

    class Cancelling(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x + 1e6) - 1e6

    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in (INPUT, OUTPUT)]
    graph = helper.make_graph([helper.make_node("Identity", [INPUT], [OUTPUT])], "identity", vi[:1], vi[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "id.onnx"))
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    (row,) = compare(session(tmp_path / "id.onnx"), Cancelling(), [("x", x)])
    assert row.max_abs_diff < 1e-6 and row.argmax_agreement == 1.0
    assert row.torch_fp32_diff > 1e-2  # PyTorch float32 is the one that is off
    assert judge([row], rtol=1e-3, min_agreement=0.999) is None


def test_mismatch_exits_1_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """The export itself is replaced (seconds instead of a minute): only the judging is under test."""
    import export
    from deploy import onnx_export as ox

    monkeypatch.setattr(ox, "export", lambda *args: Path(args[2]).write_bytes(b"onnx"))
    monkeypatch.setattr(ox, "session", lambda *_: None)
    monkeypatch.setattr(ox, "compare", lambda *_: [ox.Agreement("a.png", (64, 64), 0.5, 10.0, 0.98)])
    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as exc:
        export.main(["--arch", SINGLE, "--num_classes", "3", "--out", str(out)])
    assert exc.value.code == 1 and not out.exists() and not list(tmp_path.iterdir())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max |diff| 0.5" in err[0] and "98.0000%" in err[0] and "a.png" in err[0]


def test_bad_flags_are_one_line_exit_2(tmp_path, capsys):
    import export

    assert export.main(["--arch", SINGLE, "--out", str(tmp_path / "m.pt")]) == 2
    assert export.main(["--arch", SINGLE, "--out", str(tmp_path / "m.onnx"), "--scales", "0.5,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--out" in err[0] and "1.0" in err[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # exports take minutes on a loaded 2-core machine
def test_quantize_int8_fp16_report(mscale_onnx, synthetic_root, tmp_path, monkeypatch):
    import onnx

    import utils.results
    from deploy.onnx_export import TENSORRT_OPS, session
    from deploy.quantize import main

    monkeypatch.setattr(utils.results, "RESULTS", tmp_path / "RESULTS.md")
    rc = main(["--onnx", str(mscale_onnx), "--calib", str(synthetic_root / "leftImg8bit" / "train"),
               "--calib-count", "4", "--dataset", "synthetic", "--dataset_root", str(synthetic_root),
               "--val-count", "2", "--repeats", "2", "--out-dir", str(tmp_path), "--results-section", "q"])
    assert rc == 0
    section = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- begin q -->" in section and "--results-section q" in section and "| int8 |" in section
    report = json.loads((tmp_path / "quantize_report.json").read_text())
    rows = {r["precision"]: r for r in report["rows"]}
    assert set(rows) == {"fp32", "fp16", "int8"} and rows["fp32"]["miou_loss_points"] == 0.0
    for r in rows.values():
        assert 0.0 <= r["miou"] <= 1.0 and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"]
    int8 = onnx.load(str(tmp_path / "m.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops <= TENSORRT_OPS
    assert rows["int8"]["mib"] < 0.5 * rows["fp32"]["mib"] and rows["fp16"]["mib"] < 0.6 * rows["fp32"]["mib"]
    # fp16 keeps the size arithmetic in fp32: an odd size at scale 0.5 still runs and agrees
    x = torch.randn(1, 3, 96, 160).numpy()
    ref, half = (session(p).run(["logits"], {"image": x})[0] for p in (mscale_onnx, tmp_path / "m.fp16.onnx"))
    assert half.shape == ref.shape and (half.argmax(1) == ref.argmax(1)).mean() > 0.95
    assert np.isfinite(half).all()
    # the settings travel with every file and into the report (before: the int8/fp16 files had no metadata
    # of their own, the report no scales)
    from deploy.onnx_export import read_metadata

    assert report["inference"]["scales"] == [0.5, 1.0] and report["inference"]["short_side"] == "original"
    for precision in ("int8", "fp16"):
        meta = read_metadata(tmp_path / f"m.{precision}.onnx")
        assert meta["precision"] == precision and json.loads(meta["inference"])["precision"] == precision
        assert json.loads(meta["mean"]) == [0.45] * 3
