"""The MLflow sqlite store in WAL mode (sweep.tracking.write_ahead_log): MLflow's own
connections commit without an fsync, and the database file alone holds every finished
run; and a new store's schema created by one process at a time."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest


def test_mlflows_connections_write_ahead_without_an_fsync_per_commit(tracked: str) -> None:
    import mlflow
    from mlflow.tracking._tracking_service.utils import _get_store

    from sweep import tracking

    tracking.setup(tracked)
    with tracking.open_run("wal") as run:
        run.metrics({"val/acc": 0.5}, step=1)
    with _get_store().engine.connect() as conn:  # one of MLflow's own connections
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert mlflow.get_run(run.run_id).data.metrics == {"val/acc": 0.5}


def test_other_sqlite_databases_are_left_as_they_are(tracked: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    from sweep import tracking

    tracking.setup(tracked)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_the_database_file_alone_holds_every_finished_run(tracked: str, tmp_path: Path) -> None:
    """Copying mlflow.db by itself copies every finished run, while MLflow's connections
    in this process are still open (sqlite merges the log on its own only when the last
    one closes)."""
    from mlflow.tracking._tracking_service.utils import _get_store

    from sweep import tracking

    tracking.setup(tracked)
    with tracking.open_run("wal", run_name="one") as run:
        run.metrics({"val/acc": 0.5}, step=1)
    assert _get_store().engine.pool.checkedin() > 0  # open, idle: nothing merged on close
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "mlflow.db", copy / "mlflow.db")  # without mlflow.db-wal
    with sqlite3.connect(copy / "mlflow.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        status = conn.execute("select status from runs where run_uuid = ?", (run.run_id,))
        values = conn.execute("select key, value from metrics where run_uuid = ?", (run.run_id,))
        assert status.fetchone() == ("FINISHED",)
        assert values.fetchall() == [("val/acc", 0.5)]


def test_a_store_in_use_elsewhere_is_opened_at_once_in_its_own_mode(
    tracked: str, tmp_path: Path
) -> None:
    """Switching to WAL needs the file to itself: while another connection reads it, a
    new connection does not wait for it, and keeps the rollback journal meanwhile."""
    import time

    import sqlalchemy as sa

    from sweep import tracking

    tracking.setup(tracked)
    reader = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("select count(*) from runs").fetchone()  # a read lock, held
    engine = sa.create_engine(tracked)
    try:
        started = time.monotonic()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert time.monotonic() - started < 2  # pysqlite's own busy timeout is 5 s
    finally:
        reader.execute("COMMIT")
        reader.close()
        engine.dispose()
    with engine.connect() as conn:  # the file to itself now
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def _open_new_store(uri: str, start, errors) -> None:
    """In a forked process: open the store with the others at once, as a command does."""
    from sweep import tracking

    start.wait()
    try:
        tracking.setup(uri, check_store=True)
    except Exception as exc:  # reported to the test
        errors.put(str(exc))


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """MLflow's schema migrations race in a new sqlite store: without the creation lock
    one of these processes fails ("Online migration expected to match one row")."""
    import multiprocessing

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fork = multiprocessing.get_context("fork")  # mlflow imported already: starts at once
    start, errors = fork.Barrier(3), fork.Queue()
    procs = [fork.Process(target=_open_new_store, args=(uri, start, errors)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    failures = [errors.get() for _ in range(errors.qsize())]
    assert failures == [] and [p.exitcode for p in procs] == [0, 0, 0]
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("mlflow.db")) == []


def test_a_run_is_ended_again_while_the_store_says_it_is_locked(tracked: str, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from sweep import tracking

    run_id = MlflowClient().create_run("0").info.run_id
    real, calls = MlflowClient.set_terminated, []

    def locked_once(self, run_id, status=None, end_time=None):
        calls.append(status)
        if len(calls) == 1:  # what MLflow raises for sqlite's SQLITE_BUSY
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, run_id, status=status, end_time=end_time)

    monkeypatch.setattr(MlflowClient, "set_terminated", locked_once)
    tracking.set_terminated(run_id, "KILLED")
    assert calls == ["KILLED", "KILLED"]
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    monkeypatch.setattr(MlflowClient, "set_terminated", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # any other error is raised at once
        tracking.set_terminated(run_id, "FAILED")


def test_a_run_whose_end_finds_the_store_locked_is_ended_all_the_same(
    tracked: str, monkeypatch
) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from sweep import tracking

    real, calls = MlflowClient.set_terminated, []

    def locked_once(self, run_id, status=None, end_time=None):
        calls.append(status)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, run_id, status=status, end_time=end_time)

    tracking.setup(tracked)
    monkeypatch.setattr(MlflowClient, "set_terminated", locked_once)
    with tracking.open_run("locked") as run:
        run.metrics({"val/acc": 0.5})
    assert calls == ["FINISHED", "FINISHED"] and mlflow.active_run() is None
    assert MlflowClient().get_run(run.run_id).info.status == "FINISHED"
