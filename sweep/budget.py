"""Exactly ``study.n_trials`` finished trials, however many workers share the study.

Optuna checks ``MaxTrialsCallback`` after each trial, so N workers overshoot by up to
N - 1 (optuna #3518). Here the decision "finished + running < n_trials, start another"
and the ``ask()`` that makes the next trial RUNNING happen under one inter-process lock:
taken in the callback after a trial (or before the first one), released by the next
trial's objective once it is RUNNING. The lock is an ``flock`` beside a file storage, or
a PostgreSQL advisory lock for a PostgreSQL storage (many machines).

While the lock is held, SIGINT and SIGTERM wait (:func:`sweep.tracking.deferred_signals`):
``ask()`` makes the trial RUNNING before the objective records which process owns it, and
a trial cut off in between would stay RUNNING with no owner to declare dead. The signal is
handled on release, inside the objective, which then records the trial as interrupted.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from pathlib import Path
from typing import Any


class _FileLock:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a+")  # noqa: SIM115 (held for the worker's life)

    def acquire(self) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def release(self) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)


class _PostgresLock:
    def __init__(self, url: str, key: str):
        import psycopg

        # postgresql+psycopg://... is SQLAlchemy's spelling; libpq wants postgresql://...
        conninfo = re.sub(r"^postgresql\+\w+://", "postgresql://", url)
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.key = zlib.crc32(key.encode())

    def acquire(self) -> None:
        self.conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))

    def release(self) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))


class _NoLock:
    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


def make_lock(storage_url: str, study_name: str) -> Any:
    """The inter-process lock for a storage URL (no lock for other databases)."""
    from sweep.optuna_parts import storage_file

    path = storage_file(storage_url)  # sqlite:///relative.db is relative (SQLAlchemy's rule)
    if path is not None:
        return _FileLock(path.with_name(f"{path.name}.{study_name}.lock"))
    if storage_url.startswith("postgresql"):
        return _PostgresLock(storage_url, f"sweep:{study_name}")
    return _NoLock()


class TrialBudget:
    """Gatekeeper for starting trials; see the module docstring."""

    def __init__(self, n_trials: int, lock: Any):
        self.n_trials = n_trials
        self.lock = lock
        self.held = False
        self._signals = contextlib.ExitStack()

    def claim(self, study) -> bool:
        """Take the lock; keep it (True) if another trial may start, else release (False)."""
        from optuna.trial import TrialState

        from sweep.tracking import deferred_signals

        self.lock.acquire()
        self.held = True
        self._signals.enter_context(deferred_signals())
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        if len(study.get_trials(deepcopy=False, states=states)) < self.n_trials:
            return True
        self.release()
        return False

    def release(self) -> None:
        """Let the next trial start; a signal that came meanwhile is handled now (raised
        here: a KeyboardInterrupt for Ctrl-C)."""
        if self.held:
            self.held = False
            with contextlib.suppress(Exception):
                self.lock.release()
            self._signals.close()

    def __call__(self, study, trial) -> None:
        """Optuna callback, run last after each trial."""
        if not self.claim(study):
            study.stop()
