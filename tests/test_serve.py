"""The real MLflow model server (``sweep serve`` -> ``mlflow models serve --env-manager local``)
in front of tiny trained models: a table with string labels and a digits (array) model.

Both servers start once per module, in parallel, on free loopback ports, and are always
stopped (finalizer). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import cli_env

from sweep import cli
from sweep.config import load_run_config
from sweep.deploy import champion_uri, free_port, start_server, stop_server, wait_until_ready
from sweep.train import run

# One test process runs this module: its module-scoped fixtures are built once.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("serve")]

LABELS = ("cat", "dog", "bird")
FEATURES = ["age", "height", "color"]
READY_S = 150.0  # two servers importing torch + MLflow at once on 2 cores


def write_table(path: Path, n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Classification table: string labels, an int column, a float, a category, an id."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "age": rng.integers(1, 15, size=n),
            "height": rng.normal(30, 8, size=n).round(2),
            "color": rng.choice(["black", "white", "brown"], size=n),
        }
    )
    score = (df["age"] - 7) / 3 + (df["color"] == "black") * 1.2 + (df["height"] - 30) / 10
    df["label"] = np.where(score > 0.6, LABELS[0], np.where(score < -0.6, LABELS[1], LABELS[2]))
    df.to_csv(path, index=False)
    return df


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc), to clean up if their parent was killed."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def _stop_cli_server(proc: subprocess.Popen) -> None:
    """SIGTERM ``sweep serve`` (it stops its server group); kill whatever outlives it."""
    leftovers = _children(proc.pid)
    stop_server(proc, timeout=20)
    for pid in leftovers:  # each is a server process-group leader (start_new_session)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: Path):
    """Train both models, start both servers; yield URLs, URIs, data; stop the servers."""
    root = tmp_path_factory.mktemp("serve")
    shutil.copy(_empty_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    table = write_table(root / "pets.csv")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        with contextlib.ExitStack() as stack:
            logs = [stack.enter_context((root / f"{n}.log").open("w")) for n in ("digits", "table")]
            # The digits server boots while the table model trains (2 cores, both busy).
            digits_run = run(
                load_run_config(["data=digits", "trainer=fast", "trainer.max_epochs=1"])
            )
            digits_port, table_port = free_port(), free_port()
            while table_port == digits_port:
                table_port = free_port()
            digits_proc = start_server(
                digits_run.model_uri,
                port=digits_port,
                tracking_uri=uri,
                stdout=logs[0],
                stderr=subprocess.STDOUT,
            )
            stack.callback(stop_server, digits_proc)
            csv_run = run(
                load_run_config(
                    [
                        "data=csv",
                        f"data.path={root / 'pets.csv'}",
                        "data.target=label",
                        "data.drop=[id]",
                        "trainer=fast",
                    ]
                )
            )
            # The table model through the CLI (``sweep serve``), the digits one through the API.
            table_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sweep",
                    "serve",
                    f"model={csv_run.model_uri}",
                    f"port={table_port}",
                ],
                cwd=root,
                env=cli_env(uri),
                stdout=logs[1],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            stack.callback(_stop_cli_server, table_proc)
            for url, proc, log in (
                (f"http://127.0.0.1:{digits_port}", digits_proc, "digits.log"),
                (f"http://127.0.0.1:{table_port}", table_proc, "table.log"),
            ):
                try:
                    wait_until_ready(url, READY_S, proc)
                except (TimeoutError, RuntimeError) as exc:
                    pytest.fail(f"{exc}\n{(root / log).read_text()[-3000:]}")
            yield {
                "table_url": f"http://127.0.0.1:{table_port}",
                "digits_url": f"http://127.0.0.1:{digits_port}",
                "table_uri": csv_run.model_uri,
                "digits_uri": digits_run.model_uri,
                "table": table,
                "root": root,
                "uri": uri,
                "table_port": table_port,
            }


def post(url: str, body: dict | str, timeout: float = 30) -> tuple[int, dict]:
    """POST JSON to ``<url>/invocations``; (status, parsed body), errors included."""
    data = body if isinstance(body, str) else json.dumps(body)
    request = urllib.request.Request(
        f"{url}/invocations",
        data=data.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def predictions(body: dict) -> pd.DataFrame:
    return pd.DataFrame(body["predictions"])


@pytest.fixture(scope="module")
def local_table_model(served):
    return mlflow.pyfunc.load_model(served["table_uri"])


def rows(served, n: int = 12) -> pd.DataFrame:
    return served["table"].iloc[:n]


# -- a table model with string labels --------------------------------------------------------
def test_the_request_sweep_serve_prints_is_answered(served):
    """`sweep serve` prints a curl command with the first row of the model's serving
    example: sent as printed, it gets a prediction."""
    import shlex

    log = served["root"] / "table.log"
    deadline = time.monotonic() + 60
    while "ready: curl" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    (line,) = [ln for ln in log.read_text().splitlines() if ln.startswith("ready: curl")]
    args = shlex.split(line.removeprefix("ready: "))
    assert args[args.index("-X") + 2] == f"{served['table_url']}/invocations"
    status, body = post(served["table_url"], args[args.index("-d") + 1])
    assert status == 200, body
    assert len(predictions(body)) == 1 and predictions(body)["prediction"][0] in LABELS


def test_dataframe_split_matches_local_pyfunc(served, local_table_model):
    x = rows(served)[FEATURES]
    status, body = post(served["table_url"], {"dataframe_split": x.to_dict(orient="split")})
    assert status == 200, body
    got = predictions(body)["prediction"].tolist()
    expected = local_table_model.predict(x)["prediction"].tolist()
    assert got == expected
    assert set(got) <= set(LABELS)  # decoded back to the original label strings


def test_records_reordered_and_extra_columns(served, local_table_model):
    x = rows(served)
    expected = local_table_model.predict(x[FEATURES])["prediction"].tolist()
    # Columns in another order, plus the id and the label itself and an unknown column.
    shuffled = x[["color", "label", "height", "id", "age"]].assign(note="ignored")
    status, body = post(
        served["table_url"], {"dataframe_records": shuffled.to_dict(orient="records")}
    )
    assert status == 200, body
    assert predictions(body)["prediction"].tolist() == expected
    status, body = post(served["table_url"], {"dataframe_split": shuffled.to_dict(orient="split")})
    assert status == 200, body
    assert predictions(body)["prediction"].tolist() == expected


def test_probabilities_when_asked(served, local_table_model):
    x = rows(served, 5)[FEATURES]
    status, body = post(
        served["table_url"],
        {"dataframe_split": x.to_dict(orient="split"), "params": {"proba": True}},
    )
    assert status == 200, body
    got = predictions(body)
    proba_columns = [f"proba_{label}" for label in sorted(LABELS)]
    assert list(got.columns) == ["prediction", *proba_columns]
    np.testing.assert_allclose(got[proba_columns].sum(axis=1), 1.0, atol=1e-5)
    expected = local_table_model.predict(x, params={"proba": True})
    np.testing.assert_allclose(got[proba_columns], expected[proba_columns], rtol=1e-6)
    # Without the parameter: labels only.
    status, body = post(served["table_url"], {"dataframe_split": x.to_dict(orient="split")})
    assert list(predictions(body).columns) == ["prediction"]


def test_missing_values_and_fractions_in_an_int_column(served, local_table_model):
    # `age` is an int column in the file: the served model still takes null (imputed) and
    # 2.5, exactly like the local pyfunc does, instead of rejecting or truncating them.
    records = [
        {"age": None, "height": 30.0, "color": "black"},
        {"age": 2.5, "height": None, "color": None},
        {"age": "4", "height": "31.5", "color": "unseen-colour"},
    ]
    status, body = post(served["table_url"], {"dataframe_records": records})
    assert status == 200, body
    expected = local_table_model.predict(pd.DataFrame(records))["prediction"].tolist()
    assert predictions(body)["prediction"].tolist() == expected


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (
            {"dataframe_records": [{"age": 3, "color": "black"}]},
            ["missing", "height"],
        ),
        (
            {"dataframe_records": [{"age": 3, "height": "tall", "color": "black"}]},
            ["height", "tall"],
        ),
        ({"inputs": [[1.0, 2.0]]}, ["missing"]),
        ('{"dataframe_records": [', ["JSON"]),
        (
            {"dataframe_records": [{"age": 3, "height": 1e300, "color": "black"}]},
            ["column 'height': row 0 (0-based) is 1e+300", "within float32's range"],
        ),
        (
            {"dataframe_records": [{"age": 3, "height": True, "color": "black"}]},
            ["height", "True is not a number"],
        ),
        ({"dataframe_split": {"columns": FEATURES, "data": []}}, ["no rows"]),
        (
            # What json.dumps writes for float("inf"); imputing it would hide the bad row.
            '{"dataframe_records": [{"age": 3, "height": 1.5, "color": "black"}, '
            '{"age": 3, "height": -Infinity, "color": "black"}]}',
            ["column 'height': row 1 (0-based) is -inf, not a finite number"],
        ),
    ],
    ids=[
        "missing-column",
        "garbage-number",
        "array-for-a-table",
        "broken-json",
        "overflow",
        "boolean-number",
        "no-rows",
        "infinite-number",
    ],
)
def test_bad_payload_is_a_readable_400_and_the_server_keeps_serving(served, body, needles):
    status, error = post(served["table_url"], body)
    assert 400 <= status < 500, (status, error)
    message = error.get("message", "")
    for needle in needles:
        assert needle in message, message
    # Past the JSON parser, MLflow's server (and its schema check) quote the input before
    # the reason ("Failed to predict data '<the frame>'. \nError: <reason>"): one line.
    if message.startswith("Failed to predict data"):
        assert "\n" not in message.rsplit("Error: ", 1)[-1], message
    assert "Traceback" not in json.dumps(error)
    assert "stack_trace" not in error
    # The next good request is answered.
    x = rows(served, 2)[FEATURES]
    status, body = post(served["table_url"], {"dataframe_split": x.to_dict(orient="split")})
    assert status == 200, body


# -- an array model (8x8 digits, flattened) --------------------------------------------------
def test_array_model_served_with_inputs(served):
    from sklearn.datasets import load_digits

    images = load_digits().images[:6].reshape(6, -1)  # integer pixel values, as users have them
    status, body = post(served["digits_url"], {"inputs": images.astype(int).tolist()})
    assert status == 200, body
    local = mlflow.pyfunc.load_model(served["digits_uri"])
    expected = local.predict(images.astype(np.float32))["prediction"].tolist()
    assert predictions(body)["prediction"].tolist() == expected
    status, body = post(
        served["digits_url"], {"inputs": images[:2].tolist(), "params": {"proba": True}}
    )
    assert status == 200, body
    assert predictions(body).filter(like="proba_").shape == (2, 10)
    status, error = post(served["digits_url"], {"inputs": [[0.0] * 10]})
    assert status == 400
    assert "shape" in error["message"].lower(), error
    # A missing pixel (null) would silently become a confident label: refused, by row.
    holes = images[:3].tolist()
    holes[2][5] = None
    status, error = post(served["digits_url"], {"inputs": holes})
    assert status == 400, error
    assert "row 2 (0-based) holds NaN" in error["message"] and "stack_trace" not in error
    status, body = post(served["digits_url"], {"inputs": images[:1].tolist()})
    assert status == 200, body


def test_sweep_serve_prints_a_request_shaped_like_the_model(served):
    # The table server runs under ``sweep serve``: its ready line names the real columns.
    log = served["root"] / "table.log"
    deadline = time.monotonic() + 10  # printed just after the first /ping answers
    while "ready:" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    ready = next(line for line in log.read_text().splitlines() if line.startswith("ready:"))
    assert f"{served['table_url']}/invocations" in ready
    assert '"columns": ["age", "height", "color"]' in ready


# -- sweep serve: its one-line errors --------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["model=models:/no_such_model@champion"], "no_such_model not found"),
        (["model=models:/m-0123456789abcdef"], "not found"),
        (["port=http"], "port=http: must be an integer"),
        (["colour=blue"], "colour: unknown option"),
    ],
)
def test_serve_errors_are_one_line(served, capsys, args, needle):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", served["uri"])
        code = cli.main(["serve", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err
    assert len(err.splitlines()) == 1, err


def test_serve_refuses_a_busy_port(served, capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", served["uri"])
        code = cli.main(["serve", f"model={served['table_uri']}", f"port={served['table_port']}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert f"127.0.0.1:{served['table_port']}" in err and "port=" in err


def test_serve_default_is_the_champion_of_the_default_study(served, capsys):
    # No model registered under the default study's name in this store: a clear error that
    # names the URI it tried.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", served["uri"])
        code = cli.main(["serve"])
    err = capsys.readouterr().err
    assert code == 2
    assert "models:/mnist1d_default@champion" in err  # conf/sweep.yaml's study.name
    assert champion_uri() == "models:/mnist1d_default@champion"


def test_missing_store_is_not_created(tmp_path, capsys):
    db = tmp_path / "nowhere.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        code = cli.main(["serve", "model=models:/x@champion"])
    assert code == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not db.exists()


def test_the_printed_request_is_strict_json_when_the_example_has_missing_values(monkeypatch):
    """MLflow saves a missing value of the serving example as ``NaN``, which is not JSON:
    the ``curl`` line sends ``null`` instead (read back as the same missing value)."""
    import mlflow.models.utils

    from sweep.deploy import payload_hint

    saved = '{"dataframe_split": {"columns": ["a", "b"], "data": [[NaN, 1.5], [2.0, Infinity]]}}'
    monkeypatch.setattr(mlflow.models.utils, "load_serving_example", lambda uri: saved)
    hint = payload_hint(None, "models:/m/1")
    assert json.loads(hint, parse_constant=pytest.fail) == {
        "dataframe_split": {"columns": ["a", "b"], "data": [[None, 1.5]]}
    }
