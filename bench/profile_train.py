"""Where the train step's time goes: torch.profiler over a few steps, grouped into categories.

    python -m bench.profile_train [--arch ocrnet.HRNet_Mscale_w18s] [--size 128,128] [--steps 3] [--threads 1]

The step is the project's: two-scale forward, RMI + aux + multi-scale loss, backward, SGD.
Categories (self CPU time of the aten ops, forward and backward): the RMI loss (every op under
its ``record_function`` block, including its float64 part), BatchNorm, convolutions (split by
kernel: 1x1 and 3x3, and by output channels <= 64, the "small" HRNet branch convolutions),
bilinear interpolation, everything else. Writes the "profile_train" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CATEGORIES = (("batchnorm", ("batch_norm",)), ("interpolation", ("upsample", "interpolate")))
CONV_OPS = {"aten::mkldnn_convolution": 1, "aten::convolution_backward": 2, "aten::thnn_conv2d": 1,
            "aten::_slow_conv2d_forward": 1, "aten::_slow_conv2d_backward": 2}  # op -> index of the weight
SMALL_CONV_MACS = 50e6  # per forward call; HRNet's low-resolution branch convolutions fall below this


def conv_macs(shapes: list) -> float:  # noqa: ANN001 (profiler shapes)
    """Multiply-accumulates of a stride-1 convolution from its (input, weight) shapes: an estimate that
    ranks the calls (the few strided ones are over-counted by their stride squared)."""
    x = next((sh for sh in shapes if len(sh) == 4), None)
    w = next((sh for sh in shapes[1:] if len(sh) == 4 and sh is not x), None)
    if x is None or w is None:
        return 0.0
    return float(x[0] * x[2] * x[3] * w[0] * w[1] * w[2] * w[3])


def categorize(name: str, in_rmi: str | None, shapes: list | None = None) -> str:
    """The category of one profiler event: RMI part, convolution (small/large), BN, interpolation, other."""
    if in_rmi:
        return in_rmi
    if name in CONV_OPS:
        i = CONV_OPS[name]
        if not shapes or len(shapes) <= i or len(shapes[i]) != 4:
            return "convolution"
        w = shapes[i]
        macs = conv_macs([shapes[0] if name != "aten::convolution_backward" else shapes[1], w])
        return "convolution, small (< 50 M MACs a call)" if macs < SMALL_CONV_MACS else "convolution, large"
    low = name.lower()
    if "conv" in low:
        return "convolution: dispatch and wrappers"
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


RMI_BLOCKS = {"RMI_LOWER_BOUND": "RMI loss: lower bound (pooling, neighbourhoods, float64 covariance/inverse/Cholesky)",
              "RMI_LOSS": "RMI loss: BCE part and the rest of the criterion"}


def profile(arch: str, size: tuple[int, ...], steps: int, channels_last: bool) -> tuple[dict[str, float], float]:
    """Self CPU microseconds per category over ``steps`` steps (after one warm-up), and the total."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as tprofile

    from loss import SegLoss
    from loss.rmi import RMILoss
    from network import get_model

    torch.manual_seed(0)
    model = get_model(arch, num_classes=19).train()
    crit = SegLoss(19, rmi=True, aux_weight=0.4, mscale_weight=0.5)
    assert isinstance(crit.criterion, RMILoss)
    lower_bound = crit.criterion.rmi_lower_bound

    def marked_lower_bound(labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        with record_function("RMI_LOWER_BOUND"):
            return lower_bound(labels, probs)

    crit.criterion.rmi_lower_bound = marked_lower_bound  # type: ignore[method-assign]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(2, 3, *size), torch.randint(0, 19, (2, *size))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        out = model(x)
        with record_function("RMI_LOSS"):
            loss = crit(out, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    return _group(prof.events()), float(sum(e.self_cpu_time_total for e in prof.events()))


def _group(events) -> dict[str, float]:  # noqa: ANN001
    """Self time per category. An op belongs to an RMI block when it ran under it or under the backward
    node (``autograd::engine::evaluate_function``) of an op that did; the innermost block wins."""
    def ancestors(e):  # noqa: ANN001, ANN202
        while e is not None:
            yield e
            e = e.cpu_parent

    def block(e) -> str | None:  # noqa: ANN001
        for a in ancestors(e):
            if a.name in RMI_BLOCKS:
                return a.name
            if a.name.startswith("autograd::engine::evaluate_function") and a.sequence_nr in seq_block:
                return seq_block[a.sequence_nr]
        return None

    seq_block: dict[int, str] = {}
    for e in events:  # forward ops first (the backward nodes refer to them by sequence number)
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::") and (b := block(e.cpu_parent)):
            seq_block.setdefault(e.sequence_nr, b)
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name not in RMI_BLOCKS:
            b = block(e)
            out[categorize(e.name, RMI_BLOCKS[b] if b else None, e.input_shapes)] += e.self_cpu_time_total
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    from utils.results import write_section

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="ocrnet.HRNet_Mscale_w18s")
    p.add_argument("--size", default="128,128")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared CPU, OpenMP spin-waiting distorts multi-thread profiles)")
    p.add_argument("--layouts", default="nchw", help="nchw, channels_last or nchw,channels_last")
    p.add_argument("--note", default="", help="text appended to the section (what the figures mean)")
    p.add_argument("--no_write", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    size = tuple(int(v) for v in a.size.split(","))
    rows = []
    for layout in a.layouts.split(","):
        cats, total = profile(a.arch, size, a.steps, layout == "channels_last")
        load = os.getloadavg()[0]
        for cat, us in sorted(cats.items(), key=lambda kv: -kv[1]):
            rows.append(f"| {layout} | {cat} | {us / 1e3 / a.steps:.0f} | {100 * us / total:.1f}% | {load:.1f} |")
    body = (f"{a.arch}, batch 2, {size[0]}x{size[1]}, fp32, {a.threads} thread(s), two-scale train step "
            f"(RMI + aux + mscale loss, SGD), {a.steps} profiled steps after a warm-up; self CPU time per step "
            "(profiler overhead included).\n\n"
            "| layout | category | ms per step | share | load avg |\n|---|---|---|---|---|\n" + "\n".join(rows))
    body += f"\n\n{a.note}" if a.note else ""
    print(body)
    if not a.no_write:
        args = [v for v in (argv or sys.argv[1:]) if v != a.note]
        args = [v if v != "--note" else "--note '<the reading below>'" for v in args]
        write_section("profile_train", body, "python -m bench.profile_train " + " ".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
