"""bench/latency.py: one architecture on the CPU, every runtime, fp32 and int8."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1800)  # exports take minutes on a loaded 2-core machine
def test_latency_one_arch_cpu(tmp_path, monkeypatch):
    import utils.results
    from bench import latency

    monkeypatch.setattr(utils.results, "RESULTS", tmp_path / "RESULTS.md")  # not the repo's file
    rc = latency.main(["--arch", "ocrnet.HRNet_w18s", "--device", "cpu", "--precision", "fp32,int8",
                       "--size", "64x64", "--repeats", "2", "--threads", "1"])
    assert rc == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- begin latency_cpu -->" in text and "python -m bench.latency --arch" in text
    assert "not measured (no GPU in this session)" in text
    rows = [line for line in text.splitlines() if line.startswith("| `ocrnet.HRNet_w18s`")]
    measured = {(r.split("|")[2].strip(), r.split("|")[3].strip()) for r in rows if "n/a" not in r}
    assert measured == {("eager", "fp32"), ("prepared", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    assert "failed" not in text and sum("n/a" in r for r in rows) == 2  # PyTorch int8
    peaks = {float(r.split("|")[6]) for r in rows if "n/a" not in r}
    assert len(peaks) > 1  # each row's own process, not this (big) test process's peak


def test_latency_rejects_bad_size():
    from bench import latency

    with pytest.raises(SystemExit) as exc:
        latency.main(["--size", "100x64", "--no-write"])
    assert exc.value.code == 2
