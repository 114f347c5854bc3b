"""Read ``.runx`` + an experiment YAML the way runx does, and write ``.runx`` from the template.

runx looks for ``--config_file``, then ``./.runx``, then ``~/.config/runx.yml``; the selected
farm section's keys (``SUBMIT_CMD``, ``RESOURCES``...) are lifted to the top; the experiment's
keys override. Unlike runx, a relative ``LOGROOT`` is resolved against the directory of the
config file, and an experiment's ``RESOURCES`` merge into the farm's instead of replacing them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "runx_template.yml"
DEFAULT_IGNORE = ".git,*.pyc,docs*,test*"  # runx's default


class ConfigFileError(UserError, ValueError):
    """No usable .runx / experiment file; the message says which file and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """The merged ``.runx`` + experiment settings that the launcher needs."""

    config_path: Path | None
    logroot: Path
    exp_name: str
    farm: str | None
    resources: dict[str, Any]
    code_ignore_patterns: tuple[str, ...]
    experiment: dict[str, Any] = field(default_factory=dict)


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigFileError(f"cannot read {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path} must hold a YAML mapping, got {type(data).__name__}")
    return data


def find_config(config_file: str | None, cwd: Path) -> Path | None:
    """runx's search order; None when there is none (the template then applies)."""
    candidates = [Path(config_file)] if config_file else []
    candidates += [cwd / ".runx", Path.home() / ".config" / "runx.yml"]
    if config_file and not Path(config_file).is_file():
        raise ConfigFileError(f"--config_file {config_file} does not exist")
    return next((c for c in candidates if c.is_file()), None)


def render_template(repo: Path = REPO, python: str = sys.executable, logroot: str | None = None) -> str:
    """The template with LOGROOT and the Python interpreter made absolute for this checkout."""
    text = TEMPLATE.read_text().replace("@PYTHON@", python)
    root = Path(logroot) if logroot else repo / "logs"
    return text.replace("\nLOGROOT: logs\n", f"\nLOGROOT: {json.dumps(os.path.abspath(root))}\n", 1)


_SUBMIT_PYTHON = re.compile(r"(PYTHONPATH=code )(\S+)( -m sbatch\.submit_job)")


def write_runx(repo: Path = REPO, *, force: bool = False, logroot: str | None = None) -> Path:
    """Write ``repo/.runx`` from the template. An existing one is kept (it may hold site edits) unless
    ``force``, but the interpreter its farms submit with becomes this one: after a reinstall into
    another environment, runx's farm mode must not start the old, perhaps deleted, interpreter."""
    from utils.io import atomic_write_text

    target = repo / ".runx"
    if target.exists() and not force:
        text = target.read_text()
        new = _SUBMIT_PYTHON.sub(lambda m: m.group(1) + sys.executable + m.group(3), text)
        if new != text:
            atomic_write_text(target, new)
        return target
    atomic_write_text(target, render_template(repo, logroot=logroot))
    return target


def _farm_view(config: dict[str, Any], farm: str | None) -> tuple[str | None, dict[str, Any]]:
    farm = farm or config.get("FARM")
    if farm is None:
        return None, {}
    section = config.get(farm)
    if not isinstance(section, dict):
        farms = [k for k, v in config.items() if isinstance(v, dict) and "RESOURCES" in v]
        raise ConfigFileError(f"farm {farm!r} is not a section of the config; farms: {farms}")
    return farm, section


def logroot_of(config_file: str | None = None, cwd: Path | None = None) -> Path:
    """LOGROOT of the runx config in effect (the template's when there is none)."""
    path = find_config(config_file, Path(cwd or os.getcwd()))
    config = load_yaml(path) if path else yaml.safe_load(render_template())
    if not config.get("LOGROOT"):
        raise ConfigFileError(f"no LOGROOT in {path or TEMPLATE}")
    base = path.parent if path else REPO
    return Path(os.path.abspath(base / os.path.expanduser(str(config["LOGROOT"]))))


def load_settings(exp_yml: str | Path, *, config_file: str | None = None, farm: str | None = None,
                  exp_name: str | None = None, cwd: Path | None = None) -> Settings:
    """Merge the runx config and the experiment file into :class:`Settings`."""
    cwd = Path(cwd or os.getcwd())
    path = find_config(config_file, cwd)
    config = load_yaml(path) if path else yaml.safe_load(render_template())
    base = path.parent if path else REPO
    farm, section = _farm_view(config, farm)
    experiment = load_yaml(Path(exp_yml))
    resources = {**section.get("RESOURCES", {}), **experiment.get("RESOURCES", {})}
    logroot = experiment.get("LOGROOT", config.get("LOGROOT"))
    if not logroot:
        raise ConfigFileError(f"no LOGROOT in {path or TEMPLATE} or {exp_yml}")
    ignore = experiment.get("CODE_IGNORE_PATTERNS", config.get("CODE_IGNORE_PATTERNS", DEFAULT_IGNORE))
    patterns = tuple(p for p in f"{ignore},*.pth".split(",") if p)
    return Settings(config_path=path, logroot=Path(os.path.abspath(base / os.path.expanduser(str(logroot)))),
                    exp_name=exp_name or Path(exp_yml).stem, farm=farm, resources=resources,
                    code_ignore_patterns=patterns, experiment=experiment)
