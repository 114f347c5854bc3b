"""predict.py on generated trees: sharding, resume, failures, output sizes, the command line."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from predict import (
    EXIT_TOO_MANY_FAILURES,
    PredictError,
    PredictOptions,
    Shard,
    SizeBuckets,
    main,
    predict_folder,
    resolve_shard,
)

NUM_CLASSES = 5


class CountingSeg(nn.Module):
    """A 3x3 conv segmenter that counts the images it is run on (to check exactly-once)."""

    arch = "test.CountingSeg"
    multiscale = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
        self.num_classes = NUM_CLASSES
        self.counter = _SharedCount([0])

    @property
    def seen(self) -> int:
        return self.counter[0]

    @seen.setter
    def seen(self, value: int) -> None:
        self.counter[0] = value

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen += x.shape[0]
        return {"pred": self.conv(x)}


class _SharedCount(list):
    """predict_folder runs an inference-prepared deep copy of the model: the copy counts here too."""

    def __deepcopy__(self, memo: dict) -> _SharedCount:
        return self


SIZES = [(48, 64), (64, 48), (40, 90), (37, 51)]


def make_tree(root: Path, per_dir: int = 3, dirs: tuple[str, ...] = ("10", "11", "12")) -> list[str]:
    rng = np.random.default_rng(0)
    rels = []
    for d in dirs:
        for i in range(per_dir):
            h, w = SIZES[(i + len(rels)) % len(SIZES)]
            rel = f"{d}/img{i}.{'png' if i % 2 else 'jpg'}"
            (root / d).mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)  # smooth: regions, not noise
            assert cv2.imwrite(str(root / rel), cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR))
            rels.append(rel)
    return sorted(rels)


def opts_for(src: Path, out: Path, **kw) -> PredictOptions:
    base = dict(infer_short_side=32, size_divisor=8, batch_size=2, workers=0, progress=False)
    base.update(kw)
    return PredictOptions(eval_folder=str(src), result_dir=str(out), **base)


def read_label(path: Path) -> np.ndarray:
    """A label PNG's class ids (palette PNGs: OpenCV would expand them to the palette's colours)."""
    from PIL import Image

    return np.asarray(Image.open(path))


def labels(out: Path) -> list[str]:
    return sorted(p.relative_to(out / "label").as_posix() for p in (out / "label").rglob("*.png"))


def test_slurm_array_and_ranks_cover_every_image_exactly_once(tmp_path: Path) -> None:
    rels = make_tree(tmp_path / "in")
    model, total = CountingSeg(), 0
    # an array --array=3-5 (three tasks), each with two torchrun ranks: six shards
    for task in (3, 4, 5):
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "5"}
        for rank in (0, 1):
            sh = resolve_shard(None, env, rank=rank, world=2)
            s = predict_folder(model, opts_for(tmp_path / "in", tmp_path / "out"), shard_=sh)
            assert s.skipped == 0 and s.failed == 0  # no shard found another's work
            total += s.done
    assert model.seen == total == len(rels)
    assert labels(tmp_path / "out") == [r.rsplit(".", 1)[0] + ".png" for r in rels]


def test_resolve_shard_sources() -> None:
    assert resolve_shard("2/5", {}) == Shard(2, 5, "--shard")
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2",
           "SLURM_ARRAY_TASK_COUNT": "5"}
    assert resolve_shard(None, env) == Shard(3, 5, "slurm-array")
    # a task of a `python -m sbatch` sweep array is one run of the sweep, not a data shard
    assert resolve_shard(None, {**env, "HMSA_SWEEP_RUN": "run_a"}) == Shard(0, 1)
    assert resolve_shard("1/4", {"RANK": "1", "WORLD_SIZE": "2"}).index == 3
    with pytest.raises(PredictError, match="0 <= INDEX"):
        resolve_shard("4/4", {})
    with pytest.raises(PredictError, match="contiguous"):  # --array=1,5,7
        resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1",
                             "SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_COUNT": "3"})


def test_rerun_skips_everything_and_deleted_output_is_regenerated_alone(tmp_path: Path) -> None:
    rels = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    opts = opts_for(tmp_path / "in", out, probs=True, overlay=True)
    first = predict_folder(CountingSeg(), opts)
    assert first.done == len(rels)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent not in (out, out / "reports")}

    model = CountingSeg()
    again = predict_folder(model, opts)
    assert (again.done, again.skipped, model.seen) == (0, len(rels), 0)

    victim = out / "color" / "11" / "img1.png"
    victim.unlink()
    model = CountingSeg()
    third = predict_folder(model, opts)
    assert (third.done, third.skipped, model.seen) == (1, len(rels) - 1, 1)
    assert victim.exists()
    unchanged = [p for p, t in mtimes.items() if p.exists() and p.stat().st_mtime_ns == t]
    changed = sorted(set(mtimes) - set(unchanged))
    assert all("11/img1." in str(p) for p in changed)  # only that image's outputs were rewritten
    assert not list(out.rglob(".*.tmp*"))  # no temporary files left behind


def test_outputs_have_original_sizes_and_consistent_content(tmp_path: Path) -> None:
    rels = make_tree(tmp_path / "in", per_dir=4, dirs=("a",))
    out = tmp_path / "out"
    predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, probs=True, overlay=True))
    for rel in rels:
        h, w = cv2.imread(str(tmp_path / "in" / rel)).shape[:2]
        stem = rel.rsplit(".", 1)[0]
        label = read_label(out / "label" / f"{stem}.png")
        color = cv2.imread(str(out / "color" / f"{stem}.png"))
        overlay = cv2.imread(str(out / "overlay" / f"{stem}.jpg"))
        prob = np.load(out / "prob" / f"{stem}.npz")["prob"]
        assert label.shape == (h, w) and label.dtype == np.uint8 and label.max() < NUM_CLASSES
        assert color.shape == overlay.shape == (h, w, 3)
        assert prob.shape == (NUM_CLASSES, h, w) and prob.dtype == np.uint8
        assert abs(prob.sum(0).astype(int) - 255).max() <= NUM_CLASSES  # quantised probabilities
        agree = (prob.argmax(0) == label).mean()
        assert agree > 0.9  # label (nearest) and probabilities (bilinear) come from the same logits


def test_corrupt_image_is_reported_and_the_rest_complete(tmp_path: Path) -> None:
    rels = make_tree(tmp_path / "in")
    good = (tmp_path / "in" / rels[0]).read_bytes()
    (tmp_path / "in" / "11" / "trunc.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "in" / "12" / "junk.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    s = predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, workers=2, max_fail_ratio=0.5))
    assert (s.done, s.failed, s.ok) == (len(rels), 2, True)
    with open(out / "failures.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"]: r["reason"].split(":")[0] for r in rows} == {"11/trunc.jpg": "corrupt",
                                                                   "12/junk.png": "unreadable"}
    assert len(labels(out)) == len(rels)
    # a tighter threshold makes the same run fail
    strict = predict_folder(CountingSeg(), replace(opts_for(tmp_path / "in", out), max_fail_ratio=0.1))
    assert strict.failed == 2 and not strict.ok


def test_manifest_refuses_mixing_settings(tmp_path: Path) -> None:
    make_tree(tmp_path / "in", per_dir=1)
    opts = opts_for(tmp_path / "in", tmp_path / "out")
    predict_folder(CountingSeg(), opts)
    with pytest.raises(PredictError, match="short_side: 32 there, 64 now.*--infer_short_side"):
        predict_folder(CountingSeg(), replace(opts, infer_short_side=64))
    s = predict_folder(CountingSeg(), replace(opts, infer_short_side=64, overwrite=True))
    assert s.done == 3 and s.skipped == 0


def test_manifest_and_log_carry_the_resolved_settings_and_a_resume_with_others_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """predict_manifest.json recorded "scales": null and the log named no scales, so a folder started
    with one default and resumed with another mixed outputs unnoticed."""
    import json

    make_tree(tmp_path / "in", per_dir=1)
    opts = opts_for(tmp_path / "in", tmp_path / "out", amp_dtype="fp32")
    predict_folder(CountingSeg(), opts)
    recorded = json.loads((tmp_path / "out" / "predict_manifest.json").read_text())["inference"]
    assert recorded["scales"] == [1.0] and recorded["scales_from"] == "default" and recorded["precision"] == "fp32"
    assert recorded["short_side"] == 32 and None not in recorded.values()
    assert "predict: inference: scales 1 (default), flip off, fp32 (--amp_dtype fp32)" in capsys.readouterr().err
    with pytest.raises(PredictError, match=r"scales: 1 there, 0.5,1 now\): rerun with the folder's --n_scales"):
        predict_folder(CountingSeg(), replace(opts, scales=(0.5, 1.0)))
    with pytest.raises(PredictError, match="precision: fp32 there, bf16 now.*--amp_dtype"):
        predict_folder(CountingSeg(), replace(opts, amp_dtype="bf16"))
    assert predict_folder(CountingSeg(), opts).skipped == 3  # the same settings resume


def test_size_buckets_batch_equal_sizes_and_bound_memory() -> None:
    def sample(h: int) -> dict:
        return {"image": torch.zeros(3, h, 8)}

    b = SizeBuckets(batch_size=2, max_pending=3)
    out = [b.add(sample(h)) for h in (8, 16, 8, 24, 32, 40)]
    batches = [x for o in out for x in o] + b.flush()
    assert [len(x) for x in batches][0] == 2  # the two 8-high images went together
    assert all(len({tuple(s["image"].shape) for s in x}) == 1 for x in batches)
    assert sum(len(x) for x in batches) == 6 and b.pending == 0


def test_command_line_with_registered_tiny_model(tmp_path: Path) -> None:
    """End to end through main(): the real ``ocrnet.HRNet_w18s`` and network.predict with flip."""
    make_tree(tmp_path / "in", per_dir=1, dirs=("939", "940", "941"))
    (tmp_path / "in" / "940" / "bad.jpg").write_bytes(b"x")
    argv = ["--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path / "in"), "--result_dir",
            str(tmp_path / "out"), "--infer_short_side", "32", "--workers", "0", "--no_progress",
            "--do_flip", "--subdirs", "939-940"]
    assert main(argv) == EXIT_TOO_MANY_FAILURES  # 1 of 3 failed > 1 %
    assert main(argv + ["--max_fail_ratio", "0.5"]) == 0  # resumed: only the bad one retried
    assert labels(tmp_path / "out") == ["939/img0.png", "940/img0.png"]
    assert main(argv + ["--n_scales", "0.5,1.0"]) == 2  # other settings into the same folder


def test_dump_folder_yaml_expands_to_one_valid_command_per_shard(repo_root: Path) -> None:
    yaml = pytest.importorskip("yaml")
    from predict import build_parser
    from sbatch.expand import expand_experiment

    exp = yaml.safe_load((repo_root / "scripts" / "dump_folder.yml").read_text())
    runs = expand_experiment(exp, exp_name="dump_folder", logroot="/tmp/logs", slug=lambda: "x")
    shards = [build_parser().parse_args(list(r.argv[2:])).shard for r in runs]
    assert shards == ["0/4", "1/4", "2/4", "3/4"]
    assert all(r.argv[:2] == ("python", "predict.py") for r in runs)
    assert len({build_parser().parse_args(list(r.argv[2:])).result_dir for r in runs}) == 1


def test_result_dir_inside_eval_folder_is_not_read_back_as_input(tmp_path: Path) -> None:
    rels = make_tree(tmp_path, per_dir=2, dirs=("a",))
    opts = opts_for(tmp_path, tmp_path / "pred")
    assert predict_folder(CountingSeg(), opts).done == len(rels)
    again = predict_folder(CountingSeg(), opts)
    assert (again.total, again.skipped) == (len(rels), len(rels))
    with pytest.raises(PredictError, match="another folder"):
        predict_folder(CountingSeg(), opts_for(tmp_path, tmp_path))


class CrashingSeg(CountingSeg):
    """Dies on its third call, like a job killed mid-run."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.seen >= 4:
            raise RuntimeError("simulated crash")
        return super().forward(x)


