"""Evaluation and train-step speed of the project's variants against the plain fp32 path, same run.

    python -m bench.gpu_speed                      # CUDA if present (W48, 1024x2048), else a CPU size
    python -m bench.gpu_speed --device cpu --arch ocrnet.HRNet_Mscale_w18 --eval_size 256,512 \\
        --train_size 256,256 --reps 3

Rows: evaluation at scales 0.5,1,2 and at scale 1 (batch 1), and one training step (two-scale
forward + backward with the RMI + aux + multi-scale loss, SGD). Every variant is timed in this
process beside the plain fp32 path (``model.eval()`` + ``network.predict``, NCHW; for training:
fp32 NCHW), median of ``--reps`` after one warm-up. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` on the plain path; the peak FLOP rate from large
fp32 and bf16 matmuls timed in the same run, so "util" = achieved FLOP/s / matmul FLOP/s of the
variant's dtype. Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the peak
bytes of live tensors the evaluation creates (``network.tiling.LiveBytes``; weights excluded), none for
training (LiveBytes does not see what autograd holds: ``python -m bench.grad_ckpt_memory`` measures it). The
1-minute load average is recorded with each row (the CPU may be shared). Writes the
"gpu_speed" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory of one run of ``fn`` (CUDA allocator; on the CPU, live tensor bytes created)."""
    from network.tiling import LiveBytes

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    tracker = LiveBytes()
    with tracker:
        fn()
    return tracker.peak


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 3) -> float:
    """FLOP/s of a square matmul in ``dtype`` (this device's reachable peak), ``n`` at most: the size
    doubles from 256 while one product takes under 0.3 s (a CPU without bf16 units is very slow)."""
    size, rate = 256, 0.0
    while size <= n:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        seconds = timed(functools.partial(torch.matmul, a, b), device, reps)
        rate = max(rate, 2 * size ** 3 / seconds)
        if seconds > 0.3:
            break
        size *= 2
    return rate


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def cpu_description() -> str:
    """The CPU's vector capability as torch sees it, and whether it has bf16 in hardware."""
    from inference.settings import cpu_has_native_bf16

    native = "yes" if cpu_has_native_bf16() else "no (bf16 is emulated)"
    return (f"CPU ({platform.processor() or platform.machine()}, torch kernels: "
            f"{torch.backends.cpu.get_cpu_capability()}, native bf16 (AVX-512 BF16 / AMX): {native})")


def load() -> float:
    return os.getloadavg()[0]


# ----------------------------------------------------------------------------- evaluation

def eval_variants(model: torch.nn.Module, device: torch.device, compile_: bool,
                  bf16: bool) -> dict[str, tuple[torch.nn.Module, torch.dtype | None, torch.dtype]]:
    """name -> (model to call, autocast dtype or None, input dtype)."""
    from network import optimize_for_inference

    variants: dict[str, tuple[torch.nn.Module, torch.dtype | None, torch.dtype]] = {
        "plain fp32 (model.eval, NCHW)": (model, None, torch.float32),
        "default fp32 (prepared copy)": (optimize_for_inference(model), None, torch.float32),
    }
    if bf16:
        b = torch.bfloat16
        variants["bf16 autocast (O1, prepared)"] = (optimize_for_inference(model), b, torch.float32)
        variants["bf16 O3 (prepared, bf16 weights)"] = (optimize_for_inference(model, dtype=b), None, b)
    if device.type == "cuda":
        variants["fp16 autocast (prepared)"] = (optimize_for_inference(model), torch.float16, torch.float32)
    if compile_:
        variants["default fp32 + --compile"] = (optimize_for_inference(model, compile=True), None, torch.float32)
    return variants


def bench_eval(model: torch.nn.Module, size: tuple[int, int], scales: tuple[float, ...], device: torch.device,
               reps: int, peaks: dict[torch.dtype, float], compile_: bool, bf16: bool) -> list[dict]:
    from network import predict

    x = torch.randn(1, 3, *size, device=device)
    rows, ref = [], None

    def run(m: torch.nn.Module, ac: torch.dtype | None, dt: torch.dtype) -> torch.Tensor:
        with torch.autocast(device.type, dtype=ac or torch.float32, enabled=ac is not None):
            return predict(m, x.to(dt), scales=scales)["pred"]

    flops = count_flops(lambda: run(model, None, torch.float32))
    for name, (m, ac, dt) in eval_variants(model, device, compile_, bf16).items():
        out = run(m, ac, dt).float()
        ref = out if ref is None else ref
        seconds = timed(functools.partial(run, m, ac, dt), device, reps)
        half = ac is not None or dt != torch.float32
        rows.append({"work": f"eval 1x3x{size[0]}x{size[1]}, scales {','.join(f'{s:g}' for s in scales)}",
                     "variant": name, "ms": 1000 * seconds, "flops": flops,
                     "util": flops / seconds / peaks[torch.bfloat16 if half else torch.float32],
                     "peak_gb": peak_bytes(functools.partial(run, m, ac, dt), device) / 1024 ** 3,
                     "agree": float((out.argmax(1) == ref.argmax(1)).float().mean()), "load": load()})
    return rows


# ----------------------------------------------------------------------------- training

