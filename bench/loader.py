"""Training data-loader throughput with the standard Cityscapes augmentation.

Generated 1024x2048 street scenes (Cityscapes layout, PNG) in a temporary
directory; random scale 0.5-2.0, crop 1024x1024 with ignore padding, flip,
colour jitter 0.25, class-uniform sampling 0.5 (tile 1024); a DataLoader with
2 workers and batch size 2, as a GPU trainer would drain it.

    python bench/loader.py [--images 16] [--epochs 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from datasets import build_dataset, build_sampler  # noqa: E402
from datasets.transforms import build_train_transform  # noqa: E402
from utils.results import write_section  # noqa: E402


def stage_times(ds, n: int = 6) -> dict[str, float]:
    """Single-process milliseconds per image for decoding and for the augmentation."""
    t = ds.transform
    read, aug = [], []
    for i in range(n):
        t0 = time.perf_counter()
        image, mask = ds.load(i % len(ds))
        t1 = time.perf_counter()
        t(image, mask)
        aug.append(time.perf_counter() - t1)
        read.append(t1 - t0)
    return {"decode": 1e3 * sum(read) / n, "augment": 1e3 * sum(aug) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        transform = build_train_transform((1024, 1024), 0.5, 2.0, color_aug=0.25)
        ds = build_dataset("synthetic", root=Path(tmp) / "synth", transform=transform,
                           num_train=args.images, num_val=1, size=(1024, 2048))
        t_gen = time.perf_counter() - t0
        sampler = build_sampler(ds, class_uniform_pct=0.5, class_uniform_tile=1024, cache_dir=tmp)
        stages = stage_times(ds)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler,
                                             num_workers=args.workers, persistent_workers=True,
                                             prefetch_factor=2)
        for _ in loader:  # warm-up epoch: worker start-up, page cache
            pass
        n, t0 = 0, time.perf_counter()
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch + 1)
            for batch in loader:
                n += batch["image"].shape[0]
        rate = n / (time.perf_counter() - t0)
    body = f"""{args.images} generated 1024x2048 PNG scenes (generation {t_gen:.0f} s), crop 1024x1024, scale
0.5-2.0, flip, colour jitter 0.25, class-uniform 0.5 (tile 1024), batch {args.batch_size},
{args.workers} DataLoader workers, {args.epochs} timed epochs after a warm-up epoch. Other load
on the 2 cores lowers this figure (load average above).

| measure | value |
| --- | ---: |
| **train images / s ({args.workers} workers)** | **{rate:.2f}** |
| PNG decode, image + label, 1 process | {stages['decode']:.0f} ms / image |
| augmentation + normalisation, 1 process | {stages['augment']:.0f} ms / image |"""
    print(body)
    write_section("loader", body, command="python bench/loader.py")


if __name__ == "__main__":
    main()
