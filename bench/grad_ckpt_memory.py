"""Peak memory of a train step with and without ``--grad_ckpt`` on the CPU: one fresh process per variant.

    python -m bench.grad_ckpt_memory [--arch ocrnet.HRNet_Mscale] [--size 256,256] [--batch 2]

Each variant runs in its own child process (same seed, same data): build the model, one two-scale
train step (RMI + aux + multi-scale loss, backward, SGD). The child reports its resident set size
after building the model and its peak (``ru_maxrss``), so "step peak" = peak - RSS after the build is
what the step itself added (activations kept for the backward pass, gradients, optimizer state).
Tensors are not visible to ``tracemalloc``; RSS is what the operating system charges. The children
also report the loss and a gradient checksum: checkpointing must not change them (checked here, the
bench fails otherwise). Writes the "grad_ckpt_memory" section of bench/RESULTS.md.
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def child(arch: str, size: tuple[int, int], batch: int, ckpt: bool) -> dict:
    """One train step in this process; memory, time, loss and gradient checksum."""
    import torch

    from loss import SegLoss
    from network import get_model
    from network.hrnet import set_grad_checkpointing

    torch.manual_seed(0)
    model = get_model(arch, num_classes=19).train()
    if set_grad_checkpointing(model, ckpt) == 0 and ckpt:
        raise SystemExit(f"{arch} has no HRNet trunk to checkpoint")
    crit = SegLoss(19, rmi=True, aux_weight=0.4, mscale_weight=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch, 3, *size), torch.randint(0, 19, (batch, *size))
    built = rss_mib()
    t0 = time.perf_counter()
    loss = crit(model(x), y)
    loss.backward()
    checksum = float(sum(p.grad.double().abs().sum() for p in model.parameters() if p.grad is not None))
    opt.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"built_mib": built, "peak_mib": peak, "seconds": seconds, "loss": float(loss), "grad_sum": checksum}


def run_variant(arch: str, size: tuple[int, int], batch: int, ckpt: bool, threads: int) -> dict:
    cmd = [sys.executable, "-m", "bench.grad_ckpt_memory", "--child", "--arch", arch, "--size",
           f"{size[0]},{size[1]}", "--batch", str(batch), "--threads", str(threads)] + (["--ckpt"] if ckpt else [])
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"variant grad_ckpt={ckpt} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"load": os.getloadavg()[0]}


def report(arch: str, size: tuple[int, int], batch: int, rows: dict[bool, dict]) -> str:
    off, on = rows[False], rows[True]
    same = abs(off["loss"] - on["loss"]) <= 1e-5 * abs(off["loss"]) and \
        abs(off["grad_sum"] - on["grad_sum"]) <= 1e-4 * abs(off["grad_sum"])
    if not same:
        raise SystemExit(f"--grad_ckpt changed the step: loss {off['loss']} vs {on['loss']}, "
                         f"gradient |sum| {off['grad_sum']} vs {on['grad_sum']}")
    lines = ["| variant | RSS after build (MiB) | peak RSS (MiB) | step peak = peak - build (MiB) | step s "
             "| load avg |",
             "|---|---|---|---|---|---|"]
    for ckpt, r in ((False, off), (True, on)):
        lines.append(f"| {'--grad_ckpt' if ckpt else 'plain (no checkpointing)'} | {r['built_mib']:.0f} | "
                     f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['built_mib']:.0f} | {r['seconds']:.1f} | "
                     f"{r['load']:.1f} |")
    saved = (off["peak_mib"] - off["built_mib"]) - (on["peak_mib"] - on["built_mib"])
    share = saved / max(off["peak_mib"] - off["built_mib"], 1e-9)
    return (f"{arch}, 19 classes, batch {batch}, {size[0]}x{size[1]}, fp32, CPU, one two-scale train step "
            "(RMI + aux + mscale loss, backward, SGD) in a fresh process per variant.\n\n" + "\n".join(lines) +
            f"\n\n--grad_ckpt saves {saved:.0f} MiB of the step's {off['peak_mib'] - off['built_mib']:.0f} MiB "
            f"({100 * share:.0f}%), at {on['seconds'] / off['seconds']:.2f}x the step time (timing on a shared "
            f"CPU: indicative). Same loss ({off['loss']:.6f} vs {on['loss']:.6f}) and gradient |sum| "
            f"({off['grad_sum']:.6g} vs {on['grad_sum']:.6g}), checked in the run.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="ocrnet.HRNet_Mscale")
    p.add_argument("--size", default="256,256")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no_write", action="store_true")
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split(","))
    assert len(size) == 2
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(child(a.arch, size, a.batch, a.ckpt)))
        return 0
    rows = {ckpt: run_variant(a.arch, size, a.batch, ckpt, a.threads) for ckpt in (False, True)}
    body = report(a.arch, size, a.batch, rows)
    print(body)
    if not a.no_write:
        from utils.results import write_section

        write_section("grad_ckpt_memory", body, "python -m bench.grad_ckpt_memory " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
