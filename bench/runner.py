"""Launcher benchmarks: expanding + dry-running a 1,000-run sweep, and submitting a 100-run
sweep to the local Slurm cluster as one job array versus 100 separate submissions.

The timed jobs are real runs: each gets its run directory and ``code/`` snapshot first (as
``python -m sbatch`` makes them), and every timed job must end COMPLETED, else the bench fails
instead of timing failures.

    python bench/runner.py                 # starts a private local cluster (needs root + Slurm)
    python bench/runner.py --no-slurm      # expansion / dry run only
    SLURM_CONF=... python bench/runner.py  # use a running cluster

Writes the "runner" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sbatch import cli, launch, manifest  # noqa: E402
from sbatch.expand import check_unique, expand_experiment  # noqa: E402
from sbatch.launch import Planned  # noqa: E402
from sbatch.resources import farm_spec  # noqa: E402
from utils.results import write_section  # noqa: E402

SWEEP_1000 = {"CMD": "torchrun --nproc_per_node=8 train.py",
              "HPARAMS": {"lr": [0.001 * i for i in range(1, 11)], "poly_exp": [0.9, 1.0, 2.0, 3.0, 4.0],
                          "seed": list(range(20)), "arch": "ocrnet.HRNet_Mscale",
                          "result_dir": "LOGDIR", "RUNX.TAG": "lr{lr}_p{poly_exp}_s{seed}"}}


def plans_for(experiment: dict, logroot: str, resources: dict) -> list[Planned]:
    runs = expand_experiment(experiment, exp_name="bench", logroot=logroot)
    check_unique(runs)
    return [Planned(run=r, spec=farm_spec(resources, r.resources), logroot=logroot) for r in runs]


def time_dry_run(repeats: int = 5) -> dict[str, float]:
    """In-process expansion, flag checks and the ``-n`` text of 1,000 runs; and the CLI end to end."""
    from sbatch.validate import check_runs

    settings = cli.Settings(config_path=None, logroot=Path("/bench/logs"), exp_name="bench", farm=None,
                            resources={"gpus_per_node": 8, "time": 240}, code_ignore_patterns=())
    expand_s, check_s, dry_s, size = [], [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        plans = plans_for(SWEEP_1000, "/bench/logs", settings.resources)
        t1 = time.perf_counter()
        check_runs([p.run for p in plans])
        t2 = time.perf_counter()
        text = cli.dry_run(settings, plans, interactive=False)
        t3 = time.perf_counter()
        expand_s.append(t1 - t0)
        check_s.append(t2 - t1)
        dry_s.append(t3 - t2)
        size = len(text)
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "bench.yml"
        import yaml

        exp.write_text(yaml.safe_dump(SWEEP_1000))
        cfg = Path(tmp) / "runx.yml"
        cfg.write_text(yaml.safe_dump({"LOGROOT": f"{tmp}/logs", "FARM": "f",
                                       "f": {"RESOURCES": {"gpus_per_node": 8}}}))
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "sbatch", str(exp), "-n", "-c", str(cfg)], cwd=REPO,
                              capture_output=True, text=True, check=True)
        cli_s = time.perf_counter() - t0
        # one array script (with 20 task comments) and 1,000 task lines
        assert done.stdout.count("#!/bin/bash") == 1 and done.stdout.count(" python train.py --") == 1020
    return {"runs": len(plans), "expand_s": statistics.median(expand_s), "check_s": statistics.median(check_s),
            "dry_run_s": statistics.median(dry_s), "text_mb": size / 1e6, "cli_s": cli_s}


@contextlib.contextmanager
def local_cluster() -> Iterator[dict[str, str]]:
    if os.environ.get("SLURM_CONF"):
        yield {}
        return
    root = tempfile.mkdtemp(prefix="bench-slurm-")
    script = REPO / "sbatch" / "local_cluster.sh"
    socks = [socket.socket() for _ in range(4)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    names = ("HMSA_SLURMCTLD_PORT", "HMSA_SLURMD_PORT", "HMSA_SLURMDBD_PORT", "HMSA_MYSQL_PORT")
    env = {**os.environ, **{n: str(s.getsockname()[1]) for n, s in zip(names, socks, strict=True)}}
    for s in socks:
        s.close()
    started = subprocess.run(["bash", str(script), "start", root], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        subprocess.run(["bash", str(script), "stop", root], env=env, capture_output=True)
        raise RuntimeError(f"local cluster did not start: {started.stderr}")
    os.environ["SLURM_CONF"] = f"{root}/etc/slurm.conf"
    try:
        yield {"SLURM_CONF": os.environ["SLURM_CONF"]}
    finally:
        subprocess.run(["bash", str(script), "stop", root], env=env, capture_output=True)
        os.environ.pop("SLURM_CONF", None)
        shutil.rmtree(root, ignore_errors=True)


def wait_done(job_ids: list[str], timeout: float) -> tuple[float | None, dict[str, str]]:
    """Seconds until no job is active (None: timeout) and each job's final state."""
    t0 = time.perf_counter()
    got: dict[str, str] = {}
    while time.perf_counter() - t0 < timeout:
        states = manifest._sacct(job_ids)
        got = {j: (manifest.lookup(states, j) or ("PENDING",))[0] for j in job_ids}
        if all(s not in manifest.ACTIVE_STATES for s in got.values()):
            return time.perf_counter() - t0, got
        time.sleep(1.0)
    return None, got


