"""The low-power recipe against HRNet-W18-small: parameters, GFLOP, latency, demo mIoU.

    python -m bench.lowpower [--size 512x1024] [--latency-size 512x1024] [--train] [--repeats 5]

Architectures, measured back to back in one run on this machine: the baseline
``ocrnet.HRNet_Mscale_w18s`` (scripts/demo.yml) and ``ocrnet.timm.efficientnet_lite0_fuse64_Mscale``
(scripts/lowpower.yml). Columns:

- parameters (all of the model's, trunk and heads);
- GFLOP of one eval forward at ``--size`` (default 512x1024), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (2 x multiply-adds of convolutions and matrix
  products; resizes and element-wise ops not counted), at scale 1.0 and at the demo's
  evaluation scales 0.5,1.0;
- batch-1 latency at ``--latency-size`` through bench/latency.py's measurement (a fresh process
  per row, median and p90): eager, prepared (``optimize_for_inference``), onnxruntime fp32 and
  int8 (QDQ, calibrated on generated scenes), scale 1.0;
- with ``--train``: the demo mIoU: each recipe's YAML trained from scratch on freshly generated
  demo data (``datasets.synthetic.ensure``: 24 train / 8 val images) and evaluated as the recipe
  says (scales 0.5,1.0 + flip); without it the column says "not measured".

The ONNX export for the latency rows lists ReLU6's ``Clip`` as an op TensorRT's parser accepts
(it does; deploy/onnx_export.TENSORRT_OPS does not list it yet). The work is checked: every
latency row must have finite logits of the right shape (bench/latency.py), every training must
exit 0 and write ``metrics.json``; the script exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASELINE = "ocrnet.HRNet_Mscale_w18s"
LOWPOWER = "ocrnet.timm.efficientnet_lite0_fuse64_Mscale"
RECIPES = {BASELINE: "scripts/demo.yml", LOWPOWER: "scripts/lowpower.yml"}
NUM_CLASSES = 19


def count(arch: str, size: tuple[int, int]) -> dict[str, float]:
    """Parameters (millions) and GFLOP of eval forwards at ``size``: scale 1.0 and scales 0.5,1.0."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from network import get_model

    torch.manual_seed(0)
    model = get_model(arch, NUM_CLASSES, eval_scales=(0.5, 1.0)).eval()
    x = torch.zeros(1, 3, *size)
    out: dict[str, float] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    for key, scales in (("gflop_1x", (1.0,)), ("gflop_2s", (0.5, 1.0))):
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            model(x, scales=scales)
        out[key] = flops.get_total_flops() / 1e9
    return out


def latency(args: argparse.Namespace) -> list[tuple[str, str, str, dict]]:
    """bench/latency.py's rows (eager, prepared, onnxruntime; fp32, int8) for both architectures."""
    from bench.latency import measure_all

    ns = argparse.Namespace(device="cpu", size=args.latency_size, repeats=args.repeats, threads=args.threads)
    return measure_all(ns, list(RECIPES), ["fp32", "int8"], ["eager", "prepared", "onnxruntime"], [1.0])


def train_recipe(arch: str, root: Path, out: Path) -> dict[str, Any]:
    """Train ``arch``'s recipe YAML on the demo data under ``root``; its final mIoU and wall time."""
    import yaml

    from sbatch.expand import hparam_flags, replace_logdir

    hparams = replace_logdir(yaml.safe_load((REPO / RECIPES[arch]).read_text())["HPARAMS"], str(out))
    argv = [sys.executable, "train.py", *hparam_flags(hparams), "--dataset_root", str(root)]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    metrics = out / "metrics.json"
    if proc.returncode != 0 or not metrics.is_file():
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
        return {"error": f"train.py exited {proc.returncode}: {tail}", "wall_s": wall}
    return {"miou": json.loads(metrics.read_text())["miou"], "wall_s": wall}


