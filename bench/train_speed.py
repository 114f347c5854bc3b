"""Training iterations/s and evaluation images/s of the demo model on the CPU, and the peak
memory of evaluation at O0 versus O3.

    python bench/train_speed.py [--iters 10] [--threads 2]

Uses train.py's own builders and step (``train_step``, ``evaluate``) on the synthetic data, with
the demo's settings (``scripts/demo.yml``). Peak memory is the growth of the process's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) during one evaluation pass,
measured in a fresh process per level.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEMO = ["--dataset", "synthetic", "--arch", "ocrnet.HRNet_Mscale_w18s", "--crop_size", "128,256",
        "--bs_trn", "4", "--optimizer", "adamw", "--lr", "0.002", "--class_uniform_pct", "0",
        "--n_scales", "0.5,1.0", "--do_flip", "--num_workers", "1"]


def _build(argv: list[str]):
    """train.py's own builders: the Setup and, for the training measurement, the Trainer."""
    import train
    from config import parse_config
    from utils.dist import DistInfo
    from utils.logger import RunLogger

    cfg = parse_config(argv)
    info = DistInfo()
    precision = train.training_precision(cfg, info.device)
    train_ds, val_ds = train.build_datasets(cfg, train=True)
    model, net = train.place_model(cfg, train.build_model(cfg, val_ds.num_classes), info, precision)
    data = train.dataset_info(cfg.data.dataset)
    settings = train.inference_settings(cfg, net, data, info.device, train.Weights())
    s = train.Setup(cfg, info, precision, model, net, data, val_ds, train.build_val_loader(cfg, info, val_ds),
                    RunLogger(cfg.train.result_dir, 0, {}), settings, train.Weights())
    return s, train.build_trainer(s, train_ds)


def _batches(cfg, t):
    import train

    epoch = 0
    while True:
        train.start_epoch(cfg, t, epoch)
        yield from t.loader
        epoch += 1


def train_speed(root: str, iters: int) -> dict:
    import train

    s, t = _build(DEMO + ["--dataset_root", root, "--result_dir", tempfile.mkdtemp()])
    s.model.train()
    batches = _batches(s.cfg, t)
    for i in range(2):  # warm-up (oneDNN kernels, loader start)
        train.train_step(s, t, i, batches)
    t0 = time.perf_counter()
    for i in range(iters):
        train.train_step(s, t, i, batches)
    dt = time.perf_counter() - t0
    t0 = time.perf_counter()
    train.evaluate(s.net, s.val_loader, 19, s.inference, s.info.device, show=False)  # DEMO: 0.5,1.0 + flip
    de = time.perf_counter() - t0
    n_val = len(s.val_ds)
    return {"it_s": iters / dt, "img_s_train": iters * 4 / dt, "eval_img_s": n_val / de, "n_val": n_val}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def eval_memory(root: str, level: str) -> dict:
    """Run in a fresh process: peak RSS growth of one multi-scale evaluation pass."""
    import train

    s, _ = _build(DEMO + ["--dataset_root", root, "--result_dir", tempfile.mkdtemp(), "--amp_opt_level", level,
                         "--n_scales", "0.5,1.0,2.0", "--num_workers", "0"])
    # reset VmHWM to the current RSS; if refused, the lifetime peak (model building peaks far lower)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    m = train.evaluate(s.net, s.val_loader, 19, s.inference, s.info.device, show=False)  # 0.5,1,2 + flip
    return {"level": level, "peak_mib": (_rss_kib("VmHWM") - base) / 1024, "seconds": time.perf_counter() - t0,
            "miou": m["miou"], "images": len(s.val_ds)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_root", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args._memory:
        print(json.dumps(eval_memory(args._root, args._memory)))
        return 0
    from datasets.synthetic import generate

    tmp = Path(tempfile.mkdtemp())
    generate(tmp / "demo", num_train=24, num_val=8, size=(128, 256), seed=0)
    generate(tmp / "big", num_train=2, num_val=2, size=(512, 1024), seed=0)
    speed = train_speed(str(tmp / "demo"), args.iters)
    mem = []
    for level in ("O0", "O3"):
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--_memory", level,
                              "--_root", str(tmp / "big")], capture_output=True, text=True, check=True)
        mem.append(json.loads(out.stdout.strip().splitlines()[-1]))
    body = (f"Demo model `ocrnet.HRNet_Mscale_w18s` (4.4 M parameters), synthetic data, "
            f"{args.threads} threads, fp32.\n\n"
            f"| measure | value |\n|---|---|\n"
            f"| training, batch 4 x 128x256 crops (two-scale forward + losses + AdamW) | "
            f"{speed['it_s']:.2f} it/s ({speed['img_s_train']:.1f} images/s) |\n"
            f"| evaluation, 128x256, scales 0.5,1.0 + flip | {speed['eval_img_s']:.2f} images/s |\n\n"
            f"Evaluation peak memory, {mem[0]['images']} images of 512x1024, scales 0.5,1.0,2.0 + flip "
            f"(growth of peak RSS during the pass):\n\n| level | peak MiB | seconds |\n|---|---|---|\n"
            + "".join(f"| {m['level']} ({'fp32' if m['level'] == 'O0' else 'bf16, BN fp32'}) | "
                      f"{m['peak_mib']:.0f} | {m['seconds']:.1f} |\n" for m in mem)
            + f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f} (other jobs on the CPU slow the speeds).")
    from utils.results import write_section

    write_section("train_speed", body, command=f"python bench/train_speed.py --iters {args.iters}")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
