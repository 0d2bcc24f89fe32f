"""sweep report: the self-contained study dashboard, and sweep optuna-dashboard."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import cli_env, free_port
from test_compare import ROOT, STUDY_A, STUDY_B, TinyStore, tiny_store

# One test process builds the shared tiny store (tiny_store) and runs every test on it.
pytestmark = pytest.mark.xdist_group("tiny_store")


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
    assert '<div id="failures">' not in page  # no trial failed
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
    # The source run's own config: none of the parent run's keys, no empty cells.
    config = card[card.index("full run config") :]
    assert "optimizer.lr" in config and "base." not in config and "&lt;NA&gt;" not in config
    assert "model.width" in card and "optimizer.lr" in card  # sampled params
    assert "trainer.max_epochs" in card  # the full run config of the source run
    assert f'class="trial champion" data-state="COMPLETE" data-number="{champion["trial"]}"' in page


def test_report_says_how_sure_the_champion_is(store: TinyStore, reports) -> None:
    """Top card, the champion's own search score, and every re-trained candidate."""
    study = store.optuna_study(STUDY_A)
    champion = study.user_attrs["champion"]
    page = html.unescape(_text(reports[STUDY_A].read_text()))
    top = re.search(r'id="champion-value">([^<]+)<', page)
    assert top and top.group(1) == f"{champion['val_mean']:.4f} ± {champion['val_sd']:.4f}"
    by_number = {t.number: t for t in study.trials}
    searched = by_number[champion["trial"]].user_attrs["val/acc"]
    card = page[page.index('<section id="champion">') : page.index('<section id="trials">')]
    assert re.search(rf"<dt>in the search</dt>\s*<dd>{searched:.4f} ", card)
    rows = re.findall(r'<tr class="(champion)?" data-trial="(\d+)">(.*?)</tr>', card)
    candidates = sorted(study.user_attrs["champion_reruns"].values(), key=lambda r: -r["val_mean"])
    assert len(rows) == len(candidates) == 2  # champion.k=2
    assert [int(n) for _, n, _ in rows] == [c["trial"] for c in candidates]
    assert rows[0][0] == "champion" and int(rows[0][1]) == champion["trial"]
    for (_, _, cells), candidate in zip(rows, candidates, strict=True):
        assert f"{candidate['val_mean']:.4f} ± {candidate['val_sd']:.4f}" in cells
        assert f"{candidate['test_mean']:.4f} ± {candidate['test_sd']:.4f}" in cells


def test_report_importances_show_two_evaluators(reports) -> None:
    for study, objectives in ((STUDY_A, 1), (STUDY_B, 2)):
        page = _text(reports[study].read_text())
        section = page[
            page.index('<section id="importance">') : page.index('<section id="parallel">')
        ]
        assert section.count('class="plotly-graph-div"') == objectives
        assert section.count('"name":"PED-ANOVA (top 10%)"') == objectives
        assert section.count('"name":"fANOVA (variance)"') == objectives
        assert "model.width" in section and "optimizer.lr" in section


def test_report_learning_curves_mark_pruned_trials(store: TinyStore, reports) -> None:
    page = html.unescape(_text(reports[STUDY_A].read_text()))
    study = store.optuna_study(STUDY_A)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned  # the tiny studies prune (else the loop below checks nothing)
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
    assert "pruner none (multi-objective)" in page  # not the configured one: it never ran
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
    # Two failures with one error, one with another: grouped by error, most frequent first.
    for error in (
        "NonFiniteLossError: loss became nan",
        "OOM",
        "NonFiniteLossError: loss became nan",
    ):
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL, user_attrs={"error": error}
            )
        )
    page = html.unescape(_text(render_report(study, "no-such-experiment", store.uri)))
    assert "needs at least 2 completed trials with sampled parameters (has 1)" in page
    assert "no experiment named 'no-such-experiment'" in page
    assert "could not draw" not in page
    assert len(re.findall(r'<tr class="trial', page)) == 4
    assert "no champion yet" in page and 'id="champion-value"' not in page
    failures = page[page.index('<div id="failures">') : page.index('id="trials-table"')]
    rows = re.findall(
        r"<tr><td[^>]*>([^<]+)</td><td>(\d+)</td><td[^>]*>([^<]+)</td></tr>", failures
    )
    assert rows == [("NonFiniteLossError: loss became nan", "2", "1, 3"), ("OOM", "1", "2")]


