"""containers/hmsa.def: every build argument it uses is declared, the files it copies exist, and
it installs the project's dependencies from pyproject.toml (Apptainer itself is not installed
here, so the image is not built in CI; the generated `apptainer exec` line is tested against a
stand-in executable in tests/test_slurm_integration.py)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEF = REPO / "containers" / "hmsa.def"


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^%(\w+)\s*$", text, flags=re.M)
    return {name: body for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_build_arguments_declared_and_used():
    text = DEF.read_text()
    s = sections(text)
    declared = {line.split("=", 1)[0].strip() for line in s["arguments"].splitlines() if "=" in line}
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    assert used == declared and "TORCH_INDEX" in used
    assert re.search(r"^Bootstrap: docker$", text, flags=re.M)


def test_copies_existing_files_and_installs_the_project():
    s = sections(DEF.read_text())
    for line in filter(str.strip, s["files"].splitlines()):
        assert (REPO / line.split()[0]).is_file(), line
    assert '--index-url "{{ TORCH_INDEX }}"' in s["post"] and 'pip install "/opt/hmsa[' in s["post"]
    assert "import cv2, runx, submitit" in s["test"]
