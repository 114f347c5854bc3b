"""Issue 10, predict.py's faults: each test reproduces a reported failure of folder inference.

Symlink loops, 16-bit photos, a full disk, ranges sharing a result folder, SIGTERM, listing
what is missing, two processes on one folder, rasterio not installed, dangling symlinks.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from datasets.folder import FolderDataset, FolderError, discover_images, read_rgb
from predict import predict_folder
from tests.test_predict import CountingSeg, labels, make_tree, opts_for
from utils.errors import UserError
from utils.folderjob import Claims, Owner, part_suffix
from utils.signals import exit_on_signal

REPO = Path(__file__).resolve().parent.parent


def rows(path: Path) -> dict[str, str]:
    """``path -> reason`` of a failures CSV."""
    with open(path, newline="") as f:
        return {r["path"]: r["reason"] for r in csv.DictReader(f)}


def child_env() -> dict[str, str]:
    """The caller's environment without Slurm/torchrun variables that would shard the child's work."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HMSA_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    return env


# ---------------------------------------------------------------- 3: symlink loops


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loops", [1, 2])
def test_symlink_loops_visit_each_real_directory_once(tmp_path: Path, loops: int) -> None:
    rels = make_tree(tmp_path, per_dir=3, dirs=("a", "b", "c"))
    (tmp_path / "a" / "self").symlink_to("..")  # a -> root -> a -> ...
    if loops == 2:
        (tmp_path / "c" / "me").symlink_to(".")  # c -> c -> ...
        (tmp_path / "b" / "alias").symlink_to("../a")  # not a loop: a second way into a
    found = discover_images(tmp_path)
    assert len(found) == len(rels) == 9  # before: each file once per path through the loops
    assert len({os.path.realpath(tmp_path / f) for f in found}) == len(found)
    assert found == discover_images(tmp_path)  # the same order on every host and call


def test_each_real_file_once_under_its_real_path(tmp_path: Path) -> None:
    """A symlinked file was segmented twice, and a directory reached first through an alias (sorted
    before it) had its images written under the alias."""
    rels = make_tree(tmp_path / "in", per_dir=2, dirs=("b", "c"))
    (tmp_path / "in" / "b" / "again.jpg").symlink_to("img0.jpg")  # the same file twice in one folder
    (tmp_path / "in" / "a_alias").symlink_to("c")  # sorted (and walked) before c
    outside = tmp_path / "elsewhere"
    make_tree(outside, per_dir=1, dirs=("x",))
    (tmp_path / "in" / "linked").symlink_to(outside / "x")  # outside the tree: listed as the link
    found = discover_images(tmp_path / "in")
    assert found == sorted([*rels, "linked/img0.jpg"]), found
    model = CountingSeg()
    s = predict_folder(model, opts_for(tmp_path / "in", tmp_path / "out"))
    assert model.seen == s.done == len(rels) + 1
    assert labels(tmp_path / "out") == sorted(r.rsplit(".", 1)[0] + ".png" for r in [*rels, "linked/img0.jpg"])


# ---------------------------------------------------------------- 7: 16-bit photos


def test_16bit_grey_photo_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = np.tile(np.linspace(0, 65535, 64), (48, 1)).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), grey)
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    expected = np.round(grey / 257.0)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1  # before: 99% of pixels were 255
    assert (rgb == 255).mean() < 0.05


def test_16bit_rgb_photo_keeps_its_range_and_float_tiff_is_refused(tmp_path: Path) -> None:
    grad = np.tile(np.linspace(0, 60000, 64), (32, 1))
    bgr = np.dstack([grad, grad / 2, grad / 4]).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "c16.png"), bgr)
    rgb = read_rgb(tmp_path / "c16.png")
    assert np.abs(rgb[..., 2].astype(int) - np.round(bgr[..., 0] / 257.0)).max() <= 1
    assert cv2.imwrite(str(tmp_path / "f32.tif"), np.ones((8, 8), np.float32))
    record = FolderDataset(tmp_path, files=["f32.tif"])[0]
    assert record["error"].startswith("unsupported: 32-bit float")  # a reason, not a grey image