def test_report_without_its_tracking_server_is_quick_and_still_drawn(
    store: TinyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A tracking server that is down: Optuna's side of the page in seconds, not MLflow's
    minutes of retries; the curves come from Optuna's intermediate values."""
    import mlflow

    from sweep.report import build_report

    monkeypatch.chdir(store.root)
    dead = f"http://127.0.0.1:{free_port()}"
    previous = mlflow.get_tracking_uri()
    started = time.monotonic()
    try:
        path = build_report([f"study.name={STUDY_A}", f"tracking.uri={dead}"], out_dir=tmp_path)
    finally:
        mlflow.set_tracking_uri(previous)
    assert time.monotonic() - started < 60
    assert f"report not logged to MLflow: tracking.uri={dead}: no MLflow server" in (
        capsys.readouterr().err
    )
    page = html.unescape(_text(path.read_text()))
    assert f"MLflow: tracking.uri={dead}: no MLflow server answers" in page
    assert "could not draw" not in page
    curves = page[page.index('<section id="curves">') : page.index('<section id="champion">')]
    best = store.optuna_study(STUDY_A).best_trial.number
    assert f"trial {best} (#1)" in curves and '"mode":"lines+markers"' in curves


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


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("called although --out is bad")


def test_report_out_must_be_a_folder_it_can_write_checked_first(
    store: TinyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A bad --out: one line naming it, exit 2, before the page is drawn or logged to
    MLflow, and no folder or file left behind."""
    from sweep import report
    from sweep.cli import main

    monkeypatch.chdir(store.root)
    monkeypatch.setattr(report, "render_report", _never)
    monkeypatch.setattr(report, "log_report", _never)
    (tmp_path / "good.csv").write_text("a\n")
    (tmp_path / "taken" / f"{STUDY_B}.html").mkdir(parents=True)
    cases = {
        tmp_path / "good.csv": "not a folder",
        tmp_path / "good.csv" / "sub": "cannot create it (Not a directory)",
        tmp_path / "taken": f"cannot write {STUDY_B}.html (Is a directory)",
    }
    if Path("/proc/self").exists():  # Linux: nothing can be made in /proc
        cases[Path("/proc/nope")] = "cannot create it (No such file or directory)"
    before = sorted(tmp_path.rglob("*"))
    for out, why in cases.items():
        assert main(["report", *store.overrides(STUDY_B), "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"error: --out {out}: {why}\n"
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("args", [["--out", "--no-log"], ["--no-log", "--out"], ["--out="]])
def test_report_out_needs_a_folder_not_an_option(
    args: list[str], store: TinyStore, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from sweep import report
    from sweep.cli import main

    monkeypatch.chdir(store.root)
    monkeypatch.setattr(report, "render_report", _never)
    assert main(["report", *store.overrides(STUDY_B), *args]) == 2
    assert capsys.readouterr().err == "error: --out: give a folder\n"
    assert not (store.root / "--no-log").exists()


def test_a_failed_report_leaves_no_folder_it_made(
    store: TinyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from sweep.cli import main

    monkeypatch.chdir(store.root)
    out = tmp_path / "new" / "deep"
    assert main(["report", *store.overrides("missing"), "--out", str(out), "--no-log"]) == 2
    assert "study.name=missing: no such study" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["report", "check"])
def test_reading_a_study_where_there_is_no_storage_creates_none(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from sweep.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([command, "study.name=nothing"]) == 2
    journal = tmp_path / ".sweep" / "optuna.journal"
    assert capsys.readouterr().err.strip() == (
        f"error: study.name=nothing: no such study (no storage at {journal})"
    )
    assert not (tmp_path / ".sweep").exists()
    assert main([command, "study.name=nothing", "storage=sqlite"]) == 2
    assert "no storage at" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- make targets, run as a user runs them ------------------------------------------------------
def make_target(target: str, cwd: Path, uri: str | None, **variables: str) -> subprocess.Popen:
    """Start ``make TARGET VAR=value ...`` with the project's Makefile in ``cwd``.

    ``-o .venv/.installed`` takes the virtualenv as installed (the tests run in it) so a
    newer Makefile never triggers ``pip install``; BIN points at this interpreter's scripts.
    The target runs in its own process group: stop it with :func:`stop_group`.
    """
    if shutil.which("make") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no make on PATH")
        pytest.skip("no make on PATH")
    env = {k: v for k, v in cli_env(uri).items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    command = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile")]
    command += ["-o", ".venv/.installed", target, f"BIN={Path(sys.executable).parent}"]
    command += [f"{k}={v}" for k, v in variables.items()]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (make, its shell, the server and its workers); then KILL."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def listening_hosts(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port`` (Linux: /proc/net/tcp*)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def wait_for_listener(proc: subprocess.Popen, port: int, path: str, timeout: float) -> bytes:
    """Poll ``http://127.0.0.1:port/path`` until it answers 200; the body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited: {proc.stderr.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.read()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port}{path} within {timeout} s")


def test_make_optuna_dashboard_serves_the_journal_storage_on_loopback(store: TinyStore) -> None:
    """`make optuna-dashboard`: sweep optuna-dashboard on 127.0.0.1 over our journal file."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("the loopback check reads Linux's /proc/net/tcp")
    port = free_port()
    proc = make_target("optuna-dashboard", store.root, store.uri, DASHBOARD_PORT=str(port))
    try:
        studies = json.loads(wait_for_listener(proc, port, "/api/studies", timeout=60))
        assert {STUDY_A, STUDY_B} <= {s["study_name"] for s in studies["study_summaries"]}
        assert listening_hosts(port) == {"127.0.0.1"}
    finally:
        stop_group(proc)


def test_listening_hosts_sees_a_wildcard_socket() -> None:
    """The loopback check itself: a socket on every interface is reported as such."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("reads Linux's /proc/net/tcp")
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        assert listening_hosts(s.getsockname()[1]) == {"0.0.0.0"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert listening_hosts(s.getsockname()[1]) == {"127.0.0.1"}
