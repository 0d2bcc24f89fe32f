"""``sweep tracking-server``: MLflow's tracking server over a PostgreSQL backend store.

For studies that span machines: every worker logs through the server (runs, metrics
and, with ``--serve-artifacts``, model files), so no machine needs the others' disks.
Bound to 127.0.0.1 unless ``host=`` says otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sweep.errors import ConfigError

DEFAULTS = {
    "backend": os.environ.get(
        "MLFLOW_BACKEND_STORE_URI", "postgresql://postgres@127.0.0.1:5432/mlflow"
    ),
    "artifacts": "mlartifacts",
    "host": "127.0.0.1",
    "port": "5000",
    "workers": "4",  # MLflow's own default: request-handling processes
}


def parse_options(args: list[str], defaults: dict[str, str]) -> dict[str, str]:
    """``key=value`` arguments over ``defaults``; unknown keys are an error."""
    options = dict(defaults)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in defaults:
            raise ConfigError(f"{arg}: expected one of {', '.join(k + '=...' for k in defaults)}")
        options[key] = value
    return options


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database named in ``url`` if it does not exist yet."""
    import psycopg

    from sweep.tracking import redact

    url = re.sub(r"^postgresql\+\w+://", "postgresql://", url)
    base, _, name = url.rpartition("/")
    name = name.split("?", 1)[0]
    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"backend={redact(url)}: cannot reach PostgreSQL: {first}") from None


def _check_backend(backend: str) -> None:
    """A database MLflow can keep runs in, reachable, its schema in place: else one line
    before the server starts (whose own errors are screens of traceback)."""
    from sweep import tracking

    scheme = backend.split("://", 1)[0].lower().split("+", 1)[0] if "://" in backend else ""
    allowed = ("sqlite", *tracking.DATABASE_SERVERS)
    if scheme not in allowed:
        raise ConfigError(
            f"backend={tracking.redact(backend)}: expected a database URL: "
            + ", ".join(f"{s}://..." for s in allowed)
        )
    if scheme == "postgresql":
        ensure_database(backend)
    tracking.check_reachable(backend, "backend")
    tracking.open_store(backend, "backend")


def server_command(args: list[str]) -> int:
    options = parse_options(args, DEFAULTS)
    if not options["workers"].isdigit() or int(options["workers"]) < 1:
        raise ConfigError(f"workers={options['workers']}: expected a whole number of at least 1")
    if not options["port"].isdigit() or not 1 <= int(options["port"]) <= 65535:
        raise ConfigError(f"port={options['port']}: expected a port number (1-65535)")
    if not options["host"].strip():
        raise ConfigError("host=: expected an address to listen on (127.0.0.1: this machine)")
    backend = options["backend"]
    _check_backend(backend)
    artifacts = Path(options["artifacts"]).resolve()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        options["host"],
        "--port",
        options["port"],
        "--workers",
        options["workers"],
    ]
    print(
        f"MLflow tracking server on http://{options['host']}:{options['port']} "
        f"(artifacts in {artifacts})",
        flush=True,
    )
    # Its own process group: mlflow server starts uvicorn workers and a job runner, and
    # all of them must stop with it (SIGTERM reaches us as KeyboardInterrupt).
    env = dict(os.environ)
    # MLflow's GenAI job runner (huey consumers) is not used by sweeps.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    proc = subprocess.Popen(command, start_new_session=True, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_group(proc)
        raise


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL what is left after ``grace``."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