def train_both(workdir: Path) -> dict[str, dict[str, Any]]:
    from datasets.synthetic import ensure

    root = ensure(workdir / "synthetic")
    results = {}
    for arch in RECIPES:
        results[arch] = train_recipe(arch, root, workdir / arch.replace(".", "_"))
        print(f"lowpower: trained {arch}: {results[arch]}", flush=True)
    return results


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's word for it."""
    import platform

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _miou(res: dict[str, Any] | None) -> str:
    if res is None:
        return "not measured (run with --train)"
    if "error" in res:
        return f"failed: {res['error']}"
    return f"{100 * res['miou']:.1f} (trained in {res['wall_s'] / 60:.1f} min)"


def _model_table(counts: dict[str, dict[str, float]], trained: dict[str, dict[str, Any]] | None,
                 size: tuple[int, int]) -> str:
    lines = [f"| architecture | recipe | parameters (M) | GFLOP {size[0]}x{size[1]}, scale 1.0 | "
             "GFLOP, scales 0.5,1.0 | demo mIoU (%) |", "|---|---|---|---|---|---|"]
    for arch, c in counts.items():
        lines.append(f"| `{arch}` | `{RECIPES[arch]}` | {c['params_m']:.2f} | {c['gflop_1x']:.1f} | "
                     f"{c['gflop_2s']:.1f} | {_miou(trained.get(arch) if trained else None)} |")
    return "\n".join(lines)


def body(args: argparse.Namespace, counts: dict[str, dict[str, float]], rows: list,
         trained: dict[str, dict[str, Any]] | None) -> str:
    from bench.latency import _rows

    lat = args.latency_size
    return f"""CPU: {cpu_model()}. The low-power recipe (`scripts/lowpower.yml`: EfficientNet-Lite0 trunk,
`_fuse64`, scale attention) against the demo's `ocrnet.HRNet_Mscale_w18s`, same data, same CPU, one run. GFLOP:
`torch.utils.flop_counter` (2 x multiply-adds of convs and matrix products) of one eval forward.
Latency: batch 1, input 1x3x{lat[0]}x{lat[1]}, scale 1.0, {NUM_CLASSES} classes, random weights, median and
p90 of {args.repeats} timed runs in a fresh process per row (bench/latency.py; prepared = conv+BN folded,
channels_last; onnxruntime int8 = QDQ calibrated on 4 generated scenes). Demo mIoU: each recipe's YAML
trained from scratch on generated demo data (24 train / 8 val images, 128x256), evaluated at scales
0.5,1.0 + flip; one seed each, so differences of a few points are noise.

{_model_table(counts, trained, args.size)}

{_rows(rows)}
"""


def _size(text: str) -> tuple[int, int]:
    from bench.latency import _parse_size

    return _parse_size(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.lowpower", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--size", type=_size, default=(512, 1024), help="HxW for the GFLOP count")
    a("--latency-size", "--latency_size", dest="latency_size", type=_size, default=(512, 1024),
      help="HxW for the latency rows")
    a("--repeats", type=int, default=5, help="timed runs per latency row")
    a("--threads", type=int, default=None, help="OMP_NUM_THREADS for the latency children")
    a("--train", action="store_true", help="also train both recipes on the demo data for the mIoU (minutes)")
    a("--no-write", action="store_true", help="print only, do not update bench/RESULTS.md")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    counts = {arch: count(arch, args.size) for arch in RECIPES}
    for arch, c in counts.items():
        print(f"lowpower: {arch}: {c}", flush=True)
    rows = latency(args)
    with tempfile.TemporaryDirectory(prefix="hmsa-lowpower-") as tmp:
        trained = train_both(Path(tmp)) if args.train else None
    text = body(args, counts, rows, trained)
    print(text)
    if not args.no_write:
        from utils.results import write_section

        write_section("lowpower", text, command="python -m bench.lowpower " + " ".join(argv))
    failed = [r for r in rows if "error" in r[3]] + [t for t in (trained or {}).values() if "error" in t]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
