"""Deploy a logged model: HTTP serving (``sweep serve``) and batch prediction (``sweep predict``).

Both take any MLflow model URI; the default is the current study's champion,
``models:/<study>@champion``. The model is the pyfunc of :mod:`sweep.packaging`: raw
table rows (or arrays) in, original labels / values out, preprocessing inside.

Serving is MLflow's own scoring server (``mlflow models serve --env-manager local``), run
as a child process in its own process group so that stopping ``sweep serve`` also stops
the uvicorn process MLflow starts under it.

Every user mistake (bad option, missing file or column, unknown model, port taken) is a
one-line :class:`DeployError`; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.errors import SweepError
from sweep.tracking import sqlite_path

DEFAULT_HOST = "127.0.0.1"  # loopback: a model server is not exposed unless asked
DEFAULT_PORT = 5001  # 5000 is `make ui`
DEFAULT_CHUNK_SIZE = 10_000
READY_TIMEOUT_S = 120.0  # first start imports torch + MLflow: seconds on a small machine
PARQUET_SUFFIXES = (".parquet", ".pq")
NUMERIC_TYPES = ("double", "float", "long", "integer")


class DeployError(SweepError):
    """A model, file, column or option that cannot be used; one line."""


# --------------------------------------------------------------------------- options


def parse_options(args: list[str], known: dict[str, Any]) -> dict[str, Any]:
    """``["port=5002", "model=models:/x@champion"]`` -> options, defaults from ``known``."""
    options = dict(known)
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise DeployError(f"{arg!r}: expected key=value; keys: {', '.join(known)}")
        if key not in known:
            raise DeployError(f"{key}: unknown option; known: {', '.join(known)}")
        options[key] = value
    return options


def _int_option(name: str, value: Any, low: int, high: int | None = None) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise DeployError(f"{name}={value}: must be an integer") from None
    if number < low or (high is not None and number > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise DeployError(f"{name}={value}: must be {bounds}")
    return number


def _bool_option(name: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise DeployError(f"{name}={value}: must be true or false")


def one_line(error: BaseException) -> str:
    """The useful line of an MLflow / pandas error (MLflow nests "... Error: <reason>")."""
    text = str(error).strip() or type(error).__name__
    # MLflow's schema errors repeat the whole input and the schema before the reason.
    if "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first if len(first) <= 300 else first[:297] + "..."


# --------------------------------------------------------------------------- model URIs


def champion_uri(study: str | None = None) -> str:
    """``models:/<name>@champion`` for ``study``, else for conf/sweep.yaml's study."""
    from sweep.champion import ALIAS

    if study:
        return f"models:/{study}@{ALIAS}"
    from sweep.config import compose

    cfg = compose("sweep")
    name = cfg.champion.get("registered_name") or cfg.study.name
    return f"models:/{name}@{ALIAS}"


def require_store(tracking_uri: str) -> None:
    """A missing sqlite store is an error, not a new empty database (MLflow would make one)."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.exists():
        raise DeployError(
            f"no MLflow store at {path.resolve()} (tracking URI {tracking_uri}); run from the "
            f"project directory or set MLFLOW_TRACKING_URI"
        )


def _needs_store(model_uri: str) -> bool:
    return model_uri.startswith(("models:/", "runs:/"))


def check_model(model_uri: str, tracking_uri: str) -> Any:
    """The model's MLflow ``ModelInfo``; a one-line DeployError if it cannot be found."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    from sweep.tracking import redact

    if _needs_store(model_uri):
        require_store(tracking_uri)
    try:
        return get_model_info(model_uri)
    except (MlflowException, OSError) as exc:
        raise DeployError(
            f"model {model_uri}: {one_line(exc)} (tracking store {redact(tracking_uri)})"
        ) from None


# --------------------------------------------------------------------------- serving


