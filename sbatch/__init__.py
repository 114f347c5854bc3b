"""Experiment runner: runx YAMLs expanded with runx's semantics, run here or on Slurm via submitit.

    from sbatch import expand_experiment, farm_spec, load_settings
    runs = expand_experiment(yaml_dict, exp_name="sweep", logroot="/abs/logs")

Command line: ``python -m sbatch --help`` (see docs/sbatch.md).
"""

from .expand import ExperimentError, Run, check_unique, expand_experiment
from .resources import FarmSpec, ResourceError, farm_spec, valid_keys
from .runxconf import ConfigFileError, Settings, load_settings, write_runx

__all__ = ["ConfigFileError", "ExperimentError", "FarmSpec", "ResourceError", "Run", "Settings",
           "check_unique", "expand_experiment", "farm_spec", "load_settings", "valid_keys",
           "write_runx"]
