"""Faults and bad input (issue 10): no hang, no silent wrong result, no injection, every error named.

Each test reproduces one reported failure; the policy they check is utils/errors.py: a user
error is one line ``prog: error: ...`` naming the flag, exit 2, no traceback unless HMSA_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_train_helpers import REPO, run_train, tiny_args
from train import cli


def _one_line_error(err: str, prog: str = "train.py") -> str:
    """The error line; asserts there is exactly one and no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def corrupt_root(synthetic_root, tmp_path) -> Path:
    """The synthetic dataset with every training image truncated to 100 bytes."""
    root = tmp_path / "corrupt"
    shutil.copytree(synthetic_root, root)
    for img in (root / "leftImg8bit" / "train").rglob("*.png"):
        img.write_bytes(img.read_bytes()[:100])
    return root


# ----------------------------------------------------------------------------- item 1: no hang

@pytest.mark.slow  # a train.py subprocess
def test_error_in_dataloader_worker_ends_the_run_in_seconds(corrupt_root, tmp_path):
    """Workers ignore SIGTERM (so the main process can checkpoint first); an error used to leave
    the main process joining them for ever. Now: one line naming the file, exit 2, workers gone."""
    args = tiny_args(corrupt_root, tmp_path / "run", "--max_iter", "2")
    args[args.index("--num_workers") + 1] = "2"
    proc = run_train(args, timeout=300)  # the old code never ended (TimeoutExpired); now seconds after start-up
    line = _one_line_error(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert "cannot read image" in line and "DataLoader worker" in line


# ----------------------------------------------------------------------------- item 9: one line, exit 2

def test_unknown_dataset_is_one_line_naming_the_flag(tmp_path, capsys):
    assert cli(["--dataset", "nope", "--result_dir", str(tmp_path / "r")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "unknown dataset 'nope'" in line and "--dataset" in line and "synthetic" in line


def test_missing_dataset_root_names_the_flag(tmp_path, capsys):
    assert cli(["--dataset", "cityscapes", "--dataset_root", str(tmp_path / "absent"),
                "--result_dir", str(tmp_path / "r")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--dataset_root" in line and "root=..." not in line.split("--dataset_root")[0]


@pytest.mark.slow  # two train.py processes under torchrun
def test_user_error_under_torchrun_is_printed_once(tmp_path):
    """eval_mapillary.yml's command without MAPILLARY_ROOT printed "no mapillary root given: pass
    --dataset_root DIR (root=...)" once per rank (eight times) before torchrun's traceback."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = run_train(["--dataset", "mapillary", "--eval", "val", "--arch", "ocrnet.HRNet_w18s", "--device", "cpu",
                      "--result_dir", str(tmp_path / "r")], launcher=launcher, timeout=300)
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("train.py: error: ")]
    assert lines == ["train.py: error: no mapillary root given: pass --dataset_root DIR or set the environment "
                     "variable MAPILLARY_ROOT to the dataset directory"], done.stderr[-3000:]


def test_wrongly_laid_out_root_names_the_flag(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    assert cli(["--dataset", "cityscapes", "--dataset_root", str(tmp_path / "flat"),
                "--result_dir", str(tmp_path / "r")]) == 2
    assert "--dataset_root" in _one_line_error(capsys.readouterr().err)


def test_debug_switch_prints_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HMSA_DEBUG", "1")
    assert cli(["--dataset", "nope", "--result_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "train.py: error: unknown dataset" in err


def test_result_dir_blocked_by_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli(["--dataset", "nope", "--result_dir", str(blocker)]) == 2
    assert "--result_dir" in _one_line_error(capsys.readouterr().err)
    assert cli(["--dataset", "nope", "--result_dir", str(blocker / "sub")]) == 2
    assert "--result_dir" in _one_line_error(capsys.readouterr().err)


def _make_read_only(path: Path) -> None:
    """chmod for a normal user; root ignores modes, so the immutable attribute (chattr +i)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
        pytest.skip("running as root without chattr +i: cannot make a read-only directory")


def test_read_only_result_dir(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    _make_read_only(ro)
    try:
        assert cli(["--dataset", "nope", "--result_dir", str(ro)]) == 2
        assert "--result_dir" in _one_line_error(capsys.readouterr().err)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)], check=False)
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- item 18: small

def test_failed_run_leaves_no_empty_result_dir(tmp_path):
    rd = tmp_path / "never"
    assert cli(["--dataset", "nope", "--result_dir", str(rd)]) == 2
    assert not rd.exists()


def test_dangling_symlink_result_dir_is_named(tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    assert cli(["--dataset", "nope", "--result_dir", str(link)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--result_dir" in line and "symlink" in line


# ----------------------------------------------------------------------------- item 2: names

def _sbatch(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sbatch", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def sbatch_project(tmp_path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / ".runx").write_text(yaml.safe_dump({"LOGROOT": "logs", "FARM": "f",
                                                "f": {"SUBMIT_CMD": "x", "RESOURCES": {"time": 5}}}))
    return root


@pytest.mark.parametrize("how", ["exp_name", "tag", "runx_tag", "dotdot", "partition", "sbatch_extra"])
def test_names_reaching_sbatch_directives_or_paths_are_validated(sbatch_project, how):
    """A newline in --exp_name went into '#SBATCH --job-name' (the -n script ran an injected
    command); RUNX.TAG '../x' put a run outside LOGROOT."""
    hparams: dict = {"a": 1}
    args = ["exp.yml", "-n"]
    marker = sbatch_project / "PWNED"
    inject = f"x\ntouch {marker}"
    if how == "exp_name":
        args += ["--exp_name", inject]
    elif how == "tag":
        args += ["--tag", inject]
    elif how == "runx_tag":
        hparams["RUNX.TAG"] = "t{b}"
        hparams["b"] = inject
    elif how == "dotdot":
        hparams["RUNX.TAG"] = "../../escaped"
        args.remove("-n")
        args.append("-i")
    elif how == "partition":
        hparams["SUBMIT_JOB.PARTITION"] = "gpu --mem=1"
    experiment = {"CMD": "python -c pass", "HPARAMS": hparams}
    if how == "sbatch_extra":
        experiment["RESOURCES"] = {"sbatch_extra": ["--comment=a --mem=1 --nodes=9"]}
    (sbatch_project / "exp.yml").write_text(yaml.safe_dump(experiment))
    done = _sbatch(sbatch_project, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    line = _one_line_error(done.stderr, "python -m sbatch")
    assert ("#SBATCH" not in done.stdout and not done.stdout.strip()), done.stdout
    assert any(w in line for w in ("--exp_name", "--tag", "RUNX.TAG", "partition", "sbatch_extra")), line
    # nothing ran and nothing was created outside (or inside) LOGROOT
    subprocess.run(["sh", "-c", done.stdout], cwd=sbatch_project, check=False)
    assert not marker.exists()
    assert not (sbatch_project.parent / "escaped").exists() and not (sbatch_project / "logs").exists()


# ----------------------------------------------------------------------------- item 19: hermetic

ODD_ENV = {"SYNTHETIC_ROOT": "/nonexistent/odd synth", "CITYSCAPES_ROOT": "/nonexistent/cs",
           "MAPILLARY_ROOT": "/nonexistent/mv", "HMSA_CACHE_DIR": "/nonexistent/cache", "ASSETS_PATH": "/odd",
           "HMSA_DEBUG": "1", "HMSA_SWEEP_RUN": "3", "SLURM_PROCID": "3", "SLURM_NTASKS": "7",
           "SLURM_ARRAY_TASK_ID": "5", "SLURM_JOB_ID": "99", "SLURM_RESTART_COUNT": "2", "RANK": "1",
           "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "badhost", "MASTER_PORT": "1",
           "CUDA_VISIBLE_DEVICES": "0", "SBATCH_PARTITION": "odd"}


@pytest.mark.slow  # a pytest subprocess that imports train.py
def test_tests_do_not_depend_on_the_callers_environment():
    """test_task_spec_binds_logroot_and_data failed with SYNTHETIC_ROOT set (as the README says)."""
    tests = ["tests/test_sbatch.py::test_task_spec_binds_logroot_and_data",
             "tests/test_faults.py::test_unknown_dataset_is_one_line_naming_the_flag",
             "tests/test_predict.py::test_rerun_skips_everything_and_deleted_output_is_regenerated_alone",
             "tests/test_faults_predict.py::test_main_in_process_puts_the_previous_sigterm_handler_back"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=REPO, env={**os.environ, **ODD_ENV}, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:]


# ----------------------------------------------------------------------------- item 8, 18: centroid cache

def _labels(root: Path, n: int = 3) -> list[str]:
    import cv2
    import numpy as np

    files = []
    for i in range(n):
        p = root / f"lab{i}.png"
        cv2.imwrite(str(p), np.full((24, 40), i, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 0])
        files.append(str(p))
    return files


def test_centroid_cache_is_keyed_on_content_not_size_and_mtime(tmp_path):
    """A label edited with its size and mtime kept used to get its old centroids."""
    import cv2
    import numpy as np

    from datasets.centroids import CacheSpec, load_or_build

    spec, cache = CacheSpec(tile=16, num_classes=5, lut=None), tmp_path / "c.npz"
    files = _labels(tmp_path)
    before, _ = load_or_build(files, spec, cache, progress=False)
    st = os.stat(files[1])
    edited = np.full((24, 40), 1, np.uint8)
    edited[:, 20:] = 4
    cv2.imwrite(files[1], edited, [cv2.IMWRITE_PNG_COMPRESSION, 0])  # stored, not deflated:
    assert os.path.getsize(files[1]) == st.st_size  # the same size, as in the report
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back
    after, rep = load_or_build(files, spec, cache, progress=False)
    assert rep.computed == 1
    assert 4 in after[1][:, 0] and 4 not in before[1][:, 0]
    # touched but not changed: nothing recomputed (the digest is compared, not the mtime)
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, rep = load_or_build(files, spec, cache, progress=False)
    assert rep.computed == 0


def test_cache_rebuild_warning_is_printed_once(tmp_path, caplog):
    import logging

    from datasets.centroids import CacheSpec, load_or_build

    spec, cache = CacheSpec(tile=16, num_classes=5, lut=None), tmp_path / "c.npz"
    files = _labels(tmp_path)
    load_or_build(files, spec, cache, progress=False)
    cache.write_bytes(b"\0garbage")
    with caplog.at_level(logging.WARNING, logger="datasets.centroids"):
        _, rep = load_or_build(files, spec, cache, progress=False)
    assert rep.computed == 3
    assert caplog.text.count("rebuilding") == 1, caplog.text


# ----------------------------------------------------------------------------- item 6: label ranges, NaN

def _relabel(synthetic_root: Path, tmp_path: Path, value: int) -> Path:
    """The synthetic dataset with every label id replaced by ``value``."""
    import cv2
    import numpy as np

    root = tmp_path / f"labels{value}"
    shutil.copytree(synthetic_root, root)
    for lab in (root / "gtFine").rglob("*_labelIds.png"):
        shape = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED).shape
        cv2.imwrite(str(lab), np.full(shape, value, np.uint8))
    return root


def test_label_ids_out_of_range_are_refused(synthetic_root, tmp_path, capsys):
    """Ids the dataset does not define used to train silently (loss 0, mIoU NaN, exit 0)."""
    root = _relabel(synthetic_root, tmp_path, 200)
    assert cli(tiny_args(root, tmp_path / "r", "--max_iter", "1")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "holds ids [200]" in line and "--dataset" in line


def test_labels_that_map_only_to_ignore_are_refused(synthetic_root, tmp_path, capsys):
    root = _relabel(synthetic_root, tmp_path, 0)  # Cityscapes id 0 "unlabeled" -> ignore
    assert cli(tiny_args(root, tmp_path / "r", "--max_iter", "1")) == 2
    assert "only the ignore label" in _one_line_error(capsys.readouterr().err)


def test_label_check_reads_every_label_of_a_small_split(synthetic_root, tmp_path):
    """Under 16 images the start-up check sampled only the first half of the labels (8 images:
    0,0,1,1,2,2,3,3): a split whose first half holds only ignored pixels was refused as the wrong
    dataset although its other labels are fine."""
    import cv2
    import numpy as np

    from datasets import build_dataset
    from datasets.base import check_label_sample

    root = tmp_path / "half"
    shutil.copytree(synthetic_root, root)
    ds = build_dataset("synthetic", root=root, split="train")
    assert len(ds) == 8
    for i in range(4):  # the first half: ignore only (Cityscapes id 0 "unlabeled")
        lab = ds.items[i].label
        cv2.imwrite(str(lab), np.zeros(cv2.imread(str(lab), cv2.IMREAD_UNCHANGED).shape, np.uint8))
    check_label_sample(ds)  # the other four hold classes: no refusal


def test_metrics_json_is_valid_json_with_null_for_absent_classes(tmp_path):
    import json

    from utils.metrics import ConfusionMatrix, write_metrics

    cm = ConfusionMatrix(3)  # nothing seen: every IoU and the mIoU are NaN
    write_metrics(tmp_path, cm.compute(), ["a", "b", "c"], {"best_miou": float("nan")})

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    data = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert data["miou"] is None and data["per_class_iou"] == {"a": None, "b": None, "c": None}
    assert data["best_miou"] is None


@pytest.mark.parametrize("kind", ["rgb", "16bit"])
def test_rgb_or_16_bit_label_is_one_line(synthetic_root, tmp_path, capsys, kind):
    import cv2
    import numpy as np

    root = tmp_path / kind
    shutil.copytree(synthetic_root, root)
    lab = sorted((root / "gtFine" / "val").rglob("*_labelIds.png"))[0]
    ids = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED)
    bad = np.dstack([ids] * 3) if kind == "rgb" else ids.astype(np.uint16) * 1000
    cv2.imwrite(str(lab), bad)
    assert cli(tiny_args(root, tmp_path / "r", "--max_iter", "1")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(lab) in line and ("RGB" in line if kind == "rgb" else "outside" in line)


# ----------------------------------------------------------------------------- item 11: SIGTERM at start-up

@pytest.mark.slow  # a train.py subprocess
def test_sigterm_during_start_up_exits_75(tmp_path):
    """A preempted job used to die with 143 while generating/reading data: counted as failed."""
    import signal

    root = tmp_path / "fresh"  # empty: the synthetic scenes are generated at start-up
    args = tiny_args(root, tmp_path / "run", "--max_iter", "2")
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (root / "leftImg8bit").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "during start-up" in err and "rerun the same command" in err and "Traceback" not in err


# While this hook holds `import torch` for 3 s, the program is still importing; a marker file says so.
SLOW_TORCH_IMPORT = """
import importlib.abc, pathlib, runpy, sys, time
marker, script = pathlib.Path(sys.argv[1]), sys.argv[2]
class SlowTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not marker.exists():
            marker.write_text("importing torch")
            time.sleep(3)
sys.meta_path.insert(0, SlowTorch())
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize(("prog", "exit_status"), [("train.py", 75), ("predict.py", 143)])
def test_sigterm_while_importing_torch_is_a_clean_start_up_stop(tmp_path, prog, exit_status):
    """Before: a SIGTERM while train.py/predict.py still imported torch killed them (-15 / 143 from
    the shell, nothing said; train.py's job counted as failed, not requeued)."""
    import signal

    marker, out = tmp_path / "importing", tmp_path / "out"
    args = (tiny_args(tmp_path / "fresh", out) if prog == "train.py" else
            ["--arch", "ocrnet.HRNet_w18s", "--eval_folder", str(tmp_path), "--result_dir", str(out)])
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TORCH_IMPORT, str(marker), str(REPO / prog), *args],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == exit_status, err[-2000:]
    assert "during start-up" in err and "rerun the same command" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "fresh").exists()  # nothing created, nothing half-written


@pytest.mark.slow  # a train.py subprocess
def test_sigterm_burst_after_last_pth_still_exits_75(synthetic_root, tmp_path):
    """A burst of SIGTERMs after "wrote last.pth, exit 75" ended the process with 143 (Python resets
    handlers at shutdown; Slurm then counts a failure and does not requeue). Once the checkpoint is
    written the exit status is 75 whatever arrives."""
    import signal
    import threading

    args = tiny_args(synthetic_root, tmp_path / "run", "--max_epoch", "50", "--val_freq", "100", "--ckpt_freq", "0")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 300

    def wait_for(text: str) -> None:
        while not any(text in ln for ln in lines) and proc.poll() is None:
            assert time.monotonic() < deadline, "".join(lines)[-2000:]
            time.sleep(0.002)

    wait_for("[train] it 2/")
    proc.send_signal(signal.SIGTERM)
    wait_for("exit 75")
    while proc.poll() is None:  # the burst: until the process is gone
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        time.sleep(0.001)
    assert proc.wait() == 75, "".join(lines)[-2000:]
    assert not any("during start-up" in ln for ln in lines)


def test_train_main_in_process_gives_the_callers_handlers_back(synthetic_root, tmp_path):
    """Training ignores stop signals once its outcome is settled; a caller of train.main in-process
    (a notebook, a test) gets its own handlers back afterwards."""
    import signal

    from config import parse_config
    from train import main

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert main(parse_config(tiny_args(synthetic_root, tmp_path / "run", "--max_iter", "1",
                                           "--val_freq", "100"))) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- item 18: metrics.csv

def test_metrics_csv_has_one_val_row_per_epoch_after_a_resume(tmp_path):
    """Killed between validation and last.pth, the resumed run validated that epoch again and
    runx's metrics.csv got a second row for it."""
    from utils.logger import RunLogger

    metrics = {"miou": 0.5, "pixel_acc": 0.9, "mean_class_acc": 0.6, "fwiou": 0.7, "per_class_iou": [0.5]}
    first = RunLogger(str(tmp_path), 0)
    first.val(0, metrics, ["a"])
    first.close()
    resumed = RunLogger(str(tmp_path), 0)
    resumed.val(0, metrics, ["a"])
    resumed.val(1, metrics, ["a"])
    resumed.close()
    rows = [ln for ln in (tmp_path / "metrics.csv").read_text().splitlines() if ln.startswith("val,")]
    assert len(rows) == 2, rows


# ----------------------------------------------------------------------------- item 10: disk full

@pytest.fixture()
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped where either is missing)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_names_enospc_and_keeps_the_previous_checkpoint(tiny_disk, capsys):
    import torch

    from utils.errors import run_cli
    from utils.io import atomic_torch_save

    last = tiny_disk / "last.pth"
    atomic_torch_save({"iteration": 1, "w": torch.ones(10)}, last)
    big = {"iteration": 2, "w": torch.ones(1 << 19)}  # 2 MiB: does not fit
    assert run_cli("train.py", lambda: atomic_torch_save(big, last) or 0) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "ENOSPC" in line and str(last) in line and "intact" in line
    assert torch.load(last, weights_only=True)["iteration"] == 1
    assert [p.name for p in tiny_disk.iterdir()] == ["last.pth"]  # no temporary file left


# ----------------------------------------------------------------------------- checkpoints (4, 5, 9, untrusted)

def _training_checkpoint(root: Path, rd: Path) -> Path:
    """A last.pth as train.py writes it (one step into a tiny run), without training."""
    import torch

    from config import parse_config
    from network import get_model
    from network.checkpoint import build_checkpoint, save_checkpoint

    cfg = parse_config(tiny_args(root, rd, "--max_iter", "2"))
    model = get_model(cfg.model.arch, num_classes=19)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ckpt = build_checkpoint(model=model, optimizer=opt, scheduler=sched, scaler=None, epoch=0, iteration=1,
                            sampler={"epoch": 0, "consumed": 2, "world_size": 1, "state": None},
                            config=cfg.to_dict(), best_miou=-1.0)
    rd.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(ckpt, rd, "last.pth")


def test_resume_with_changed_flags_is_refused_with_the_differences(synthetic_root, tmp_path, capsys):
    """--lr 0.3 on resume silently kept the checkpoint's 0.002 schedule."""
    rd = tmp_path / "run"
    _training_checkpoint(synthetic_root, rd)
    args = tiny_args(synthetic_root, rd, "--max_iter", "2")
    args[args.index("--lr") + 1] = "0.3"
    assert cli([*args, "--crop_size", "32,32"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--lr 0.002 -> 0.3" in line and "--crop_size 64,64 -> 32,32" in line
    assert "--snapshot" in line and "--max_epoch" in line  # how to proceed, what is safe


def test_resume_safe_changes_are_accepted_and_length_changes_noted(synthetic_root, tmp_path):
    from config import check_resume, parse_config

    saved = parse_config(tiny_args(synthetic_root, tmp_path, "--max_iter", "2")).to_dict()
    new = parse_config(tiny_args(synthetic_root, tmp_path, "--max_iter", "4", "--val_freq", "3",
                                 "--ckpt_freq", "7", "--bs_val", "2", "--do_flip"))
    notes = check_resume(saved, new, "last.pth")
    assert notes == ["--max_iter 2 -> 4: the poly schedule now ends at the new length"]


def _other_arch_snapshot(tmp_path: Path) -> Path:
    import torch

    from network import get_model

    path = tmp_path / "single_scale.pth"
    torch.save({"model": get_model("ocrnet.HRNet_w18s", num_classes=19).state_dict()}, path)
    return path


def test_snapshot_of_another_architecture_is_refused(synthetic_root, tmp_path, capsys):
    """0.26% of the parameters loaded, one warning, then training: now refused."""
    snap = _other_arch_snapshot(tmp_path)
    args = tiny_args(synthetic_root, tmp_path / "run", "--max_iter", "1", "--snapshot", str(snap),
                     arch="ocrnet.HRNet_Mscale_w18s")
    assert cli(args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--snapshot_partial" in line and "scale_attn" in line


def test_partial_snapshot_on_request_says_how_much_was_loaded(synthetic_root, tmp_path, capsys):
    from types import SimpleNamespace

    import train
    from config import parse_config
    from network import get_model

    snap = _other_arch_snapshot(tmp_path)
    cfg = parse_config(tiny_args(synthetic_root, tmp_path, "--snapshot", str(snap), "--snapshot_partial",
                                 arch="ocrnet.HRNet_Mscale_w18s"))
    net = get_model(cfg.model.arch, num_classes=19)
    with pytest.warns(UserWarning, match="not in the checkpoint"):
        train._load_snapshot(cfg, net, SimpleNamespace(is_main=True), str(snap))
    out = capsys.readouterr().out
    assert "loaded weights from" in out and "% of the weights" in out and "of " in out


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_broken_checkpoints_are_one_line(synthetic_root, tmp_path, capsys, damage):
    """A truncated last.pth (auto-resume) or an empty/missing --snapshot gave a traceback."""
    rd = tmp_path / "run"
    last = _training_checkpoint(synthetic_root, rd)
    args = tiny_args(synthetic_root, rd, "--max_iter", "2")
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    else:
        last.unlink()
        snap = tmp_path / "snap.pth"
        if damage == "empty":
            snap.write_bytes(b"")
        args += ["--snapshot", str(snap)]
    assert cli(args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert ("does not exist" if damage == "missing" else "truncated") in line


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_whose_pickle_runs_a_command_is_refused(synthetic_root, tmp_path, capsys):
    """read_checkpoint fell back to torch.load(weights_only=False): the file's code ran."""
    import torch

    from network import get_model
    from network.checkpoint import CheckpointError, read_checkpoint

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": get_model("ocrnet.HRNet_w18s", num_classes=19).state_dict(),
                "payload": _RunsACommand(marker)}, evil)
    with pytest.raises(CheckpointError, match="--trust_checkpoint") as info:
        read_checkpoint(evil)
    assert "system" in str(info.value)
    args = tiny_args(synthetic_root, tmp_path / "run", "--max_iter", "1", "--snapshot", str(evil))
    assert cli(args) == 2
    assert "--trust_checkpoint" in _one_line_error(capsys.readouterr().err)
    assert not marker.exists()  # nothing ran


def test_reference_style_checkpoint_loads_without_a_full_unpickle(tmp_path, recwarn):
    """The published files hold NumPy scalars and an argparse.Namespace: allow-listed, no warning."""
    import argparse

    import numpy as np
    import torch

    from network import get_model
    from network.checkpoint import read_checkpoint

    state = {"module." + k: v for k, v in get_model("ocrnet.HRNet_w18s", num_classes=19).state_dict().items()}
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": state, "epoch": 3, "mean_iu": np.float64(0.81), "arrays": np.arange(3),
                "args": argparse.Namespace(arch="ocrnet.HRNet_Mscale", n_scales=[0.5, 1.0]),
                "command": "train.py --arch ocrnet.HRNet_Mscale"}, path)
    ckpt = read_checkpoint(path)
    assert ckpt["mean_iu"] == pytest.approx(0.81) and ckpt["args"].arch == "ocrnet.HRNet_Mscale"
    assert not [w for w in recwarn if "unpickle" in str(w.message) or "weights_only" in str(w.message)]
