"""sweep.compare against real tiny studies: runs(), history(), summary(), sweep compare.

The tiny store (two real studies and one plain run) is built once per test session by
:func:`tiny_store` and shared with test_report, test_browser and test_notebook, which
import it from here: training is the slow part, reading it is what these tests check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

# One test process builds the shared tiny store (tiny_store) and runs every test on it.
pytestmark = pytest.mark.xdist_group("tiny_store")

ROOT = Path(__file__).resolve().parent.parent

STUDY_A = "tiny_a"  # single objective, pruning, champion (k=2 candidates, 2 seeds each)
STUDY_B = "tiny_b"  # multi-objective (val/acc, model/params), no champion
PLAIN = "plain"  # one `sweep train` run, no study
COMMON = ["data=synthetic", "search=tiny", "trainer.max_epochs=3"]


@dataclass(frozen=True)
class TinyStore:
    """Where the shared tiny studies live."""

    root: Path  # the working directory the studies ran in (.sweep/ is here)
    uri: str  # MLflow tracking URI (sqlite in root)

    def overrides(self, study: str) -> list[str]:
        """sweep overrides that find ``study`` (run with cwd=root)."""
        return [f"study.name={study}", f"tracking.uri={self.uri}"]

    def optuna_study(self, study: str):
        import optuna

        from sweep.optuna_parts import build_storage

        storage = build_storage(f"journal:///{self.root / '.sweep' / 'optuna.journal'}")
        return optuna.load_study(study_name=study, storage=storage)


def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    """Build the shared store once per session (a marker file says it is complete)."""
    root = tmp_path_factory.getbasetemp() / "sweep-tiny-store"
    marker = root / "done.json"
    if marker.exists():
        return TinyStore(**{**json.loads(marker.read_text()), "root": root})
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # .sweep/optuna.journal and mlruns/ land here
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        mp.delenv("SWEEP_STORAGE_URL", raising=False)
        _build(uri)
    marker.write_text(json.dumps({"uri": uri}))
    return TinyStore(root=root, uri=uri)


def _build(uri: str) -> None:
    import mlflow

    from sweep.config import load_run_config
    from sweep.study import tune
    from sweep.train import run

    previous = mlflow.get_tracking_uri()
    try:
        tune(
            [
                *COMMON,
                "study.n_trials=4",
                "champion.k=2",
                "champion.seeds=2",
                f"study.name={STUDY_A}",
                f"tracking.uri={uri}",
            ],
            progress=False,
        )
        tune(
            [
                *COMMON,
                "study.n_trials=3",
                "champion.k=0",
                "pruner=none",
                "sampler=random",
                "tracking.log_model=false",
                "study.metrics=[val/acc,model/params]",
                f"study.name={STUDY_B}",
                f"tracking.uri={uri}",
            ],
            progress=False,
        )
        cfg = load_run_config(
            [
                "data=synthetic",
                "trainer.max_epochs=2",
                "trainer.progress=false",
                "tracking.log_model=false",
                f"tracking.experiment={PLAIN}",
                f"tracking.uri={uri}",
            ]
        )
        run(cfg, run_name="plain-run")
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return tiny_store(tmp_path_factory)


# -- runs() ------------------------------------------------------------------------------------
def test_runs_one_row_per_run_with_trial_states(store: TinyStore) -> None:
    from sweep import compare

    frame = compare.runs([STUDY_A], tracking_uri=store.uri)
    study = store.optuna_study(STUDY_A)
    trials = frame[frame["role"] == "trial"]
    assert sorted(trials["trial"].tolist()) == [t.number for t in study.trials]
    by_number = {t.number: t for t in study.trials}
    for row in trials.itertuples():
        optuna_trial = by_number[row.trial]
        assert row.state == optuna_trial.state.name  # trial.state tag == Optuna's state
        assert row.run_id == optuna_trial.user_attrs["mlflow_run_id"]
        # best/acc in MLflow is the best-epoch val/acc Optuna recorded for the trial.
        assert math.isclose(frame.loc[row.Index, "best/acc"], optuna_trial.user_attrs["val/acc"])
    reruns = frame[frame["role"] == "champion_rerun"]
    assert len(reruns) == 4 and set(reruns["state"]) == {"CHAMPION_RERUN"}
    assert study.user_attrs["champion"]["trial"] in set(reruns["trial"])
    assert reruns.groupby("trial").size().tolist() == [2, 2]  # 2 candidates x 2 seeds
    assert "study" not in set(frame["role"])  # parent runs only on request
    assert set(frame["experiment"]) == {STUDY_A} and set(frame["study"]) == {STUDY_A}
    assert frame["run_id"].is_unique
    assert (frame["duration_s"] > 0).all()
    assert str(frame["start"].dtype).startswith("datetime64")


def test_runs_types_params_and_keeps_final_and_test_metrics(store: TinyStore) -> None:
    import pandas as pd

    from sweep import compare

    frame = compare.runs([STUDY_A], tracking_uri=store.uri)
    assert pd.api.types.is_integer_dtype(frame["model.width"])
    assert pd.api.types.is_float_dtype(frame["optimizer.lr"])
    assert pd.api.types.is_bool_dtype(frame["model.batch_norm"])
    assert pd.api.types.is_integer_dtype(frame["trainer.max_epochs"])
    assert frame["trainer.max_epochs"].eq(3).all()
    assert frame["data.name"].eq("synthetic").all()
    assert pd.api.types.is_integer_dtype(frame["trial"])
    complete = frame[frame["state"] == "COMPLETE"]
    for col in ("val/acc", "best/acc", "test/acc", "test/f1", "test/loss", "time/fit"):
        assert pd.api.types.is_float_dtype(frame[col]), col
        assert complete[col].notna().all(), col
    pruned = frame[frame["state"] == "PRUNED"]
    assert len(pruned) >= 1  # the tiny studies prune (else the checks below are vacuous)
    assert pruned["test/acc"].isna().all()  # a pruned model is never tested
    assert pruned["pruned_epoch"].notna().all()
    assert set(compare.varying_params(frame)) >= {"model.width", "optimizer.lr", "seed"}
    params, metrics = compare.param_columns(frame), compare.metric_columns(frame)
    assert {"model.width", "seed"} <= set(params) and not {"lr", "test/acc"} & set(params)
    assert {"lr", "test/acc", "time/epoch"} <= set(metrics) and "seed" not in metrics


def test_runs_filters_by_study_state_and_mlflow_filter(store: TinyStore) -> None:
    from sweep import compare

    everything = compare.runs(tracking_uri=store.uri)
    assert {STUDY_A, STUDY_B, PLAIN} <= set(everything["experiment"])
    plain = everything[everything["experiment"] == PLAIN]
    assert plain["state"].tolist() == ["FINISHED"]  # no trial.state tag: the run status
    assert plain["study"].isna().all() and plain["trial"].isna().all()

    studies = compare.runs(studies=[STUDY_A, STUDY_B], tracking_uri=store.uri)
    assert set(studies["study"]) == {STUDY_A, STUDY_B}
    pruned_or_complete = compare.runs(
        [STUDY_A], states=["pruned", "COMPLETE"], tracking_uri=store.uri
    )
    assert set(pruned_or_complete["state"]) <= {"PRUNED", "COMPLETE"}
    assert len(pruned_or_complete) == len(store.optuna_study(STUDY_A).trials)

    filtered = compare.runs(
        [STUDY_A], filter="tags.`sweep.role` = 'champion_rerun'", tracking_uri=store.uri
    )
    assert set(filtered["role"]) == {"champion_rerun"} and len(filtered) == 4

    parents = compare.runs(
        [STUDY_A], include_parents=True, tags=["champion.version"], tracking_uri=store.uri
    )
    parent = parents[parents["role"] == "study"]
    assert len(parent) == 1 and parent["tag.champion.version"].tolist() == ["1"]
    assert parent["study.n_trials"].tolist() == [4]  # the study settings, typed


def test_runs_unknown_experiment_names_the_known_ones(store: TinyStore) -> None:
    from sweep import compare
    from sweep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no experiment named 'nope'; known: .*tiny_a"):
        compare.runs(["nope"], tracking_uri=store.uri)


def test_runs_unknown_study_names_the_known_ones(store: TinyStore) -> None:
    from sweep import compare
    from sweep.errors import ConfigError

    known = f"known: {STUDY_A}, {STUDY_B}"
    with pytest.raises(ConfigError, match=rf"^studies: no study named 'nosuch'; {known}$"):
        compare.runs(studies=[STUDY_A, "nosuch"], tracking_uri=store.uri)
    with pytest.raises(ConfigError, match=rf"^studies: no study named 'nosuch'; {known}$"):
        compare.runs(studies="nosuch", filter="params.seed = '0'", tracking_uri=store.uri)
    only_plain = rf"^studies: no study named '{STUDY_A}' in experiments {PLAIN}; known: none$"
    with pytest.raises(ConfigError, match=only_plain):
        compare.runs([PLAIN], studies=[STUDY_A], tracking_uri=store.uri)


def test_runs_of_a_known_study_that_nothing_matches_are_empty(store: TinyStore) -> None:
    from sweep import compare

    no_rerun = compare.runs(studies=[STUDY_B], states=["CHAMPION_RERUN"], tracking_uri=store.uri)
    assert no_rerun.empty  # champion.k=0: the study exists, no run has that state
    no_width = "params.`model.width` = 'nope'"
    assert compare.runs(studies=[STUDY_A], filter=no_width, tracking_uri=store.uri).empty


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        (["1", "2", None], "Int64", [1, 2, None]),
        (["1", "2"], "int64", [1, 2]),
        (["0.5", "1e-3", "3"], "float64", [0.5, 0.001, 3.0]),
        (["True", "False"], "bool", [True, False]),
        (["true", None], "boolean", [True, None]),
        (["None", "None"], "object", [None, None]),
        (["adam", "3"], "object", ["adam", "3"]),  # mixed stays text
    ],
)
def test_typed_turns_mlflow_strings_into_values(values, dtype, expected) -> None:
    import pandas as pd

    from sweep.compare import typed

    result = typed(pd.Series(values, dtype=object))
    assert str(result.dtype) == dtype
    assert [None if pd.isna(v) else v for v in result] == expected


# -- history() -------------------------------------------------------------------------------
def test_history_is_long_per_epoch_curves(store: TinyStore) -> None:
    from sweep import compare

    frame = compare.runs([STUDY_A], states=["COMPLETE", "PRUNED"], tracking_uri=store.uri)
    ids = frame["run_id"].tolist()
    curves = compare.history(ids, tracking_uri=store.uri)
    assert list(curves.columns) == ["run_id", "epoch", "metric", "value"]
    assert set(curves["run_id"]) == set(ids)
    assert {"val/acc", "val/loss", "train/loss", "lr"} <= set(curves["metric"])
    assert not any(m.startswith(("best/", "test/")) for m in curves["metric"])
    complete = frame[frame["state"] == "COMPLETE"].iloc[0]
    acc = curves[(curves["run_id"] == complete["run_id"]) & (curves["metric"] == "val/acc")]
    assert acc["epoch"].tolist() == [0, 1, 2]  # step = epoch, max_epochs=3
    assert math.isclose(acc["value"].max(), complete["best/acc"])
    only = compare.history(ids[:1], metrics=["val/loss"], tracking_uri=store.uri)
    assert set(only["metric"]) == {"val/loss"} and len(only) >= 1
    assert compare.history([], tracking_uri=store.uri).empty


# -- summary() -------------------------------------------------------------------------------
def test_summary_counts_best_and_champion(store: TinyStore) -> None:
    import pandas as pd

    from sweep import compare

    table = compare.summary([STUDY_A, STUDY_B, PLAIN], tracking_uri=store.uri)
    assert list(table.columns) == list(compare.SUMMARY_COLUMNS)
    rows = {r.experiment: r for r in table.itertuples()}
    a, study = rows[STUDY_A], store.optuna_study(STUDY_A)
    states = [t.state.name for t in study.trials]
    assert (a.complete, a.pruned, a.fail) == tuple(
        states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")
    )
    assert a.champion_rerun == 4 and a.runs == len(states) + 4
    assert a.monitor == "val/acc"
    assert math.isclose(a.best_val, study.best_value) and a.best_trial == study.best_trial.number
    champion = study.user_attrs["champion"]
    assert math.isclose(a.champion_val_mean, champion["val_mean"])
    assert math.isclose(a.champion_test_sd, champion["test_sd"])
    assert a.champion_trial == champion["trial"]
    assert a.champion_model == f"models:/{STUDY_A}@champion (v1)"
    assert a.compute_s > 0 and a.parent_run_id
    b = rows[STUDY_B]
    assert b.complete == 3 and b.champion_rerun == 0 and pd.isna(b.champion_model)
    plain = rows[PLAIN]
    assert pd.isna(plain.study) and plain.runs == 1 and plain.other == "FINISHED 1"
    assert 0 < plain.best_val <= 1


# -- CLI ----------------------------------------------------------------------------------------
def test_compare_command_prints_both_tables(
    store: TinyStore, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweep.cli import main

    monkeypatch.setenv("COLUMNS", "300")  # rich wraps to the terminal width
    code = main(
        [
            "compare",
            f"experiments=[{STUDY_A},{PLAIN}]",
            "states=[COMPLETE]",
            f"tracking.uri={store.uri}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "experiments" in out and STUDY_A in out and PLAIN in out
    assert f"models:/{STUDY_A}@champion (v1)" in out
    assert "COMPLETE" in out and "trial-0000" in out
    assert "PRUNED" not in out  # states=[COMPLETE] filters the runs table


def test_a_wide_table_is_printed_in_blocks_that_fit_with_every_cell_whole() -> None:
    from rich.console import Console

    from sweep.compare import fitted_tables

    header = ["experiment", "trial", *[f"param.number_{i}" for i in range(12)]]
    rows = [["my_experiment", str(t), *[f"{t}.{i}e-3" for i in range(12)]] for t in range(3)]
    tables = fitted_tables("runs", header, rows, keys=2, width=80)
    assert len(tables) > 1
    console = Console(width=80, record=True)
    for table in tables:
        console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for row in rows:
        for cell in row:
            assert cell in text
    # Each block repeats the key columns.
    assert text.count("my_experiment") == 3 * len(tables)


def test_compare_command_rejects_bad_arguments(
    store: TinyStore, capsys: pytest.CaptureFixture
) -> None:
    import signal

    from sweep.cli import main

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(["compare", "experiment=a"]) == 2
    assert "key one of: experiments" in capsys.readouterr().err
    # Its Ctrl-C / SIGTERM handlers are the CLI's while it runs, not this process's after.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert main(["compare", "states=[DONE]"]) == 2
    assert "unknown state 'DONE'" in capsys.readouterr().err
    bad_filter = ["compare", f"tracking.uri={store.uri}", "filter=params.x ==== 1"]
    assert main(bad_filter) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: filter='params.x ==== 1': ") and err.count("\n") == 1


def test_compare_command_rejects_an_unknown_study_and_a_negative_limit(
    store: TinyStore, capsys: pytest.CaptureFixture
) -> None:
    from sweep.cli import main

    uri = f"tracking.uri={store.uri}"
    assert main(["compare", "studies=[nosuch]", uri]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: studies: no study named 'nosuch'; known: {STUDY_A}, {STUDY_B}\n"
    assert out == ""
    assert main(["compare", "limit=-1", uri]) == 2
    assert capsys.readouterr().err == "error: limit='-1': must be >= 0\n"
    assert main(["compare", "limit=ten", uri]) == 2
    assert capsys.readouterr().err == "error: limit='ten': must be a whole number >= 0\n"


def test_compare_command_prints_a_known_study_without_matching_runs(
    store: TinyStore, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweep.cli import main

    monkeypatch.setenv("COLUMNS", "300")
    args = [f"studies=[{STUDY_B}]", "states=[CHAMPION_RERUN]", f"tracking.uri={store.uri}"]
    assert main(["compare", *args]) == 0
    out, err = capsys.readouterr()
    assert err == "" and STUDY_B in out and "trial-0000" not in out


def test_compare_command_keeps_the_quoted_literals_of_a_filter(
    store: TinyStore, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweep import compare
    from sweep.cli import main

    assert compare.parse_command_args(["filter=\"params.a = 'b'\""]) == {"filter": "params.a = 'b'"}
    monkeypatch.setenv("COLUMNS", "300")
    width = store.optuna_study(STUDY_A).user_attrs["champion"]["params"]["model.width"]
    clause = f"params.model.width = '{width}'"
    expected = set(compare.runs([STUDY_A], filter=clause, tracking_uri=store.uri)["run_name"])
    assert len(expected) >= 3  # the champion's trial and its two re-runs at least
    code = main(
        ["compare", f"experiments=[{STUDY_A}]", f"filter={clause}", f"tracking.uri={store.uri}"]
    )
    out = capsys.readouterr().out
    assert code == 0
    every = set(compare.runs([STUDY_A], tracking_uri=store.uri)["run_name"])
    assert {name for name in every if name in out} == expected


def test_runs_rejects_unknown_states_bad_filters_and_absent_servers(store: TinyStore) -> None:
    import socket
    import time

    import mlflow

    from sweep import compare
    from sweep.errors import ConfigError

    with pytest.raises(ConfigError, match=r"states: unknown state 'COMPLETED'; choose from"):
        compare.runs([STUDY_A], states=["COMPLETED"], tracking_uri=store.uri)
    with pytest.raises(ConfigError, match=r"^filter='params.x ==== 1': "):
        compare.runs([STUDY_A], filter="params.x ==== 1", tracking_uri=store.uri)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    previous = mlflow.get_tracking_uri()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError, match=rf"tracking.uri=http://127.0.0.1:{port}: no MLflow"):
            compare.runs(tracking_uri=f"http://127.0.0.1:{port}")
    finally:
        mlflow.set_tracking_uri(previous)
    assert time.monotonic() - started < 30  # not MLflow's minutes of retries


# -- the database read and MLflow's search agree -------------------------------------------------
@pytest.mark.parametrize(
    "query",
    [
        {"include_parents": True, "tags": ["champion.trial", "trial.error"]},
        {"studies": [STUDY_B, STUDY_A, STUDY_A], "states": ["COMPLETE", "PRUNED"]},
        {"experiments": [PLAIN]},
        {"studies": []},
    ],
    ids=["everything", "studies-and-states", "one-experiment", "no-study"],
)
def test_database_read_equals_mlflow_search(
    store: TinyStore, monkeypatch: pytest.MonkeyPatch, query: dict
) -> None:
    """The direct read of MLflow's tables gives exactly the frame search_runs gives."""
    import pandas as pd

    from sweep import compare, run_records

    direct = compare.runs(tracking_uri=store.uri, **query)
    monkeypatch.setattr(run_records, "is_database", lambda uri: False)
    searched = compare.runs(tracking_uri=store.uri, **query)
    pd.testing.assert_frame_equal(direct, searched)
    assert direct.attrs == searched.attrs
    assert direct.empty == (query.get("studies") == [])  # the case is not vacuous


