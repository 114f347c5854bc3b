"""The one exception type of the data pipeline."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset cannot be used as asked: the message names the path and the fix."""
