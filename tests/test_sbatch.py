"""The launcher without a cluster: resources, commands, container argv, rendered sbatch text
(golden files), local ``-i`` runs, ``-n``, and the ``.runx`` file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from sbatch import expand_experiment, farm_spec
from sbatch.launch import Planned, container_argv, render_script, strip_launcher, task_spec
from sbatch.resources import ResourceError, submitit_parameters
from sbatch.runxconf import load_settings, render_template, write_runx

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "sbatch"


# ---------------------------------------------------------------- resources


def test_unknown_resource_lists_valid_keys():
    with pytest.raises(ResourceError, match=r"unknown resource 'gpu'.*gpus_per_node.*cpus_per_task"):
        farm_spec({"gpu": 8})


@pytest.mark.parametrize("bad", [{"partition": "a\n#SBATCH --x"}, {"time": "soon"},
                                 {"nodes": "two"}, {"sbatch_extra": ["reservation=x"]},
                                 {"container_runtime": "docker"}, {"exclusive": "maybe"}])
def test_bad_resource_values_are_refused(bad):
    with pytest.raises(ResourceError):
        farm_spec(bad)


def test_layers_merge_and_map_to_submitit():
    spec = farm_spec({"gpus_per_node": 8, "time": 240, "partition": "a",
                      "sbatch_extra": "--reservation=r,--hint=nomultithread"},
                     {"partition": "b", "nodes": 2, "exclusive": True, "mail_type": "END"})
    params = submitit_parameters(spec, job_name="j", preempt_signal="USR1")
    assert params["partition"] == "b" and params["nodes"] == 2 and params["ntasks_per_node"] == 8
    assert params["gpus_per_node"] == 8 and params["time"] == 240 and params["exclusive"] is True
    assert params["additional_parameters"] == {"requeue": True, "signal": "USR1@120",
                                               "reservation": "r", "hint": "nomultithread"}


# ---------------------------------------------------------------- commands


@pytest.mark.parametrize("argv, expected", [
    (["torchrun", "--nproc_per_node=8", "train.py", "--lr", "1"], ["python", "train.py", "--lr", "1"]),
    (["torchrun", "--nnodes", "2", "--standalone", "train.py"], ["python", "train.py"]),
    (["python", "-m", "torch.distributed.launch", "--nproc_per_node=8", "train.py"], ["python", "train.py"]),
    (["torchrun", "-m", "pkg.main", "--x"], ["python", "-m", "pkg.main", "--x"]),
    (["python", "train.py", "--nproc_per_node=8"], ["python", "train.py", "--nproc_per_node=8"]),
])
def test_strip_launcher(argv, expected):
    assert strip_launcher(argv) == expected


def test_container_argv_follows_apptainer_cli():
    spec = farm_spec({"image": "/img/x.sif", "binds": ["/data", "/logs"], "gpus_per_node": 1})
    argv = container_argv(["python", "t.py"], spec, binds=["/logs", "/data", "/logs"], cwd="/logs/r/code")
    assert argv == ["apptainer", "exec", "--nv", "--bind", "/logs,/data", "--pwd", "/logs/r/code",
                    "/img/x.sif", "python", "t.py"]
    cpu = container_argv(["p"], farm_spec({"image": "/img/x.sif"}), binds=[], cwd="/c")
    assert "--nv" not in cpu  # no GPUs requested: no driver libraries to bind
    spec = farm_spec({"image": "/img/x.sif", "container_runtime": "singularity", "container_nv": False})
    assert container_argv(["p"], spec, binds=[], cwd="/c")[:3] == ["singularity", "exec", "--pwd"]
    assert container_argv(["p"], farm_spec({}), binds=["/x"], cwd="/c") == ["p"]


def plans(experiment: dict, logroot: str, **resources) -> list[Planned]:
    runs = expand_experiment(experiment, exp_name="exp", logroot=logroot, slug=lambda: "cool-name",
                             now=__import__("datetime").datetime(2024, 1, 2, 3, 4))
    return [Planned(run=r, spec=farm_spec(resources, r.resources), logroot=logroot) for r in runs]


def test_task_spec_binds_logroot_and_data(monkeypatch):
    monkeypatch.setenv("CITYSCAPES_ROOT", "/datasets/cs")
    p, = plans({"CMD": "torchrun --nproc_per_node=2 train.py", "HPARAMS": {"result_dir": "LOGDIR"}},
               "/logs", image="/i.sif", binds="/extra", gpus_per_node=2)
    spec = task_spec(p)
    code = "/logs/exp/cool-name_2024.01.02_03.04/code"
    assert spec.argv[:5] == ["apptainer", "exec", "--nv", "--bind", "/logs,/datasets/cs,/extra"]
    assert spec.argv[5:] == ["--pwd", code, "/i.sif", "python", "train.py", "--result_dir", code[:-5]]
    assert spec.cwd == code and spec.env["PYTHONPATH"] == code


# ---------------------------------------------------------------- rendered sbatch text


def normalise(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "<TMP>").replace(sys.executable, "<PYTHON>")


GOLDEN_CASES = {
    "single": ({"CMD": "python train.py", "HPARAMS": {"lr": 0.01, "result_dir": "LOGDIR"}},
               {"time": 30, "cpus_per_task": 2, "mem": "4G"}),
    "array": ({"CMD": "torchrun --nproc_per_node=4 train.py", "HPARAMS": {"lr": [0.01, 0.02], "name": ["a b", "$(x)"]}},
              {"gpus_per_node": 4, "nodes": 2, "partition": "gpu", "account": "acc", "qos": "high",
               "constraint": "a100", "exclusive": True, "mail_type": "END", "mail_user": "me@x.org",
               "dependency": "afterok:1", "array_parallelism": 2, "sbatch_extra": ["--reservation=r"],
               "time": "1-00:00:00", "signal_delay_s": 300}),
    "container": ({"CMD": "python train.py", "HPARAMS": {"x": 1}},
                  {"image": "/img/hmsa.sif", "binds": ["/data"], "container_runtime": "singularity"}),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_rendered_sbatch_script_golden(case, tmp_path, monkeypatch):
    for key in ("CITYSCAPES_ROOT", "MAPILLARY_ROOT", "SYNTHETIC_ROOT", "ASSETS_PATH", "DATA_ROOT"):
        monkeypatch.delenv(key, raising=False)
    experiment, resources = GOLDEN_CASES[case]
    group = plans(experiment, str(tmp_path / "logs"), **resources)
    text = normalise(render_script(group, tmp_path / "logs" / "exp" / "submitit",
                                   str(tmp_path / "logs" / "exp" / "manifest.json")), tmp_path)
    path = GOLDEN / f"{case}.sh"
    if os.environ.get("HMSA_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_script_comments_cannot_inject_lines(tmp_path):
    group = plans({"CMD": "python t.py", "HPARAMS": {"x": "a\nrm -rf /"}}, str(tmp_path))
    text = render_script(group, tmp_path / "s", str(tmp_path / "m.json"))
    assert not any(line.startswith("rm -rf") for line in text.splitlines())


# ---------------------------------------------------------------- command line, local runs


@pytest.fixture
def project(tmp_path):
    """A tiny code root with its own .runx (logroot under tmp) and a stand-in program."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "prog.py").write_text(textwrap.dedent("""\
        import json, os, sys
        args = sys.argv[1:]
        out = args[args.index("--out") + 1]
        json.dump({"argv": args, "cwd": os.getcwd(), "pp": os.environ.get("PYTHONPATH")}, open(out, "w"))
        sys.exit(int(args[args.index("--code") + 1]) if "--code" in args else 0)
        """))
    (root / ".runx").write_text(yaml.safe_dump({"LOGROOT": "logs", "CODE_IGNORE_PATTERNS": "logs",
                                                "FARM": "f", "f": {"SUBMIT_CMD": "x", "RESOURCES": {"time": 5}}}))
    return root


def sbatch_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sbatch", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def write_exp(root: Path, experiment: dict) -> str:
    (root / "exp.yml").write_text(yaml.safe_dump(experiment))
    return "exp.yml"


TRICKY = "a b 'q' \"dq\"; $(touch PWNED) `touch PWNED2` $HOME \\n"


def test_interactive_runs_in_order_and_values_arrive_intact(project):
    exp = write_exp(project, {"CMD": "python prog.py", "HPARAMS": {"name": [TRICKY, "plain"],
                                                                   "out": "LOGDIR/out.json"}})
    done = sbatch_cli(project, exp, "-i")
    assert done.returncode == 0, done.stderr
    runs = sorted((project / "logs" / "exp").iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(runs) == 2
    got = [json.loads((r / "out.json").read_text()) for r in runs]
    assert sorted(g["argv"][1] for g in got) == sorted([TRICKY, "plain"])
    for r, g in zip(runs, got, strict=True):
        assert g["cwd"] == str(r / "code") == g["pp"] and (r / "code" / "prog.py").exists()
        assert json.loads((r / "hparams.json").read_text())["out"] == str(r / "out.json")
        assert "prog.py" in (r / "command.sh").read_text()
    assert not list(project.rglob("PWNED*"))


def test_saved_command_reruns_with_env_words(project):
    # CMD may start with NAME=value words; command.sh must still be a runnable script
    exp = write_exp(project, {"CMD": "HMSA_X=1 python prog.py", "HPARAMS": {"out": "LOGDIR/o.json"}})
    assert sbatch_cli(project, exp, "-i").returncode == 0
    (run,) = (project / "logs" / "exp").iterdir()
    (run / "o.json").unlink()
    again = subprocess.run(["sh", str(run / "command.sh")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "o.json").read_text())["cwd"] == str(run / "code")


def test_interactive_stops_at_failure_unless_keep_going(project):
    exp = write_exp(project, {"CMD": "python prog.py", "HPARAMS": {"code": [3, 0], "out": "LOGDIR/o.json"}})
    stop = sbatch_cli(project, exp, "-i", "--exp_name", "stop")
    assert stop.returncode == 1 and "FAILED with exit status 3" in stop.stderr
    assert "1 failed, 0 succeeded, 1 not run" in stop.stderr
    assert len(list((project / "logs" / "stop").glob("*/o.json"))) == 1
    going = sbatch_cli(project, exp, "-i", "--keep-going", "--exp_name", "going")
    assert going.returncode == 1 and "1 failed, 1 succeeded, 0 not run" in going.stderr
    assert len(list((project / "logs" / "going").glob("*/o.json"))) == 2


def test_dry_run_prints_the_array_script_once_and_creates_nothing(project):
    exp = write_exp(project, {"CMD": "python prog.py", "HPARAMS": {"a": [1, 2, 3], "RUNX.TAG": "a{a}"}})
    done = sbatch_cli(project, exp, "-n", "--tag", "ignored")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#!/bin/bash") == 1 and done.stdout.count("#SBATCH --array=0-2%3") == 1
    assert re.search(r"# 1 a2_\S+ python prog.py --a 2\n", done.stdout)
    assert not (project / "logs").exists()
    interactive = sbatch_cli(project, exp, "-n", "-i")
    assert interactive.stdout.count("python prog.py --a") == 3 and not (project / "logs").exists()


def test_cli_errors_are_one_line_with_status_2(project):
    exp = write_exp(project, {"CMD": "python prog.py", "HPARAMS": {"a": 1}, "RESOURCES": {"gpu": 1}})
    done = sbatch_cli(project, exp, "-n")
    assert done.returncode == 2 and "unknown resource 'gpu'" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- .runx


def test_runx_template_gets_absolute_logroot(tmp_path):
    path = write_runx(tmp_path)
    config = yaml.safe_load(path.read_text())
    assert config["LOGROOT"] == str(tmp_path / "logs") and os.path.isabs(config["LOGROOT"])
    assert sys.executable in config["slurm_draco"]["SUBMIT_CMD"]
    assert "submit_job" in config["slurm_draco"]["SUBMIT_CMD"]  # runx's farm builder needs it
    ignored = config["CODE_IGNORE_PATTERNS"].split(",")
    assert {"logs", "data", ".git", "*.pth"} <= set(ignored)
    path.write_text("LOGROOT: /custom\n")
    assert write_runx(tmp_path).read_text() == "LOGROOT: /custom\n"  # kept unless forced


def test_reinstall_into_another_environment_updates_the_runx_interpreter_only(tmp_path):
    """.runx names the interpreter runx's farm mode submits with; after `install.sh --venv OTHER` the old one
    may be gone. Site edits stay, the interpreter follows the environment that ran `sbatch init`."""
    path = write_runx(tmp_path)
    edited = path.read_text().replace(sys.executable, "/old/venv/bin/python").replace("time: 240", "time: 30")
    path.write_text(edited)
    config = yaml.safe_load(write_runx(tmp_path).read_text())
    assert config["slurm_draco"]["SUBMIT_CMD"] == f"PYTHONPATH=code {sys.executable} -m sbatch.submit_job"
    assert config["local"]["SUBMIT_CMD"].split()[1] == sys.executable
    assert config["slurm_draco"]["RESOURCES"]["time"] == 30  # the site's edit is kept


def test_settings_resolve_relative_logroot_and_merge_resources(project):
    write_exp(project, {"CMD": "p", "HPARAMS": {}, "RESOURCES": {"nodes": 2}})
    settings = load_settings(project / "exp.yml", cwd=project)
    assert settings.logroot == project / "logs" and settings.resources == {"time": 5, "nodes": 2}
    assert "*.pth" in settings.code_ignore_patterns
    assert "LOGROOT: logs" in render_template.__globals__["TEMPLATE"].read_text()


# ---------------------------------------------------------------- inside the job (sbatch.task)


@pytest.mark.parametrize("code, restarts, outcome", [(0, "0", "ok"), (75, "0", "requeued"),
                                                     (75, "2", "failed"), (3, "0", "failed")])
def test_run_task_exit_handling(code, restarts, outcome, tmp_path, monkeypatch):
    """The job-side callable, run here directly (no Slurm): 75 requeues until the bound."""
    from sbatch.task import CommandFailedError, RunTask, TaskSpec

    monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    requeued = []
    monkeypatch.setattr(RunTask, "_requeue", staticmethod(lambda env: requeued.append(env["SLURM_JOB_ID"])))
    spec = TaskSpec(name="r", logdir=str(tmp_path), argv=[sys.executable, "-c", f"raise SystemExit({code})"],
                    cwd=str(tmp_path), max_requeue=2)
    if outcome == "failed":
        with pytest.raises(CommandFailedError, match=f"exit status {code}"):
            RunTask()(spec)
    else:
        assert RunTask()(spec) == code
    assert requeued == (["77"] if outcome == "requeued" else [])
    events = [json.loads(x) for x in (tmp_path / "slurm_events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "exit"] and events[1]["returncode"] == code


def test_exit_status_seen_from_a_handler_that_interrupted_wait():
    """checkpoint() runs in a signal handler on top of Popen.wait(): it must see the status
    without reaping (the interrupted wait still gets it)."""
    import signal
    import threading

    from sbatch.task import wait_exit_status

    proc = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(75)"])
    seen = {}
    old = signal.signal(signal.SIGUSR1, lambda *_: seen.update(code=wait_exit_status(proc.pid, 10)))
    try:
        threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGUSR1)).start()
        assert proc.wait() == 75
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert seen == {"code": 75}


def test_interactive_runs_start_the_launchers_python_without_activation(project, tmp_path):
    """`.venv/bin/python -m sbatch exp.yml -i` with the environment not activated: PATH finds another
    `python` (Debian's, without torch); the run's bare `python` must be the launcher's interpreter, and
    so must a `python` the run itself starts."""
    (project / "probe.py").write_text(textwrap.dedent("""\
        import json, subprocess, sys
        inner = subprocess.run(["python", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True)
        json.dump({"outer": sys.executable, "inner": inner.stdout.strip()}, open(sys.argv[-1], "w"))
        """))
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for name in ("python", "python3"):  # what an un-activated PATH would find first
        (decoy / name).write_text("#!/bin/sh\necho decoy python >&2; exit 97\n")
        (decoy / name).chmod(0o755)
    exp = write_exp(project, {"CMD": "python probe.py", "HPARAMS": {"out": "LOGDIR/which.json"}})
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{decoy}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "sbatch", exp, "-i"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (which,) = (project / "logs" / "exp").glob("*/which.json")
    got = json.loads(which.read_text())
    assert got["outer"] == sys.executable and got["inner"] == sys.executable


def test_same_python_leaves_other_programs_alone():
    from sbatch.task import same_python

    for argv in (["apptainer", "exec", "img.sif", "python", "x.py"], ["python3.12", "x.py"], ["/usr/bin/python3"]):
        assert same_python(argv, {"PATH": "/bin"}) == (argv, {"PATH": "/bin"})
    argv, env = same_python(["python3", "-u", "train.py"], {"PATH": "/bin"})
    assert argv == [sys.executable, "-u", "train.py"]
    assert env["PATH"] == f"{os.path.dirname(sys.executable)}{os.pathsep}/bin"


def test_snapshot_leaves_out_python_environments_whatever_their_name(project):
    """install.sh creates ./.venv (gigabytes) in the checkout; a CODE_IGNORE_PATTERNS without `.venv` (a site's
    own .runx, the tests' configs) copied it into every run directory until the disk was full."""
    for env, marker in ((".venv", "pyvenv.cfg"), ("myenv", "pyvenv.cfg"), ("conda", "conda-meta")):
        (project / env / "lib").mkdir(parents=True)
        (project / env / "lib" / "big.so").write_bytes(b"x" * 1024)
        marker_path = project / env / marker
        marker_path.mkdir() if marker == "conda-meta" else marker_path.write_text("home = /usr/bin\n")
    (project / "envs_are_code").mkdir()  # an ordinary folder of that kind of name is copied
    (project / "envs_are_code" / "x.py").write_text("")
    exp = write_exp(project, {"CMD": "python prog.py", "HPARAMS": {"out": "LOGDIR/o.json"}})
    assert sbatch_cli(project, exp, "-i").returncode == 0
    (code,) = (project / "logs" / "exp").glob("*/code")
    assert (code / "prog.py").is_file() and (code / "envs_are_code" / "x.py").is_file()
    assert not any((code / env).exists() for env in (".venv", "myenv", "conda"))
