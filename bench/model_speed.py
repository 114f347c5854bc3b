"""Speed and peak memory of ``ocrnet.HRNet_Mscale`` (HRNetV2-W48 + OCR + multi-scale attention).

Measures, per input size, side by side in one run:
- forward, single scale (scales=(1.0,)), eval mode;
- forward, multi-scale (0.5, 1.0, 2.0), eval mode;
- train step: two-scale forward + SegLoss (RMI, OCR aux 0.4, supervised mscale 0.05) + backward.

Two variants: ``baseline`` — the model as the reference runs it (NCHW, BatchNorm layers,
``torch.no_grad``); ``optimized`` — ``network.optimize_for_inference`` (conv-BN folded,
channels_last, ``torch.inference_mode``) for the forwards and a channels_last model/input for
the train step. Both compute the reference's arithmetic (bilinear fuse).

Each measurement runs in a fresh subprocess so that its peak memory is its own: peak RSS
is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that process (weights included; the RSS
right after building the model is reported beside it). Weights are random: speed does not
depend on them.

    python -m bench.model_speed --sizes 256x512,512x1024 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("fwd_1x", "fwd_ms", "train")
VARIANTS = ("baseline", "optimized")
MODE_LABEL = {"fwd_1x": "forward, scale 1.0", "fwd_ms": "forward, scales 0.5,1.0,2.0",
              "train": "train step (fwd+bwd, RMI+aux+mscale)"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(variant: str, mode: str, size: tuple[int, int], repeats: int, warmup: int) -> dict:
    """One measurement in this process; returns times (s) and peak RSS (MiB)."""
    import torch

    sys.path.insert(0, str(REPO))
    from loss import SegLoss
    from network import get_model, optimize_for_inference

    torch.manual_seed(0)
    model = get_model("ocrnet.HRNet_Mscale", 19)
    x = torch.randn(1, 3, *size)
    cl = variant == "optimized"
    if mode == "train":
        model.train()
        if cl:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        criterion = SegLoss(19, rmi=True, aux_weight=0.4, mscale_weight=0.05)
        target = torch.randint(0, 19, (1, *size))

        def run() -> None:
            criterion(model(x), target).backward()
            model.zero_grad(set_to_none=True)
    else:
        model.eval()
        scales = (1.0,) if mode == "fwd_1x" else (0.5, 1.0, 2.0)
        if cl:
            model = optimize_for_inference(model, channels_last=True, inplace=True)
            x = x.contiguous(memory_format=torch.channels_last)
        grad_ctx = torch.inference_mode if cl else torch.no_grad

        def run() -> None:
            with grad_ctx():
                model(x, scales=scales)

    rss_built = _rss_mb()
    for _ in range(warmup):
        run()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"times": times, "cpu": cpu, "peak_rss_mb": _rss_mb(), "rss_built_mb": rss_built}


def _measure(variant: str, mode: str, size: tuple[int, ...], repeats: int, warmup: int,
             threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "bench.model_speed", "--child", json.dumps(
        {"variant": variant, "mode": mode, "size": list(size), "repeats": repeats, "warmup": warmup})]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(result: dict) -> tuple[str, str]:
    if "error" in result:
        return "failed", result["error"][:60]
    return (f"{min(result['times']):.2f} / {min(result['cpu']):.2f}",
            f"{result['peak_rss_mb'] / 1024:.2f} ({result['rss_built_mb'] / 1024:.2f})")


def _table(results: dict, sizes: list[tuple[int, int]], modes: list[str]) -> str:
    rows = ["| input | measurement | baseline s wall / CPU | optimized s wall / CPU | speed-up wall / CPU "
            "| baseline peak RSS GiB (after build) | optimized peak RSS GiB (after build) |",
            "|---|---|---|---|---|---|---|"]
    for size in sizes:
        for mode in modes:
            base, opt = results[(size, mode, "baseline")], results[(size, mode, "optimized")]
            (bt, bm), (ot, om) = _fmt(base), _fmt(opt)
            speed = (f"{min(base['times']) / min(opt['times']):.2f}x / {min(base['cpu']) / min(opt['cpu']):.2f}x"
                     if "times" in base and "times" in opt else "-")
            rows.append(f"| 1x3x{size[0]}x{size[1]} | {MODE_LABEL[mode]} | {bt} | {ot} | {speed} | {bm} | {om} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256x512,512x1024", help="HxW list, e.g. 256x512,512x1024")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the children")
    parser.add_argument("--note", default="", help="free text added to the results (e.g. CPU contention)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update bench/RESULTS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:  # also runnable as `python bench/model_speed.py`
        sys.path.insert(0, str(REPO))
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(_child(spec["variant"], spec["mode"], tuple(spec["size"]), spec["repeats"],
                                spec["warmup"])))
        return
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    results, load = {}, []
    for size in sizes:
        for mode in modes:
            for variant in VARIANTS:
                load.append(os.getloadavg()[0])
                results[(size, mode, variant)] = res = _measure(variant, mode, size, args.repeats,
                                                                args.warmup, args.threads)
                print(size, mode, variant, res, flush=True)
    body = _body(results, sizes, modes, args, load)
    print(body)
    if not args.no_write:
        from utils.results import write_section

        command = "python -m bench.model_speed " + " ".join(sys.argv[1:])
        write_section("model_speed", body, command=command)


def _body(results: dict, sizes: list, modes: list, args: argparse.Namespace, load: list[float]) -> str:
    return f"""`ocrnet.HRNet_Mscale` (HRNetV2-W48 + OCR + scale attention, 19 classes, random weights), CPU,
batch 1, float32. Times: best of {args.repeats} timed run(s) after {args.warmup} warm-up run(s), seconds:
wall clock / CPU time of the process (`time.process_time`, all threads; less sensitive to other
jobs on the machine than wall time, though OpenMP spin-waiting still inflates it).
Peak memory: peak RSS (`ru_maxrss`) of a fresh process per measurement, weights included; in
brackets the RSS right after building the model.

- baseline: the reference's way of running it (NCHW, BatchNorm layers, `torch.no_grad`; train:
  NCHW model).
- optimized: `network.optimize_for_inference` (conv+BN folded, channels_last,
  `torch.inference_mode`); train: channels_last model and input. Same arithmetic
  (equality checked in float64 in tests/test_network.py).

{_table(results, sizes, modes)}

CPU load average (1 min) seen before each measurement: {', '.join(f'{v:.1f}' for v in load)}
(absolute times rise with other load on the 2 cores; the baseline/optimized pairs ran back
to back). {args.note}
"""


if __name__ == "__main__":
    main()
