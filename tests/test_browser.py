"""A real browser (headless Chromium) on the study report and on the MLflow UI.

Chromium is driven over the DevTools protocol (websocket-client): navigate, wait for a
condition in the page, collect JavaScript exceptions and console errors, screenshot.
Without a browser these tests skip, except under CI=true where they must run.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from test_compare import STUDY_A, STUDY_B, TinyStore, tiny_store
from test_report import listening_hosts, make_target, stop_group, wait_for_listener

# One test process builds the shared tiny store (tiny_store) and runs every test on it.
pytestmark = pytest.mark.xdist_group("tiny_store")

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def _browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("no chromium on PATH: CI must install it (.ci/run: apt-get install chromium)")
    pytest.skip("no chromium on PATH (apt-get install -y chromium)")


class Chrome:
    """Headless Chromium with a fresh profile, one page, driven over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path, width: int = 1400, height: int = 1800):
        self.profile = profile
        self.proc = subprocess.Popen(
            [
                binary,
                *CHROME_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",  # the browser picks a free port, written below
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.ws = None
        try:
            port = self._port(profile / "DevToolsActivePort", timeout=30)
            self.ws = self._connect(port)
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _port(self, path: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().splitlines()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def _connect(self, port: int):
        import websocket

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        # suppress_origin: Chromium refuses DevTools websockets that send an Origin header.
        return websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Send one command; keep the events that arrive before its answer."""
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(method)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None  # the page is still loading (the context was replaced)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"{expression!r} still {value!r} after {timeout} s")

    def errors(self) -> list[str]:
        """JavaScript exceptions and console/log errors seen so far."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    browser = Chrome(_browser(), tmp_path_factory.mktemp("chrome-profile"))
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return tiny_store(tmp_path_factory)


def _pixels(png: bytes) -> tuple[float, int]:
    """Grey-level standard deviation and number of distinct colours of a screenshot."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    distinct = len(np.unique(image.reshape(-1, 3)[::7], axis=0))
    return float(image.mean(axis=2).std()), distinct


# -- the study report ---------------------------------------------------------------------------
PLOTS_DRAWN = """(() => {
  if (document.readyState !== 'complete') return 0;
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  return divs.length > 0 && divs.every(d => d.classList.contains('js-plotly-plot')
    && d.querySelector('svg.main-svg') && d.getBoundingClientRect().height > 100)
    ? divs.length : 0;
})()"""


@pytest.mark.parametrize("study", [STUDY_A, STUDY_B])
def test_report_renders_in_a_browser(
    study: str, store: TinyStore, chrome: Chrome, tmp_path: Path
) -> None:
    from sweep.report import build_report

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(store.root)
        path = build_report(store.overrides(study), out_dir=tmp_path, log_to_mlflow=False)
    chrome.events.clear()
    chrome.open(path.as_uri())
    plots = chrome.wait_for(PLOTS_DRAWN, timeout=45)
    assert plots == (5 if study == STUDY_A else 10)  # B: 2 objectives x 4 + curves + Pareto
    n_trials = len(store.optuna_study(study).trials)
    assert chrome.evaluate("document.querySelectorAll('#trials-table tr.trial').length") == n_trials
    assert chrome.evaluate("document.getElementById('n-trials').textContent.trim()") == str(
        n_trials
    )
    assert chrome.evaluate("document.title").startswith(f"study {study}")
    assert chrome.errors() == []
    png = chrome.screenshot()
    (tmp_path / f"{study}.png").write_bytes(png)
    spread, colours = _pixels(png)
    assert spread > 15 and colours > 30, f"blank-looking screenshot: sd {spread:.1f}, {colours}"


def test_blank_page_check_detects_blank(chrome: Chrome, tmp_path: Path) -> None:
    """The pixel check itself: an empty page fails it."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    chrome.open(blank.as_uri())
    chrome.wait_for("document.readyState === 'complete'", timeout=15)
    spread, colours = _pixels(chrome.screenshot())
    assert spread < 1 and colours <= 2


def test_error_check_detects_errors(chrome: Chrome, tmp_path: Path) -> None:
    """The JavaScript error check itself: an exception and a console error are caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><script>console.error('logged failure');"
        "setTimeout(() => { document.body.dataset.done = 1; null.plot(); }, 0);"
        "</script></body></html>"
    )
    chrome.events.clear()
    chrome.open(page.as_uri())
    chrome.wait_for("document.body.dataset.done === '1'", timeout=15)
    chrome.evaluate("1")  # one more round trip: the exception event arrives before its answer
    errors = chrome.errors()
    assert any("logged failure" in e for e in errors), errors
    assert any("TypeError" in e for e in errors), errors


# -- the MLflow UI --------------------------------------------------------------------------------
def _api(base: str, path: str, body: dict | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def mlflow_server(store: TinyStore) -> Iterator[str]:
    """`make ui` on a free loopback port over the tiny store; its base URL."""
    port = free_port()
    proc = make_target("ui", store.root, store.uri, PORT=str(port))
    try:
        wait_for_listener(proc, port, "/health", timeout=120)
        if Path("/proc/net/tcp").exists():
            assert listening_hosts(port) == {"127.0.0.1"}  # never on other interfaces
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


def test_mlflow_rest_api_lists_the_trial_runs(store: TinyStore, mlflow_server: str) -> None:
    experiment = _api(mlflow_server, f"experiments/get-by-name?experiment_name={STUDY_A}")
    experiment_id = experiment["experiment"]["experiment_id"]
    found = _api(
        mlflow_server, "runs/search", {"experiment_ids": [experiment_id], "max_results": 1000}
    )["runs"]
    roles = [
        next((t["value"] for t in r["data"].get("tags", []) if t["key"] == "sweep.role"), None)
        for r in found
    ]
    study = store.optuna_study(STUDY_A)
    assert roles.count("trial") == len(study.trials)
    assert roles.count("champion_rerun") == 4 and roles.count("study") == 1
    names = {r["info"]["run_name"] for r in found}
    assert {f"trial-{t.number:04d}" for t in study.trials} <= names


def test_compare_reads_the_same_through_the_server(store: TinyStore, mlflow_server: str) -> None:
    """sweep.compare over the REST API (the server `make ui` runs) equals the direct read."""
    import mlflow
    import pandas as pd

    from sweep import compare

    previous = mlflow.get_tracking_uri()
    try:
        frames = [
            compare.runs(
                [STUDY_A, STUDY_B],
                include_parents=True,
                tags=compare.CHAMPION_TAGS,
                tracking_uri=uri,
            )
            for uri in (store.uri, mlflow_server)
        ]
        pd.testing.assert_frame_equal(*frames)
        assert frames[0].attrs == frames[1].attrs
        ids = frames[0].loc[frames[0]["role"] == "trial", "run_id"].tolist()
        curves = [compare.history(ids, tracking_uri=uri) for uri in (store.uri, mlflow_server)]
        pd.testing.assert_frame_equal(*curves)
        assert set(curves[0]["run_id"]) == set(ids)
        tables = [compare.summary(frame=frame) for frame in frames]
        pd.testing.assert_frame_equal(*tables)
    finally:
        mlflow.set_tracking_uri(previous)


def test_mlflow_ui_shows_the_trial_runs(
    store: TinyStore, mlflow_server: str, chrome: Chrome
) -> None:
    experiment = _api(mlflow_server, f"experiments/get-by-name?experiment_name={STUDY_A}")
    experiment_id = experiment["experiment"]["experiment_id"]
    n_runs = len(_api(mlflow_server, "runs/search", {"experiment_ids": [experiment_id]})["runs"])
    chrome.events.clear()
    chrome.open(f"{mlflow_server}/#/experiments/{experiment_id}/runs")
    # The SPA lists the parent run; its trials are nested under it, one click away.
    chrome.wait_for(f"document.body.innerText.includes('study-{STUDY_A}')", timeout=60)
    # The page's own count of the experiment's runs is the REST API's.
    counted = chrome.wait_for(
        "(document.body.innerText.match(/(\\d+) matching runs/) || [])[1]", timeout=30
    )
    assert int(counted) == n_runs
    chrome.wait_for(
        """(() => { const b = document.querySelector(
              'button[data-component-id*="runnamecellrenderer"]');
            if (b) b.click(); return !!b; })()""",
        timeout=30,
    )
    names = [f"trial-{t.number:04d}" for t in store.optuna_study(STUDY_A).trials]
    check = " && ".join(f"document.body.innerText.includes('{n}')" for n in names)
    chrome.wait_for(check, timeout=30)
    spread, colours = _pixels(chrome.screenshot())
    assert spread > 5 and colours > 10
    # No uncaught exception in the app. (Console/network errors are MLflow's own: without
    # the auth app it probes /users/current and gets a 404.)
    assert [e for e in chrome.events if e["method"] == "Runtime.exceptionThrown"] == []
