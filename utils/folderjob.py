"""Bookkeeping of a folder inference that several processes share: claims, reports, the missing list.

``predict.py`` keeps its outputs complete-or-absent (atomic writes); this module keeps the
record of the work beside them, safe when runs over different ``--subdirs`` ranges, shards
or duplicate jobs write into one result folder::

    .claims/<hash>.claim        one per image in flight: its owner (host, pid, run); removed when done
    reports/summary<part>.json  per range and shard ("part"): each run's status and counts
    reports/failures<part>.csv  that part's images that failed and are still not done
    reports/failures<part>@<run>.csv  a run's failures, appended one by one (folded in at its end)
    summary.json, failures.csv  the merged view over every part, rebuilt whenever a part is written

A claim is taken with an exclusive create, so two processes never work on one image; the
claim of a dead process (same host: its pid is gone; another host: older than the stale
timeout) is taken over. Each failure is appended to the run's journal at once and the reports
are rewritten atomically from time to time, so a crash (even SIGKILL) or a full disk keeps every
failure recorded before it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

from utils.io import atomic_write_json, atomic_write_text

CLAIMS = ".claims"
REPORTS = "reports"
MAX_RUNS_KEPT = 20  # per part: the history of runs in its summary
UNREADABLE_GRACE_S = 5.0  # an empty or unreadable claim older than this has no owner (its writer died)


def part_suffix(subdirs: str | None, shard_suffix: str) -> str:
    """``"" `` for the whole folder in one shard; else e.g. ``_subdirs939-986_shard0001of0004``."""
    if not subdirs:
        return shard_suffix
    safe = re.sub(r"[^A-Za-z0-9.,-]+", "+", subdirs)
    if len(safe) > 60:  # a file name has to stay short; the hash keeps long specs apart
        safe = safe[:40] + "+" + hashlib.sha1(subdirs.encode()).hexdigest()[:12]
    return f"_subdirs{safe}{shard_suffix}"


# ---------------------------------------------------------------- claims


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: a run of one process on one host."""

    host: str
    pid: int
    run_id: str

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    """Per-image claim files under ``result_dir/.claims`` (picklable: DataLoader workers claim too)."""

    def __init__(self, result_dir: str | os.PathLike, owner: Owner, stale_after_s: float) -> None:
        self.dir = Path(result_dir) / CLAIMS
        self.owner = owner
        self.stale_after_s = stale_after_s

    def path(self, stem: str) -> Path:
        return self.dir / f"{hashlib.sha1(stem.encode()).hexdigest()[:24]}.claim"

    def claim(self, stem: str) -> bool:
        """True when this run now holds ``stem``; False when a live process does."""
        path = self.path(stem)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileNotFoundError:  # the first claim in this folder
                self.dir.mkdir(parents=True, exist_ok=True)
                continue
            except FileExistsError:
                if not self._remove_if_stale(path):
                    return False
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"host": self.owner.host, "pid": self.owner.pid, "run": self.owner.run_id,
                               "stem": stem}, f)
            except BaseException:  # e.g. a full disk: an empty claim would hide the image from the next run
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            return True
        return False

    def release(self, stem: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(stem).unlink()

    def release_all(self) -> None:
        """Drop every claim of this run, also those a DataLoader worker took and never handed over."""
        for path in self.dir.glob("*.claim") if self.dir.is_dir() else ():
            if (_read_json(path) or {}).get("run") == self.owner.run_id:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def sweep(self) -> int:
        """Remove every stale claim (a dead owner on this host, a timed-out one elsewhere, an unreadable
        one past its grace) and the leftovers of take-overs; returns how many. A run killed outright
        (SIGKILL) leaves its claims behind, also on images it finished: the next run clears them here."""
        removed = 0
        for path in sorted(self.dir.glob("*.claim*")) if self.dir.is_dir() else ():
            if ".stale" in path.name:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            held = _read_json(path)
            if held is not None and held.get("run") == self.owner.run_id:
                continue
            if self._remove_if_stale(path):
                removed += 1
        return removed

    def holder(self, stem: str) -> dict | None:
        """Who holds ``stem`` now; ``None`` also when the claim is stale (its process is gone)."""
        path = self.path(stem)
        held = _read_json(path)
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return None if held is None or self._is_stale(held, age) else held

    def _remove_if_stale(self, path: Path) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True  # released meanwhile: try again
        held = _read_json(path)
        if held is None and age < UNREADABLE_GRACE_S:
            return False  # being written right now (create and write are microseconds apart)
        if held is not None and not self._is_stale(held, age):
            return False
        # rename first: of two processes taking over one stale claim, only one rename succeeds
        grave = path.with_name(f"{path.name}.stale{self.owner.pid}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return True
        with contextlib.suppress(FileNotFoundError):  # a sweep may have removed the grave already
            grave.unlink()
        return True

    def _is_stale(self, held: dict, age: float) -> bool:
        if held.get("host") == self.owner.host:
            if held.get("pid") == self.owner.pid:  # this process: an earlier run that has ended
                return held.get("run") != self.owner.run_id
            if not pid_alive(int(held.get("pid", 0))):
                return True
        return age > self.stale_after_s  # another host (its pid means nothing here), or a reused pid


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- reports


FAILURE_HEADER = ("path", "reason", "time", "label")


class Failure(NamedTuple):
    reason: str
    time: str  # ISO local time: the latest record of an image wins
    label: str  # its label output, relative to result_dir: once it exists the image is done


def read_failures(path: Path) -> dict[str, Failure]:
    """``input path -> Failure`` from one failures CSV; a missing or damaged file reads as empty."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text())))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return {r[0]: Failure(*r[1:4]) for r in rows[1:] if len(r) >= 4}


def failures_text(rows: dict[str, Failure]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(FAILURE_HEADER)
    writer.writerows([p, *f] for p, f in sorted(rows.items()))
    return buf.getvalue()


def merged_failures(result_dir: str | os.PathLike) -> dict[str, Failure]:
    """Every part's recorded failures, the latest record per image."""
    rows: dict[str, Failure] = {}
    for path in sorted((Path(result_dir) / REPORTS).glob("failures*.csv")):
        for rel, f in read_failures(path).items():
            if rel not in rows or f.time >= rows[rel].time:
                rows[rel] = f
    return rows


class PartReport:
    """One run's share of ``reports/summary<part>.json`` and ``reports/failures<part>.csv``.

    Other runs of the same part (a second process, an earlier run) keep their entries; a
    failure whose image has been completed since leaves the lists at the final write.
    Each failure is appended (and flushed) to this run's journal ``reports/failures<part>@<run>.csv``
    at once, so a crash loses none; the part's CSV and the merged view are rewritten for each of
    the first 100 failures, then every ``every_s`` seconds (a rewrite costs O(failures)), and at
    the end, which folds the journal in and removes it. Readers (the merged view, ``--list_missing``)
    read journals too, also those a killed run left.
    """

    def __init__(self, result_dir: str | os.PathLike, part: str, owner: Owner,
                 record: Callable[[], dict], every_s: float = 10.0) -> None:
        self.result_dir = Path(result_dir)
        self.part, self.owner, self.record = part, owner, record
        self.every_s = every_s
        self.failures: dict[str, Failure] = {}
        self.last_write = 0.0
        self._journal: TextIO | None = None

    @property
    def summary_path(self) -> Path:
        return self.result_dir / REPORTS / f"summary{self.part}.json"

    @property
    def failures_path(self) -> Path:
        return self.result_dir / REPORTS / f"failures{self.part}.csv"

    @property
    def journal_path(self) -> Path:
        """``@`` appears in no part name (part_suffix), so ``failures<part>@*`` is this part's alone."""
        return self.result_dir / REPORTS / f"failures{self.part}@{self.owner.run_id}-{_host_tag()}.csv"

    def fail(self, rel: str, reason: str, label: str) -> None:
        failure = Failure(reason, time.strftime("%Y-%m-%dT%H:%M:%S"), label)
        self.failures[rel] = failure
        self._append(rel, failure)
        if len(self.failures) <= 100 or time.monotonic() - self.last_write > self.every_s:
            self.write()

    def _append(self, rel: str, failure: Failure) -> None:
        """One row, written and flushed to the OS now: it survives the process being killed."""
        if self._journal is None:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal = open(self.journal_path, "a", newline="")  # noqa: SIM115 (open until the final write)
            if self._journal.tell() == 0:
                csv.writer(self._journal).writerow(FAILURE_HEADER)
        csv.writer(self._journal).writerow([rel, *failure])
        self._journal.flush()

    def write(self, final: bool = False) -> None:
        """Merge this run into the part's files and rebuild the merged view, under one lock."""
        from filelock import FileLock

        self.last_write = time.monotonic()
        (self.result_dir / REPORTS).mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.result_dir / REPORTS / ".lock")):
            rows, journals = read_failures(self.failures_path), self._finished_journals(final)
            for journal in journals:
                rows.update(read_failures(journal))
            rows.update(self.failures)
            if final:  # only now: one stat per failed image
                rows = {p: f for p, f in rows.items() if not (self.result_dir / f.label).exists()}
            atomic_write_text(self.failures_path, failures_text(rows))
            self._remove_journals(journals)
            old = _read_json(self.summary_path) or {}
            runs = [r for r in old.get("runs", []) if r.get("run_id") != self.owner.run_id]
            runs = (runs + [self.record()])[-MAX_RUNS_KEPT:]
            atomic_write_json(self.summary_path, {"part": self.part or "(all)", "runs": runs})
            write_merged_view(self.result_dir, final)

    def _finished_journals(self, final: bool) -> list[Path]:
        """Journals of this part whose rows can move into its CSV now: this run's at its final write,
        and those of runs that ended without one (this host; named ``...@<time>-<pid>-<host>.csv``)."""
        done = []
        for path in sorted(self.journal_path.parent.glob(f"failures{self.part}@*.csv")):
            if path == self.journal_path:
                if final:
                    done.append(path)
                continue
            _, pid, host = (path.stem.rsplit("@", 1)[1].split("-") + ["", "", ""])[:3]
            if host == _host_tag() and pid.isdigit() and not pid_alive(int(pid)):
                done.append(path)
        return done

    def _remove_journals(self, journals: list[Path]) -> None:
        """After the CSV holding their rows has been replaced (a crash in between only repeats rows)."""
        for path in journals:
            if path == self.journal_path and self._journal is not None:
                self._journal.close()
                self._journal = None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def part_status(runs: list[dict]) -> dict:
    """A part's state: its latest finished run, and how many runs are still going.

    A run recorded as running is gone when its pid is dead (same host), or when a run started
    after its last update finished without meeting another process's claim (other hosts).
    """
    here = socket.gethostname()
    finished = [r for r in runs if r.get("status") != "running"]

    def going(r: dict) -> bool:
        if r.get("host") == here:
            return pid_alive(int(r.get("pid", 0)))
        return not any(f.get("started", "") > r.get("updated", "") and not f.get("elsewhere") for f in finished)

    running = [r for r in runs if r.get("status") == "running" and going(r)]
    # `updated` has one-second resolution: of runs finished within one second the later one in the
    # list (written later, under the lock) wins (the stable sort keeps list order among equal times)
    latest = sorted(finished, key=lambda r: r.get("updated", ""))[-1] if finished else None
    ok = latest is not None and not running and latest.get("status") == "complete" and bool(latest.get("ok"))
    return {"ok": ok, "status": "running" if running else (latest or {}).get("status", "never finished"),
            "running": len(running), "latest": latest}


