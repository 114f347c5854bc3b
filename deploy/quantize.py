"""int8 and fp16 versions of an exported model, with mIoU and latency side by side.

    python -m deploy.quantize --onnx model.onnx --calib DIR --dataset cityscapes --split val \\
        [--dataset_root ROOT] [--val-count 50] [--short-side 512] [--out-dir DIR]

- int8: onnxruntime static quantisation calibrated on the images of ``--calib`` (MinMax),
  QDQ format with symmetric int8 activations and per-channel symmetric int8 weights: the
  explicit-quantisation form TensorRT builds int8 engines from (``trtexec --int8``), which
  onnxruntime's CPU provider also runs.
- fp16: ``onnxconverter_common.float16`` (float32 inputs and outputs kept, casts inside).
- Report: mIoU on ``--split`` of ``--dataset`` (labels needed) and batch-1 latency (median,
  p90) on this machine for fp32 / fp16 / int8, the mIoU loss against fp32 stated, written to
  ``<out-dir>/quantize_report.json`` and printed as a table. CPU latency says little about a
  GPU: fp16 on onnxruntime's CPU provider is usually slower than fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy.meta import DeployError, ModelInfo
from deploy.onnx_export import INPUT, OUTPUT, folder_images, read_metadata, session
from inference.defaults import SIZE_DIVISOR

PRECISIONS = ("fp32", "fp16", "int8")


def info_from_onnx(path: str | Path) -> ModelInfo:
    """Classes and preprocessing from an exported file's metadata (export.py writes them)."""
    meta = read_metadata(path)
    try:
        bands = json.loads(meta["bands"])
        return ModelInfo(meta["arch"], int(meta["num_classes"]), tuple(json.loads(meta["class_names"])),
                         tuple(tuple(c) for c in json.loads(meta["palette"])), tuple(json.loads(meta["mean"])),
                         tuple(json.loads(meta["std"])), tuple(bands) if bands else None,
                         int(meta.get("ignore_index", 255)), meta.get("metadata_source", "onnx metadata"))
    except (KeyError, ValueError) as e:
        raise DeployError(f"--onnx {path}: no hmsa-seg metadata ({e}); export it with export.py") from e


def quantize_int8(src: Path, dst: Path, calib: Sequence[torch.Tensor]) -> Path:
    """Static QDQ int8 of ``src``, calibrated (MinMax) on the normalised tensors ``calib``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {INPUT: x[None].numpy()}

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize.") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # onnx shape inference + onnxruntime graph optimisation; the symbolic pass does not
        # follow the dynamic multi-scale sizes, and the sizes need no static shapes here
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """float16 weights and activations inside; float32 ``image`` in and ``logits`` out."""
    import onnx
    from onnxconverter_common import float16

    proto = onnx.load(str(src))
    keep = shape_nodes(proto.graph) | {n.name for n in proto.graph.node if n.op_type in float16.DEFAULT_OP_BLOCK_LIST}
    with warnings.catch_warnings():  # one warning per tiny weight clamped to fp16's range
        warnings.simplefilter("ignore", UserWarning)
        proto = float16.convert_float_to_float16(proto, keep_io_types=True, node_block_list=sorted(keep))
    onnx.save(proto, str(dst))
    return dst


def carry_metadata(src: Path, dst: Path, precision: str) -> None:
    """``src``'s metadata (classes, mean/std, the inference settings) in ``dst``, with its precision."""
    import onnx

    meta = read_metadata(src)
    meta["precision"] = precision
    if "inference" in meta:
        meta["inference"] = json.dumps({**json.loads(meta["inference"]), "precision": precision,
                                        "precision_rule": f"deploy.quantize {precision}"})
    proto = onnx.load(str(dst))
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(dst))


def shape_nodes(graph: Any) -> set[str]:
    """Names of the nodes that compute sizes from ``Shape`` (e.g. ``floor(H * 0.5)`` of a scale).

    They stay float32: in fp16, 2047 * 0.5 is not exact and a resize would get the wrong size.
    """
    consts = {t.name for t in graph.initializer}
    derived: set[str] = set()
    names: set[str] = set()
    for node in graph.node:  # ONNX graphs are topologically sorted
        inputs = [i for i in node.input if i and i not in consts]
        if node.op_type == "Shape" or (node.op_type != "Resize" and inputs and all(i in derived for i in inputs)):
            derived.update(node.output)
            names.add(node.name)
        elif node.op_type == "Constant":
            consts.update(node.output)
    return names