def test_rerun_after_a_crash_finishes_only_what_is_missing(tmp_path: Path) -> None:
    rels = make_tree(tmp_path / "in", per_dir=4, dirs=("a", "b"))
    opts = opts_for(tmp_path / "in", tmp_path / "out", batch_size=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_folder(CrashingSeg(), opts)
    finished = labels(tmp_path / "out")
    assert 0 < len(finished) < len(rels)
    assert (tmp_path / "out" / "summary.json").exists()  # reports are written on the way out
    model = CountingSeg()
    s = predict_folder(model, opts)
    assert (s.skipped, s.done, model.seen) == (len(finished), len(rels) - len(finished), len(rels) - len(finished))
    assert len(labels(tmp_path / "out")) == len(rels)
    assert not list((tmp_path / "out").rglob(".*.tmp*"))


@pytest.mark.timeout(60)
def test_workers_after_parent_used_opencv_threads(tmp_path: Path) -> None:
    # Regression: forked DataLoader workers hung in cv2.setNumThreads once the parent process
    # had run OpenCV's pthreads pool (as any earlier test, or a training loop, does).
    big = np.zeros((1500, 1500, 3), np.uint8)
    for _ in range(3):
        cv2.GaussianBlur(cv2.resize(big, (1400, 1400)), (5, 5), 0)
    rels = make_tree(tmp_path / "in", per_dir=2, dirs=("a",))
    s = predict_folder(CountingSeg(), opts_for(tmp_path / "in", tmp_path / "out", workers=2))
    assert s.done == len(rels) and s.failed == 0


def test_command_line_is_generated_from_the_options_with_help_and_the_old_flag_names() -> None:
    from predict import build_parser

    flags = {s: a for a in build_parser()._actions for s in a.option_strings if s not in ("-h", "--help")}
    old = ("arch snapshot eval_folder result_dir dataset num_classes eval subdirs shard infer_short_side "
           "size_divisor batch_size bs_val workers num_workers n_scales do_flip no_amp amp_dtype fp16 no_color "
           "overlay probs no_geotiff bands band_mean band_std tile overlap max_pixels max_fail_ratio overwrite "
           "no_progress device list_missing claim_timeout eval_memory_gb compile image_mean image_std "
           "amp_opt_level trust_checkpoint")  # the last two: the same opt-ins as train.py
    assert set(flags) == {f"--{n}" for n in old.split()}
    assert all(a.help for a in flags.values())