# ---------------------------------------------------------------- 10: disk full


def test_disk_full_keeps_the_failures_recorded_before_and_says_enospc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # A MOCK of a full disk (a real one cannot be filled safely in a test): once the first
    # output image is written, every further write raises ENOSPC as the kernel would.
    import utils.io

    make_tree(tmp_path / "in", per_dir=3, dirs=("a",))
    (tmp_path / "in" / "a" / "0bad.jpg").write_bytes(b"not a jpeg")  # sorted first: fails first
    real_write = utils.io.atomic_write_bytes
    state = {"full": False}

    def write(dest, data: bytes) -> None:
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
        real_write(dest, data)
        state["full"] = "/color/" in Path(dest).as_posix()

    monkeypatch.setattr(utils.io, "atomic_write_bytes", write)
    out = tmp_path / "out"
    with pytest.raises(OSError) as raised:
        predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, batch_size=1))
    assert raised.value.errno == errno.ENOSPC  # the run stops: every later image would fail too
    err = capsys.readouterr().err
    assert "disk full (ENOSPC)" in err and "Traceback" not in err
    assert "a/0bad.jpg" in err  # the failures also go to the log when no report can be written
    # before: every image was attempted, then writing failures.csv raised and no report existed
    assert list(rows(out / "reports" / "failures.csv")) == ["a/0bad.jpg"]
    assert list(rows(out / "failures.csv")) == ["a/0bad.jpg"]


KILLED_AFTER_FAILURES = """
import os, signal, sys
from predict import predict_folder
from tests.test_predict import CountingSeg, opts_for
class KillsItself(CountingSeg):  # the first image that decodes: SIGKILL, no `finally` runs
    def forward(self, x):
        os.kill(os.getpid(), signal.SIGKILL)
predict_folder(KillsItself(), opts_for(sys.argv[1], sys.argv[2], max_fail_ratio=1.0))
"""


@pytest.mark.slow  # a subprocess with 130 failures (100 rewrites of the reports)
def test_a_killed_run_loses_no_failure_row(tmp_path: Path) -> None:
    """Before: past the first 100 failures the report was rewritten only every 10 s, so a crash
    lost up to 10 s of failure rows (here rows 101..130)."""
    src, out = tmp_path / "in", tmp_path / "out"
    bad = [f"a/{i:03d}.jpg" for i in range(130)]
    for rel in bad:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"not a jpeg")
    make_tree(src, per_dir=1, dirs=("z",))  # decodes last: the model is run, and kills the process
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER_FAILURES, str(src), str(out)], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    from utils.folderjob import merged_failures

    assert sorted(merged_failures(out)) == bad  # every row, from the reports the killed run left
    listed = io.StringIO()
    assert predict.list_missing(opts_for(src, out), listed) == 1
    assert sorted(ln.split("\t")[1] for ln in listed.getvalue().splitlines() if ln.startswith("failed")) == bad
    assert "missing\tz/img0.jpg" in listed.getvalue()  # its claim died with it: not "claimed" by a dead pid
    # the next run folds the dead run's journal (and its own) into the part's CSV
    assert predict_folder(CountingSeg(), opts_for(src, out, max_fail_ratio=1.0)).failed == len(bad)
    assert not list((out / "reports").glob("failures@*.csv"))
    assert sorted(rows(out / "failures.csv")) == bad


