"""MLflow tracking: one MLflow run per training run, closed with the right status.

A run is opened with :func:`open_run` and always ends FINISHED, FAILED (tag ``error``)
or KILLED (Ctrl-C / SIGTERM, tag ``error``) - never left RUNNING by an exception.
Params, tags and metrics are buffered and written together with one synchronous
``log_batch`` every ``FLUSH_SECONDS`` (so curves stay live in the UI) and once more
before the run ends: each store call costs 10-30 ms of CPU on the sqlite store, so a
trial makes a handful of them, not one per value. MLflow's async logging is not used:
ending a run joins its logging thread, which sleeps up to 1 s on an empty queue
(measured: ~1 s per run, more than a small trial trains).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FLUSH_SECONDS = 2.0  # buffered metrics reach the store at least this often
PARAM_VALUE_LIMIT = 6000  # MLflow's limit for a param value
SECRET_KEYS = ("password", "secret", "token")


def resolve_tracking_uri(uri: str | None) -> str:
    """Config value, else MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    import mlflow  # only here: reading runs from a known store need not import it

    return mlflow.get_tracking_uri()


def setup(
    uri: str | None, check_store: bool = False, must_exist: bool = False, answer: bool = True
) -> str:
    """Point MLflow at the store; quiet its schema-migration chatter. Returns the URI.

    The store is checked first (:func:`check_reachable`): a wrong scheme, a server that
    does not answer (unless ``answer`` is False: the caller copes without the store), or
    with ``must_exist`` (commands that read runs) a missing sqlite file is a one-line
    error in seconds. ``check_store`` opens it (creating an sqlite store), for commands
    about to write."""
    import mlflow

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Its ERROR log of a failed commit (a full disk, say) repeats, with screens of
    # traceback, the exception it then raises, which the caller reports in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # A download's progress bar, redrawn line by line into a log or a pipe, is noise there.
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # One "View run at <url>" line per run drowns a study's output; we print our own summary.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A Databricks-only lookup in start_run imports IPython when it is installed (~0.45 s
    # in each process, measured): off unless the user turns it on.
    os.environ.setdefault("MLFLOW_ENABLE_SGC_RUN_RESUMPTION_FOR_DATABRICKS_JOBS", "false")
    resolved = resolve_tracking_uri(uri)
    key = (
        "MLFLOW_TRACKING_URI"
        if not uri and os.environ.get("MLFLOW_TRACKING_URI")
        else ("tracking.uri")
    )
    check_reachable(resolved, key, must_exist=must_exist, answer=answer)
    if answer:
        _LOST.clear()  # it answers (again)
    database = sqlite_path(resolved)
    if database is not None:
        write_ahead_log(database)
        if not database.exists():
            _NEW_STORES.add(database)
    mlflow.set_tracking_uri(resolved)
    if check_store:
        open_store(resolved, key)
    return resolved


def open_store(uri: str, key: str) -> None:
    """Open the store at ``uri`` (creating a new one's schema) or raise one line naming
    ``key``: ConfigError, or DiskFull when there is no room. A new sqlite store that
    cannot be completed is removed again."""
    database = sqlite_path(uri)
    with _creation_lock(database):
        new = database is not None and not database.exists()
        try:
            _check_store(uri, key)
        except BaseException:
            if new:
                _remove_sqlite_store(database)
            raise


_NEW_STORES: set[Path] = set()  # sqlite stores absent when this process first set them up


def remove_new_empty_stores() -> None:
    """Delete the sqlite stores this process's command brought into being and wrote no
    run to: for a command that then failed (a study that does not exist, a storage path
    that cannot be made), which should leave nothing behind."""
    import sqlite3

    for database in _NEW_STORES:
        if not database.exists():
            continue
        try:
            connection = sqlite3.connect(f"{database.absolute().as_uri()}?mode=ro", uri=True)
            try:
                runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0]
            finally:
                connection.close()
        except sqlite3.Error:
            runs = 0  # no runs table: a schema this process began
        if runs == 0:
            _remove_sqlite_store(database)
            _forget_stores()
    _NEW_STORES.clear()


