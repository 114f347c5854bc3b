"""The training criterion's time (forward + backward) against an earlier version of loss/, same run.

    python -m bench.loss_speed [--base e890900] [--size 256,512] [--reps 7]

The baseline is ``loss/`` as committed at ``--base`` (read with ``git show``, imported as a separate
package), so both versions run interleaved in one process on the same inputs: the model's outputs of
a two-scale training step (pred, aux, pred_lo, pred_hi; batch 2, 19 classes) and a label map with
ignored pixels. Both must give the same loss and the same gradients (checked; the bench fails
otherwise). Writes the "loss_speed" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FILES = ("__init__.py", "cross_entropy.py", "rmi.py", "seg_loss.py")


def load_base(rev: str, into: Path) -> type:
    """``SegLoss`` from ``loss/`` at git revision ``rev``, imported as package ``loss_base``."""
    pkg = into / "loss_base"
    pkg.mkdir()
    for name in FILES:
        text = subprocess.run(["git", "show", f"{rev}:loss/{name}"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout
        (pkg / name).write_text(text.replace("from loss.", "from loss_base."))
    sys.path.insert(0, str(into))
    return importlib.import_module("loss_base").SegLoss


def step_time(crit: torch.nn.Module, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[float, list]:
    """Seconds of one forward + backward of ``crit``; the loss and the gradients."""
    leaves = {k: v.detach().requires_grad_() for k, v in outputs.items()}
    t0 = time.perf_counter()
    loss = crit(leaves, target)
    loss.backward()
    seconds = time.perf_counter() - t0
    return seconds, [loss.detach()] + [leaves[k].grad for k in sorted(leaves)]


def main(argv: list[str] | None = None) -> int:
    from loss import SegLoss

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="e890900", help="git revision of the baseline loss/")
    p.add_argument("--size", default="256,512")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no_write", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.size.split(","))
    g = torch.Generator().manual_seed(0)
    outputs = {k: torch.randn(2, 19, h, w, generator=g) * 3 for k in ("pred", "aux", "pred_lo", "pred_hi")}
    target = torch.randint(0, 19, (2, h, w), generator=g)
    target[:, : h // 8] = 255  # an ignored band, as in Cityscapes
    with tempfile.TemporaryDirectory() as tmp:
        crits = {"baseline (loss/ at " + a.base + ")": load_base(a.base, Path(tmp))(19, rmi=True, mscale_weight=0.5),
                 "this version": SegLoss(19, rmi=True, mscale_weight=0.5)}
        times: dict[str, list[float]] = {k: [] for k in crits}
        results = {}
        for _ in range(a.reps + 1):  # interleaved; the first round is a warm-up
            for name, crit in crits.items():
                seconds, results[name] = step_time(crit, outputs, target)
                times[name].append(seconds)
    base, new = results.values()
    # relative to each tensor's largest magnitude: the baseline's one-hot map had channels-last strides, so
    # its sums ran in another order (float32 round-off)
    diff = max(float((x - y).abs().max() / x.abs().max().clamp_min(1e-30)) for x, y in zip(base, new, strict=True))
    if diff > 1e-5:
        raise SystemExit(f"the versions disagree: max relative difference of loss and gradients {diff:g}")
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    b = med[next(iter(med))]
    rows = "\n".join(f"| {k} | {1000 * v:.0f} | {b / v:.2f}x |" for k, v in med.items())
    body = (f"SegLoss (RMI on pred, BCE on aux, pred_lo, pred_hi; the two-scale training criterion), outputs "
            f"2x19x{h}x{w}, 1/8 of the pixels ignored, CPU, {a.threads} thread(s); forward + backward, median of "
            f"{a.reps} after a warm-up, the two versions interleaved in one process. Loss and gradients equal "
            f"to float32 round-off (max difference {diff:.1g} of each tensor's largest value, "
            f"checked in the run). 1-minute load average {os.getloadavg()[0]:.1f} "
            "(the machine is shared: absolute times are inflated; the ratio is the measurement).\n\n"
            "| criterion | ms (fwd + bwd) | speed-up |\n|---|---|---|\n" + rows)
    print(body)
    if not a.no_write:
        from utils.results import write_section

        write_section("loss_speed", body, "python -m bench.loss_speed " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
