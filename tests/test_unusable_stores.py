"""Stores, servers and logged configs a command cannot use: one line naming the setting
or file, exit status 2, in seconds (not after MLflow's minutes of retries), and nothing
created or left RUNNING on the way."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TcpProxy, finish_cli, free_port, start_cli, wait_http

from sweep import cli

TRAIN = ["data=synthetic", "trainer=fast"]
TINY = [*TRAIN, "search=tiny", "champion.k=0"]


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in this process; it must fail with one line on stderr: that line, less
    the CLI's ``error: `` prefix."""
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    return err.removeprefix("error: ")


@pytest.mark.parametrize("command", ["check", "compare", "report", "train"])
def test_an_unknown_tracking_scheme_is_named(command, mlflow_store, capsys) -> None:
    args = [command, "tracking.uri=bogus://x"] + (TRAIN if command == "train" else [])
    err = _fails(args, capsys)
    assert "tracking.uri: unknown scheme 'bogus://'" in err


@pytest.mark.parametrize("command", [["rerun", "0123abcd"], ["serve", "model=models:/m@champion"]])
def test_an_unknown_scheme_in_the_environment_is_named(command, mlflow_store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    assert "MLFLOW_TRACKING_URI: unknown scheme 'bogus://'" in _fails(command, capsys)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://127.0.0.1:1", "no MLflow server answers"),
        ("postgresql://postgres@127.0.0.1:1/none", "cannot connect to the store's database"),
    ],
)
@pytest.mark.parametrize("command", ["check", "compare", "train"])
def test_an_absent_server_is_named_by_our_check_not_after_mlflows_retries(
    command, uri, message, mlflow_store, capsys
) -> None:
    # The message is our check's: MLflow's own path retries for minutes, then says otherwise.
    args = [command, f"tracking.uri={uri}"] + (TRAIN if command == "train" else [])
    err = _fails(args, capsys)
    assert err.startswith("tracking.uri=") and message in err


@pytest.mark.parametrize("command", [["compare"], ["check", "study.name=nothing"]])
def test_reading_commands_do_not_create_a_missing_store(command, mlflow_store, capsys) -> None:
    database = Path(mlflow_store.removeprefix("sqlite:///"))
    err = _fails(command, capsys)
    assert f"no MLflow store at {database}" in err
    assert not database.exists()


