"""``sweep rerun RUN_ID``: the logged config trained again, metrics reproduced exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_SYNTHETIC
from mlflow.tracking import MlflowClient

from sweep import cli
from sweep.config import load_run_config
from sweep.errors import ConfigError
from sweep.rerun import apply_overrides, code_warnings, is_timing_metric, rerun
from sweep.train import run

# One test process runs this module: its module-scoped fixtures are built once.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("rerun")]


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every non-timing metric's full history, (step, value) in step order."""
    out = {}
    for key in client.get_run(run_id).data.metrics:
        if is_timing_metric(key):
            continue
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        out[key] = [(m.step, m.value) for m in points]
    return out


def all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def config_of(run_id: str) -> dict:
    return yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: Path):
    """A module-private store with one tiny run in its own experiment; cwd is the store dir."""
    root = tmp_path_factory.mktemp("rerun")
    shutil.copy(_empty_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        source = run(
            load_run_config([*TINY_SYNTHETIC, "tracking.experiment=rerun-src"]),
            overrides=TINY_SYNTHETIC,
        )
        yield {"root": root, "uri": uri, "source": source.run_id}


@pytest.fixture(autouse=True)
def _on_the_module_store(request: pytest.FixtureRequest) -> None:
    """Each test on the module's store points MLflow at it again: a test run in between
    (this module's study test, or another module's on this xdist worker) may have pointed
    the process-wide URI elsewhere."""
    if "store" in request.fixturenames:
        mlflow.set_tracking_uri(request.getfixturevalue("store")["uri"])


@pytest.fixture(scope="module")
def reran(store):
    """The source run re-run through the CLI (in this process), as a user would."""
    client = MlflowClient()
    before = {r.info.run_id for r in all_runs(client)}
    code = cli.main(["rerun", store["source"]])
    after = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.rerun_of = '{store['source']}'",
    )
    new = [r for r in after if r.info.run_id not in before]
    assert code == 0
    assert len(new) == 1
    return new[0]


def test_rerun_reproduces_every_metric_exactly(store, reran):
    client = MlflowClient()
    source = client.get_run(store["source"])
    assert reran.info.status == "FINISHED"
    assert reran.data.tags["rerun_of"] == store["source"]
    # Same experiment (the source's), same store.
    assert reran.info.experiment_id == source.info.experiment_id
    # Identical config and params, identical metric histories (val/*, test/*, train/*,
    # best/*, lr, every epoch); only wall-clock timings may differ.
    assert config_of(reran.info.run_id) == config_of(store["source"])
    assert reran.data.params == source.data.params
    assert histories(client, reran.info.run_id) == histories(client, store["source"])
    assert any(k.startswith("test/") for k in reran.data.metrics)
    assert any(k.startswith("val/") for k in reran.data.metrics)
    # The rerun logged a servable model too.
    assert reran.data.tags["model_uri"].startswith("models:/")