def write_merged_view(result_dir: Path, final: bool) -> None:
    """``summary.json`` and ``failures.csv`` over every part (call under the reports lock)."""
    parts = {path.stem[len("summary"):] or "(all)": part_status((_read_json(path) or {}).get("runs", []))
             for path in sorted((result_dir / REPORTS).glob("summary*.json"))}
    rows = merged_failures(result_dir)
    if final:
        rows = {p: f for p, f in rows.items() if not (result_dir / f.label).exists()}
    atomic_write_text(result_dir / "failures.csv", failures_text(rows))
    bad = sorted(name for name, p in parts.items() if not p["ok"])
    atomic_write_json(result_dir / "summary.json", {
        "ok": not bad, "failed": len(rows), "parts_not_ok": bad, "pixel_share": merged_pixel_share(result_dir),
        "parts": parts,
        "note": "merged over reports/summary*.json: per part its latest finished run and the runs going on; "
                "pixel_share: predicted pixels per class name over the images every recorded run segmented"})


def merged_pixel_share(result_dir: Path) -> dict[str, float]:
    """Share of the predicted pixels per class name, summed over every recorded run of every part."""
    counts: dict[str, int] = {}
    for path in (result_dir / REPORTS).glob("summary*.json"):
        for run in (_read_json(path) or {}).get("runs", []):
            for name, n in (run.get("class_pixels") or {}).items():
                counts[name] = counts.get(name, 0) + int(n)
    total = sum(counts.values()) or 1
    return {k: round(v / total, 6) for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v}


def print_unwritten(rows: Iterable[tuple[str, str]], file: TextIO) -> None:
    """Last resort when the disk is full: the failures go to the log instead of being lost."""
    for rel, reason in rows:
        print(f"predict: failed (the report may lack it: disk full): {rel}: {reason}", file=file)
