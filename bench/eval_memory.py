"""Peak memory of the Mapillary evaluation setting under a memory budget (network.tiling).

    python -m bench.eval_memory [--budget_gb 16] [--run ocrnet.HRNet_Mscale_w18s]

A synthetic 2177x1633 image (Mapillary's long edge), scales 0.25,0.5,1,2. For each model, the
per-scale plan under the budget: the estimated peak of the whole image, whole or windows, and
the estimated peak with the plan (:class:`network.tiling.MemoryPlan`'s estimate: live tensor
bytes per pixel probed on a 256x256 crop). ``--run ARCH`` also evaluates that model under the
plan and measures its real peak of live tensors (``LiveBytes``), to check the estimate; on a
GPU the allocator's ``max_memory_allocated`` is reported too. Writes the "eval_memory" section
of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZE = (1633, 2177)
SCALES = (0.25, 0.5, 1.0, 2.0)
GB = 1024 ** 3


def plan_rows(arch: str, budget: int, device: torch.device) -> list[str]:
    from network import get_model, optimize_for_inference
    from network.tiling import MemoryPlan, tile_starts

    net = optimize_for_inference(get_model(arch, num_classes=65).to(device))
    plan = MemoryPlan(budget, log=lambda _: None)
    x = torch.zeros(1, 3, *SIZE, device=device)
    bpp = plan.bytes_per_pixel(plan._scale_fn(net), x, ("probe",))
    rows = []
    for s in sorted(SCALES, reverse=True):
        h, w = round(SIZE[0] * s), round(SIZE[1] * s)
        whole = plan.estimate(bpp, 1, h, w, 66)
        win = plan.window_for(bpp, 1, h, w, 66)
        if win is None:
            choice, est = "whole image", whole
        else:
            tiles = len(tile_starts(h, win[0], plan.overlap)) * len(tile_starts(w, win[1], plan.overlap))
            choice = f"{tiles} windows of {win[0]}x{win[1]}"
            est = plan.safety * bpp * win[0] * win[1] + 3 * 4 * 66 * h * w
        rows.append(f"| {arch} | {s:g}x ({h}x{w}) | {bpp:.0f} | {whole / GB:.2f} | {choice} | {est / GB:.2f} |")
    return rows


def measured(arch: str, budget: int, device: torch.device) -> str:
    from network import get_model, optimize_for_inference, predict
    from network.tiling import LiveBytes, MemoryPlan

    net = optimize_for_inference(get_model(arch, num_classes=65).to(device))
    x = torch.randn(1, 3, *SIZE, device=device)
    lines: list[str] = []
    plan = MemoryPlan(budget, log=lines.append)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, tracker = time.perf_counter(), LiveBytes()
    with tracker:
        predict(net, x, scales=SCALES, memory=plan)
    seconds = time.perf_counter() - t0
    cuda = ""
    if device.type == "cuda":
        cuda = f", CUDA max_memory_allocated {torch.cuda.max_memory_allocated(device) / GB:.2f} GB"
    return (f"Measured run, {arch} under the plan: peak live tensors {tracker.peak / GB:.2f} GB{cuda}, "
            f"{seconds:.0f} s (load average {os.getloadavg()[0]:.1f}). Plan log:\n\n"
            + "\n".join(f"    {line}" for line in lines))


def main(argv: list[str] | None = None) -> int:
    from utils.results import write_section

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget_gb", type=float, default=16.0)
    p.add_argument("--archs", default="ocrnet.HRNet_Mscale,ocrnet.HRNet_Mscale_w18s")
    p.add_argument("--run", default=None, help="also evaluate this arch under the plan and measure its peak")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_write", action="store_true")
    a = p.parse_args(argv)
    device, budget = torch.device(a.device), int(a.budget_gb * GB)
    rows = [r for arch in a.archs.split(",") for r in plan_rows(arch, budget, device)]
    body = (f"Synthetic {SIZE[1]}x{SIZE[0]} image (Mapillary's long edge), scales {','.join(map(str, SCALES))}, "
            f"65 classes, batch 1, fp32, budget {a.budget_gb:g} GB, device {device}. Estimates from "
            f"`network.tiling.MemoryPlan` (bytes per pixel probed on a 256x256 crop, x1.25 safety, plus "
            f"output canvases).\n\n| model | scale | bytes/pixel | whole image est. GB | plan | plan est. GB |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))
    if a.run:
        body += "\n\n" + measured(a.run, budget, device)
    print(body)
    if not a.no_write:
        write_section("eval_memory", body, "python -m bench.eval_memory " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