def _forget_stores() -> None:
    """Drop this process's open stores (MLflow keeps one per URI, with its connections),
    so that a later command here (tests call the CLI in-process) creates a removed store
    again instead of writing into the deleted file."""
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    for registry in (TrackingStoreRegistry, ModelRegistryStoreRegistry):
        with contextlib.suppress(AttributeError):  # another MLflow's internals
            registry._get_store_with_resolved_uri.cache_clear()
    _check_store.cache_clear()
    _USABLE.clear()


def _remove_sqlite_store(database: Path) -> None:
    """Delete a store whose schema this process began and could not finish (a full disk,
    say). A half-made schema would fail every later opening ("table secrets already
    exists", measured), with the disk space back too."""
    for path in (database, *(Path(f"{database}{s}") for s in ("-wal", "-shm", "-journal"))):
        with contextlib.suppress(OSError):  # never there, say: the error at hand says why
            path.unlink()


#: Database servers MLflow can keep its runs in (SQLAlchemy dialects).
DATABASE_SERVERS = ("postgresql", "mysql", "mssql")


def check_reachable(
    uri: str,
    key: str = "tracking.uri",
    must_exist: bool = False,
    answer: bool = True,
    timeout: float = 5.0,
) -> None:
    """ConfigError naming ``key`` when the tracking store at ``uri`` cannot be used: an
    unknown scheme, with ``answer`` an http(s) server or database server that does not
    answer, and with ``must_exist`` a missing sqlite file (which MLflow would create,
    empty).

    MLflow's client retries an unreachable server for minutes, printing multi-line
    warnings, before it raises; this says so in seconds. Opens no MLflow store. A store
    that answered is not asked again in this process (a trial calls :func:`setup` too)."""
    from sweep.config import TRACKING_SCHEMES
    from sweep.errors import ConfigError

    if (uri, must_exist, answer) in _USABLE:
        return

    scheme = uri.split("://", 1)[0].lower().split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"{key}: unknown scheme '{scheme}://'; use one of: "
            + ", ".join(f"{s}://" for s in TRACKING_SCHEMES)
        )
    if not answer:
        return
    if scheme in ("http", "https"):
        check_server(uri, timeout, key)
    elif scheme in DATABASE_SERVERS:
        _check_database_server(uri, key, timeout)
    elif must_exist and (path := sqlite_path(uri)) is not None and not path.exists():
        raise ConfigError(
            f"no MLflow store at {path.resolve()} ({key} {redact(uri)}); run from the "
            "project directory or set MLFLOW_TRACKING_URI"
        )
    _USABLE.add((uri, must_exist, answer))


_USABLE: set[tuple[str, bool, bool]] = set()  # check_reachable's passes in this process