def test_disk_full_exits_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    # MOCK again: the model is built, then predict_folder meets a full disk.
    make_tree(tmp_path / "in", per_dir=1, dirs=("a",))

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "label" / "x.png"))

    monkeypatch.setattr(predict, "predict_folder", full)
    code = predict.main(["--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path / "in"),
                         "--result_dir", str(tmp_path / "out"), "--no_progress", "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("predict.py: error: disk full (ENOSPC) writing")
    assert "free space" in err[-1]


# ---------------------------------------------------------------- 12: ranges into one folder


def test_ranges_keep_their_own_reports_and_a_merged_view(tmp_path: Path) -> None:
    make_tree(tmp_path / "in", per_dir=2, dirs=("939", "940"))
    (tmp_path / "in" / "939" / "bad.jpg").write_bytes(b"x")
    (tmp_path / "in" / "940" / "bad.jpg").write_bytes(b"y")
    out = tmp_path / "out"
    for subdirs in ("939", "940"):
        predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, subdirs=subdirs, max_fail_ratio=0.5))
    # before: the second range's failures.csv replaced the first's
    assert set(rows(out / "failures.csv")) == {"939/bad.jpg", "940/bad.jpg"}
    assert set(rows(out / "reports" / "failures_subdirs939.csv")) == {"939/bad.jpg"}
    assert set(rows(out / "reports" / "failures_subdirs940.csv")) == {"940/bad.jpg"}
    merged = json.loads((out / "summary.json").read_text())
    assert set(merged["parts"]) == {"_subdirs939", "_subdirs940"} and merged["ok"] is True
    assert merged["failed"] == 2
    # a failure fixed by a later run leaves both views
    cv2.imwrite(str(tmp_path / "in" / "939" / "bad.jpg"), np.zeros((40, 40, 3), np.uint8))
    predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, subdirs="939", max_fail_ratio=0.5))
    assert set(rows(out / "failures.csv")) == {"940/bad.jpg"}
    assert set(rows(out / "reports" / "failures_subdirs939.csv")) == set()


def test_part_names() -> None:
    assert part_suffix(None, "") == ""
    assert part_suffix("939-986", "_shard0001of0004") == "_subdirs939-986_shard0001of0004"
    assert part_suffix("a b/../c", "") == "_subdirsa+b+..+c"  # no path separators
    assert len(part_suffix(",".join(str(i) for i in range(100)), "")) < 80


# ---------------------------------------------------------------- 13: SIGTERM


class SignalledSeg(CountingSeg):
    """Receives a real stop signal after its second batch, as a preempted Slurm job does."""

    signum = signal.SIGTERM

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.seen >= 4:
            os.kill(os.getpid(), self.signum)
        return super().forward(x)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_records_an_interrupted_run_not_ok(tmp_path: Path, signum: int) -> None:
    """SIGUSR1 too: `python -m sbatch` jobs get it before their time limit; by default it killed
    predict.py outright (no report, pending writes lost) and the job was requeued mid-write."""
    rels = make_tree(tmp_path / "in", per_dir=4, dirs=("a", "b"))
    out = tmp_path / "out"
    seg = SignalledSeg()
    seg.signum = signum
    with pytest.raises(SystemExit) as stopped, exit_on_signal(predict.STOP_SIGNALS):  # what main() installs
        predict_folder(seg, opts_for(tmp_path / "in", out, batch_size=2))
    assert stopped.value.code == 128 + signum
    run = json.loads((out / "reports" / "summary.json").read_text())["runs"][-1]
    assert run["status"] == "interrupted" and run["ok"] is False  # before: "ok": true
    assert run["not_started"] == len(rels) - run["done"] - run["failed"] > 0
    merged = json.loads((out / "summary.json").read_text())
    assert merged["ok"] is False and merged["parts_not_ok"] == ["(all)"]
    assert not list((out / ".claims").glob("*.claim"))  # its claims are released on the way out
    s = predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, batch_size=2))
    assert s.ok and s.done + s.skipped == len(rels)
    assert json.loads((out / "summary.json").read_text())["ok"] is True


