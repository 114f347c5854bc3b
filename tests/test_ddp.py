"""Distributed training: two gloo processes on the CPU equal one process with the same global batch."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.test_train_helpers import model_state, run_train, tiny_args

COMMON = ("--bs_trn", "1", "--max_iter", "3", "--deterministic", "--val_freq", "100", "--ckpt_freq", "0")


def _params(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Learned tensors only: BatchNorm running statistics are per process in DDP (rank 0's are kept)."""
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(synthetic_root, tmp_path):
    single = run_train(tiny_args(synthetic_root, tmp_path / "single", *COMMON, "--global_batch_size", "2"))
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = run_train(tiny_args(synthetic_root, tmp_path / "ddp", *COMMON), launcher=launcher)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    rt_single = json.loads((tmp_path / "single" / "config.json").read_text())["runtime"]
    rt_ddp = json.loads((tmp_path / "ddp" / "config.json").read_text())["runtime"]
    assert (rt_single["world_size"], rt_single["accum_steps"], rt_single["global_batch_size"]) == (1, 2, 2)
    assert (rt_ddp["world_size"], rt_ddp["accum_steps"], rt_ddp["global_batch_size"]) == (2, 1, 2)
    assert rt_ddp["backend"] == "gloo"

    a, b = _params(model_state(tmp_path / "single")), _params(model_state(tmp_path / "ddp"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"largest parameter difference {worst}"
    sd = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert sd["pixels"] == json.loads((tmp_path / "single" / "metrics.json").read_text())["pixels"]


def test_syncbn_on_cpu_warns_and_keeps_batchnorm():
    from torch import nn

    from utils.dist import DistInfo, maybe_sync_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with pytest.warns(UserWarning, match="SyncBatchNorm needs CUDA"):
        out = maybe_sync_batchnorm(model, DistInfo(world_size=2))
    assert isinstance(out[1], nn.BatchNorm2d)


RANK0_FAILS = """
import os, sys, time
import torch.distributed as dist
from datetime import timedelta
from utils.dist import DistInfo, PeerFailed, on_main_rank
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=600))
def work():
    raise OSError(28, "No space left on device")
try:
    on_main_rank(DistInfo(rank=rank, world_size=2), "writing last.pth", work)
except PeerFailed as e:
    print("peer:", e, flush=True)
    sys.exit(3)
except OSError as e:
    print("own:", e, flush=True)
    time.sleep(600 if rank == 0 else 0)  # alive, as a rank stuck in clean-up (or an NCCL peer nobody notices)
    sys.exit(4)
"""


def start_two_ranks(tmp_path, script: str) -> list:
    """Two gloo processes on 127.0.0.1 running ``script`` (RANK in their environment)."""
    import os
    import socket
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    (tmp_path / "job.py").write_text(script)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "PYTHONPATH": str(repo), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return [subprocess.Popen([sys.executable, str(tmp_path / "job.py")], env={**base, "RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]


def test_rank0_failure_in_its_own_work_ends_the_other_ranks_at_once(tmp_path):
    """Disk full while rank 0 writes a checkpoint: rank 1 must stop with a message naming it, not
    wait in the next collective until the process group's timeout (10 min here, 30 min by default)."""
    procs = start_two_ranks(tmp_path, RANK0_FAILS)
    try:
        out1, _ = procs[1].communicate(timeout=240)  # imports and start-up, slow on a busy machine
        rank0_alive = procs[0].poll() is None
    finally:
        for p in procs:
            p.kill()
    out0 = procs[0].communicate()[0]
    assert procs[1].returncode == 3 and "peer: rank 0 failed while writing last.pth" in out1, out1
    assert "own: [Errno 28] No space left on device" in out0, out0
    assert rank0_alive  # rank 1 learnt it from rank 0, not from rank 0's death


WORST_IMAGES = """
import os, sys
import torch, torch.distributed as dist
from datasets.cityscapes_labels import CLASS_NAMES, PALETTE
from training.dump import WorstImages
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
w = WorstImages(sys.argv[0].rsplit("/", 1)[0] + "/worst", 2, PALETTE, CLASS_NAMES, rank=rank)
masks = torch.zeros(2, 8, 8, dtype=torch.long)
preds = masks.clone()
if rank == 0:
    preds[1, :4] = 1  # b: half wrong; a: right
else:
    preds[0] = 1  # c: all wrong
    preds[1, :2] = 1  # d: a quarter wrong
names = ["a", "b"] if rank == 0 else ["c", "d"]
w.dump({"mask": masks, "image": torch.zeros(2, 3, 8, 8), "name": names}, {}, preds)
w.finish()
dist.destroy_process_group()
"""


def test_dump_topn_keeps_the_worst_over_all_ranks(tmp_path):
    """Before: each rank drew its own N worst (2 ranks, --dump_topn 2: four pictures, two lists)."""
    procs = start_two_ranks(tmp_path, WORST_IMAGES)
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(p.name for p in (tmp_path / "worst").iterdir()) == ["000_c.png", "001_b.png", "worst_images.csv"]
    rows = (tmp_path / "worst" / "worst_images.csv").read_text().splitlines()
    assert [r.split(",")[1::2] for r in rows[1:]] == [["c", "1"], ["b", "0"]]
