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


class TrackingLost(SweepError):
    """The tracking store (an MLflow server or a database server) stopped answering while
    runs were being written. The input was fine, so the exit status is 1."""

    exit_code = 1


class StorageLost(SweepError):
    """The database server of the Optuna storage stopped answering during a study. The
    input was fine, so the exit status is 1."""

    exit_code = 1


class DiskFull(SweepError):
    """A disk the study writes to (its storage, MLflow's store or artifacts) is full. The
    input was fine, so the exit status is 1."""

    exit_code = 1


class NonFiniteLossError(SweepError, RuntimeError):
    """Training diverged: a loss became NaN or infinite.

    The config was valid but the run failed (its MLflow run ends FAILED), so the exit
    status is 1; the CLI still prints one line, with the usual remedies, not a traceback.
    """

    exit_code = 1

    HINT = "training diverged: lower optimizer.lr or set trainer.gradient_clip_val"

    def __init__(self, message: str):
        # Unpickling calls __init__ with the full message again: add the hint once.
        super().__init__(message if self.HINT in message else f"{message}; {self.HINT}")


def disk_full(failure: BaseException) -> str | None:
    """What ran out of space, when ``failure`` or an error it came from is a full disk
    (or quota): an OSError of the file system, or sqlite's own "database or disk is
    full"; else None."""
    import errno

    seen: set[int] = set()
    error: BaseException | None = failure
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {error.filename}" if error.filename else ""
            return f"no space left on the device{where}"
        if "database or disk is full" in str(error):
            return "no space left on the device of the sqlite store (database or disk is full)"
        error = error.__cause__ or error.__context__
    return None