def test_a_storage_file_of_another_kind_fails_before_the_mlflow_store_exists(
    mlflow_store, tmp_path, capsys
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a journal\n")
    err = _fails(["tune", *TINY, f"storage.url=journal:///{notes}"], capsys)
    assert f"storage {notes}: cannot open it as an Optuna journal" in err
    assert notes.read_text() == "not a journal\n"
    assert not Path(mlflow_store.removeprefix("sqlite:///")).exists()


def test_servers_refuse_a_port_or_host_they_cannot_listen_on(mlflow_store, capsys) -> None:
    assert "port=abc: expected a port number" in _fails(["tracking-server", "port=abc"], capsys)
    assert "--port='99999'" in _fails(["optuna-dashboard", "--port", "99999"], capsys)
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine; no DNS lookup.
    err = _fails(["serve", "model=models:/m@champion", "host=192.0.2.1", "port=0"], capsys)
    assert "cannot listen on 192.0.2.1:0" in err and "choose host=" in err
    # Before the model is looked up (and fetched: it may be large).
    port = free_port()
    err = _fails(["serve", "model=models:/m@champion", "host=192.0.2.1", f"port={port}"], capsys)
    assert f"cannot listen on 192.0.2.1:{port}" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["worker", *TINY, "study.name=nope"], "study.name=nope: no such study"),
        (["tune", *TINY, "storage.path=/proc/none/journal"], "/proc/none/journal"),
        (["tune", *TINY, "storage=sqlite", "storage.path=/proc/none/optuna.db"], "/proc/none"),
        (["tune", *TINY, "storage.path="], "storage.path: empty"),
        (["tune", *TINY, "storage.path=/tmp"], "storage.path=/tmp: a directory"),
    ],
    ids=[
        "worker-of-no-study",
        "journal-cannot-be-made",
        "sqlite-storage-cannot-be-made",
        "storage-path-empty",
        "storage-path-a-folder",
    ],
)
def test_a_command_that_fails_leaves_no_new_mlflow_store(mlflow_store, args, needle, capsys):
    """The store is opened (created, ~1 MB) before the study; a command that then fails
    removes the store it created, as long as no run was written to it."""
    assert needle in _fails(args, capsys)
    assert not Path(mlflow_store.removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize("command", ["check", "report", "optuna-dashboard"])
def test_commands_that_read_a_study_refuse_values_sweep_tune_refuses(
    mlflow_store, command, capsys
) -> None:
    """They compose the same config: a value it would refuse is not silently ignored."""
    err = _fails([command, "study.name=s", "optimizer.lr=-1"], capsys)
    assert err.startswith("optimizer.lr=-1"), err
    err = _fails([command, "study.name=s", "study.n_trials=abc"], capsys)
    assert err.startswith("study.n_trials"), err


def test_the_tracking_server_refuses_a_backend_it_cannot_use_before_starting(
    mlflow_store, tmp_path, capsys
) -> None:
    """Before, mlflow server started and died in screens of traceback (the first line
    said the server was up)."""
    port = f"port={free_port()}"
    err = _fails(["tracking-server", "backend=foo://x", port], capsys)
    assert err.startswith("backend=foo://x: expected a database URL: sqlite://...")
    err = _fails(["tracking-server", "backend=sqlite:////proc/x/m.db", port], capsys)
    assert "backend=sqlite:////proc/x/m.db: cannot open the MLflow tracking store" in err
    err = _fails(["tracking-server", "backend=http://127.0.0.1:5000", port], capsys)
    assert "expected a database URL" in err


def test_the_optuna_dashboard_does_not_create_an_empty_storage(mlflow_store, tmp_path, capsys):
    err = _fails(["optuna-dashboard"], capsys)
    assert "no Optuna storage at" in err
    assert not (tmp_path / ".sweep").exists()


def _logged_run(config_text: str) -> str:
    """A run whose config.yaml artifact is ``config_text`` (as ``sweep train`` logs one)."""
    from mlflow.tracking import MlflowClient

    from sweep.tracking import ensure_experiment

    client = MlflowClient()
    run = client.create_run(ensure_experiment("logged"))
    client.log_text(run.info.run_id, config_text, "config.yaml")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_a_rerun_of_an_unreadable_or_partial_config_names_it(tracked, capsys) -> None:
    broken = _logged_run("data: {name: [synthetic\n")
    assert "config.yaml cannot be read" in _fails(["rerun", broken], capsys)
    partial = _logged_run("seed: 0\n")
    assert "config.yaml has no 'data' section" in _fails(["rerun", partial], capsys)


def test_a_rerun_override_that_cannot_be_resolved_names_its_key(tracked, capsys) -> None:
    from omegaconf import OmegaConf

    from sweep import config as config_mod

    cfg = config_mod.run_part(config_mod.compose("sweep", TINY))
    run_id = _logged_run(OmegaConf.to_yaml(cfg))
    err = _fails(["rerun", run_id, "seed=${oc.env:SWEEP_TEST_UNSET_VARIABLE}"], capsys)
    assert err.startswith("seed: ") and "SWEEP_TEST_UNSET_VARIABLE" in err


def test_a_report_whose_parent_run_is_not_in_the_store_is_written_and_not_logged(
    tracked, tmp_path, capsys
) -> None:
    import optuna

    from sweep.report import log_report
    from sweep.study import PARENT_RUN_ATTR

    study = optuna.create_study()
    study.set_user_attr(PARENT_RUN_ATTR, "0" * 32)
    page = tmp_path / "report.html"
    page.write_text("<html></html>")
    assert log_report(study, page, tracked) is None
    assert "report not logged to MLflow" in capsys.readouterr().err


def test_a_parent_run_whose_settings_cannot_be_written_is_not_left_running(
    tracked, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient

    from sweep import study as study_mod

    def broken_store(*args, **kwargs):
        raise RuntimeError("the store went away")

    monkeypatch.setattr(study_mod, "_log_study_settings", broken_store)
    with pytest.raises(RuntimeError, match="the store went away"):
        study_mod.tune([*TINY, "study.name=unwritten"], progress=False)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("unwritten")
    [parent] = client.search_runs([experiment.experiment_id])
    assert parent.info.status == "FAILED"


@pytest.mark.e2e
def test_the_champion_has_a_model_when_trials_log_none(tracked) -> None:
    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    from sweep.champion import CHAMPION_ATTR, RERUNS_ATTR
    from sweep.check import load_study
    from sweep.study import tune

    overrides = [*TINY[:3], "study.n_trials=2", "tracking.log_model=false", "study.name=nomodel"]
    overrides += ["champion.k=1", "champion.seeds=1"]
    tune(overrides, progress=False)
    model = mlflow.pyfunc.load_model("models:/nomodel@champion")
    rows = np.zeros((2, 12), dtype=np.float32)  # synthetic: 12 features
    assert len(model.predict(rows)) == 2
    # Re-runs kept by an earlier version, made without a model: a resumed study that
    # selects again re-trains them rather than register a version with no source.
    study, _ = load_study(overrides)
    kept = study.user_attrs[RERUNS_ATTR]
    study.set_user_attr(RERUNS_ATTR, {k: {**v, "source_model_uri": None} for k, v in kept.items()})
    study.set_user_attr(CHAMPION_ATTR, None)
    tune(overrides, progress=False)
    version = MlflowClient().get_model_version_by_alias("nomodel", "champion")
    assert int(version.version) == 2
    assert len(mlflow.pyfunc.load_model("models:/nomodel@champion").predict(rows)) == 2


def test_a_store_path_with_escaped_characters_is_the_file_mlflow_opens(tmp_path) -> None:
    from mlflow.utils.file_utils import path_to_local_sqlite_uri

    from sweep.tracking import check_reachable, sqlite_path

    database = tmp_path / "My Projects" / "mlflow.db"
    uri = path_to_local_sqlite_uri(str(database))  # MLflow's default URI: '%20' for ' '
    assert "%20" in uri and sqlite_path(uri) == database
    database.parent.mkdir()
    database.touch()
    check_reachable(uri, must_exist=True)  # the file is there


def test_the_server_check_leaves_the_uris_credentials_to_mlflow() -> None:
    from sweep.errors import ConfigError
    from sweep.tracking import check_server

    # Refused at 127.0.0.1:1, not a failed lookup of the host "user:secret@127.0.0.1".
    with pytest.raises(ConfigError, match="refused") as error:
        check_server("http://user:secret@127.0.0.1:1")
    assert "secret" not in str(error.value)


# -- a tracking server that stops answering mid-study --------------------------------------------
def _mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """MLflow's own server over an sqlite store in ``tmp_path``, answering on ``port``."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"),
            *("--artifacts-destination", str(tmp_path / "artifacts")),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its request-handling processes go down with it
    )
    wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@pytest.mark.e2e
def test_a_tracking_server_gone_mid_trial_stops_the_study_and_the_rerun_finishes_it(
    tmp_path, monkeypatch
) -> None:
    """The trial that finds the server gone fails at once (not after minutes of MLflow's
    retries, write after write) and the study stops with one line; Optuna keeps the
    finished trials and no RUNNING one, the failed point is enqueued, and the same
    command with the server back finishes the study and closes the orphaned run."""
    import optuna
    from mlflow.tracking import MlflowClient

    from sweep import train
    from sweep.check import load_study
    from sweep.errors import TrackingLost
    from sweep.study import tune

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # MLflow's own retry of a failed request, shortened: what follows them is under test.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    overrides = [*TINY, "tracking=server", "study.name=gone", "study.n_trials=4"]
    overrides += ["tracking.log_model=false", "study.seed=0"]
    server = _mlflow_server(tmp_path, port)
    real_run, calls = train.run, []

    def run_losing_the_server_in_the_third_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            on_start = kwargs["on_start"]
            kwargs["on_start"] = lambda run_id: (on_start(run_id), _stop(server))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(train, "run", run_losing_the_server_in_the_third_trial)
    try:
        with pytest.raises(TrackingLost) as lost:
            tune(overrides, progress=False)
        message = str(lost.value)
        assert "\n" not in message
        assert message.startswith(f"tracking.uri={uri}: no MLflow server answers")
        assert "study 'gone' stopped: its 2 finished trials are kept, and the same " in message
        study, _ = load_study(overrides)
        states = [t.state.name for t in study.trials]
        assert states == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"], states
        failed, again = study.trials[2], study.trials[3]
        assert "no MLflow server answers" in failed.user_attrs["error"]
        assert again.system_attrs["fixed_params"] == failed.params
        assert again.user_attrs["retry_of"] == 2
        orphan = failed.user_attrs["mlflow_run_id"]  # created before the server went

        monkeypatch.setattr(train, "run", real_run)
        server = _mlflow_server(tmp_path, port)
        tune(overrides, progress=False)
        study, _ = load_study(overrides)
        assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 4
        assert study.trials[3].state == optuna.trial.TrialState.COMPLETE
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("gone").experiment_id])
        assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
        closed = client.get_run(orphan)
        assert closed.info.status == "KILLED"
        assert "no MLflow server answers" in closed.data.tags["error"]
    finally:
        if server.poll() is None:
            _stop(server)


def test_writes_closing_a_record_after_the_store_is_lost_are_tried_once_and_let_go(
    monkeypatch,
) -> None:
    from sweep import tracking

    monkeypatch.setattr(tracking, "_LOST", [])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    with pytest.raises(RuntimeError), tracking.closing_write():
        raise RuntimeError("not lost: raised as ever")
    tracking._LOST.append("tracking.uri=http://x: no MLflow server answers")
    with tracking.closing_write():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        raise RuntimeError("lost: let go")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"


@pytest.mark.parametrize(
    ("dead", "message"),
    [
        ("http://127.0.0.1:{port}", "no MLflow server answers"),
        ("postgresql://postgres@127.0.0.1:{port}/mlflow", "cannot connect to the store's database"),
    ],
)
def test_a_store_is_lost_only_when_it_no_longer_answers(tracked, monkeypatch, dead, message):
    import mlflow

    from sweep import tracking

    monkeypatch.setattr(tracking, "_LOST", [])
    failure = RuntimeError("a write failed")
    assert tracking.store_lost(failure) is None  # sqlite: a file, never lost
    dead = dead.format(port=free_port())
    mlflow.set_tracking_uri(dead)
    assert tracking.store_lost() is None  # no failure: nothing asked
    assert f"tracking.uri={dead}: {message}" in tracking.store_lost(failure)
    assert tracking.store_lost() == tracking.store_lost(failure)  # lost stays lost
    tracking.setup(tracked)  # ...until the store answers again
    assert tracking.store_lost() is None


def _once(proc: subprocess.Popen, ready: Callable[[], bool], act: Callable[[], object]):
    """``act()`` once ``ready()`` holds (or ``proc`` has ended), then ``proc``'s result."""
    try:
        while not ready() and proc.poll() is None:
            time.sleep(0.1)
        act()
        return finish_cli(proc)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.postgres
@pytest.mark.e2e
def test_a_storage_database_gone_mid_study_is_one_line_and_the_rerun_finishes_it(
    tracked, tmp_path, postgres_url
) -> None:
    """The PostgreSQL storage, reached through a proxy that is then cut: the study stops
    with one line (exit 1; Optuna alone printed screens of tracebacks), its MLflow runs
    closed; the same command with the database back fails the trial left RUNNING,
    retries its point, and finishes the study."""
    import urllib.parse

    import optuna
    import psycopg
    from mlflow.tracking import MlflowClient

    from sweep.study import tune

    address = urllib.parse.urlsplit(postgres_url)
    proxy = TcpProxy((address.hostname, address.port or 5432))
    via_proxy = postgres_url.replace(address.netloc, f"{address.username}@127.0.0.1:{proxy.port}")
    overrides = [*TINY, "storage=postgres", f"storage.url={via_proxy}", "study.name=cut"]
    overrides += ["study.n_trials=6", "tracking.log_model=false", "trainer.max_epochs=6"]
    # A short grace: a trial the cut left RUNNING before it recorded its worker has no
    # owner and no heartbeat, and is failed once this old.
    overrides += ["storage.heartbeat_interval=1", "storage.grace_period=2"]

    def finished() -> int:
        query = "SELECT count(*) FROM trials WHERE state = 'COMPLETE'"
        # Not through the proxy; no table yet before the study is created.
        with psycopg.connect(postgres_url) as db, contextlib.suppress(psycopg.Error):
            return db.execute(query).fetchone()[0]
        return 0

    proc = start_cli("tune", *overrides, cwd=tmp_path, uri=tracked)
    try:
        result = _once(proc, lambda: finished() >= 2, proxy.cut)
    finally:
        proxy.cut()
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: storage.url={via_proxy}: cannot open Optuna storage: ")
    assert "study 'cut' stopped: its finished trials are kept there" in line
    assert "Traceback" not in result.stderr
    client = MlflowClient()
    experiment = client.get_experiment_by_name("cut")
    runs = client.search_runs([experiment.experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}

    time.sleep(2)  # every trial the cut left RUNNING is past the grace period now
    proxy.restore()
    try:
        tune(overrides, progress=False)
    finally:
        proxy.cut()
    study = optuna.load_study(study_name="cut", storage=postgres_url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 6, states
    assert "RUNNING" not in states
    # Retried by Optuna's heartbeat check (a system attr) or by ours (a user attr).
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    retried |= {retry.retried_trial_number(t) for t in study.trials}
    assert all(t.number in retried for t in study.trials if t.state.name == "FAIL" and t.params)
    runs = client.search_runs([experiment.experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}


def test_a_heartbeat_optuna_cannot_write_is_one_line_not_a_threads_traceback(monkeypatch, capsys):
    import threading

    from sweep.optuna_parts import quiet_heartbeat_failures

    others: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: others.append(args.exc_value))
    quiet_heartbeat_failures()
    quiet_heartbeat_failures()  # once is enough: not wrapped twice

    def _record_heartbeat() -> None:  # the name of Optuna's heartbeat thread's function
        raise ConnectionError("connection refused\n\tIs the server running?")

    def elsewhere() -> None:
        raise ValueError("a bug elsewhere")

    for target in (_record_heartbeat, elsewhere):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    err = capsys.readouterr().err
    assert err == (
        "warning: Optuna could not record a trial's heartbeat: "
        "ConnectionError: connection refused\n"
    )
    assert [str(e) for e in others] == ["a bug elsewhere"]  # as before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 30 MB file system of its own (a tmpfs: mounting needs root, else skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    """Write zeros to ``disk/filler`` until the disk is full."""
    with (disk / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
        block = bytes(1 << 16)
        while True:
            f.write(block)


@pytest.mark.e2e
def test_a_disk_full_mid_study_is_one_line_and_the_rerun_finishes_it(small_disk, monkeypatch):
    """The study's journal, MLflow's store and its artifacts on a disk that fills up
    mid-study: one line (exit 1; Optuna alone printed tracebacks and left half a line
    in the journal, which then no longer read once appended to); with space again, the
    same command finishes the study, every MLflow run closed."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    from sweep.check import load_study
    from sweep.study import tune

    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    overrides = [*TINY, "study.name=full", "study.n_trials=12"]

    def finished_runs() -> int:
        with contextlib.suppress(sqlite3.Error), sqlite3.connect(small_disk / "mlflow.db") as db:
            query = "SELECT count(*) FROM runs WHERE status = 'FINISHED'"
            return db.execute(query).fetchone()[0]
        return 0

    proc = start_cli("tune", *overrides, cwd=small_disk, uri=uri)
    result = _once(proc, lambda: finished_runs() >= 2, lambda: _fill(small_disk))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the device"), result.stderr[-3000:]
    assert "study 'full' stopped: its finished trials are kept" in last
    assert "Traceback" not in result.stderr

    (small_disk / "filler").unlink()
    monkeypatch.chdir(small_disk)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tune(overrides, progress=False)
    study, _ = load_study(overrides)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 12, states
    assert "RUNNING" not in states
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}


def test_a_full_disk_is_found_in_the_chain_of_errors_it_caused() -> None:
    import errno
    import sqlite3

    from sweep.errors import disk_full

    def raised(make):
        try:
            make()
        except Exception as exc:
            return exc

    def wrapped(inner: BaseException):
        def make():
            try:
                raise inner
            except BaseException:
                raise RuntimeError("what the library made of it") from None

        return make

    full = OSError(errno.ENOSPC, "No space left on device", "/data/optuna.journal")
    assert disk_full(full) == "no space left on the device writing /data/optuna.journal"
    # Raised while handling it, even `from None`: the disk was full all the same.
    assert disk_full(raised(wrapped(full))) == disk_full(full)
    caused = RuntimeError("commit failed")
    caused.__cause__ = sqlite3.OperationalError("database or disk is full")
    assert "sqlite store (database or disk is full)" in disk_full(caused)
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None


@pytest.mark.e2e
def test_a_new_store_the_disk_has_no_room_for_is_not_left_half_made(small_disk) -> None:
    """MLflow's schema needs about 2 MB: with 1 MB free, creating it fails part way. The
    half-made store would fail every later opening ("table secrets already exists"),
    space or none; it is removed, and with space the same command creates it whole."""
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    _fill(small_disk)
    filler = small_disk / "filler"
    os.truncate(filler, filler.stat().st_size - (1 << 20))

    failed = finish_cli(start_cli("train", *TRAIN, cwd=small_disk, uri=uri))
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    error = failed.stderr.strip().splitlines()[-1]
    assert f"{small_disk / 'mlflow.db'}" in error and "disk is full" in error, failed.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]

    filler.unlink()
    done = finish_cli(start_cli("train", *TRAIN, cwd=small_disk, uri=uri))
    assert done.returncode == 0, done.stderr[-3000:]