def test_cli_prints_the_comparison(store, capsys):
    code = cli.main(["rerun", store["source"], "trainer.max_epochs=2", "seed=5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "test/acc" in out and "rerun_of=" in out
    client = MlflowClient()
    new = client.search_runs(
        [client.get_run(store["source"]).info.experiment_id],
        filter_string="tags.overrides = 'trainer.max_epochs=2 seed=5'",
    )
    assert len(new) == 1
    cfg = config_of(new[0].info.run_id)
    assert cfg["trainer"]["max_epochs"] == 2 and cfg["seed"] == 5
    assert new[0].data.tags["rerun_of"] == store["source"]


def test_group_override_switches_a_whole_config_group(store):
    cfg = load_run_config(TINY_SYNTHETIC)
    changed = apply_overrides(cfg, ["model=cnn", "model.channels=4", "optimizer.lr=0.01"])
    assert changed.model.name == "cnn" and changed.model.channels == 4
    assert changed.optimizer.lr == 0.01
    assert changed.data == cfg.data  # untouched groups keep the logged values
    # A switched group composes with the keys given for it (data=csv needs data.path).
    table = apply_overrides(cfg, ["data=csv", "data.path=t.csv", "data.target=y"])
    assert (table.data.name, table.data.path, table.data.target) == ("csv", "t.csv", "y")
    assert table.data.max_categories == 50  # the option's defaults from conf/data/csv.yaml
    with pytest.raises(ConfigError, match=r"model\.nope: unknown key"):
        apply_overrides(cfg, ["model.nope=1"])
    with pytest.raises(ConfigError, match="not a sweep"):
        apply_overrides(cfg, ["seed=1,2"])


def test_csv_run_with_a_relative_path_reruns_from_another_directory(store, tmp_path):
    """The config holds data.path as typed (relative); the rerun uses the file it read."""
    rng = np.random.default_rng(3)
    table = pd.DataFrame({"a": rng.normal(size=150), "b": rng.normal(size=150)})
    table["y"] = np.where(table["a"] + table["b"] > 0, "pos", "neg")
    (store["root"] / "data").mkdir(exist_ok=True)
    table.to_csv(store["root"] / "data" / "t.csv", index=False)
    source = run(
        load_run_config(["data=csv", "data.path=data/t.csv", "data.target=y", "trainer=fast"])
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        outcome = rerun(source.run_id)
    assert outcome.differences == []
    assert outcome.result.test == source.test
    assert Path(config_of(outcome.result.run_id)["data"]["path"]).is_absolute()
    assert not (elsewhere / "mlflow.db").exists()  # logged to the source's store


def test_a_study_trial_and_its_champion_rerun_reproduce_exactly(tracked):
    """Runs a study made (a trial with sampled overrides, a champion re-train with its own
    seed) rerun into the study's experiment with identical metrics."""
    from sweep.study import tune

    tune(
        [
            "data=synthetic",
            "search=tiny",
            "trainer.max_epochs=2",
            "study.name=rr",
            "study.n_trials=1",
            "champion.k=1",
            "champion.seeds=1",
        ],
        progress=False,
    )
    client = MlflowClient()
    experiment = client.get_experiment_by_name("rr").experiment_id
    for role in ("trial", "champion_rerun"):
        (source,) = client.search_runs([experiment], f"tags.`sweep.role` = '{role}'")
        outcome = rerun(source.info.run_id)
        assert outcome.differences == [], (role, outcome.compared)
        new = client.get_run(outcome.result.run_id)
        assert new.info.experiment_id == experiment
        assert new.data.tags["rerun_of"] == source.info.run_id
        assert new.data.tags["study.name"] == "rr"
        assert histories(client, new.info.run_id) == histories(client, source.info.run_id)
    # The reruns count in the study's row: a trial, a champion re-train and the two reruns.
    from sweep.compare import summary

    (row,) = summary(["rr"]).itertuples()
    assert row.study == "rr" and row.runs == 4 and row.other == "FINISHED 2"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["0123456789abcdef0123456789abcdef"], "not found in the tracking store"),
        ([], "usage: sweep rerun RUN_ID"),
        (["seed=1"], "usage: sweep rerun RUN_ID"),
    ],
)
def test_bad_run_id_is_one_line_and_status_2(store, capsys, args, needle):
    client = MlflowClient()
    runs_before = len(all_runs(client))
    code = cli.main(["rerun", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1, err
    assert len(all_runs(client)) == runs_before


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        # Not keys of a run: a typo, or a study's setting, never silently ignored.
        ("+foo=1", "foo: unknown key; known keys: data, model"),
        ("+study.n_trials=3", "study: unknown key; known keys: data, model"),
        ("study.n_trials=3", "study.n_trials: unknown key; known keys: data, model"),
        ("+optimizer.nope=1", "optimizer.nope: unknown key"),
    ],
)
def test_bad_override_is_one_line_and_trains_nothing(store, capsys, override, needle):
    client = MlflowClient()
    runs_before = len(all_runs(client))
    code = cli.main(["rerun", store["source"], override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1, err
    assert len(all_runs(client)) == runs_before


def test_run_without_config_is_a_clear_error(store, capsys):
    client = MlflowClient()
    bare = client.create_run(client.get_experiment_by_name("rerun-src").experiment_id)
    client.set_terminated(bare.info.run_id)
    code = cli.main(["rerun", bare.info.run_id])
    assert code == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_code_warnings():
    same = {"git.commit": "a" * 40, "git.dirty": "false", "version.torch": "2.13.0"}
    assert code_warnings(same, same) == []
    moved = code_warnings(same, {**same, "git.commit": "b" * 40, "git.dirty": "true"})
    assert any("HEAD is bbbbbbbbbbbb" in w for w in moved)
    assert any("uncommitted changes" in w for w in moved)
    assert any("no git commit" in w for w in code_warnings({}, same))
    assert any(
        "torch was 2.12.0" in w for w in code_warnings({**same, "version.torch": "2.12.0"}, same)
    )
    assert any("pruned at epoch 3" in w for w in code_warnings({"trial.pruned_epoch": "3"}, same))
