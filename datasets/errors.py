"""The one exception type of the data pipeline."""

from __future__ import annotations

from utils.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset cannot be used as asked: the message names the path and the fix."""


class UnknownDatasetError(DatasetError, KeyError):
    """No dataset of that name is registered (a ``KeyError`` too, for lookups)."""

    __str__ = Exception.__str__  # KeyError would quote the message


class DatasetConfigError(DatasetError):
    """A dataset description (``dataset.yaml``) with a missing or wrong field; the message names it."""
