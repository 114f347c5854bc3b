"""Slim a training checkpoint to shareable weights: ``.safetensors`` + ``.sha256``.

    python -m deploy.slim --snapshot logs/exp/run/best.pth --out best.safetensors [--arch A]

Keeps the model tensors and ``arch``, ``num_classes``, ``dataset_info`` (plus epoch, iteration,
best mIoU) in the safetensors header; drops optimizer, scheduler, RNG and sampler state. Every
``--snapshot`` flag accepts the result; the sha256 beside it is checked at load.
Exit status 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.slim", description=__doc__.split("\n")[0],
                                allow_abbrev=False)
    p.add_argument("--snapshot", required=True, help="training checkpoint (.pth) or reference .pth")
    p.add_argument("--out", required=True, help="output file, e.g. best.safetensors")
    p.add_argument("--arch", default=None, help="architecture, for checkpoints that do not record it")
    p.add_argument("--num_classes", type=int, default=None, help="for checkpoints that do not record it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from utils.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("deploy.slim", lambda: run(build_parser().parse_args(argv)), argv)


def run(args: argparse.Namespace) -> int:
    from deploy.meta import DeployError, model_info
    from network.checkpoint import read_checkpoint
    from network.weights import sha256_path, slim_checkpoint, slimmed_size

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise DeployError(f"--out {args.out}: name the file *.safetensors (loaders pick the format by suffix)")
    ckpt = read_checkpoint(args.snapshot)
    info = model_info(ckpt, args.arch, args.num_classes)  # refuses a file that cannot be rebuilt
    ckpt = {**ckpt, "arch": info.arch, "num_classes": info.num_classes}
    slim_checkpoint(ckpt, out)
    before = Path(args.snapshot).stat().st_size
    print(f"slim: {args.snapshot} ({before / 2**20:.1f} MiB) -> {out} ({out.stat().st_size / 2**20:.1f} MiB, "
          f"{slimmed_size(ckpt) / 2**20:.1f} MiB of weights), {info.arch}, {info.num_classes} classes "
          f"({info.source}); digest in {sha256_path(out).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
