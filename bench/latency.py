"""Batch-1 latency (median, p90) and peak memory per architecture, precision and runtime.

    python -m bench.latency [--arch ocrnet.HRNet_w18s] --device cpu --precision fp32,int8 --size 128x256

Runtimes, measured back to back for each architecture:
- ``eager``: the model as built (BatchNorm layers, NCHW), ``torch.inference_mode``;
- ``prepared``: ``network.optimize_for_inference`` (conv+BN folded, channels_last);
- ``onnxruntime``: the graph ``export.py`` writes (dynamo exporter, opset 17), fp16 converted
  and int8 quantised (QDQ, calibrated on generated street scenes) by ``deploy.quantize``.

Precisions: fp32; bf16 / fp16 as ``torch.autocast`` for PyTorch (fp16 is also the converted
graph for onnxruntime); int8 for onnxruntime only (PyTorch has no int8 path for this model here).
Combinations that do not exist are listed as "n/a" with the reason.

Each measurement runs in a fresh subprocess, so its peak memory is its own: peak RSS
(``ru_maxrss``, weights included) on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU.
The timed work is checked: logits of shape ``(1, K, H, W)``, all finite. Weights are random
(speed does not depend on them). Mscale models run ``--scales`` (default 1.0, so every
architecture does the same work; pass 0.5,1.0 for the two-scale cost).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNTIMES = ("eager", "prepared", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
NUM_CLASSES = 19


def not_available(runtime: str, precision: str, device: str) -> str | None:
    """Why a combination is not measured, or None."""
    if precision == "int8" and runtime != "onnxruntime":
        return "no int8 path in PyTorch for this model (use onnxruntime or TensorRT)"
    if precision == "bf16" and runtime == "onnxruntime":
        return "onnxruntime has no bf16 conversion for this graph"
    if device == "cuda" and runtime == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime-gpu not installed"
    return None


def _torch_runner(arch: str, runtime: str, precision: str, device: str, size, scales):
    import torch

    from network import get_model, optimize_for_inference, predict
    from network.inference import to_input

    torch.manual_seed(0)
    model = get_model(arch, num_classes=NUM_CLASSES).eval().to(device)
    x = torch.randn(1, 3, *size, device=device)
    if runtime == "prepared":
        model = optimize_for_inference(model, channels_last=True, inplace=True)
        x = to_input(x, model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def run():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = predict(model, x, scales=scales)["pred"]
        if device == "cuda":
            torch.cuda.synchronize()
        return out.float().cpu().numpy()

    return run


def _ort_runner(onnx_path: str, size):
    import numpy as np

    from deploy.onnx_export import INPUT, OUTPUT, session

    sess = session(onnx_path)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    return lambda: sess.run([OUTPUT], {INPUT: x})[0]


def _rss_mb() -> float:
    """Peak RSS of this process since its exec, MiB.

    ``ru_maxrss`` survives ``execve`` on Linux, so a child of a big parent (the bench after an
    export) would report the parent's peak; ``VmHWM`` belongs to the new address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(spec: dict) -> dict:
    """One measurement in this process: times (ms), peak memory (MiB), check of the output."""
    import numpy as np
    import torch

    from deploy.quantize import latency_ms

    size, device = tuple(spec["size"]), spec["device"]
    if spec["runtime"] == "onnxruntime":
        run = _ort_runner(spec["onnx"], size)
    else:
        run = _torch_runner(spec["arch"], spec["runtime"], spec["precision"], device, size, spec["scales"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = run()
    if out.shape != (1, NUM_CLASSES, *size) or not np.isfinite(out).all():
        return {"error": f"bad output: shape {out.shape}, finite {bool(np.isfinite(out).all())}"}
    median, p90 = latency_ms(run, spec["repeats"], warmup=0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mb()
    return {"median_ms": median, "p90_ms": p90, "peak_mib": peak, "memory": "cuda max allocated" if device == "cuda"
            else "peak RSS"}


def _measure(spec: dict, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "bench.latency", "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_onnx(arch: str, precisions: list[str], size: tuple[int, int], scales, workdir: Path) -> dict:
    """``{precision: onnx path}`` for one architecture: export, then fp16 / int8 from it."""
    import torch

    from deploy.meta import inference_settings, model_info
    from deploy.onnx_export import ExportSpec, export, synthetic_images
    from deploy.quantize import build_variants
    from network import get_model

    info = model_info({"num_classes": NUM_CLASSES}, arch)
    torch.manual_seed(0)
    model = get_model(arch, num_classes=NUM_CLASSES).eval()
    src = workdir / f"{arch.replace('.', '_')}.onnx"
    start = time.perf_counter()
    settings = inference_settings(info, bool(getattr(model, "multiscale", False)), scales, precision="fp32")
    export(model, info, src, ExportSpec(settings=settings.resolve("cpu"), example_size=size))
    print(f"latency: exported {arch} in {time.perf_counter() - start:.0f} s", flush=True)
    calib = [x for _, x in synthetic_images(info, sizes=[size] * 4)] if "int8" in precisions else []
    wanted = [p for p in precisions if p in ("fp32", "fp16", "int8")]
    return {p: str(path) for p, path in build_variants(src, workdir, wanted, calib).items()}


def _fmt(res: dict) -> str:
    if "na" in res:
        return f"n/a | | | {res['na']}"
    if "error" in res:
        return f"failed | | | {res['error']}"
    return f"{res['median_ms']:.1f} | {res['p90_ms']:.1f} | {res['peak_mib']:.0f} | load {res['load']:.1f}"


def _rows(results: list[tuple[str, str, str, dict]]) -> str:
    lines = ["| architecture | runtime | precision | median ms | p90 ms | peak MiB | note |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| `{a}` | {r} | {p} | {_fmt(res)} |" for a, r, p, res in results]
    return "\n".join(lines)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--size {text!r}: write HxW, e.g. 128x256") from e
    if h % 32 or w % 32 or h < 64 or w < 64:
        raise argparse.ArgumentTypeError(f"--size {text!r}: H and W must be multiples of 32, at least 64")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--arch", default=None, help="one registered architecture (default: every one)")
    a("--device", default="cpu", choices=["cpu", "cuda"])
    a("--precision", default="fp32", help=f"comma list of {','.join(PRECISIONS)}")
    a("--runtimes", default=",".join(RUNTIMES), help=f"comma list of {','.join(RUNTIMES)}")
    a("--size", type=_parse_size, default=(128, 256), help="HxW input, multiples of 32")
    a("--scales", default="1.0", help="scales of Mscale models (e.g. 0.5,1.0)")
    a("--repeats", type=int, default=5, help="timed runs per measurement")
    a("--threads", type=int, default=None, help="OMP_NUM_THREADS for the children")
    a("--section", default=None, help="RESULTS.md section to write (default latency_<device>)")
    a("--no-write", action="store_true", help="print only, do not update bench/RESULTS.md")
    a("--child", help=argparse.SUPPRESS)
    return p


def measure_all(args: argparse.Namespace, archs: list[str], precisions: list[str], runtimes: list[str],
                scales) -> list[tuple[str, str, str, dict]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="hmsa-latency-") as tmp:
        for arch in archs:
            want_ort = "onnxruntime" in runtimes and not_available("onnxruntime", "fp32", args.device) is None
            onnx = prepare_onnx(arch, precisions, args.size, scales, Path(tmp)) if want_ort else {}
            for precision in precisions:
                for runtime in runtimes:
                    why = not_available(runtime, precision, args.device)
                    if why:
                        results.append((arch, runtime, precision, {"na": why}))
                        continue
                    spec = {"arch": arch, "runtime": runtime, "precision": precision, "device": args.device,
                            "size": list(args.size), "scales": scales, "repeats": args.repeats,
                            "onnx": onnx.get(precision)}
                    load = os.getloadavg()[0]
                    res = {**_measure(spec, args.threads), "load": load}
                    print(f"latency: {arch} {runtime} {precision}: {_fmt(res)}", flush=True)
                    results.append((arch, runtime, precision, res))
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if str(REPO) not in sys.path:  # also runnable as `python bench/latency.py`
        sys.path.insert(0, str(REPO))
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    from deploy.meta import parse_scales
    from network import list_models
    from network.registry import UnknownModelError, resolve_model

    precisions = [p for p in args.precision.split(",") if p]
    runtimes = [r for r in args.runtimes.split(",") if r]
    bad = (set(precisions) - set(PRECISIONS)) | (set(runtimes) - set(RUNTIMES))
    if bad:
        build_parser().error(f"unknown {sorted(bad)}; precisions {PRECISIONS}, runtimes {RUNTIMES}")
    if args.arch:  # a registered name or one of a family (ocrnet.timm.*)
        try:
            resolve_model(args.arch)
        except UnknownModelError as e:
            build_parser().error(str(e))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            build_parser().error("--device cuda: no CUDA device here; use --device cpu")
    scales = parse_scales(args.scales)
    archs = [args.arch] if args.arch else list_models()
    results = measure_all(args, archs, precisions, runtimes, list(scales) if scales else None)
    body = _body(results, args)
    print(body)
    if not args.no_write:
        from utils.results import write_section

        command = "python -m bench.latency " + " ".join(argv)
        write_section(args.section or f"latency_{args.device}", body, command=command)
    failed = [r for r in results if "error" in r[3]]
    return 1 if failed else 0


def _body(results: list, args: argparse.Namespace) -> str:
    gpu = ("" if args.device == "cuda" else
           "\nGPU (`--device cuda`): not measured (no GPU in this session).\n")
    return f"""Batch 1, input 1x3x{args.size[0]}x{args.size[1]}, {NUM_CLASSES} classes, random weights, device
{args.device}; Mscale models at scales {args.scales}. Median and p90 of {args.repeats} timed runs after one
untimed run, in a fresh process per row; peak MiB: peak RSS of that process (weights, and for onnxruntime
the session, included) on the CPU, `torch.cuda.max_memory_allocated` on a GPU. Each row's note gives the
1-minute load average seen before it (2 shared cores: absolute times rise with other jobs; rows of one
architecture ran back to back). eager = model as built; prepared = `optimize_for_inference` (conv+BN
folded, channels_last); onnxruntime = `export.py`'s graph (CPU provider; fp16 converted, int8 QDQ
calibrated on 4 generated scenes).
{gpu}
{_rows(results)}
"""


if __name__ == "__main__":
    sys.exit(main())