def latency_ms(run: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median and 90th percentile of ``repeats`` timed calls after ``warmup`` untimed ones, ms."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]


@dataclass
class Row:
    precision: str
    file: str
    mib: float
    miou: float
    miou_loss_points: float
    median_ms: float
    p90_ms: float
    input_size: tuple[int, int]


def evaluate(sess: Any, samples: Sequence[tuple[torch.Tensor, np.ndarray]], info: ModelInfo) -> float:
    """mIoU of ``sess`` on ``(normalised image, train-id mask)`` pairs; logits resized to the mask."""
    from network.ops import resize_to
    from utils.metrics import ConfusionMatrix

    cm = ConfusionMatrix(info.num_classes, info.ignore_index)
    for x, mask in samples:
        logits = torch.from_numpy(sess.run([OUTPUT], {INPUT: x[None].numpy()})[0]).float()
        pred = resize_to(logits, mask.shape, False).argmax(1)[0]
        cm.update(torch.from_numpy(mask.astype(np.int64)), pred)
    return float(cm.compute()["miou"])


def val_samples(dataset: str, root: str | None, split: str, count: int, info: ModelInfo,
                short_side: int | None) -> list[tuple[torch.Tensor, np.ndarray]]:
    """The first ``count`` labelled images of a split, normalised with the model's mean/std."""
    from datasets import build_dataset
    from datasets.folder import inference_size, to_model_input

    ds = build_dataset(dataset, root=root, split=split)
    out = []
    for i in range(min(count, len(ds))):
        rgb, mask = ds.load(i)
        if mask is None:
            raise DeployError(f"--dataset {dataset} --split {split} has no labels: choose a labelled split")
        size = inference_size(rgb.shape[0], rgb.shape[1], short_side, SIZE_DIVISOR)
        out.append((to_model_input(rgb, size, info.mean, info.std), mask))
    return out


def build_variants(src: Path, out_dir: Path, precisions: Sequence[str], calib: Sequence[torch.Tensor]) -> dict:
    """``{precision: path}``: the fp32 file itself, ``<stem>.fp16.onnx``, ``<stem>.int8.onnx``."""
    from utils.io import atomic_path

    out: dict[str, Path] = {}
    for p in precisions:
        if p == "fp32":
            out[p] = src
            continue
        dst = out_dir / f"{src.stem}.{p}.onnx"
        print(f"quantize: {p} -> {dst}" + (f" (calibrating on {len(calib)} images)" if p == "int8" else ""),
              flush=True)
        with atomic_path(dst) as tmp:
            (quantize_int8(src, tmp, calib) if p == "int8" else convert_fp16(src, tmp))
            carry_metadata(src, tmp, p)
        out[p] = dst
    return out


def measure(variants: dict, samples: Sequence[tuple[torch.Tensor, np.ndarray]], info: ModelInfo,
            repeats: int, threads: int | None) -> list[Row]:
    """mIoU and latency (on the first sample's size) of each variant; loss against fp32."""
    rows = []
    for precision, path in variants.items():
        sess = session(path, threads)
        x = samples[0][0][None].numpy()
        med, p90 = latency_ms(partial(sess.run, [OUTPUT], {INPUT: x}), repeats)
        rows.append(Row(precision, str(path), Path(path).stat().st_size / 2**20, evaluate(sess, samples, info),
                        0.0, med, p90, tuple(x.shape[-2:])))
        print(f"quantize: {precision}: mIoU {rows[-1].miou:.4f}, {med:.1f} ms median", flush=True)
    base = next((r.miou for r in rows if r.precision == "fp32"), None)
    for r in rows:
        r.miou_loss_points = 100.0 * (base - r.miou) if base is not None else float("nan")
    return rows


def table(rows: Sequence[Row]) -> str:
    lines = ["| precision | file MiB | mIoU | mIoU loss vs fp32 (points) | median ms | p90 ms |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.precision} | {r.mib:.1f} | {r.miou:.4f} | {round(r.miou_loss_points, 2) + 0.0:+.2f} | "
              f"{r.median_ms:.1f} | {r.p90_ms:.1f} |" for r in rows]  # + 0.0: no "-0.00"
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.quantize", description=__doc__.split("\n")[0],
                                allow_abbrev=False)
    a = p.add_argument
    a("--onnx", required=True, help="fp32 file written by export.py")
    a("--calib", required=True, help="folder of images to calibrate int8 on (a few dozen representative ones)")
    a("--calib-count", "--calib_count", dest="calib_count", type=int, default=32)
    a("--dataset", required=True, help="labelled dataset for the mIoU (e.g. cityscapes, synthetic)")
    a("--dataset_root", "--dataset-root", dest="dataset_root", default=None)
    a("--split", default="val")
    a("--val-count", "--val_count", dest="val_count", type=int, default=50, help="images of the split evaluated")
    a("--short-side", "--short_side", dest="short_side", type=int, default=None,
      help="resize images' shorter side to this (default: as they are, rounded to /32)")
    a("--precisions", default=",".join(PRECISIONS), help=f"subset of {','.join(PRECISIONS)}")
    a("--repeats", type=int, default=10, help="timed runs per precision")
    a("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    a("--out-dir", "--out_dir", dest="out_dir", default=None, help="default: the --onnx file's folder")
    a("--results-section", "--results_section", dest="results_section", default=None,
      help="also write the table as this section of bench/RESULTS.md (with the command and machine)")
    return p


def write_results(section: str, report: dict, rows: Sequence[Row], argv: Sequence[str]) -> None:
    """The report as section ``section`` of bench/RESULTS.md (utils.results: command, machine, load)."""
    from utils.results import write_section

    meta = read_metadata(report["onnx"])
    body = (f"`{report['arch']}` exported with scales {meta.get('scales')} and flip {meta.get('flip')}; mIoU on "
            f"{report['images']} images of `{report['dataset']}/{report['split']}`, int8 calibrated on "
            f"{report['calibration_images']} images; latency batch 1 at {rows[0].input_size[0]}x"
            f"{rows[0].input_size[1]} on onnxruntime's CPU provider, {report['threads']} thread(s), 1-minute "
            f"load average {report['load_average_1min']:.1f} at the end (shared machine: times are inflated "
            "and noisy; fp32 in the same run is the baseline). mIoU loss = fp32 mIoU - mIoU, in points.\n\n"
            + table(rows))
    write_section(section, body, command="python -m deploy.quantize " + " ".join(argv))


def settings_of(path: Path, short_side: int | None) -> dict[str, Any]:
    """The inference settings an exported file was made with (its metadata), with the short side the
    evaluation here resized to; older files without the record: their scales and flip."""
    meta = read_metadata(path)
    record = json.loads(meta["inference"]) if "inference" in meta else {
        "scales": json.loads(meta.get("scales", "[1.0]")), "flip": json.loads(meta.get("flip", "false"))}
    return {**record, "short_side": short_side or "original"}


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from utils.io import atomic_write_json

    src = Path(args.onnx)
    if not src.is_file():
        raise DeployError(f"--onnx {args.onnx} does not exist; write it with export.py")
    precisions = [p for p in args.precisions.split(",") if p]
    if not precisions or set(precisions) - set(PRECISIONS):
        raise DeployError(f"--precisions {args.precisions}: choose from {','.join(PRECISIONS)}")
    info = info_from_onnx(src)
    out_dir = Path(args.out_dir) if args.out_dir else src.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = settings_of(src, args.short_side)
    print(f"quantize: inference: scales {recorded['scales']}, flip {recorded['flip']} (in the graph), short side "
          f"{recorded['short_side']}, mean {list(info.mean)} std {list(info.std)}", flush=True)
    calib = [x for _, x in folder_images(args.calib, info, args.calib_count, args.short_side)]
    samples = val_samples(args.dataset, args.dataset_root, args.split, args.val_count, info, args.short_side)
    rows = measure(build_variants(src, out_dir, precisions, calib), samples, info, args.repeats, args.threads)
    report = {"onnx": str(src), "arch": info.arch, "inference": recorded,
              "dataset": args.dataset, "split": args.split,
              "images": len(samples), "calibration_images": len(calib), "device": "cpu (onnxruntime)",
              "threads": args.threads or os.cpu_count(), "load_average_1min": os.getloadavg()[0],
              "rows": [asdict(r) for r in rows]}
    atomic_write_json(out_dir / "quantize_report.json", report)
    print(table(rows))
    print(f"quantize: mIoU on {len(samples)} images of {args.dataset}/{args.split}; loss = fp32 mIoU - mIoU, "
          f"in points; report {out_dir / 'quantize_report.json'}")
    if args.results_section:
        write_results(args.results_section, report, rows, argv)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from utils.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("deploy.quantize", lambda: run(build_parser().parse_args(argv), argv), argv)


if __name__ == "__main__":
    sys.exit(main())
