"""Export a trained model to ONNX (dynamic height/width, metadata) and check it with onnxruntime.

    python export.py --arch ocrnet.HRNet_Mscale --snapshot best.pth --out model.onnx \\
        [--scales 0.5,1.0] [--flip] [--opset 17] [--check-images DIR]

The file is checked with ``onnx.checker``, its ops against TensorRT's ONNX parser, and its
logits against exact (float64) PyTorch ones on real images (``--check-images``; default: generated street
scenes): max |diff| and argmax agreement are printed per image. Only a file that passes is
written to ``--out``. Exit status: 0 written; 1 onnxruntime disagrees beyond ``--rtol`` /
``--min-agreement`` (one line, nothing written); 2 bad input. See deploy/onnx_export.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from deploy.onnx_export import DEFAULT_OPSET

    p = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    a = p.add_argument
    a("--arch", default=None, help="registered architecture; default: the one the checkpoint records")
    a("--snapshot", default=None, help="checkpoint (.pth, slim .safetensors, reference .pth); "
      "omit for random weights (then --arch and --num_classes)")
    a("--num_classes", type=int, default=None, help="for checkpoints that do not record it")
    a("--out", required=True, help="ONNX file to write, e.g. model.onnx")
    a("--scales", "--n_scales", dest="scales", default=None,
      help="scales in the graph, e.g. 0.5,1.0 (must include 1.0); default: the scales the checkpoint was "
           "validated with, else 0.5,1.0 for multi-scale models and 1.0 for single-scale ones")
    a("--flip", "--do_flip", dest="flip", action="store_true",
      help="average with the mirrored image inside the graph (2x the work)")
    a("--trust_checkpoint", action="store_true", help="unpickle --snapshot fully (runs code from the file; "
      "trusted files only)")
    a("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}: TensorRT 8.5+)")
    a("--check-images", "--check_images", dest="check_images", default=None,
      help="folder of images to compare onnxruntime with PyTorch on (default: generated scenes)")
    a("--check-count", "--check_count", dest="check_count", type=int, default=4, help="images checked")
    a("--check-short-side", "--check_short_side", dest="check_short_side", type=int, default=256,
      help="resize checked images' shorter side to this (0: as they are)")
    a("--rtol", type=float, default=1e-3, help="allowed max |diff| as a fraction of max |logit| (widened to 4x PyTorch "
      "float32's own error where this CPU's kernels round more; see deploy/onnx_export.py)")
    a("--min-agreement", "--min_agreement", dest="min_agreement", type=float, default=0.999,
      help="least share of pixels whose class (argmax) must agree")
    return p


def run(args: argparse.Namespace) -> int:
    from deploy import onnx_export as ox
    from deploy.meta import DeployError, inference_settings, load_model, parse_scales, seed_everything
    from inference.settings import is_multiscale
    from utils.io import atomic_path

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise DeployError(f"--out {args.out}: name the file *.onnx")
    if not args.snapshot and not args.arch:
        raise DeployError("pass --snapshot (a trained checkpoint), or --arch for random weights")
    seed_everything(0)
    model, info = load_model(args.snapshot, args.arch, args.num_classes, eval_scales=parse_scales(args.scales),
                             trust=args.trust_checkpoint)
    # the graph computes in float32 (deploy.quantize makes fp16 / int8 versions of it)
    settings = inference_settings(info, is_multiscale(model), args.scales, flip=args.flip, precision="fp32")
    spec = ox.ExportSpec(settings=settings.resolve("cpu"), opset=args.opset)
    images = (ox.folder_images(args.check_images, info, args.check_count, args.check_short_side or None)
              if args.check_images else ox.synthetic_images(info))
    print(f"export: {info.arch}, {info.num_classes} classes, opset {spec.opset} -> {out}", flush=True)
    print(f"export: inference: {spec.settings.describe()}", flush=True)
    with atomic_path(out) as tmp:
        ox.export(model, info, tmp, spec)
        reference = ox.LogitsModel(model, spec.settings.scales, spec.settings.flip)  # original model (float64)
        rows = ox.compare(ox.session(tmp), reference, images)
        for r in rows:
            print(f"  {r.name} {r.size[0]}x{r.size[1]}: max |diff| {r.max_abs_diff:.3g} from float64 PyTorch "
                  f"(PyTorch float32: {r.torch_fp32_diff:.3g}; max |logit| {r.max_abs_ref:.3g}), "
                  f"argmax agreement {r.argmax_agreement:.4%}")
        problem = ox.judge(rows, args.rtol, args.min_agreement)
        if problem:
            print(f"export.py: error: {problem}; nothing written to {out}", file=sys.stderr)
            raise SystemExit(1)
    print(f"export: wrote {out} ({out.stat().st_size / 2**20:.1f} MiB); onnx.checker and onnxruntime agree")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from utils.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("export.py", lambda: run(build_parser().parse_args(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
