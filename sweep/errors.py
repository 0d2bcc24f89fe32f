"""Errors a user can fix. Each carries one line that names the key, file or value at fault.

The CLI prints ``str(error)`` and exits with status 2, without a traceback.
"""

from __future__ import annotations


class SweepError(Exception):
    """Base class for errors caused by the user's input (config, data, search space)."""

    exit_code = 2


class ConfigError(SweepError):
    """A config key has a wrong type, an out-of-range value, or is unknown."""


class DataError(SweepError):
    """A data file or column cannot be used."""


class SearchSpaceError(SweepError):
    """The search space YAML is invalid."""


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss became NaN or infinite."""
