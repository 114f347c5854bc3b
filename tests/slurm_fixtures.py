"""A real single-node Slurm cluster (with accounting) for the tests, started once per session.

Imported by tests/test_slurm*.py and tests/test_multinode.py. The cluster is
``sbatch/local_cluster.sh`` under a temporary directory with free ports; tests skip (with the
reason) only when the Slurm, munge or MariaDB binaries are absent or the tests do not run as root
(``SlurmUser=root``), and the two-host cluster also when network namespaces are unavailable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "sbatch" / "local_cluster.sh"
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")
PATH = os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin"


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b, path=PATH) is None]


def skip_reason() -> str | None:
    missing = missing_binaries()
    if missing:
        return f"Slurm not installed (missing {', '.join(missing)}): run bash .ci/install.sh --slurm"
    if os.geteuid() != 0:
        return "the local Slurm cluster runs its daemons as root (SlurmUser=root); not root here"
    return None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def multi_skip_reason() -> str | None:
    """Why the two-host cluster (network namespaces) cannot start here, or None."""
    reason = skip_reason()
    if reason:
        return reason
    missing = [b for b in ("ip", "nsenter", "unshare", "flock") if shutil.which(b, path=PATH) is None]
    if missing:
        return f"the two-host cluster needs {', '.join(missing)} (iproute2, util-linux)"
    probe = f"hmsa-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          env={**os.environ, "PATH": PATH})
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, env={**os.environ, "PATH": PATH})
    if made.returncode:
        return f"network namespaces unavailable here (ip netns add: {made.stderr.strip()})"
    return None


@contextmanager
def local_cluster(root: Path, **settings: str) -> Iterator[dict[str, str]]:
    """``local_cluster.sh start`` under ``root`` on free ports; stopped (and, for several hosts,
    its namespaces, links and /etc/netns files removed) however the body ends."""
    ports = free_ports(4)
    env = {**os.environ, "PATH": PATH, "HMSA_SLURMCTLD_PORT": str(ports[0]),
           "HMSA_SLURMD_PORT": str(ports[1]), "HMSA_SLURMDBD_PORT": str(ports[2]),
           "HMSA_MYSQL_PORT": str(ports[3]), **settings}
    try:
        started = subprocess.run(["bash", str(SCRIPT), "start", str(root)], env=env, capture_output=True,
                                 text=True, timeout=120)
        if started.returncode != 0:
            pytest.fail(f"local Slurm cluster did not start:\n{started.stderr}\n(logs in {root}/log)")
        yield {"SLURM_CONF": str(root / "etc" / "slurm.conf"), "PATH": PATH}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(root)], env=env, capture_output=True, timeout=60)


@contextmanager
def client_environ(client: dict[str, str]) -> Iterator[None]:
    """``client`` in os.environ for the body: submitit (in-process) and sacct read it."""
    old = {k: os.environ.get(k) for k in client}
    os.environ.update(client)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Start the cluster; yield the environment clients need (``SLURM_CONF``, ``PATH``)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with local_cluster(tmp_path_factory.mktemp("slurm")) as client, client_environ(client):
        yield client


@pytest.fixture(scope="session")
def multi_slurm_cluster(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Two hosts, rack1-node01 and rack1-node02, each in its own network namespace; yields
    the client environment plus ``HMSA_SLURM_DIR`` (for ``local_cluster.sh node-down DIR NODE``).
    Not put into os.environ: tests that use it pass it to their subprocesses."""
    reason = multi_skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm2")
    # 4 CPUs per host (2 real cores): two 2-rank jobs and a 2-task one-host job fit at once
    with local_cluster(root, HMSA_SLURM_HOSTS="2", HMSA_SLURM_CPUS="4") as client:
        yield {**client, "HMSA_SLURM_DIR": str(root)}
    left = network_leftovers(root)
    assert not left, f"local_cluster.sh stop left {left} behind"


def network_leftovers(root: Path) -> list[str]:
    """Namespaces, links and /etc/netns entries of the two-host cluster under ``root`` that exist."""
    netid = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:6]  # as local_cluster.sh derives it
    env = {**os.environ, "PATH": PATH}
    names = subprocess.run(["ip", "netns", "list"], env=env, capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], env=env, capture_output=True, text=True).stdout
    found = [n for n in names if n.startswith(f"hmsa-{netid}-")]
    found += [f"link {m}" for m in re.findall(rf"\b(h[bvp]{netid}\d*)\b", links)]
    found += [str(p) for p in Path("/etc/netns").glob(f"hmsa-{netid}-*")]
    return found


def wait_until(predicate: Callable[[], object], timeout: float, what: str, poll: float = 1.0) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sacct_states(job_ids: list[str], client: dict[str, str] | None = None) -> dict[str, str]:
    from sbatch.manifest import _sacct, lookup

    with client_environ(client or {}):
        states = _sacct(job_ids)
    return {j: (lookup(states, j) or ("PENDING", ""))[0] for j in job_ids}


def wait_terminal(job_ids: list[str], timeout: float, client: dict[str, str] | None = None) -> dict[str, str]:
    from sbatch.manifest import ACTIVE_STATES

    def done() -> dict[str, str] | None:
        states = sacct_states(job_ids, client)
        got = {j: states.get(j, "PENDING") for j in job_ids}
        return got if all(s not in ACTIVE_STATES for s in got.values()) else None

    return wait_until(done, timeout, f"jobs {job_ids} to finish", poll=1.0)  # type: ignore[return-value]


def events(logdir: str | Path) -> list[dict]:
    path = Path(logdir) / "slurm_events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