def test_main_in_process_puts_the_previous_sigterm_handler_back(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: predict.main() left its SIGTERM handler installed in the caller (tests, notebooks),
    so a later SIGTERM raised SystemExit in whatever ran next."""
    from datasets.info import DatasetInfo

    make_tree(tmp_path / "in", per_dir=2, dirs=("a",))
    sentinel = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        bad = ["--arch", "ocrnet.HRNet_w18s", "--snapshot", str(tmp_path / "missing.pth"),
               "--eval_folder", str(tmp_path / "in"), "--result_dir", str(tmp_path / "out0")]
        assert predict.main(bad) == 2  # fails after the handler is installed
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        monkeypatch.setattr(predict, "load_model",
                            lambda *_a, **_k: predict.LoadedModel(CountingSeg(), DatasetInfo.generic(5)))
        good = ["--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path / "in"),
                "--result_dir", str(tmp_path / "out1"), "--num_workers", "0", "--no_progress", "--device", "cpu"]
        assert predict.main(good) == 0 and len(labels(tmp_path / "out1")) == 2
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, sentinel)


def test_sigterm_ends_list_missing_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The program defers SIGTERM while importing; every path of main() must take it over, or a
    long --list_missing would ignore SIGTERM (here the previous handler is SIG_IGN, as a stand-in)."""
    import time

    def slow_listing(_opts: object) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
        return 0

    monkeypatch.setattr(predict, "list_missing", slow_listing)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(SystemExit) as stopped:
            predict.main(["--list_missing", "--eval_folder", str(tmp_path), "--result_dir", str(tmp_path / "o")])
        assert stopped.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_rerun_finished_within_the_same_second_is_the_parts_latest_run() -> None:
    """`updated` has one-second resolution: an interrupted run and its rerun finishing within one second
    left the merged summary "ok": false (test_sigterm_records_an_interrupted_run_not_ok was flaky)."""
    from utils.folderjob import part_status

    t = "2026-11-30T04:57:40"
    runs = [{"status": "interrupted", "ok": False, "updated": t, "host": "elsewhere"},
            {"status": "complete", "ok": True, "updated": t, "host": "elsewhere"}]
    assert part_status(runs)["ok"] is True
    assert part_status(runs[::-1])["latest"]["status"] == "interrupted"  # the list order decides a tie


# ---------------------------------------------------------------- 14: --list_missing


def test_list_missing_reads_folder_and_reports_without_a_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    make_tree(tmp_path / "in", per_dir=2, dirs=("a", "b"))
    (tmp_path / "in" / "a" / "bad.jpg").write_bytes(b"x")
    out = tmp_path / "out"
    predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, subdirs="a", max_fail_ratio=1.0))
    (out / "label" / "a" / "img0.png").unlink()
    capsys.readouterr()  # the run's own progress lines

    def no_model(*_args, **_kwargs):
        raise AssertionError("--list_missing must not build or load a model")

    monkeypatch.setattr(predict, "load_model", no_model)
    code = predict.main(["--list_missing", "--eval_folder", str(tmp_path / "in"), "--result_dir", str(out)])
    listed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert listed == [["failed", "a/bad.jpg", "unreadable: not a recognised image format"],
                      ["missing", "a/img0.jpg"], ["missing", "b/img0.jpg"], ["missing", "b/img1.png"]]
    code = predict.main(["--list_missing", "--eval_folder", str(tmp_path / "in"), "--result_dir", str(out),
                         "--subdirs", "b", "--shard", "1/2"])
    assert code == 1 and capsys.readouterr().out.splitlines() == ["missing\tb/img1.png"]


# ---------------------------------------------------------------- 15: two processes, one folder

WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import torch
    from predict import PredictOptions, predict_folder
    from tests.test_predict import CountingSeg

    class SlowSeg(CountingSeg):
        def forward(self, x):
            time.sleep(0.1 * x.shape[0])  # long enough for the two processes to overlap
            return super().forward(x)

    src, out, me, other = sys.argv[1:5]
    Path(me).touch()
    while not Path(other).exists():  # start together
        time.sleep(0.01)
    opts = PredictOptions(eval_folder=src, result_dir=out, infer_short_side=32, size_divisor=8,
                          batch_size=1, workers=int(sys.argv[5]), progress=False)
    model = SlowSeg()
    s = predict_folder(model, opts)
    print(json.dumps({"done": s.done, "elsewhere": s.elsewhere, "seen": model.seen, "ok": s.ok}))
