"""Folder inference throughput and memory: predict.py's pipeline against a naive loop.

    python bench/folder.py [--num_images 2000] [--size 128x256] [--short_side 64]

Generates ``--num_images`` JPEGs, then runs each variant in its own process (so peak
memory figures do not mix) over the same files with the same model and settings:

- ``pipeline``: ``predict.predict_folder`` (DataLoader workers decoding ahead, batches
  of equal-size images, a bounded background writer);
- ``naive``: ``cv2.imread`` + resize + one forward per image + ``cv2.imwrite``, no
  workers, no batching (what a user writes first).

Memory is sampled at every model call: the main process's RSS, and the proportional
set size (PSS, shared pages split between processes) of the main process plus its
DataLoader workers. "Flat" means the mean over the first hundred images is about the
mean over the last hundred. Writes the ``folder`` section of bench/RESULTS.md.
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def generate(root: Path, num: int, size: tuple[int, int], seed: int = 0) -> None:
    """Smooth random scenes (blobs of colour), 100 per subdirectory, as JPEG."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(num):
        sub = root / f"{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(sub / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


# ---------------------------------------------------------------- memory sampling


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemoryLog:
    """A forward pre-hook: (images so far, main RSS MB, PSS MB of main + workers) per model call."""

    def __init__(self) -> None:
        self.seen = 0
        self.samples: list[tuple[int, float, float]] = []

    def __call__(self, _module, args) -> None:
        pid = os.getpid()
        total = _pss_mb(pid) + sum(_pss_mb(c) for c in _children(pid))
        self.samples.append((self.seen, _rss_mb(pid), total))
        self.seen += args[0].shape[0]

    def window(self, lo: int, hi: int) -> tuple[float, float]:
        rows = [s for s in self.samples if lo <= s[0] < hi] or self.samples[-1:]
        return (sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows))


