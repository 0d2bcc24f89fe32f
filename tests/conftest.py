"""Shared fixtures: a private MLflow store per test, and the CLI run in a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The PostgreSQL server's admin URL (tests create and drop their own databases there).
PG_ADMIN_URL = os.environ.get("SWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

#: Tiny run configs: a few seconds of training at most.
TINY_SYNTHETIC = ["data=synthetic", "trainer=fast"]  # 600 rows, 3 epochs
TINY_DIGITS = ["data=digits", "trainer.max_epochs=2", "trainer.progress=false"]
TINY_MNIST1D = [
    "data=mnist1d",
    "data.num_samples=600",
    "trainer.max_epochs=2",
    "trainer.progress=false",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the shared tiny store (test_compare's ``tiny_store``: real tiny studies,
    built once, which the modules reach as their ``store`` fixture) are end-to-end too,
    so ``-m 'not e2e'`` leaves only the unit layer."""
    for item in items:
        if "store" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Work in ``tmp_path`` with MLflow's store at ``sqlite:///<tmp>/mlflow.db``; the URI.

    The database is not created here, so a test can check that nothing created it.
    """
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    before = _global_tracking_uri()
    yield uri
    # The code under test points MLflow's process-wide URI at this store; a later test in
    # this process (a module's own store, say) must not find it still pointing here.
    if _global_tracking_uri() != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # None: the environment's, as monkeypatch restores it


def _global_tracking_uri() -> str | None:
    """What ``mlflow.set_tracking_uri`` set in this process (None: not set, or no mlflow)."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    return None if utils is None else utils._tracking_uri


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite database with its schema, made once: migrations cost ~1 s each."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracked(mlflow_store: str, tmp_path: Path, _empty_mlflow_db: Path):
    """``mlflow_store`` with the schema already in place, for in-process training runs.

    After the test no MLflow run may be left active in this process.
    """
    import mlflow

    shutil.copy(_empty_mlflow_db, tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(mlflow_store)
    yield mlflow_store
    leaked = mlflow.active_run()
    while mlflow.active_run() is not None:
        mlflow.end_run()
    assert leaked is None, f"run {leaked.info.run_id} was left active"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0) -> None:
    """Until ``url`` answers 200 (AssertionError after ``timeout`` s)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def cli_env(uri: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def start_cli(
    *args: str,
    cwd: Path,
    uri: str | None = None,
    cores: set[int] | None = None,
    output: Path | None = None,
) -> subprocess.Popen:
    """Start ``python -m sweep ARGS`` in ``cwd`` with ``MLFLOW_TRACKING_URI=uri``; with
    ``cores``, on those CPU cores only (its affinity mask, inherited by its workers).

    Its stdout and stderr are pipes, for ``communicate()``; with ``output``, both go to
    that file instead: for a process nobody reads while it runs (a server's request log
    fills a pipe's 64 KiB, then blocks it, and whatever waits on it)."""
    sink = open(output, "w") if output else subprocess.PIPE  # noqa: SIM115 (the child's)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "sweep", *args],
            cwd=cwd,
            env=cli_env(uri),
            stdout=sink,
            stderr=subprocess.STDOUT if output else subprocess.PIPE,
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
    finally:
        if output:
            sink.close()  # the child has its own copy


def finish_cli(proc: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    """Wait for a started CLI (killed after ``timeout`` s); its CompletedProcess."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{proc.args} ran over {timeout} s:\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_cli(
    *args: str, cwd: Path, uri: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """``python -m sweep ARGS`` in ``cwd`` with ``MLFLOW_TRACKING_URI=uri``, to the end."""
    return finish_cli(start_cli(*args, cwd=cwd, uri=uri), timeout)


@pytest.fixture
def cli(mlflow_store: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run the CLI in ``tmp_path`` against the test's MLflow store."""

    def call(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=tmp_path, uri=mlflow_store, timeout=timeout)

    return call


def count_runs(db_path: Path) -> int:
    """Runs in an MLflow sqlite store; 0 when the file or its tables do not exist."""
    if not db_path.exists():
        return 0
    with sqlite3.connect(db_path) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        if "runs" not in tables:
            return 0
        return int(conn.execute("select count(*) from runs").fetchone()[0])


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_URL, connect_timeout=3, autocommit=True)
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"PostgreSQL must be reachable in CI: {exc}") from exc
        pytest.skip(f"no PostgreSQL server at {PG_ADMIN_URL}: {exc}")
    db = f"sweep_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{db}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{db}"
    with admin.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        )
        cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
    admin.close()


class TcpProxy:
    """Forwards connections to ``127.0.0.1:port`` to ``target`` (host, port), for a server
    that goes away: :meth:`cut` closes every connection and refuses new ones (as a
    stopped server does), :meth:`restore` listens on the same port again."""

    def __init__(self, target: tuple[str, int], port: int = 0):
        import threading

        self.target = target
        self.port = port
        self._lock = threading.Lock()
        self._sockets: list = []
        self._listener = None
        self.restore()

    def restore(self) -> None:
        import socket
        import threading

        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        import socket

        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in [s for s in (listener, *sockets) if s is not None]:  # None: cut already
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return  # cut
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.close()