""")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_on_one_folder_split_the_work(tmp_path: Path) -> None:
    rels = make_tree(tmp_path / "in", per_dir=10, dirs=("a", "b", "c"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "in"), str(out),
                               str(tmp_path / f"ready{i}"), str(tmp_path / f"ready{1 - i}"), str(i)],
                              cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in (0, 1)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=170)
        assert p.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    # before: each process segmented all 30 images
    assert sum(r["seen"] for r in results) == len(rels)
    assert sum(r["done"] for r in results) == len(rels)
    assert all(r["done"] > 0 and r["ok"] for r in results), results
    assert labels(out) == sorted(f.rsplit(".", 1)[0] + ".png" for f in rels)
    assert not list((out / ".claims").iterdir())
    part = json.loads((out / "reports" / "summary.json").read_text())
    assert len(part["runs"]) == 2 and json.loads((out / "summary.json").read_text())["ok"]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_claims_are_taken_over_and_live_ones_respected(tmp_path: Path) -> None:
    rels = make_tree(tmp_path / "in", per_dir=3, dirs=("a",))
    out = tmp_path / "out"
    stems = [r.rsplit(".", 1)[0] for r in rels]
    dead = Claims(out, Owner(Owner.this_process().host, dead_pid(), "old-run"), 3600)
    assert dead.claim(stems[0])  # a killed process on this host
    far = Claims(out, Owner("other-host.example", 1, "far-run"), 3600)
    assert far.claim(stems[1]) and far.claim(stems[2])  # another host, recently
    old = far.path(stems[2])
    os.utime(old, (old.stat().st_atime - 7200, old.stat().st_mtime - 7200))  # ... two hours ago
    s = predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, claim_timeout=3600))
    assert (s.done, s.elsewhere) == (2, 1)  # the fresh claim of the other host is left alone
    assert far.path(stems[1]).exists() and not far.path(stems[0]).exists()
    assert s.status == "complete" and s.not_started == 0


# ---------------------------------------------------------------- 17: no rasterio


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_photos_need_no_rasterio(tmp_path: Path) -> None:
    make_tree(tmp_path / "in", per_dir=1, dirs=("a",))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["rasterio"] = None  # as on a machine without the `geo` extra: import fails
        import predict
        sys.exit(predict.main(["--arch", "ocrnet.HRNet_w18s", "--eval_folder", {str(tmp_path / 'in')!r},
                               "--result_dir", {str(tmp_path / 'out')!r}, "--infer_short_side", "32",
                               "--workers", "0", "--no_progress"]))
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True,
                       text=True, timeout=110)
    assert p.returncode == 0, p.stderr[-2000:]  # before: ModuleNotFoundError after every image
    assert labels(tmp_path / "out") == ["a/img0.png"]


# ---------------------------------------------------------------- 18: small ones


def test_dangling_symlink_image_is_named_as_such(tmp_path: Path) -> None:
    make_tree(tmp_path / "in", per_dir=1, dirs=("a",))
    (tmp_path / "in" / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    s = predict_folder(CountingSeg(), opts_for(tmp_path / "in", tmp_path / "out", max_fail_ratio=1.0))
    reason = dict(s.failures)["a/gone.jpg"]
    assert reason.startswith("dangling symlink") and "nowhere.jpg" in reason  # before: "corrupt: ..."


def test_failed_run_creates_no_result_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError):
        predict_folder(CountingSeg(), opts_for(tmp_path / "empty", tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # before: an empty folder was left
    with pytest.raises(FolderError):  # nor its parents (they were created, then only the leaf removed)
        predict_folder(CountingSeg(), opts_for(tmp_path / "empty", tmp_path / "a" / "b" / "out"))
    with pytest.raises(FolderError):
        predict_folder(CountingSeg(), opts_for(tmp_path / "missing", tmp_path / "a" / "b" / "out"))
    assert not (tmp_path / "a").exists()


def test_dangling_symlink_result_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_tree(tmp_path / "in", per_dir=1, dirs=("a",))
    (tmp_path / "out").symlink_to(tmp_path / "missing-target")
    with pytest.raises(UserError, match="which does not exist"):
        predict_folder(CountingSeg(), opts_for(tmp_path / "in", tmp_path / "out"))
    code = predict.main(["--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path / "in"),
                         "--result_dir", str(tmp_path / "out"), "--workers", "0", "--no_progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("predict.py: error: --result_dir") and "does not exist" in err[-1]
    assert not any(line.startswith("Traceback") for line in err)


# ---------------------------------------------------------------- 16: a range and a chunk size


def test_subdirs_chunk_expands_to_one_run_per_chunk() -> None:
    from datetime import datetime

    from sbatch.expand import ExperimentError, expand_experiment

    exp = {"CMD": "python predict.py",
           "HPARAMS": {"arch": "ocrnet.HRNet_Mscale", "eval_folder": "/d/img", "result_dir": "/d/pred",
                       "subdirs": "939-986", "subdirs_chunk": 15, "RUNX.TAG": "s{subdirs}"}}
    runs = expand_experiment(exp, exp_name="div", logroot="/logs", no_cooldir=True,
                             slug=lambda: "x", now=datetime(2026, 1, 1))
    golden = [("s939-953_", "939-953"), ("s954-968_", "954-968"), ("s969-983_", "969-983"),
              ("s984-986_", "984-986")]
    assert [(r.name, r.hparams["subdirs"]) for r in runs] == golden
    assert runs[0].argv == ("python", "predict.py", "--arch", "ocrnet.HRNet_Mscale", "--eval_folder", "/d/img",
                            "--result_dir", "/d/pred", "--subdirs", "939-953")
    assert all("--subdirs_chunk" not in r.argv for r in runs)  # consumed by the expansion
    plain = expand_experiment({**exp, "HPARAMS": {"subdirs": "939-986"}}, exp_name="div", logroot="/l",
                              slug=lambda: "x", now=datetime(2026, 1, 1))
    assert [r.argv[-1] for r in plain] == ["939-986"]  # without a chunk size: runx as before
    for bad in ({"subdirs": "939-986", "subdirs_chunk": 0}, {"subdirs_chunk": 5}):
        with pytest.raises(ExperimentError, match="subdirs"):
            expand_experiment({**exp, "HPARAMS": bad}, exp_name="div", logroot="/l", slug=lambda: "x")


def test_subdirs_chunk_dry_run_is_one_array_of_four_tasks(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    (tmp_path / ".runx").write_text(yaml.safe_dump({
        "LOGROOT": "logs", "FARM": "f", "f": {"SUBMIT_CMD": "x", "RESOURCES": {"time": 5}}}))
    (tmp_path / "div.yml").write_text(yaml.safe_dump({"CMD": "python predict.py", "HPARAMS": {
        "arch": "ocrnet.HRNet_Mscale", "eval_folder": "/d/img", "result_dir": "/d/pred",
        "subdirs": "939-986", "subdirs_chunk": 15}}))
    done = subprocess.run([sys.executable, "-m", "sbatch", "div.yml", "-n"], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#SBATCH --array=0-3%4") == 1  # one array script, a task per chunk
    for i, chunk in enumerate(("939-953", "954-968", "969-983", "984-986")):
        assert re.search(rf"^# {i} \S+ python predict.py .*--subdirs {chunk}$", done.stdout, re.M)
    assert not (tmp_path / "logs").exists()


def test_predict_refusals_name_its_own_flags_in_one_short_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """predict.py's wrong-architecture refusal was 1.5 kB and named --snapshot_partial, a train.py flag;
    its unsafe-pickle refusal named --trust_checkpoint, which predict.py did not have."""
    import torch

    from network import get_model

    make_tree(tmp_path / "in", per_dir=1, dirs=("a",))
    snap = tmp_path / "single.pth"
    torch.save({"arch": "ocrnet.HRNet_w18s", "num_classes": 19,
                "model": get_model("ocrnet.HRNet_w18s", num_classes=19, trunk_weights=None).state_dict()}, snap)
    common = ["--eval_folder", str(tmp_path / "in"), "--result_dir", str(tmp_path / "out"), "--workers", "0"]
    assert predict.main(["--arch", "ocrnet.HRNet_Mscale_w18s", "--snapshot", str(snap), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 600, err
    assert "pass --arch ocrnet.HRNet_w18s" in err and "--snapshot_partial" not in err
    torch.save({"model": {}, "note": Owner("h", 1, "r")}, tmp_path / "pickled.pth")  # a class outside the allow-list
    assert predict.main(["--arch", "ocrnet.HRNet_w18s", "--snapshot", str(tmp_path / "pickled.pth"), *common]) == 2
    assert "--trust_checkpoint" in capsys.readouterr().err
    assert "--trust_checkpoint" in {s for a in predict.build_parser()._actions for s in a.option_strings}


# ---------------------------------------------------------------- issue 19: predict.py tells the truth


def test_disk_full_while_claiming_hides_no_image_from_the_rerun(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while a claim was written left an empty claim file; a rerun within 60 s counted it as
    held by another process, said "complete" and exited 0 with that image missing."""
    import json as json_module

    rels = make_tree(tmp_path / "in", per_dir=3, dirs=("a",))
    real_dump, state = json_module.dump, {"claims": 0}

    def dump(obj, fp, *args, **kwargs):
        if isinstance(obj, dict) and "stem" in obj:
            state["claims"] += 1
            if state["claims"] == 2:  # the second claim: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_dump(obj, fp, *args, **kwargs)

    monkeypatch.setattr(json_module, "dump", dump)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, batch_size=1))
    monkeypatch.setattr(json_module, "dump", real_dump)
    again = predict_folder(CountingSeg(), opts_for(tmp_path / "in", out, batch_size=1))
    assert again.ok and again.elsewhere == 0
    assert labels(out) == sorted(r.rsplit(".", 1)[0] + ".png" for r in rels)