def require_completed(mode: str, states: dict[str, str]) -> None:
    """A timed job that did not complete makes the figure meaningless: stop the bench."""
    bad = {j: s for j, s in states.items() if s != "COMPLETED"}
    if bad:
        counts = statistics.multimode(bad.values())
        raise SystemExit(f"runner bench: {len(bad)} of {len(states)} {mode} jobs did not complete "
                         f"(most often {counts}); e.g. {sorted(bad.items())[:3]}; nothing written")


def prepare_runs(plans: list[Planned], code_root: Path) -> float:
    """Run directories with their code/ snapshots, as submission makes them; returns seconds."""
    t0 = time.perf_counter()
    for p in plans:
        launch.write_run_files(p, code_root, ())
    return time.perf_counter() - t0


def time_submissions(n: int, wait_s: float) -> dict[str, float | None]:
    """Submit ``n`` trivial runs as one array, then as ``n`` single jobs (submitit, sbatch)."""
    out: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        code_root = Path(tmp) / "src"  # what each run's code/ snapshot is copied from
        code_root.mkdir()
        (code_root / "README").write_text("benchmark run: the command is `true`\n")
        experiment = {"CMD": "true", "HPARAMS": {"i": list(range(n))}}
        resources = {"time": 5, "cpus_per_task": 1, "mem": "100M"}
        for mode in ("array", "separate"):
            plans = plans_for(experiment, f"{tmp}/{mode}", resources)
            out[f"{mode}_prepare_s"] = prepare_runs(plans, code_root)
            folder = Path(tmp) / mode / "bench" / "submitit"
            groups = [plans] if mode == "array" else [[p] for p in plans]
            t0 = time.perf_counter()
            jobs = [j for g in groups for j in launch.submit_group(g, folder, f"{tmp}/m.json")]
            out[f"{mode}_submit_s"] = time.perf_counter() - t0
            ids = [str(j.job_id) for j in jobs]
            out[f"{mode}_done_s"], states = wait_done(ids, wait_s)
            subprocess.run(["scancel", *sorted({i.split('_')[0] for i in ids})], capture_output=True)
            require_completed(mode, states)
            out[f"{mode}_load"] = os.getloadavg()[0]
    return out


def fmt(v: float | None, unit: str = "s") -> str:
    return "not finished" if v is None else f"{v:.2f} {unit}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-slurm", action="store_true")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--wait", type=float, default=240.0, help="seconds to wait for completion per mode")
    args = p.parse_args()
    with contextlib.redirect_stdout(io.StringIO()):
        dry = time_dry_run()
    lines = ["| 1,000-run sweep (10x5x20 cross product) | median of 5 |", "|---|---|",
             f"| expand + validate resources (in process) | {dry['expand_s'] * 1e3:.0f} ms |",
             f"| check every run's flags with train.py's parser | {dry['check_s'] * 1e3:.0f} ms |",
             f"| render the `-n` text (one array script + 1,000 task lines, {dry['text_mb']:.1f} MB) "
             f"| {dry['dry_run_s'] * 1e3:.0f} ms |",
             "| `python -m sbatch sweep.yml -n` end to end (interpreter start included, 1 run) "
             f"| {dry['cli_s']:.2f} s |"]
    if not args.no_slurm:
        with local_cluster():
            sub = time_submissions(args.runs, args.wait)
        lines += ["", f"| {args.runs} trivial runs (`true`) on the local 2-CPU cluster | one job array "
                  f"| {args.runs} separate jobs |",
                  "|---|---|---|",
                  f"| run directories + code/ snapshots (before submitting, not timed below) "
                  f"| {fmt(sub['array_prepare_s'])} | {fmt(sub['separate_prepare_s'])} |",
                  f"| submission (returns, non-blocking) | {fmt(sub['array_submit_s'])} "
                  f"| {fmt(sub['separate_submit_s'])} |",
                  f"| until sacct shows all finished (every job COMPLETED) | {fmt(sub['array_done_s'])} "
                  f"| {fmt(sub['separate_done_s'])} |",
                  f"| 1-minute load average after the mode | {sub['array_load']:.1f} | {sub['separate_load']:.1f} |"]
    body = "\n".join(lines) + ("\n\nThe separate submissions run one `sbatch` (through submitit) per run; the array "
                               "sends one script. Completion includes submitit's Python start per task. Every "
                               "timed job is asserted COMPLETED (the bench stops otherwise).")
    print(body)
    write_section("runner", body)


if __name__ == "__main__":
    main()
