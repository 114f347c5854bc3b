"""Write one benchmark's section of bench/RESULTS.md, leaving the others alone (the bench scripts,
``python -m deploy.quantize --results_section``).

Each bench script owns the text between ``<!-- begin NAME -->`` and
``<!-- end NAME -->``; a rerun replaces its own section only.
"""

from __future__ import annotations

import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "RESULTS.md"
HEADER = "# Benchmark results\n\nEach section is written by the script named in it; rerun the command to refresh it.\n"


def machine() -> str:
    import os

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}, "
            f"1-minute load average {os.getloadavg()[0]:.1f} when written")


def write_section(name: str, body: str, command: str | None = None) -> Path:
    """Replace section ``name`` of RESULTS.md with ``body`` (Markdown)."""
    from utils.io import atomic_write_text

    command = command or "python " + " ".join(sys.argv)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- begin {name} -->\n## {name}\n\nCommand: `{command}`  \n"
               f"Measured {stamp} on {machine()}.\n\n{body.strip()}\n<!-- end {name} -->")
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    atomic_write_text(RESULTS, text)
    return RESULTS