def test_an_image_left_undone_makes_the_run_fail(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A claim whose owner is gone without output (here: an empty claim file, as a crash between
    creating and writing it leaves) must not end in "complete", exit 0."""
    make_tree(tmp_path / "in", per_dir=2, dirs=("a",))
    out = tmp_path / "out"
    claims = Claims(out, Owner.this_process(), 3600)
    claims.dir.mkdir(parents=True)
    claims.path("a/img0").write_text("")  # fresh: within the grace of a claim being written
    args = ["--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path / "in"), "--result_dir", str(out),
            "--workers", "0", "--no_progress", "--device", "cpu", "--amp_dtype", "fp32"]
    assert predict.main(args) == predict.EXIT_INCOMPLETE
    err = capsys.readouterr().err
    assert "incomplete" in err and "UNFINISHED 1" in err and "rerun" in err
    summary = json.loads((out / "reports" / "summary.json").read_text())["runs"][-1]
    assert summary["status"] == "incomplete" and not summary["ok"] and summary["unfinished"] == 1
    old = claims.path("a/img0")
    os.utime(old, (old.stat().st_atime - 60, old.stat().st_mtime - 60))  # its writer is long gone
    assert predict.main(args) == 0
    assert "done 1, skipped 1" in capsys.readouterr().err and not list(claims.dir.iterdir())


def test_claims_a_killed_run_left_on_finished_images_are_cleared(tmp_path: Path) -> None:
    """A run killed outright (SIGKILL) after writing an image's outputs, before releasing its claim, left
    the claim in .claims/ for good: a rerun skips finished images and never touched it."""
    rels = make_tree(tmp_path / "in", per_dir=2, dirs=("a",))
    out = tmp_path / "out"
    predict_folder(CountingSeg(), opts_for(tmp_path / "in", out))
    dead = Claims(out, Owner(Owner.this_process().host, dead_pid(), "killed-run"), 3600)
    assert dead.claim(rels[0].rsplit(".", 1)[0])
    s = predict_folder(CountingSeg(), opts_for(tmp_path / "in", out))
    assert s.skipped == len(rels) and s.ok
    assert not list((out / ".claims").iterdir())


def test_progress_lines_without_a_terminal_also_with_no_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """dump_folder.yml passes --no_progress: an 11-minute run printed two lines. Without a terminal
    (Slurm logs, runx) progress lines go to stdout, as train.py's; --no_progress only drops the bar."""
    monkeypatch.setattr(predict, "PROGRESS_EVERY_S", 0.0)
    make_tree(tmp_path / "in", per_dir=3, dirs=("a",))
    predict_folder(CountingSeg(), opts_for(tmp_path / "in", tmp_path / "out", batch_size=1, progress=False))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[predict 0/1]")]
    assert len(lines) >= 3 and lines[-1].startswith("[predict 0/1] 3/3 images (100%), ")
    assert "images/s, ETA" in lines[0]


def test_reports_name_the_classes_and_labels_carry_the_palette(tmp_path: Path) -> None:
    from PIL import Image

    make_tree(tmp_path / "in", per_dir=2, dirs=("a",))
    out = tmp_path / "out"
    names = ["road", "sky", "car", "tree", "person"]
    palette = np.array([[128, 64, 128], [70, 130, 180], [0, 0, 142], [107, 142, 35], [220, 20, 60]], np.uint8)
    predict_folder(CountingSeg(), opts_for(tmp_path / "in", out), palette=palette, class_names=names)
    share = json.loads((out / "summary.json").read_text())["pixel_share"]
    assert set(share) <= set(names) and share and abs(sum(share.values()) - 1.0) < 1e-4
    run = json.loads((out / "reports" / "summary.json").read_text())["runs"][-1]
    assert run["pixel_share"] == pytest.approx(share) and sum(run["class_pixels"].values()) > 0
    label = Image.open(next((out / "label").rglob("*.png")))
    assert label.mode == "P" and label.getpalette()[:15] == palette.reshape(-1).tolist()
    assert set(np.unique(np.asarray(label)).tolist()) <= set(range(5))  # the values are the class ids


def test_sigterm_while_the_model_is_prepared_is_reported_interrupted(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM while the inference copy of the model was prepared (conv+BN folding, compile) ended
    with 143 and no report at all."""
    import network
    from datasets.info import DatasetInfo

    def prepared_when_stopped(*_a, **_k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the run")

    make_tree(tmp_path / "in", per_dir=2, dirs=("a",))
    out = tmp_path / "out"
    monkeypatch.setattr(predict, "load_model",
                        lambda *_a, **_k: predict.LoadedModel(CountingSeg(), DatasetInfo.generic(5)))
    monkeypatch.setattr(network, "optimize_for_inference", prepared_when_stopped)
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path / "in"), "--result_dir", str(out),
                      "--workers", "0", "--no_progress", "--device", "cpu"])
    assert stopped.value.code == 128 + signal.SIGTERM
    run = json.loads((out / "reports" / "summary.json").read_text())["runs"][-1]
    assert run["status"] == "interrupted" and not run["ok"] and run["not_started"] == 2


def test_sigterm_while_loading_the_model_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    def loading_when_stopped(*_a, **_k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the run")

    make_tree(tmp_path / "in", per_dir=1, dirs=("a",))
    monkeypatch.setattr(predict, "load_model", loading_when_stopped)
    with pytest.raises(SystemExit) as stopped:
        predict.main(["--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path / "in"), "--result_dir",
                      str(tmp_path / "out"), "--workers", "0"])
    assert stopped.value.code == 143 and not (tmp_path / "out").exists()
    assert "stopped by signal 15 while loading the model, before any image: nothing written" in capsys.readouterr().err