def server_command(model_uri: str, host: str, port: int) -> list[str]:
    """``mlflow models serve`` with the local environment (this virtualenv) and no conda."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
    ]


def server_env(tracking_uri: str | None = None) -> dict[str, str]:
    """The environment for the server: this venv's bin first on PATH, tracking URI set.

    MLflow starts the server as ``bash -c "exec uvicorn ..."``: without the venv on PATH
    (``.venv/bin/sweep serve`` from a plain shell) bash would not find this venv's uvicorn.
    """
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(filter(None, [bin_dir, env.get("PATH")]))
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri  # models:/ URIs resolve in the same store
    env.pop("MLFLOW_RUN_ID", None)
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return env


def check_port_free(host: str, port: int) -> None:
    """Fail early, in one line, when something already listens on ``host:port`` or this
    machine cannot listen on ``host`` (a name that does not resolve, an address not its)."""
    free_port(host, port)


def free_port(host: str = DEFAULT_HOST, port: int = 0) -> int:
    """``port`` if nobody listens on it right now, else DeployError; with port 0 a port
    nobody listens on (tests, and the default when asked for port=0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        if os.name == "posix":
            # As servers bind: a port whose last connections are still closing is free
            # (Linux still refuses one that something listens on).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:  # also socket.gaierror: a host name that does not resolve
            host_fault = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            what = "host=" if host_fault else "port="
            raise DeployError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose {what}..."
            ) from None
        return int(sock.getsockname()[1])