def check_server(uri: str, timeout: float = 5.0, key: str = "tracking.uri") -> None:
    """ConfigError at once when an http(s) tracking URI does not answer.

    MLflow's client retries a refused connection with backoff for about four minutes
    before it raises; reading runs should say in seconds that the server is not there.
    Any HTTP answer (even 401 or 404 from a proxy) counts as reachable, and so does a TLS
    handshake this check cannot complete (MLflow's client may have its own certificate
    settings): only a refused connection, a timeout or an unknown host fail.
    """
    import ssl
    import urllib.error
    import urllib.request

    from sweep.errors import ConfigError

    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    # user:password@ in the URI is MLflow's client's to send, not a host to look up.
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    try:
        with urllib.request.urlopen(f"{bare.geturl().rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return  # it answered
        raise ConfigError(f"{key}={redact(uri)}: no MLflow server answers ({reason})") from None


_LOST: list[str] = []  # why the tracking store stopped answering (see store_lost)
#: MLflow's own settings for a call tried once, briefly (read by its client per request).
FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def store_lost(failure: BaseException | None = None) -> str | None:
    """Why the tracking store no longer answers, or None while it is not known lost.

    With ``failure`` (a tracking call, or what contains one, just failed) a store on a
    server, MLflow's or a database's, is probed once, in seconds; a local sqlite store is
    never lost. Lost stays lost in this process until :func:`setup` finds the store
    answering: every later call would first wait out MLflow's retries (about four
    minutes for a server) to fail the same way."""
    import mlflow

    from sweep.errors import ConfigError, TrackingLost

    if _LOST or failure is None:
        return _LOST[0] if _LOST else None
    if isinstance(failure, TrackingLost):
        _LOST.append(str(failure))
        _USABLE.clear()
        return _LOST[0]
    uri = mlflow.get_tracking_uri()
    scheme = uri.split("://", 1)[0].lower().split("+", 1)[0]
    try:
        if scheme in ("http", "https"):
            check_server(uri)
        elif scheme in DATABASE_SERVERS:
            _check_database_server(uri, "tracking.uri", timeout=5.0)
    except ConfigError as exc:
        _LOST.append(str(exc))
    if _LOST:
        _USABLE.clear()  # so that setup() asks the store again
    return _LOST[0] if _LOST else None


@contextlib.contextmanager
def closing_write() -> Iterator[None]:
    """Around a write that closes a record (a run's end, its state tag): once the store is
    lost, tried once, briefly, and a failure ignored, so that stopping takes seconds, not
    minutes of MLflow's retries per write (it lands if the server is back); else as is."""
    if not _LOST:
        yield
        return
    saved = {key: os.environ.get(key) for key in FAIL_FAST_ENV}
    os.environ.update(FAIL_FAST_ENV)
    try:
        with contextlib.suppress(Exception):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def probe_database(url: str, timeout: float = 5.0) -> None:
    """Connect to the database server at the SQLAlchemy ``url`` once and disconnect,
    creating nothing; the driver's error propagates. PostgreSQL and MySQL give up after
    ``timeout`` seconds (a host that drops packets would otherwise hang)."""
    import sqlalchemy

    scheme = url.split("://", 1)[0].lower().split("+", 1)[0]
    connect_args = {"connect_timeout": int(timeout)} if scheme in ("postgresql", "mysql") else {}
    engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _check_database_server(uri: str, key: str, timeout: float) -> None:
    """Connect once and disconnect (MLflow's engine would retry for about two minutes)."""
    from sweep.errors import ConfigError

    try:
        probe_database(uri, timeout)
    except Exception as exc:
        raise ConfigError(
            f"{key}={redact(uri)}: cannot connect to the store's database: {one_line(exc)}"
        ) from None


@contextlib.contextmanager
def _creation_lock(database: Path | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the sqlite store's folder while this process opens
    it first. MLflow creates a new store's schema through a few dozen migrations (~2 s),
    and a second process opening it meanwhile runs them too and fails ("Online migration
    expected to match one row", measured: two ``sweep train`` started together in a new
    folder, one failed every time). With the lock, the second waits, then finds the
    schema complete. The folder is locked rather than a file of ours beside the
    database: nothing is left behind. Not for other stores, nor a folder that is missing
    (MLflow names that error)."""
    if database is None:
        yield
        return
    import fcntl

    try:
        folder = os.open(database.parent, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    # MLflow's default URI escapes the path (a space is %20); SQLAlchemy decodes it.
    return None if path in ("", ":memory:") else Path(urllib.parse.unquote(path))


_WAL_DATABASES: set[str] = set()  # real paths of the sqlite stores opened in WAL mode


def write_ahead_log(database: Path) -> None:
    """Open the sqlite store ``database`` in WAL mode, committing without an fsync.

    In sqlite's default rollback-journal mode with full sync, each commit waits for
    several fsyncs, and MLflow commits a dozen times a trial (the run, its batches, its
    model): 40 ms a trial here, 4% of a small one (measured). In WAL mode with
    ``synchronous=NORMAL`` a commit appends to the log and only checkpoints sync: a
    crashed process loses nothing, a machine that loses power may lose its last commits
    but never corrupts the database. Readers (the MLflow UI, ``sweep compare``) no longer
    wait for a writer either. The mode is the database file's own and stays. The log
    (``mlflow.db-wal``) is merged into the database as each run ends
    (:func:`checkpoint_stores`), so the file alone holds every finished run.

    Every SQLAlchemy connection this process opens to that file is set up so: MLflow's
    own, made on first use, included.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    real = os.path.realpath(database)
    if real in _WAL_DATABASES:
        return
    if not _WAL_DATABASES:
        event.listen(Engine, "connect", _on_connect)
    _WAL_DATABASES.add(real)


def checkpoint_stores() -> None:
    """Copy what the write-ahead log of each sqlite store opened here in WAL mode holds
    into its database file, without waiting for other processes' readers or writers.

    Called as each run ends, and as a study or a command ends: the database file alone
    then holds every finished run even while a process (this one, a worker, the MLflow
    UI) keeps a connection open, so copying ``mlflow.db`` by itself copies them all (the
    log is only merged into it otherwise when its last connection closes). One checkpoint
    per run, where there were a dozen synced commits."""
    import sqlite3

    for database in _WAL_DATABASES:
        with contextlib.suppress(sqlite3.Error):  # gone, say: mode=rw never creates one
            connection = sqlite3.connect(f"{Path(database).as_uri()}?mode=rw", uri=True)
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                connection.close()


def _on_connect(connection: Any, _record: Any) -> None:
    import sqlite3

    if not isinstance(connection, sqlite3.Connection):
        return
    main = connection.execute("PRAGMA database_list").fetchone()  # (0, "main", file)
    if main is None or not main[2] or os.path.realpath(main[2]) not in _WAL_DATABASES:
        return
    mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    if mode != "wal":
        # Switching needs the file to itself: try once, without waiting on other processes.
        timeout = connection.execute("PRAGMA busy_timeout").fetchone()[0]
        connection.execute("PRAGMA busy_timeout = 0")
        try:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError:
            pass  # in use elsewhere: this connection keeps the rollback journal
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(timeout)}")
    if mode == "wal":  # in rollback-journal mode, NORMAL could corrupt it on power loss
        connection.execute("PRAGMA synchronous=NORMAL")


@functools.lru_cache(maxsize=8)
def _check_store(uri: str, key: str) -> None:
    """Open the store once per process before anything is written elsewhere (a study, a
    worker): a store that cannot be opened is a one-line error naming the setting."""
    from mlflow.tracking import MlflowClient

    from sweep.errors import ConfigError, DiskFull, disk_full

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        message = f"{key}={redact(uri)}: cannot open the MLflow tracking store"
        if (full := disk_full(exc)) is not None:  # not the setting's fault: exit 1
            raise DiskFull(f"{message}: {full}") from None
        raise ConfigError(f"{message}: {one_line(exc)}") from None


def ensure_experiment(name: str) -> str:
    """The experiment's id, created if absent (race-safe: another process may create it)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def redact(value: str) -> str:
    """Hide the password in a URL such as postgresql://user:pw@host/db."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", value)


@functools.lru_cache(maxsize=1)
def run_context_tags() -> dict[str, str]:
    """Git commit and dirty flag, command line, host and package versions (once per process)."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":  # python -m sweep: name the command the user typed
        program = f"python -m {Path(sys.argv[0]).parent.name}"
    tags = {
        "host": platform.node(),
        "command": redact(" ".join([program, *sys.argv[1:]])),
        "python": platform.python_version(),
    }
    for package in ("torch", "lightning", "optuna", "mlflow", "hydra-core", "sweep"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            tags[f"version.{package}"] = version(package)
    repo = Path(__file__).resolve().parent.parent
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        tags.update(
            {
                "git.commit": commit,
                "mlflow.source.git.commit": commit,
                "git.dirty": str(bool(dirty)).lower(),
            }
        )
    return tags


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def as_params(values: dict[str, Any]) -> dict[str, str]:
    """``values`` as :meth:`Recorder.params` stores them: strings cut to MLflow's length
    limit, keys that name a secret left out."""
    return {
        k: str(v)[:PARAM_VALUE_LIMIT]
        for k, v in values.items()
        if not any(s in k.lower() for s in SECRET_KEYS)
    }


class Recorder:
    """Writes to one MLflow run. Cheap calls: params, tags and metrics are buffered and
    written in batches by :meth:`flush` (at most every ``FLUSH_SECONDS`` on its own, and
    on leaving a ``with Recorder(run_id):`` block)."""

    def __init__(self, run_id: str, artifact_uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient()
        self.artifact_uri = artifact_uri  # the run's, when known: no lookup per artifact
        self._params: list[Any] = []
        self._tags: list[Any] = []
        self._metrics: list[Any] = []
        self._last_flush = time.time()
        self.logged_params: dict[str, str] = {}  # every param of the run, as stored

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = as_params(values)
        self.logged_params.update(params)
        self._params.extend(Param(k, v) for k, v in params.items())

    def tags(self, values: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._tags.extend(RunTag(k, str(v)[:5000]) for k, v in values.items())

    def metrics(self, values: dict[str, float], step: int = 0, model_id: str | None = None) -> None:
        """Buffer metric values at ``step``; with ``model_id`` they are the logged model's
        too (MLflow 3 stores them on the LoggedModel as well as on the run)."""
        from mlflow.entities import Metric

        now = time.time()
        self._metrics.extend(
            Metric(k, float(v), int(now * 1000), step, model_id=model_id) for k, v in values.items()
        )
        if now - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def link_to_model(self, model_id: str, step: int) -> None:
        """Make the buffered metrics of ``step`` the logged model's too. Logging a model,
        MLflow links the run's metrics of its step that are in the store already; these
        are the ones not written yet."""
        from mlflow.entities import Metric

        self._metrics = [
            Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id)
            if m.step == step and m.model_id is None
            else m
            for m in self._metrics
        ]

    def flush(self) -> None:
        """Write everything buffered, in as few ``log_batch`` calls as MLflow's limits
        allow (100 params, 100 tags and 1000 values in all per call)."""
        while self._params or self._tags or self._metrics:
            params, self._params = self._params[:100], self._params[100:]
            tags, self._tags = self._tags[:100], self._tags[100:]
            room = 1000 - len(params) - len(tags)
            metrics, self._metrics = self._metrics[:room], self._metrics[room:]
            self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags)
        self._last_flush = time.time()

    def text(self, content: str, path: str) -> None:
        """``content`` as the run's artifact ``path``, as ``MlflowClient.log_text`` writes
        it; into the run's known artifact location directly (the client looks the run up
        first: 3 ms a call here)."""
        if self.artifact_uri is None:
            self.client.log_text(self.run_id, content, path)
            return
        import tempfile

        import mlflow
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        # The repository as the client resolves it from the run's artifact location.
        tracking_uri = mlflow.get_tracking_uri()
        location = add_databricks_profile_info_to_artifact_uri(self.artifact_uri, tracking_uri)
        repository = get_artifact_repository(location, tracking_uri=tracking_uri)
        folder, name = os.path.split(path)
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp, name)
            file.write_text(content, encoding="utf-8")
            repository.log_artifact(str(file), folder or None)

    def artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)


@contextlib.contextmanager
def open_run(
    experiment: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
) -> Iterator[Recorder]:
    """Start a run (nested under ``parent_run_id`` if given) and end it with its true status.

    The run is also MLflow's active run while open, so ``mlflow.pyfunc.log_model`` logs
    into it. Call :func:`setup` first.
    """
    import mlflow

    from sweep.errors import TrackingLost

    experiment_id = ensure_experiment(experiment)
    # An exported MLFLOW_RUN_ID would override the parent (mlflow #15713).
    os.environ.pop("MLFLOW_RUN_ID", None)
    recorder: Recorder | None = None
    status = "FINISHED"
    try:
        # Ctrl-C inside start_run could leave a created run that nothing ends: it is
        # taken once the run is MLflow's active run and ours to close KILLED.
        with deferred_signals():
            run = mlflow.start_run(
                experiment_id=experiment_id,
                run_name=run_name,
                parent_run_id=parent_run_id,
                tags={k: str(v) for k, v in {**run_context_tags(), **(tags or {})}.items()},
            )
            recorder = Recorder(run.info.run_id, run.info.artifact_uri)
        yield recorder
        recorder.flush()  # inside the try: a write that fails makes the run FAILED
    except (KeyboardInterrupt, SystemExit) as exc:
        status = "KILLED"
        release_interrupted(exc)
        _tag_error(recorder, f"interrupted ({type(exc).__name__})")
        store_lost(exc)  # then the run is closed in seconds, or left to the resume
        raise
    except BaseException as exc:
        status = "FAILED"
        _tag_error(recorder, one_line(exc))
        lost = store_lost(exc)
        if lost is not None and not isinstance(exc, TrackingLost):
            raise TrackingLost(f"{lost}: a run could not be written") from exc
        raise
    finally:
        if recorder is not None:  # else start_run failed: no run of ours to end
            if status != "FINISHED":
                # The error tag, and what was buffered.
                with contextlib.suppress(Exception), closing_write():
                    recorder.flush()
            with closing_write():
                _end_active_run(recorder.run_id, status)
            checkpoint_stores()


def _end_active_run(run_id: str, status: str) -> None:
    """``mlflow.end_run(status)``; when the store says "database is locked", the run,
    already taken off MLflow's active-run stack, is ended by :func:`set_terminated`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.end_run(status=status)
    except MlflowException as exc:
        if "database is locked" not in str(exc):
            raise
        set_terminated(run_id, status)


