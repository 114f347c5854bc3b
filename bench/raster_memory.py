"""Peak memory of training on a large multi-band raster: windows keep it flat.

Generates a 5000x5000 6-band uint16 GeoTIFF with its class mask (and a small validation pair),
then measures, each in its own process, the peak resident set size (``ru_maxrss``) of:
reading the whole raster at once (the baseline a naive loader pays), ``python -m datasets.check
--write_stats`` on it (strip reads), and a few training iterations of ``train.py --dataset custom``
on it and on a 1000x1000 raster of the same kind (same crop: the two should match).

    python bench/raster_memory.py [--size 5000] [--iters 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datasets.raster_pairs import GDAL_CACHE_MB  # noqa: E402
from utils.results import write_section  # noqa: E402

# runs the command given as arguments and prints the peak RSS (KiB on Linux) of it and its children
_WRAP = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")
_IMPORTS = "import torch, cv2, rasterio, timm; print('imported')"
_READ_ALL = ("import sys, rasterio; src = rasterio.open(sys.argv[1]); a = src.read(); "
             "print('read', a.shape, a.dtype, a.nbytes >> 20, 'MiB')")


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(peak RSS MiB, wall seconds, exit status) of ``cmd`` in a fresh process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _WRAP, sys.executable, *cmd], cwd=REPO, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK_KIB")]
    if not line:
        raise RuntimeError(f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    _, kib, rc = line[-1].split()
    if int(rc) != 0:
        raise RuntimeError(f"{cmd} exited {rc}:\n{out.stderr[-3000:]}")
    return int(kib) / 1024, wall, int(rc)


def make_dataset(root: Path, size: int, bands: int) -> Path:
    from datasets.examples import write_raster_pair, yaml_classes
    from utils.io import atomic_write_text

    for split, hw, seed in (("train", (size, size), 0), ("val", (256, 256), 1)):
        write_raster_pair(root / "images" / split / "scene.tif", root / "labels" / split / "scene.tif", hw, bands, seed)
    atomic_write_text(root / "dataset.yaml", yaml_classes("ids") + "splits: {train: train, val: val}\n"
                      f"raster:\n  bands: {list(range(bands))}\n  tile: 512\n")
    return root


def train_cmd(root: Path, out: Path, iters: int, crop: int) -> list[str]:
    return ["train.py", "--dataset", "custom", "--dataset_root", str(root), "--arch", "ocrnet.HRNet_w18s",
            "--crop_size", str(crop), "--bs_trn", "2", "--max_iter", str(iters), "--num_workers", "0",
            "--class_uniform_pct", "0.5", "--class_uniform_tile", "512", "--centroid_cache", str(out / "cache"),
            "--result_dir", str(out / "run"), "--dump_num_images", "0", "--device", "cpu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--bands", type=int, default=6)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        big = make_dataset(Path(tmp) / "big", args.size, args.bands)
        small = make_dataset(Path(tmp) / "small", args.small, args.bands)
        gen = time.perf_counter() - t0
        image = big / "images" / "train" / "scene.tif"
        raw_mib = args.size * args.size * args.bands * 2 / 2**20
        rows.append(("import torch, OpenCV, rasterio, timm (fixed cost)", *measure(["-c", _IMPORTS], env)[:2]))
        rows.append(("read the whole raster (baseline)", *measure(["-c", _READ_ALL, str(image)], env)[:2]))
        check = ["-m", "datasets.check", "--write_stats", "--no_progress", "--dataset_root"]
        rows.append(("`datasets.check --write_stats` (strips)", *measure([*check, str(big)], env)[:2]))
        measure([*check, str(small)], env)
        for name, root in ((f"{args.size}x{args.size}", big), (f"{args.small}x{args.small}", small)):
            out = Path(tmp) / f"out_{root.name}"
            peak, wall, _ = measure(train_cmd(root, out, args.iters, args.crop), env)
            rows.append((f"train {args.iters} iterations on {name}", peak, wall))
    load = os.getloadavg()
    lines = [f"A {args.size}x{args.size}x{args.bands} uint16 GeoTIFF ({raw_mib:.0f} MiB of pixels; generated in "
             f"{gen:.0f} s), `ocrnet.HRNet_w18s`, crop {args.crop}, batch 2, class-uniform 0.5, 0 loader workers, "
             f"CPU. Peak RSS is `ru_maxrss` of the process (and its children). Training and the check cap "
             f"GDAL's block cache at {GDAL_CACHE_MB} MiB (`GDAL_CACHEMAX`, default 5% of RAM). Read the two training "
             "rows against each other: a raster 25x larger costs the same memory; a loader that read it whole "
             "would add the baseline's array (and its float32 copy) to the training row.", "",
             "| what | peak RSS (MiB) | wall (s) |", "|---|---:|---:|"]
    lines += [f"| {w} | {m:.0f} | {s:.1f} |" for w, m, s in rows]
    lines += ["", f"Load average after the runs: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min); "
              "the machine is shared, so wall times are indicative only. GPU: not measured (no GPU in this session)."]
    print("\n".join(lines))
    write_section("raster_memory", "\n".join(lines))


if __name__ == "__main__":
    main()