def _milestones(samples: list[tuple[int, float, float]], step: int) -> list[tuple[int, float, float]]:
    """The first sample at or after every ``step`` images (and the last one)."""
    out, target = [], 0
    for n, r, p in samples:
        if n >= target:
            out.append((n, round(r, 1), round(p, 1)))
            target = (n // step + 1) * step
    if samples and out[-1][0] != samples[-1][0]:
        n, r, p = samples[-1]
        out.append((n, round(r, 1), round(p, 1)))
    return out


# ---------------------------------------------------------------- the two variants


def _model(arch: str):
    from network import get_model

    return get_model(arch, num_classes=19, trunk_weights=None).eval()


def run_pipeline(data: Path, out: Path, a: argparse.Namespace, model) -> int:
    from predict import PredictOptions, predict_folder

    opts = PredictOptions(eval_folder=str(data), result_dir=str(out), infer_short_side=a.short_side,
                          batch_size=a.batch_size, workers=a.workers, scales=(1.0,), progress=False)
    s = predict_folder(model, opts)
    return s.done


def run_naive(data: Path, out: Path, a: argparse.Namespace, model) -> int:
    import cv2
    import torch

    from datasets.folder import default_palette, discover_images, inference_size, to_model_input
    from network import predict
    from utils.vis import colorize

    palette, done = default_palette(19), 0
    for rel in discover_images(data)[: a.baseline_images or None]:
        bgr = cv2.imread(str(data / rel))
        assert bgr is not None, f"unreadable benchmark image {rel}"
        rgb = bgr[..., ::-1]
        h, w = rgb.shape[:2]
        x = to_model_input(rgb, inference_size(h, w, a.short_side, 32))[None]
        with torch.inference_mode():
            label = predict(model, x, scales=(1.0,))["pred"].argmax(1)[0].to(torch.uint8).numpy()
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
        dest = out / rel.rsplit(".", 1)[0]
        dest.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(f"{dest}_label.png", label)
        cv2.imwrite(f"{dest}_color.png", colorize(label, palette)[..., ::-1])
        done += 1
    return done


def variant_main(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    model = _model(a.arch)
    log = MemoryLog()
    model.register_forward_pre_hook(log)
    fn = run_pipeline if a.variant == "pipeline" else run_naive
    start = time.perf_counter()
    done = fn(Path(a.data), Path(a.out), a, model)  # `log` samples through the hook
    seconds = time.perf_counter() - start
    first, last = log.window(0, 100), log.window(done - 100, done)
    result = {
        "variant": a.variant, "images": done, "seconds": seconds, "images_per_s": done / seconds,
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # forked workers' RSS includes the pages they share with the main process
        "peak_rss_workers_mb": (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
                                if a.variant == "pipeline" else None),
        "first100_rss_mb": first[0], "last100_rss_mb": last[0],
        "first100_pss_total_mb": first[1], "last100_pss_total_mb": last[1],
        "curve": _milestones(log.samples, step=250),
        "load": os.getloadavg()[0],
    }
    Path(a.result_json).write_text(json.dumps(result))


# ---------------------------------------------------------------- driver


def _run_variant(name: str, data: Path, work: Path, a: argparse.Namespace) -> dict:
    out, res = work / f"out_{name}", work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", name, "--data", str(data),
           "--out", str(out), "--result_json", str(res), "--arch", a.arch, "--short_side", str(a.short_side),
           "--batch_size", str(a.batch_size), "--workers", str(a.workers), "--threads", str(a.threads),
           "--baseline_images", str(a.baseline_images)]
    print(f"bench/folder: running {name} ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads(res.read_text())


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _table(results: list[dict], a: argparse.Namespace) -> str:
    rows = ["| variant | images | images/s | peak RSS main (MB) | peak RSS largest worker (MB) | "
            "main RSS first/last 100 (MB) | PSS main+workers first/last 100 (MB) |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['variant']} | {r['images']} | {r['images_per_s']:.1f} | {r['peak_rss_main_mb']:.0f} | "
                    f"{_mb(r['peak_rss_workers_mb'])} | {r['first100_rss_mb']:.0f} / {r['last100_rss_mb']:.0f} | "
                    f"{r['first100_pss_total_mb']:.0f} / {r['last100_pss_total_mb']:.0f} |")
    pipe = results[0]
    loads = " / ".join(f"{r['variant']} {r['load']:.1f}" for r in results)
    curve = ", ".join(f"{n}: {r:.0f} / {p:.0f}" for n, r, p in pipe["curve"])
    return "\n".join(rows) + (
        f"\n\nSettings: {a.num_images} generated JPEGs of {a.size}, shorter side resized to {a.short_side} "
        f"for the model, `{a.arch}` with random weights (single scale), CPU, {a.threads} torch thread(s) in "
        f"the main process; pipeline: batch {a.batch_size}, {a.workers} DataLoader workers; both write the "
        "label and colour PNGs. A worker's RSS counts the pages it shares with the main process "
        "(fork); PSS splits shared pages, so main + workers is not double-counted."
        "\n\nPipeline memory by images done (main RSS / PSS of main + workers, MB): " + curve +
        f"\n\n1-minute load average during the runs: {loads}; images/s fall with other load on "
        "the 2 cores. The memory figures are the point: after the first few hundred images "
        "(allocator warm-up) the curve stays level to the last image.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_images", type=int, default=2000)
    p.add_argument("--size", default="128x256", help="HxW of the generated images")
    p.add_argument("--short_side", type=int, default=64)
    p.add_argument("--arch", default="ocrnet.HRNet_Mscale_w18s")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--baseline_images", type=int, default=0, help="naive loop over only this many (0: all)")
    p.add_argument("--no_write", action="store_true", help="print, do not touch bench/RESULTS.md")
    p.add_argument("--variant", choices=["pipeline", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result_json", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.variant:
        variant_main(a)
        return
    h, w = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench_folder_") as tmp:
        work = Path(tmp)
        generate(work / "images", a.num_images, (h, w))
        results = [_run_variant(v, work / "images", work, a) for v in ("pipeline", "naive")]
    body = _table(results, a)
    print(body)
    if not a.no_write:
        from utils.results import write_section

        write_section("folder", body, command="python bench/folder.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
