"""sweep report: the self-contained study dashboard, and sweep optuna-dashboard."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import cli_env
from test_compare import STUDY_A, STUDY_B, TinyStore, tiny_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return tiny_store(tmp_path_factory)


@pytest.fixture(scope="module")
def reports(store: TinyStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tiny studies' reports, written the way `sweep report` writes them."""
    from sweep.report import build_report

    out = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(store.root)  # the default journal storage is .sweep/ in the cwd
        return {
            name: build_report(store.overrides(name), out_dir=out) for name in (STUDY_A, STUDY_B)
        }


def _text(page: str) -> str:
    """The page without the inlined plotly.js (4.8 MB of code)."""
    return re.sub(r"<script type=\"text/javascript\">.*?</script>", "", page, count=1, flags=re.S)


def test_report_is_one_self_contained_file(reports: dict[str, Path]) -> None:
    page = reports[STUDY_A].read_text()
    assert reports[STUDY_A].name == f"{STUDY_A}.html"
    assert "Plotly" in page and len(page) > 3_000_000  # plotly.js inline, once
    assert page.count("plotly.js v") <= 2  # not once per figure
    # No network at all: no external scripts, stylesheets, fonts, or CDN references.
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=", page)
    assert "cdn." not in _text(page) and "https://" not in _text(page).replace(
        "https://plotly.com", ""
    )


def test_report_has_every_section_and_all_trials(store: TinyStore, reports) -> None:
    study = store.optuna_study(STUDY_A)
    page = _text(reports[STUDY_A].read_text())
    for section in ("history", "importance", "parallel", "slice", "curves", "champion", "trials"):
        assert f'<section id="{section}">' in page, section
    assert 'id="pareto"' not in page  # single objective
    rows = re.findall(r'<tr class="trial[^"]*" data-state="(\w+)" data-number="(\d+)"', page)
    assert sorted(int(n) for _, n in rows) == [t.number for t in study.trials]
    assert [s for s, _ in sorted(rows, key=lambda r: int(r[1]))] == [
        t.state.name for t in study.trials
    ]
    assert f'data-n-trials="{len(study.trials)}"' in page
    # Figures: history, importances, parallel coordinates, slices, learning curves.
    assert page.count('class="plotly-graph-div"') == 5
    assert "could not draw" not in page
    assert "best so far" in html.unescape(page) or "Best Value" in page


def test_report_champion_card_matches_the_study(store: TinyStore, reports) -> None:
    champion = store.optuna_study(STUDY_A).user_attrs["champion"]
    page = html.unescape(_text(reports[STUDY_A].read_text()))
    card = page[page.index('<section id="champion">') : page.index('<section id="trials">')]
    assert f"{champion['val_mean']:.4f} ± {champion['val_sd']:.4f}" in card
    assert f"{champion['test_mean']:.4f} ± {champion['test_sd']:.4f}" in card
    assert f"models:/{STUDY_A}@champion" in card and "version 1" in card
    assert "model.width" in card and "optimizer.lr" in card  # sampled params
    assert "trainer.max_epochs" in card  # the full run config of the source run
    assert f'class="trial champion" data-state="COMPLETE" data-number="{champion["trial"]}"' in page


def test_report_learning_curves_mark_pruned_trials(store: TinyStore, reports) -> None:
    page = html.unescape(_text(reports[STUDY_A].read_text()))
    study = store.optuna_study(STUDY_A)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    curves = page[page.index('<section id="curves">') : page.index('<section id="champion">')]
    for trial in pruned:
        assert f"trial {trial.number} (pruned @ {trial.user_attrs['pruned_epoch']})" in curves
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert f"trial {study.best_trial.number} (#1)" in curves
    assert curves.count('"mode":"lines+markers"') == min(5, len(complete))


def test_multi_objective_report_has_pareto_front(reports) -> None:
    page = _text(reports[STUDY_B].read_text())
    assert '<section id="pareto">' in page
    pareto = page[page.index('<section id="pareto">') :]
    assert 'class="plotly-graph-div"' in pareto.split("</section>", 1)[0]
    assert "val/acc (maximize), model/params (minimize)" in html.unescape(page)
    assert "no champion yet" in page
    assert "could not draw" not in page


def test_report_is_logged_to_the_parent_run(store: TinyStore, reports) -> None:
    from mlflow.tracking import MlflowClient

    parent = store.optuna_study(STUDY_A).user_attrs["mlflow_parent_run_id"]
    artifacts = [
        a.path for a in MlflowClient(tracking_uri=store.uri).list_artifacts(parent, "report")
    ]
    assert artifacts == [f"report/{STUDY_A}.html"]


def test_report_with_too_few_trials_and_no_mlflow_runs(store: TinyStore) -> None:
    """One finished trial, no MLflow experiment: notes instead of failures."""
    import optuna

    from sweep.report import render_report

    study = optuna.create_study(study_name="lonely", direction="maximize")
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    page = html.unescape(_text(render_report(study, "no-such-experiment", store.uri)))
    assert "needs at least 2 completed trials with sampled parameters (has 1)" in page
    assert "no experiment named 'no-such-experiment'" in page
    assert "could not draw" not in page
    assert len(re.findall(r'<tr class="trial', page)) == 2
    assert "no champion yet" in page


def test_report_command_and_unknown_study(
    store: TinyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from sweep.cli import main

    monkeypatch.chdir(store.root)
    out = tmp_path / "out"
    code = main(["report", *store.overrides(STUDY_B), "--out", str(out), "--no-log"])
    assert code == 0, capsys.readouterr().err
    assert (out / f"{STUDY_B}.html").exists()
    assert main(["report", *store.overrides("missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "study.name=missing: no such study" in err and STUDY_A in err
    assert main(["report", "study.name=../x"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_serves_the_journal_storage(store: TinyStore) -> None:
    """`make optuna-dashboard` = `sweep optuna-dashboard`: loopback only, our journal file."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", "optuna-dashboard", "--port", str(port)],
        cwd=store.root,
        env=cli_env(store.uri),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        studies = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)
                break
            except OSError:
                time.sleep(0.3)
        assert studies is not None, "optuna-dashboard did not answer within 60 s"
        assert {STUDY_A, STUDY_B} <= {s["study_name"] for s in studies["study_summaries"]}
        with pytest.raises(OSError):  # bound to 127.0.0.1 only
            socket.create_connection((_outside_address(), port), timeout=2).close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)


def _outside_address() -> str:
    """This machine's non-loopback address (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("no non-loopback address to probe")
    return address
