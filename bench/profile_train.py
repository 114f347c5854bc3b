"""Where the train step's time goes: torch.profiler over a few steps, grouped into categories.

    python -m bench.profile_train [--arch ocrnet.HRNet_Mscale_w18s] [--size 128,128] [--steps 3]

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

CATEGORIES = (("batchnorm", ("batch_norm",)), ("convolution", ("convolution", "conv2d", "mkldnn_conv")),
              ("interpolation", ("upsample", "interpolate")))


def categorize(name: str, in_rmi: bool) -> str:
    if in_rmi:
        return "RMI loss"
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


def profile(arch: str, size: tuple[int, ...], steps: int, channels_last: bool) -> tuple[dict[str, float], float]:
    """Self CPU microseconds per category over ``steps`` steps (after one warm-up), and the total."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as tprofile

    from loss import SegLoss
    from network import get_model

    torch.manual_seed(0)
    model = get_model(arch, num_classes=19).train()
    crit = SegLoss(19, rmi=True, aux_weight=0.4, mscale_weight=0.5)
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
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return _group(prof.events()), float(sum(e.self_cpu_time_total for e in prof.events()))


def _group(events) -> dict[str, float]:  # noqa: ANN001
    """Self time per category. An op belongs to the RMI loss when it ran under ``RMI_LOSS`` or under
    the backward node (``autograd::engine::evaluate_function``) of an op that did."""
    def ancestors(e):  # noqa: ANN001, ANN202
        while e is not None:
            yield e
            e = e.cpu_parent

    rmi_seq = {e.sequence_nr for e in events if e.sequence_nr >= 0
               and any(a.name == "RMI_LOSS" for a in ancestors(e.cpu_parent))}
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name == "RMI_LOSS":
            continue
        inside = any(a.name == "RMI_LOSS" or (a.name.startswith("autograd::engine::evaluate_function")
                                              and a.sequence_nr in rmi_seq) for a in ancestors(e))
        out[categorize(e.name, inside)] += e.self_cpu_time_total
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    from bench._results import write_section

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="ocrnet.HRNet_Mscale_w18s")
    p.add_argument("--size", default="128,128")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no_write", action="store_true")
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split(","))
    rows = []
    for cl in (False, True):
        cats, total = profile(a.arch, size, a.steps, cl)
        load = os.getloadavg()[0]
        for cat, us in sorted(cats.items(), key=lambda kv: -kv[1]):
            rows.append(f"| {'channels_last' if cl else 'NCHW'} | {cat} | {us / 1e3 / a.steps:.0f} | "
                        f"{100 * us / total:.1f}% | {load:.1f} |")
    body = (f"{a.arch}, batch 2, {size[0]}x{size[1]}, fp32, two-scale train step (RMI + aux + mscale loss, "
            f"SGD), {a.steps} profiled steps after a warm-up; self CPU time per step.\n\n"
            "| layout | category | ms per step | share | load avg |\n|---|---|---|---|---|\n" + "\n".join(rows))
    print(body)
    if not a.no_write:
        write_section("profile_train", body, "python -m bench.profile_train " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