def start_server(
    model_uri: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    tracking_uri: str | None = None,
    stdout: Any = None,
    stderr: Any = None,
) -> subprocess.Popen:
    """Start the scoring server; it runs in a new process group (see :func:`stop_server`)."""
    return subprocess.Popen(
        server_command(model_uri, host, port),
        env=server_env(tracking_uri),
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop the server and the uvicorn process under it: SIGTERM to the group, then SIGKILL."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the leader is gone; a child may not be
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # uvicorn may outlive a leader that exited


def wait_until_ready(
    base_url: str, timeout: float = READY_TIMEOUT_S, proc: subprocess.Popen | None = None
) -> None:
    """Poll ``<base_url>/ping`` until it answers 200. Bounded by ``timeout``; raises
    RuntimeError at once if ``proc`` (the server) exits first, TimeoutError at the end."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"model server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{base_url}/ping did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def payload_hint(model_info: Any, model_uri: str | None = None) -> str:
    """A JSON body for ``/invocations`` that the model answers: the first row of the serving
    example MLflow saved with it, on one line; else one shaped like its input signature,
    with ``...`` for the values."""
    example = _serving_example(model_uri) if model_uri else None
    if example is not None:
        return json.dumps(example, separators=(", ", ": "), allow_nan=False)
    schema = model_info.signature.inputs if model_info.signature else None
    if schema is None or schema.is_tensor_spec():
        return '{"inputs": [[...], [...]]}'
    names = [str(n) for n in schema.input_names()]
    shown = ", ".join(json.dumps(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    return f'{{"dataframe_split": {{"columns": [{shown}], "data": [[...]]}}}}'


def _serving_example(model_uri: str) -> dict | None:
    """The model's ``serving_input_example.json`` cut to its first row, or None."""
    from mlflow.models.utils import load_serving_example

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    try:
        example = json.loads(load_serving_example(model_uri))
    except Exception:  # no example logged, or not readable: the signature's shape instead
        return None
    split = example.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        split["data"] = split["data"][:1]
    for key in ("inputs", "dataframe_records", "instances"):
        if isinstance(example.get(key), list):
            example[key] = example[key][:1]
    return _missing_as_null(example)


def _missing_as_null(value: Any) -> Any:
    """``value`` with NaN and infinities as None: MLflow writes a missing value as ``NaN``,
    which is not JSON (curl sends it, strict clients refuse it); ``null`` is read back as
    the same missing value."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _missing_as_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_missing_as_null(v) for v in value]
    return value


def serve(
    model_uri: str,
    host: str,
    port: int,
    tracking_uri: str | None = None,
    hint: str = '{"dataframe_split": {"columns": [...], "data": [[...]]}}',
) -> int:
    """Run the server in the foreground until it exits or Ctrl-C / SIGTERM; its status.

    ``hint`` is the example request body printed once the server is ready."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    url = f"http://{host}:{port}"
    console.print(
        f"serving {model_uri} at {url} (MLflow scoring server; Ctrl-C stops it)", soft_wrap=True
    )
    proc = start_server(model_uri, host, port, tracking_uri)
    try:
        try:
            wait_until_ready(url, READY_TIMEOUT_S, proc)
        except TimeoutError as exc:
            console.print(f"warning: {exc}; still waiting for the server")
        except RuntimeError:
            return proc.wait() or 1
        else:
            console.print(
                f"ready: curl -X POST {url}/invocations -H 'Content-Type: application/json' "
                f"-d {shlex.quote(hint)}",
                soft_wrap=True,
                markup=False,
            )
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM (the CLI turns it into KeyboardInterrupt): a normal stop.
        console.print("stopping the model server")
        return 0
    finally:
        stop_server(proc)


def serve_command(args: list[str]) -> int:
    """``sweep serve [model=URI] [study=NAME] [port=5001] [host=127.0.0.1]``."""
    from sweep import tracking

    opts = parse_options(
        args, {"model": None, "study": None, "port": DEFAULT_PORT, "host": DEFAULT_HOST}
    )
    port = _int_option("port", opts["port"], 0, 65535)
    host = str(opts["host"]).strip() or DEFAULT_HOST
    if port == 0:
        port = free_port(host)
    check_port_free(host, port)  # before the model is fetched: it may be large
    model_uri = opts["model"] or champion_uri(opts["study"])
    tracking_uri = tracking.setup(None, answer=_needs_store(model_uri))  # a path needs no store
    info = check_model(model_uri, tracking_uri)  # a clear error now, not a server traceback
    return serve(model_uri, host, port, tracking_uri, hint=payload_hint(info, model_uri))


# --------------------------------------------------------------------------- batch prediction


@dataclass
class PredictSummary:
    """What :func:`predict_file` wrote."""

    model_uri: str
    input: Path
    output: Path
    rows: int
    prediction_columns: list[str]
    seconds: float


@dataclass
class _InputSpec:
    """How to turn a chunk of the file into what the model takes, read from its signature."""

    kind: str  # "table" | "array" | "any"
    columns: list[str]  # table: required feature columns
    types: dict[str, str]  # table: column -> MLflow type name
    values_per_row: int | None = None  # array: values per sample


def _input_spec(model: Any) -> _InputSpec:
    schema = model.metadata.get_input_schema()
    if schema is None:
        return _InputSpec("any", [], {})
    if schema.is_tensor_spec():
        shape = schema.inputs[0].shape
        n = math.prod(int(s) for s in shape[1:]) if len(shape) > 1 else None
        return _InputSpec("array", [], {}, n if n and n > 0 else None)
    types = {str(c.name): str(getattr(c.type, "name", c.type)).lower() for c in schema.inputs}
    required = set(schema.required_input_names())
    # A sweep model types its numeric columns `any` (its preprocessor parses them); its
    # preprocessor knows which are numbers, so a bad value is reported with its row here.
    # It needs every feature column, even one an older signature marks optional (MLflow
    # does so when the input example has a missing value in that column).
    with contextlib.suppress(Exception):
        kinds = model.unwrap_python_model().preprocessor.input_schema
        types.update({c: kinds[c] for c, t in types.items() if t == "any" and c in kinds})
        required |= set(kinds) & set(types)
    return _InputSpec("table", [c for c in types if c in required], types)


def _resolve_input(value: Any) -> Path:
    if not value:
        raise DeployError("input: no file given; set input=my_rows.csv")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise DeployError(f"input: file not found: {path.absolute()}")
    if path.is_dir():
        raise DeployError(f"input: {path} is a directory, expected a CSV or Parquet file")
    return path


def _default_output(path: Path) -> Path:
    """Beside the input; comma-separated whatever the input's separator (``.csv``)."""
    return path.with_name(f"{path.stem}.predictions{path.suffix if _is_parquet(path) else '.csv'}")


def _check_output_suffix(path: Path) -> None:
    """The suffix picks the format written: another one would hold CSV under its name."""
    if path.suffix.lower() not in (".csv", *PARQUET_SUFFIXES):
        allowed = ", ".join((".csv", *PARQUET_SUFFIXES))
        raise DeployError(f"output={path}: write to a file named {allowed} (the format)")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _read_chunks(
    path: Path, chunk_size: int, spec: _InputSpec
) -> tuple[Iterator[tuple[Any, int]], int]:
    """Chunks of the file with the position reached (bytes for CSV, rows for Parquet),
    and the total of that position, for the progress bar."""
    import pandas as pd

    if _is_parquet(path):
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise DeployError(f"cannot read {path} as Parquet: {one_line(exc)}") from None

        def parquet_chunks() -> Iterator[tuple[Any, int]]:
            done = 0
            for batch in parquet.iter_batches(batch_size=chunk_size):
                frame = batch.to_pandas()
                done += len(frame)
                yield frame, done

        return parquet_chunks(), int(parquet.metadata.num_rows)

    from sweep.data.table import csv_options

    try:
        options = csv_options(path, sample_rows=10_000)  # as training reads: ; tab |
        header = pd.read_csv(path, nrows=0, **options).columns
    except pd.errors.EmptyDataError:
        raise DeployError(f"input: {path} is empty (no header, no rows)") from None
    except UnicodeDecodeError:
        raise DeployError(f"cannot read {path} as CSV: not UTF-8 text") from None
    except Exception as exc:
        raise DeployError(f"cannot read {path} as CSV: {one_line(exc)}") from None
    # String features stay strings in every chunk: a chunk where such a column is all blank
    # would otherwise be float NaN, which the signature (string) rejects; "007" stays "007".
    dtypes = {c: str for c in header if spec.types.get(str(c)) == "string"}
    # An array file saved without a header (np.savetxt) starts with numbers: that first row
    # is data, not column names; reading it as a header would silently drop a sample.
    header_row = 0
    first = pd.read_csv(path, header=None, nrows=1, **options).iloc[0]
    if spec.kind == "array" and _all_numbers(first):
        header_row = None

    def csv_chunks() -> Iterator[tuple[Any, int]]:
        with path.open("rb") as handle:
            reader = pd.read_csv(
                handle, chunksize=chunk_size, dtype=dtypes, header=header_row, **options
            )
            try:
                for frame in reader:
                    yield frame.rename(columns=str), handle.tell()
            except UnicodeDecodeError:
                raise DeployError(f"cannot read {path} as CSV: not UTF-8 text") from None
            except (pd.errors.ParserError, ValueError) as exc:
                raise DeployError(f"cannot read {path} as CSV: {one_line(exc)}") from None

    return csv_chunks(), path.stat().st_size


def _all_numbers(cells: Any) -> bool:
    """Whether every cell of a row read without a header is a number."""
    import pandas as pd

    return bool(len(cells)) and bool(pd.to_numeric(pd.Series(cells), errors="coerce").notna().all())


def _model_input(frame: Any, spec: _InputSpec, path: Path, first_row: int) -> Any:
    """The chunk as the model takes it; a DeployError naming the column / row otherwise."""
    import numpy as np
    import pandas as pd

    if spec.kind == "array":
        n_columns = len(frame.columns)
        if spec.values_per_row is not None and n_columns != spec.values_per_row:
            raise DeployError(
                f"{path}: the model takes {spec.values_per_row} values per row, the file has "
                f"{n_columns} columns; keep only the input values"
            )
        try:
            return frame.to_numpy(dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DeployError(f"{path}: non-numeric input values ({one_line(exc)})") from None
    if spec.kind != "table":
        return frame
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise DeployError(
            f"{path} is missing column(s) {', '.join(map(repr, missing))} the model needs; "
            f"model inputs: {', '.join(map(repr, spec.columns))}"
        )
    x = frame[[c for c in spec.types if c in frame.columns]].copy()  # extra columns ignored
    for column, kind in spec.types.items():
        if column not in x.columns:
            continue
        values = x[column]
        if kind in NUMERIC_TYPES and not pd.api.types.is_numeric_dtype(values):
            numbers = pd.to_numeric(values, errors="coerce")
            bad = values.notna() & numbers.isna() & (values.astype(str).str.strip() != "")
            if bad.any():
                row = first_row + int(np.flatnonzero(bad.to_numpy())[0]) + 1
                raise DeployError(
                    f"{path}: column {column!r} must be numeric; data row {row} has "
                    f"{values[bad].iloc[0]!r}"
                )
            x[column] = values = numbers.astype(np.float64)
        if kind in NUMERIC_TYPES and pd.api.types.is_float_dtype(values):
            _refuse_out_of_range(values, column, path, first_row)
        if kind in ("double", "float") and pd.api.types.is_integer_dtype(values):
            x[column] = values.astype(np.float64)  # MLflow refuses int64 -> double itself
        elif kind == "string" and not (
            pd.api.types.is_object_dtype(values) or isinstance(values.dtype, pd.StringDtype)
        ):
            x[column] = (
                values.astype(object)
                .where(values.notna(), None)
                .map(lambda v: v if v is None else str(v))
            )
    return x


def _refuse_out_of_range(values: Any, column: str, path: Path, first_row: int) -> None:
    """A DeployError naming the file's data row of the first infinite value, or one beyond
    float32's range: the model would refuse the chunk with a row counted within it."""
    import numpy as np

    from sweep.data.table import FLOAT32_MAX, out_of_range

    bad = out_of_range(values.to_numpy(dtype=np.float64, na_value=np.nan))
    if len(bad):
        raise DeployError(
            f"{path}: column {column!r} must be finite and within float32's range "
            f"(±{FLOAT32_MAX:.1e}); data row {first_row + int(bad[0]) + 1} has "
            f"{float(values.iloc[bad[0]])!r}"
        )


class _ChunkWriter:
    """Appends frames to a temporary file beside ``output`` (CSV or Parquet by suffix);
    :meth:`commit` moves it into place, so a failed run leaves no half-written output."""

    def __init__(self, output: Path):
        self.output = output
        self.tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        self._parquet: Any = None
        self._schema: Any = None
        self._csv: Any = None

    def write(self, frame: Any) -> None:
        if _is_parquet(self.output):
            import pyarrow as pa
            import pyarrow.parquet as pq

            # Later chunks take the first chunk's column types (Parquet needs one schema).
            table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
            if self._parquet is None:
                self.output.parent.mkdir(parents=True, exist_ok=True)
                self._schema = table.schema
                self._parquet = pq.ParquetWriter(self.tmp, self._schema)
            self._parquet.write_table(table)
        else:
            header = self._csv is None
            if self._csv is None:
                self.output.parent.mkdir(parents=True, exist_ok=True)
                self._csv = self.tmp.open("w", newline="", encoding="utf-8")
            frame.to_csv(self._csv, header=header, index=False)

    def _close(self) -> None:
        for handle in (self._parquet, self._csv):
            if handle is not None:
                handle.close()
        self._parquet = self._csv = None

    def commit(self) -> None:
        self._close()
        os.replace(self.tmp, self.output)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        self.tmp.unlink(missing_ok=True)


def load_model(model_uri: str, tracking_uri: str) -> Any:
    """``mlflow.pyfunc.load_model`` with a one-line DeployError for an unusable URI."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from sweep.tracking import redact

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if _needs_store(model_uri):
        require_store(tracking_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        raise DeployError(
            f"model {model_uri}: {one_line(exc)} (tracking store {redact(tracking_uri)})"
        ) from None


def predict_file(
    model_uri: str,
    input_path: str | Path,
    output_path: str | Path | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    proba: bool = False,
    progress: bool = True,
    tracking_uri: str | None = None,
) -> PredictSummary:
    """Predict every row of a CSV / Parquet file in chunks; write the rows plus predictions.

    The output (CSV or Parquet by suffix) holds the input columns as read, then
    ``prediction`` (and ``proba_<label>`` with ``proba``). Input columns of the same
    names are replaced.
    """
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from sweep import tracking

    started = time.perf_counter()
    source = _resolve_input(input_path)
    output = Path(output_path).expanduser() if output_path else _default_output(source)
    if output.resolve() == source.resolve():
        raise DeployError(f"output: {output} is the input file; choose another output=...")
    _check_output_suffix(output)
    tracking_uri = tracking.setup(tracking_uri, answer=_needs_store(model_uri))
    model = load_model(model_uri, tracking_uri)
    spec = _input_spec(model)
    chunks, total = _read_chunks(source, chunk_size, spec)
    params = {"proba": True} if proba else None
    writer = _ChunkWriter(output)
    rows = 0
    prediction_columns: list[str] = []
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]predict[/bold] {task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        TimeElapsedColumn(),
        console=console,
        # Off when stderr is a file or pipe: rich could not redraw it, only leave a blank line.
        disable=not progress or not console.is_terminal,
        transient=True,  # the summary line follows; no stale 0% bar on an error
    )
    try:
        with bar:
            task = bar.add_task(source.name, total=max(total, 1), rows=0)
            for frame, position in chunks:
                if frame.empty:
                    continue
                x = _model_input(frame, spec, source, rows)
                try:
                    predictions = model.predict(x, params=params)
                except MlflowException as exc:
                    raise DeployError(
                        f"{source}: rows {rows + 1}-{rows + len(frame)}: {one_line(exc)}"
                    ) from None
                predictions = pd.DataFrame(predictions).reset_index(drop=True)
                prediction_columns = [str(c) for c in predictions.columns]
                kept = frame.drop(columns=[c for c in prediction_columns if c in frame.columns])
                try:
                    writer.write(pd.concat([kept.reset_index(drop=True), predictions], axis=1))
                except (TypeError, ValueError) as exc:  # pyarrow: a column changed its type
                    raise DeployError(f"cannot write {output}: {one_line(exc)}") from None
                rows += len(frame)
                bar.update(task, completed=position, rows=rows)
            bar.update(task, completed=max(total, 1))
        if rows == 0:
            raise DeployError(f"input: {source} has no data rows")
        writer.commit()
    except DeployError:
        writer.discard()
        raise
    except OSError as exc:
        writer.discard()
        raise DeployError(f"cannot write {output}: {one_line(exc)}") from None
    except BaseException:
        writer.discard()
        raise
    return PredictSummary(
        model_uri, source, output, rows, prediction_columns, time.perf_counter() - started
    )


def predict_command(args: list[str]) -> int:
    """``sweep predict [model=URI | study=NAME] input=FILE [output=FILE] [chunk_size=N]
    [proba=true]``; without model, the champion of the study (conf/sweep.yaml by default)."""
    from rich.console import Console

    opts = parse_options(
        args,
        {
            "model": None,
            "study": None,
            "input": None,
            "output": None,
            "chunk_size": DEFAULT_CHUNK_SIZE,
            "proba": "false",
        },
    )
    chunk_size = _int_option("chunk_size", opts["chunk_size"], 1)
    proba = _bool_option("proba", opts["proba"])
    source = _resolve_input(opts["input"])  # before the (slow) model load
    model_uri = opts["model"] or champion_uri(opts["study"])
    summary = predict_file(
        model_uri,
        source,
        opts["output"],
        chunk_size=chunk_size,
        proba=proba,
    )
    Console(stderr=True, highlight=False).print(
        f"wrote {summary.rows:,} rows with {', '.join(summary.prediction_columns)} to "
        f"{summary.output} ({summary.seconds:.1f} s, model {summary.model_uri})",
        soft_wrap=True,
    )
    return 0