def test_database_read_skips_deleted_runs_and_keeps_nan_metrics(
    tmp_path: Path, _empty_mlflow_db: Path
) -> None:
    import shutil

    import pandas as pd
    from mlflow.tracking import MlflowClient

    from sweep import compare, run_records

    shutil.copy(_empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("nan")
    kept, deleted = (client.create_run(exp).info.run_id for _ in range(2))
    client.log_metric(kept, "val/loss", 1.0, step=0)
    client.log_metric(kept, "val/loss", float("nan"), step=1)  # the latest value is NaN
    client.log_param(kept, "model.width", "8")
    client.delete_run(deleted)
    records = run_records.read_database(uri, [exp])
    assert [r.run_id for r in records] == [kept]
    assert math.isnan(records[0].metrics["val/loss"])
    assert records[0].params == {"model.width": "8"}
    direct = compare.runs(experiments="nan", tracking_uri=uri)
    names, searched = compare._records(uri, ["nan"], None, "attributes.status != 'x'")
    assert names == {exp: "nan"} and [r.run_id for r in searched] == [kept]
    assert math.isnan(direct.loc[0, "val/loss"]) and direct.loc[0, "model.width"] == 8
    # A store without tables yet: the direct read fails, MLflow's path creates them.
    with pytest.raises(run_records.Unreadable):
        run_records.read_experiments(f"sqlite:///{tmp_path / 'new.db'}")
    empty = compare.runs(tracking_uri=f"sqlite:///{tmp_path / 'new.db'}")
    assert isinstance(empty, pd.DataFrame) and empty.empty


@pytest.mark.postgres
def test_database_read_equals_mlflow_search_on_postgresql(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on an MLflow store in PostgreSQL (the multi-machine recipe's backend)."""
    import pandas as pd

    from sweep import compare, run_records
    from sweep.benchmarks import compare_runs as bench

    bench.fill(postgres_url, n_runs=12, n_studies=2)
    direct = compare.runs(tracking_uri=postgres_url, include_parents=True)
    one = compare.runs(tracking_uri=postgres_url, studies="bench_01", states="COMPLETE")
    monkeypatch.setattr(run_records, "is_database", lambda uri: False)
    pd.testing.assert_frame_equal(
        direct, compare.runs(tracking_uri=postgres_url, include_parents=True)
    )
    pd.testing.assert_frame_equal(
        one, compare.runs(tracking_uri=postgres_url, studies="bench_01", states="COMPLETE")
    )
    assert len(direct) == 14 and set(one["study"]) == {"bench_01"}


# -- the benchmark script ----------------------------------------------------------------------
def test_bench_fill_and_paged_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _empty_mlflow_db: Path
) -> None:
    """The benchmark's fill writes what runs() reads, across several search pages."""
    import shutil

    import pandas as pd

    from sweep import compare, run_records
    from sweep.benchmarks import compare_runs as bench

    shutil.copy(_empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bench.fill(uri, n_runs=25, n_studies=2)
    frame = compare.runs(tracking_uri=uri)  # read from the database
    monkeypatch.setattr(run_records, "is_database", lambda uri: False)
    monkeypatch.setattr(compare, "PAGE_SIZE", 7)  # several pages: the page token is followed
    paged = compare.runs(tracking_uri=uri)
    pd.testing.assert_frame_equal(frame, paged)
    assert len(frame) == 25 and frame["run_id"].is_unique
    assert str(frame["model.batch_norm"].dtype) == "bool"
    assert str(frame["model.width"].dtype) == "int64"
    assert frame["study.timeout"].isna().all()
    table = compare.summary(tracking_uri=uri)
    assert sorted(table["study"]) == ["bench_00", "bench_01"]
    assert table["runs"].sum() == 25
