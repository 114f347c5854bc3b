"""The train-step profile's grouping and the --grad_ckpt memory bench's own checks (pure functions, fast)."""

from __future__ import annotations

import pytest

from bench.grad_ckpt_memory import report
from bench.profile_train import RMI_BLOCKS, categorize, conv_macs


def test_convolutions_are_split_by_their_size():
    small = [[2, 96, 8, 16], [96, 96, 3, 3]]              # an HRNet low-resolution branch convolution
    large = [[2, 720, 32, 64], [512, 720, 3, 3]]          # the OCR head's 3x3 convolution
    assert conv_macs(small) == 2 * 8 * 16 * 96 * 96 * 9
    assert categorize("aten::mkldnn_convolution", None, small).startswith("convolution, small")
    assert categorize("aten::mkldnn_convolution", None, large) == "convolution, large"
    grad_out = [2, 512, 32, 64]  # convolution_backward(grad_output, input, weight, ...): the input is second
    assert categorize("aten::convolution_backward", None, [grad_out] + large) == "convolution, large"
    assert categorize("aten::native_batch_norm", None) == "batchnorm"
    assert categorize("aten::upsample_bilinear2d_backward", None) == "interpolation"
    assert categorize("aten::add_", None) == "other"
    rmi = RMI_BLOCKS["RMI_LOWER_BOUND"]
    assert categorize("aten::bmm", rmi) == rmi  # ops under an RMI block count there, whatever they are


def _row(built: float, peak: float, loss: float = 1.0, grad: float = 2.0) -> dict:
    return {"built_mib": built, "peak_mib": peak, "seconds": 1.0, "loss": loss, "grad_sum": grad, "load": 0.5}


def test_grad_ckpt_report_states_the_saving_and_refuses_a_changed_step():
    text = report("a", (8, 8), 2, {False: _row(100, 500), True: _row(100, 300)})
    assert "saves 200 MiB of the step's 400 MiB (50%)" in text
    with pytest.raises(SystemExit, match="changed the step"):
        report("a", (8, 8), 2, {False: _row(100, 500), True: _row(100, 300, grad=2.1)})
