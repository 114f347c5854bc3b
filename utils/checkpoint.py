"""Compatibility alias: the checkpoint code lives in :mod:`network.checkpoint` (import it from there)."""

from network.checkpoint import (  # noqa: F401
    BEST,
    FORMAT,
    LAST,
    build_checkpoint,
    capture_rng,
    is_training_checkpoint,
    remove_stale_temps,
    restore_rng,
    save_checkpoint,
)