def _train_step(model: torch.nn.Module, criterion: torch.nn.Module, opt: torch.optim.Optimizer,
                x: torch.Tensor, y: torch.Tensor, ac: torch.dtype | None) -> None:
    with torch.autocast(x.device.type, dtype=ac or torch.float32, enabled=ac is not None):
        out = model(x)
    loss = criterion({k: v.float() for k, v in out.items()}, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_train(arch: str, num_classes: int, size: tuple[int, int], batch: int, device: torch.device,
                reps: int, peaks: dict[torch.dtype, float], bf16: bool) -> list[dict]:
    from loss import SegLoss
    from network import get_model
    from network.hrnet import set_grad_checkpointing

    criterion = SegLoss(num_classes, rmi=True, aux_weight=0.4, mscale_weight=0.5).to(device)
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, num_classes, (batch, *size), device=device)
    cl = torch.channels_last
    variants: list[tuple[str, bool, torch.dtype | None, bool]] = [
        ("plain fp32 (NCHW)", False, None, False), ("fp32 channels_last", True, None, False),
        ("fp32 NCHW + --grad_ckpt", False, None, True)]
    if bf16:
        variants.insert(2, ("bf16 autocast + channels_last", True, torch.bfloat16, False))
    if device.type == "cuda":
        variants.insert(3, ("fp16 autocast + GradScaler-free timing, channels_last", True, torch.float16, False))
    rows, flops = [], None
    for name, channels_last, ac, ckpt in variants:
        torch.manual_seed(0)
        model = get_model(arch, num_classes=num_classes).to(device).train()
        set_grad_checkpointing(model, ckpt)
        xi = x.contiguous(memory_format=cl) if channels_last else x
        if channels_last:
            model = model.to(memory_format=cl)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model=model, opt=opt, xi=xi, ac=ac) -> None:
            _train_step(model, criterion, opt, xi, y, ac)

        flops = flops or count_flops(step)
        seconds = timed(step, device, reps)
        rows.append({"work": f"train step {batch}x3x{size[0]}x{size[1]} (two-scale, RMI+aux+mscale, SGD)",
                     "variant": name, "ms": 1000 * seconds, "flops": flops,
                     "util": flops / seconds / peaks[ac or torch.float32],
                     # on the CPU, LiveBytes misses the activations autograd holds: no figure rather than a wrong one
                     "peak_gb": peak_bytes(step, device) / 1024 ** 3 if device.type == "cuda" else None,
                     "agree": None, "load": load()})
    return rows


# ----------------------------------------------------------------------------- report

def table(rows: list[dict]) -> str:
    lines = ["| work | variant | ms | vs plain | GFLOP | util % of matmul peak | peak memory GB | argmax agreement "
             "with plain | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    base: dict[str, float] = {}
    for r in rows:
        base.setdefault(r["work"], r["ms"])
        agree = "" if r["agree"] is None else f"{100 * r['agree']:.2f}%"
        peak = "n/a (bench.grad_ckpt_memory)" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        lines.append(f"| {r['work']} | {r['variant']} | {r['ms']:.0f} | {base[r['work']] / r['ms']:.2f}x | "
                     f"{r['flops'] / 1e9:.1f} | {100 * r['util']:.0f}% | {peak} | {agree} | "
                     f"{r['load']:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pair = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--arch", default=None, help="default: ocrnet.HRNet_Mscale (W48)")
    p.add_argument("--num_classes", type=int, default=19)
    p.add_argument("--eval_size", type=pair, default=None, help="H,W (default 1024,2048 CUDA, 256,512 CPU)")
    p.add_argument("--train_size", type=pair, default=None, help="H,W (default 1024,1024 CUDA, 256,256 CPU)")
    p.add_argument("--train_batch", type=int, default=None, help="default 2 (BatchNorm needs 2 at small sizes)")
    p.add_argument("--reps", type=int, default=None, help="default 5 CUDA, 3 CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's); 1 on a shared CPU, where OpenMP spin-waiting distorts")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--no_write", action="store_true", help="print only; do not touch bench/RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from network import get_model
    from utils.results import write_section

    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    arch = a.arch or "ocrnet.HRNet_Mscale"
    eval_size = a.eval_size or ((1024, 2048) if cuda else (256, 512))
    train_size = a.train_size or ((1024, 1024) if cuda else (256, 256))
    reps = a.reps or (5 if cuda else 3)
    n = 8192 if cuda else 2048
    peaks = {dt: matmul_peak(device, dt, n) for dt in (torch.float32, torch.bfloat16)}
    peaks[torch.float16] = matmul_peak(device, torch.float16, n) if cuda else peaks[torch.bfloat16]
    print(f"matmul {n}: fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.0f} "
          f"GFLOP/s (load {load():.1f})", flush=True)
    # bf16 rows only where bf16 is fast: a CPU without bf16 units runs it ~100x slower than fp32
    bf16 = cuda or peaks[torch.bfloat16] > 0.5 * peaks[torch.float32]
    skipped = "" if bf16 else (" bf16 variants skipped: this device's bf16 matmul reaches "
                               f"{100 * peaks[torch.bfloat16] / peaks[torch.float32]:.1f}% of its fp32 rate.")
    torch.manual_seed(0)
    model = get_model(arch, num_classes=a.num_classes).to(device).eval()
    rows = []
    for scales in ((0.5, 1.0, 2.0), (1.0,)):
        rows += bench_eval(model, eval_size, scales, device, reps, peaks, a.compile, bf16)
        print(table(rows), flush=True)
    if not a.skip_train:
        rows += bench_train(arch, a.num_classes, train_size, a.train_batch or 2, device, reps, peaks, bf16)
    body = (f"Device: {torch.cuda.get_device_name(device) if cuda else cpu_description()}; arch {arch}, "
            f"{a.num_classes} classes. "
            f"Matmul {n}x{n}: fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.0f} "
            f"GFLOP/s, measured in this run ({torch.get_num_threads()} thread(s)).{skipped}\n\n" + table(rows))
    print(body)
    if not a.no_write:
        command = "python -m bench.gpu_speed " + " ".join(argv or sys.argv[1:])
        write_section(f"gpu_speed ({'GPU' if cuda else 'CPU'})", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