def release_interrupted(exc: BaseException) -> None:
    """An interruption has reached its handler: free what the frames it cut short still
    hold, before writing about it, and mark it taken (:func:`sweep.interrupts.taken`).

    A signal landing inside an MLflow write to its sqlite store leaves that connection, and
    with it the database's write lock, referenced from the traceback's frames only: until
    they let go, every later write (closing the run KILLED) waits out sqlite's busy
    timeout (20 s) and fails, and its error would replace the KeyboardInterrupt."""
    import traceback

    from sweep import interrupts

    interrupts.taken()
    traceback.clear_frames(exc.__traceback__)  # frames still running are left as they are


@contextlib.contextmanager
def deferred_signals(pending: list[int] | None = None) -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside the block are handled on leaving it, by the
    handlers in force before (Ctrl-C's KeyboardInterrupt, say): for a step that must not
    be cut in two. With ``pending``, they are appended to it instead, for the caller to
    act on later. Only the main thread handles signals: elsewhere, a plain block."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    keep = pending is not None
    pending = [] if pending is None else pending
    caught = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in caught}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    if pending and not keep:
        handler = before[pending[0]]
        if callable(handler):
            handler(pending[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(pending[0])


def _tag_error(recorder: Recorder | None, message: str) -> None:
    if recorder is None:
        return
    with contextlib.suppress(Exception):
        recorder.tags({"error": message})


def terminate_run(run_id: str, status: str, reason: str) -> None:
    """Close a run some other process left RUNNING (it was killed)."""
    from mlflow.tracking import MlflowClient

    MlflowClient().set_tag(run_id, "error", reason)
    set_terminated(run_id, status)


def set_terminated(run_id: str, status: str, attempts: int = 4) -> None:
    """End the run with ``status``; tried again while the sqlite store says "database is
    locked". Seen once, as a SIGTERM stopped a study and its spawned champion re-run
    together on a loaded machine (each attempt waits 20 s for the lock first): the
    study's parent run must not stay RUNNING for a lock that is released a moment later."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    for attempt in range(attempts):
        try:
            MlflowClient().set_terminated(run_id, status=status)
            return
        except MlflowException as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2**attempt)
