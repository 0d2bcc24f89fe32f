"""One tracked training run, end to end: config in, Lightning fit, everything in MLflow."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    ROOT,
    TINY_DIGITS,
    TINY_MNIST1D,
    TINY_SYNTHETIC,
    count_runs,
    finish_cli,
    start_cli,
)
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits

from sweep.config import load_run_config, run_part, to_container
from sweep.data.base import split_indices
from sweep.errors import DataError, NonFiniteLossError
from sweep.models.task import Task
from sweep.train import load_data, run

# One test process runs this module: its module-scoped fixtures are built once.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("train")]

TIMING_METRICS = {"time/epoch", "time/fit"}


# -- helpers -------------------------------------------------------------------------------
def train(overrides: list[str], **kwargs):
    cfg = load_run_config(overrides)
    return cfg, run(cfg, overrides=overrides, **kwargs)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [(m.step, m.value) for m in points]


def values(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [v for _, v in history(client, run_id, key)]


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {k: history(client, run_id, k) for k in client.get_run(run_id).data.metrics}


def all_runs(client: MlflowClient):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def only_run(client: MlflowClient):
    runs = all_runs(client)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def raw_digits_split(cfg):
    """The raw 8x8 images and labels of each split, rebuilt from scikit-learn."""
    bunch = load_digits()
    _tr, va, te = split_indices(
        len(bunch.images),
        cfg.data.val_fraction,
        cfg.data.test_fraction,
        cfg.data.split_seed,
        stratify=bunch.target,
    )
    flat = bunch.images.reshape(len(bunch.images), -1).astype(np.float32)
    return {name: (flat[i], bunch.target[i]) for name, i in (("val", va), ("test", te))}


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    predicted = model.predict(x)["prediction"].to_numpy()
    return float((predicted.astype(np.int64) == y).mean())


def write_messy_csv(path) -> pd.DataFrame:
    """String labels, an id column, missing values, spaces in column names."""
    rng = np.random.default_rng(0)
    n = 200
    a, b = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "id": np.arange(1000, 1000 + n),
            "feature a": a.round(3),
            "feature b": b.round(3),
            "colour": rng.choice(["red", "green", "blue"], n),
            "the label": np.where(a + b > 0, "yes", "no"),
        }
    )
    frame.loc[[3, 7, 20], "feature a"] = np.nan
    frame.loc[[5, 9], "colour"] = None
    frame.to_csv(path, index=False)
    return frame


@dataclass
class CliJob:
    """A ``python -m sweep train`` started in its own folder and MLflow store."""

    cwd: Path
    uri: str
    proc: subprocess.Popen
    frame: pd.DataFrame | None = None
    _done: subprocess.CompletedProcess | None = None

    def result(self) -> subprocess.CompletedProcess:
        if self._done is None:
            self._done = finish_cli(self.proc)
        return self._done


@pytest.fixture(scope="module", autouse=True)
def cli_jobs(tmp_path_factory, _empty_mlflow_db):
    """The CLI trainings start with this module and run beside its in-process tests
    (imports cost most of their time); the CLI tests then check their results.
    Meanwhile this process trains on one thread: tiny models gain nothing from more,
    and torch's thread pool slows down badly on oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    jobs: dict[str, CliJob] = {}
    for name in ("synthetic", "csv"):
        cwd = tmp_path_factory.mktemp(f"cli-{name}")
        shutil.copy(_empty_mlflow_db, cwd / "mlflow.db")
        uri = f"sqlite:///{cwd / 'mlflow.db'}"
        frame = None
        if name == "csv":
            frame = write_messy_csv(cwd / "my table.csv")
            args = [
                "data=csv",
                "data.path=my table.csv",
                "data.target=the label",
                "data.drop=[id]",
                "trainer=fast",
            ]
        else:
            args = TINY_SYNTHETIC
        jobs[name] = CliJob(cwd, uri, start_cli("train", *args, cwd=cwd, uri=uri), frame)
    yield jobs
    torch.set_num_threads(threads)
    for job in jobs.values():
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.communicate()


# -- a classification run, everything recorded ---------------------------------------------
def test_digits_run_is_fully_tracked(tracked):
    overrides = [*TINY_DIGITS, "model.width=32", "seed=3"]
    cfg, result = train(overrides)
    client = MlflowClient(tracking_uri=tracked)
    record = only_run(client)
    assert record.info.run_id == result.run_id
    assert record.info.status == "FINISHED"
    assert record.info.end_time is not None

    # params: the flattened config and the data's shapes
    params = record.data.params
    assert params["model.width"] == "32"
    assert params["optimizer.lr"] == str(cfg.optimizer.lr)
    assert params["data.batch_size"] == "64"
    assert params["seed"] == "3"
    assert params["trainer.max_epochs"] == "2"
    ds = load_data(cfg)
    assert params["data.n_train"] == str(len(ds.x_train))
    assert params["data.n_val"] == str(len(ds.x_val))
    assert params["data.n_test"] == str(len(ds.x_test))
    assert params["data.input_shape"] == "8x8"
    assert params["data.num_outputs"] == "10"
    assert int(params["model.num_params"]) == result.num_params > 0

    # per-epoch curves, step = epoch
    for key in ("train/loss", "val/loss", "val/acc", "val/f1", "lr", "time/epoch"):
        assert [s for s, _ in history(client, result.run_id, key)] == [0, 1], key
    assert values(client, result.run_id, "lr") == [cfg.optimizer.lr] * 2
    assert all(v > 0 for v in values(client, result.run_id, "time/epoch"))
    # test scores: once each, equal to the result
    for key in ("test/acc", "test/f1", "test/loss"):
        points = history(client, result.run_id, key)
        assert len(points) == 1, key
        assert points[0][1] == pytest.approx(result.test[key])
    val_acc = values(client, result.run_id, "val/acc")
    assert record.data.metrics["best/acc"] == pytest.approx(max(val_acc))
    assert record.data.metrics["best/epoch"] == int(np.argmax(val_acc)) == result.best_epoch
    assert result.value == pytest.approx(max(val_acc))
    assert result.epochs_run == 2

    # tags: where it came from
    tags = record.data.tags
    if (ROOT / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}", tags["git.commit"])
        assert tags["git.dirty"] in ("true", "false")
    assert tags["overrides"] == " ".join(overrides)
    assert tags["command"]
    assert tags["host"]
    assert tags["version.torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert tags["monitor"] == "val/acc" and tags["mode"] == "max"
    if torch.cuda.is_available():
        assert tags["device"] == f"cuda:0 ({torch.cuda.get_device_name(0)})"
    else:
        assert tags["device"] == f"cpu ({torch.get_num_threads()} threads)"
    assert tags["model_uri"] == result.model_uri
    assert "error" not in tags

    # the config as an artifact: exactly the run part of the composed config
    assert "config.yaml" in [a.path for a in client.list_artifacts(result.run_id)]
    text = mlflow.artifacts.load_text(f"runs:/{result.run_id}/config.yaml")
    assert yaml.safe_load(text) == to_container(run_part(cfg))

    # the model: raw flattened images in, original labels out, the logged scores back
    model = mlflow.pyfunc.load_model(result.model_uri)
    raw = raw_digits_split(cfg)
    x_test, y_test = raw["test"]
    assert accuracy(model, x_test, y_test) == pytest.approx(result.test["test/acc"], abs=1e-6)
    # the logged weights are the best validation epoch's
    x_val, y_val = raw["val"]
    assert accuracy(model, x_val, y_val) == pytest.approx(record.data.metrics["best/acc"], abs=1e-6)
    proba = model.predict(x_test[:4], params={"proba": True})
    assert np.allclose(proba.filter(like="proba_").sum(axis=1), 1.0, atol=1e-5)


def test_best_weights_are_restored(tracked, monkeypatch):
    """val/acc made to peak at epoch 1 of 3: the model tested and logged is epoch 1's."""
    fake = iter([0.5, 0.9, 0.7])
    original = Task.on_validation_epoch_end

    def patched(self):
        original(self)
        self.epoch_metrics["val/acc"] = next(fake)

    class Snapshots(L.Callback):
        def __init__(self):
            self.states = []

        def on_train_epoch_end(self, trainer, pl_module):  # after the validation
            net = pl_module.network
            # On the CPU, as the logged model is (training may run on a GPU).
            self.states.append({k: v.detach().cpu().clone() for k, v in net.state_dict().items()})

    monkeypatch.setattr(Task, "on_validation_epoch_end", patched)
    snapshots = Snapshots()
    overrides = [*TINY_SYNTHETIC, "trainer.early_stopping.enabled=false"]
    _, result = train(overrides, callbacks=[snapshots])
    client = MlflowClient(tracking_uri=tracked)
    assert values(client, result.run_id, "val/acc") == [0.5, 0.9, 0.7]
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["best/acc"] == 0.9
    assert metrics["best/epoch"] == 1
    assert result.best_epoch == 1
    logged = mlflow.pyfunc.load_model(result.model_uri).unwrap_python_model().network.state_dict()
    assert len(snapshots.states) == 3
    assert all(torch.equal(logged[k], v) for k, v in snapshots.states[1].items())
    assert not all(torch.equal(logged[k], v) for k, v in snapshots.states[2].items())


@pytest.mark.parametrize("flush_seconds", [3600.0, 0.0], ids=["buffered", "flushed-each-epoch"])
def test_logged_model_carries_its_epochs_metrics_and_the_run_params(
    tracked, monkeypatch, flush_seconds
):
    """MLflow 3's LoggedModel of a run: its metrics are those of the epoch whose weights it
    holds (val/acc made to peak at epoch 1 of 3) and the test scores, its params the run's,
    whether the epoch's metrics reached the store before the model was logged (MLflow links
    them) or were still buffered (the recorder links them)."""
    from sweep import tracking

    monkeypatch.setattr(tracking, "FLUSH_SECONDS", flush_seconds)
    fake = iter([0.5, 0.9, 0.7])
    original = Task.on_validation_epoch_end

    def patched(self):
        original(self)
        self.epoch_metrics["val/acc"] = next(fake)

    monkeypatch.setattr(Task, "on_validation_epoch_end", patched)
    _, result = train([*TINY_SYNTHETIC, "trainer.early_stopping.enabled=false"])
    client = MlflowClient(tracking_uri=tracked)
    record = client.get_run(result.run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[record.info.experiment_id], output_format="list"
    )
    assert len(models) == 1
    model = models[0]
    assert model.source_run_id == result.run_id
    assert result.model_uri == f"models:/{model.model_id}"
    assert model.params == record.data.params
    epoch_keys = ("train/loss", "val/loss", "val/acc", "val/f1", "lr", "time/epoch")
    expected = {(key, 1): dict(history(client, result.run_id, key))[1] for key in epoch_keys}
    expected.update({(key, 0): value for key, value in result.test.items()})
    assert {(m.key, m.step): m.value for m in model.metrics} == pytest.approx(expected)
    assert expected[("val/acc", 1)] == 0.9


def test_mlflows_serving_check_runs_once_per_example_and_every_model_keeps_it(tracked, monkeypatch):
    """MLflow loads a logged model back to check its input example through the serving
    path; with the same signature and example only the first model of a process pays for
    it. Every model still carries its example and serving payload, and serves it."""
    import mlflow.models.utils

    from sweep.packaging import _ServingCheckedOnce

    monkeypatch.setattr(_ServingCheckedOnce, "_checked", set())
    checked = []
    original = mlflow.models.utils._validate_serving_input

    def counting(model_uri, serving_input):
        checked.append(model_uri)
        return original(model_uri, serving_input)

    monkeypatch.setattr(mlflow.models.utils, "_validate_serving_input", counting)
    results = [train([*TINY_SYNTHETIC, f"seed={seed}"])[1] for seed in (0, 1)]
    _, other_data = train([*TINY_SYNTHETIC, "data.num_features=6"])
    assert len(checked) == 2  # the first model, and the first of the other data set
    example = load_data(load_run_config(TINY_SYNTHETIC)).input_example
    for result in [*results, other_data]:
        local = Path(mlflow.artifacts.download_artifacts(result.model_uri))
        assert (local / "input_example.json").is_file()
        assert (local / "serving_input_example.json").is_file()
        assert mlflow.models.Model.load(local).flavors.keys() == {"python_function"}
        serving = (local / "serving_input_example.json").read_text()
        answer = mlflow.models.utils._validate_serving_input(str(local), serving)
        assert len(answer) == len(example)
    # Each model holds its own weights (the seeds differ), not the first one's.
    proba = [
        mlflow.pyfunc.load_model(r.model_uri).predict(example, params={"proba": True})
        for r in results
    ]
    assert not np.allclose(proba[0].filter(like="proba_"), proba[1].filter(like="proba_"))


# -- regression ----------------------------------------------------------------------------
def test_regression_run(tracked):
    overrides = [*TINY_SYNTHETIC, "data.task=regression"]
    cfg, result = train(overrides)
    client = MlflowClient(tracking_uri=tracked)
    record = client.get_run(result.run_id)
    assert record.info.status == "FINISHED"
    assert (result.monitor, result.mode) == ("val/loss", "min")
    assert record.data.tags["monitor"] == "val/loss" and record.data.tags["mode"] == "min"
    for key in ("train/loss", "val/loss", "val/mae", "val/r2", "lr", "time/epoch"):
        assert [s for s, _ in history(client, result.run_id, key)] == [0, 1, 2], key
    assert "val/acc" not in record.data.metrics
    for key in ("test/r2", "test/mae", "test/loss"):
        assert len(history(client, result.run_id, key)) == 1, key
    val_loss = values(client, result.run_id, "val/loss")
    assert record.data.metrics["best/loss"] == pytest.approx(min(val_loss))
    assert result.test["test/r2"] > 0.5  # it learned something in 3 epochs

    # the model answers in the target's own units, from raw inputs
    ds = load_data(cfg)
    pre = ds.preprocessor
    x_raw = (ds.x_test * pre.scale + pre.mean).astype(np.float32)
    y_raw = pre.decode_target(ds.y_test)
    predicted = mlflow.pyfunc.load_model(result.model_uri).predict(x_raw)["prediction"].to_numpy()
    mae = float(np.abs(predicted - y_raw).mean())
    r2 = 1 - float(((predicted - y_raw) ** 2).sum() / ((y_raw - y_raw.mean()) ** 2).sum())
    assert mae == pytest.approx(result.test["test/mae"], rel=1e-3)
    assert r2 == pytest.approx(result.test["test/r2"], abs=1e-3)
    assert float(np.std(y_raw)) > 5  # original units, not standardised ones


# -- CNN on images and sequences -----------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "shape"),
    [(TINY_DIGITS, "8x8"), (TINY_MNIST1D, "40")],
    ids=["digits-2d", "mnist1d-1d"],
)
def test_cnn_trains(tracked, overrides, shape):
    cfg, result = train([*overrides, "model=cnn", "model.channels=8", "model.depth=2"])
    client = MlflowClient(tracking_uri=tracked)
    record = client.get_run(result.run_id)
    assert record.info.status == "FINISHED"
    assert record.data.params["model.name"] == "cnn"
    assert record.data.params["data.input_shape"] == shape
    train_loss = values(client, result.run_id, "train/loss")
    assert len(train_loss) == 2 and train_loss[1] < train_loss[0]
    assert result.test["test/acc"] > 0.1  # better than chance (10 classes)
    model = mlflow.pyfunc.load_model(result.model_uri)
    example = load_data(cfg).input_example
    labels = model.predict(example)["prediction"].tolist()
    assert len(labels) == len(example) and set(labels) <= set(range(10))


# -- reproducibility -----------------------------------------------------------------------
def test_same_config_and_seed_reproduce_every_metric(tracked):
    overrides = [*TINY_SYNTHETIC, "model.dropout=0.3"]
    _, first = train(overrides)
    _, second = train(overrides)
    _, other_seed = train([*overrides, "seed=1"])
    client = MlflowClient(tracking_uri=tracked)
    a, b, c = (histories(client, r.run_id) for r in (first, second, other_seed))
    assert set(a) == set(b)
    compared = set(a) - TIMING_METRICS
    assert {"train/loss", "val/loss", "val/acc", "test/acc", "best/acc"} <= compared
    for key in sorted(compared):
        assert a[key] == b[key], key
    assert a["train/loss"] != c["train/loss"]  # the seed matters, so the check has teeth
    params = [client.get_run(r.run_id).data.params for r in (first, second)]
    assert params[0] == params[1]


def test_both_loaders_give_the_same_metrics(tracked):
    """``data.loader=dataloader`` batches by the same seeded order as the in-memory path:
    a run's curves and scores do not depend on the loader."""
    overrides = [*TINY_SYNTHETIC, "model.dropout=0.2", "tracking.log_model=false"]
    _, memory = train(overrides)
    _, classic = train([*overrides, "data.loader=dataloader"])
    client = MlflowClient(tracking_uri=tracked)
    a, b = (histories(client, r.run_id) for r in (memory, classic))
    compared = set(a) - TIMING_METRICS
    assert {"train/loss", "val/loss", "val/acc", "test/acc"} <= compared
    for key in sorted(compared):
        assert a[key] == b[key], key


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_epoch_validation_gives_what_lightnings_validation_loop_gives(tracked, monkeypatch, loader):
    """Each epoch's validation is run by EpochValidation, not by the Trainer's loop: with
    the loop back on instead, every metric of the run is the same (dropout off in eval
    mode, the plateau scheduler's lr, the best epoch, early stopping's epoch)."""
    from sweep import train as train_mod
    from sweep.callbacks import EpochValidation

    overrides = [
        "data=synthetic",
        "trainer.max_epochs=12",
        "trainer.progress=false",
        "trainer.early_stopping.patience=3",
        "scheduler=plateau",
        "model.dropout=0.3",
        f"data.loader={loader}",
        "tracking.log_model=false",
    ]
    _, ours = train(overrides)
    build_trainer = train_mod.build_trainer

    def with_lightnings_loop(cfg, callbacks):
        trainer = build_trainer(cfg, callbacks)
        trainer.limit_val_batches = 1.0  # the Trainer's default: validate every epoch
        return trainer

    monkeypatch.setattr(train_mod, "build_trainer", with_lightnings_loop)
    monkeypatch.setattr(EpochValidation, "on_train_epoch_end", lambda *args: None)
    _, lightnings = train(overrides)
    client = MlflowClient(tracking_uri=tracked)
    a, b = (histories(client, r.run_id) for r in (ours, lightnings))
    assert set(a) == set(b)
    compared = set(a) - TIMING_METRICS
    assert {"val/loss", "val/acc", "val/f1", "lr", "test/acc", "best/epoch"} <= compared
    for key in sorted(compared):
        assert a[key] == b[key], key
    assert ours.epochs_run == lightnings.epochs_run


def test_plain_steps_give_the_same_metrics_as_lightnings_wrappers(tracked, monkeypatch):
    """In full precision the task calls backward() and the torch optimiser's step()
    directly; through Lightning's manual_backward / LightningOptimizer.step (as mixed
    precision does) every metric of the run is the same, gradient clipping included."""
    overrides = [*TINY_SYNTHETIC, "model.dropout=0.2", "trainer.gradient_clip_val=0.5"]
    _, plain = train(overrides)
    original = Task.on_fit_start

    def through_lightning(self):
        original(self)
        assert self.plain_steps  # 32-true: the plain path was in use above
        self.plain_steps = False

    monkeypatch.setattr(Task, "on_fit_start", through_lightning)
    _, wrapped = train(overrides)
    client = MlflowClient(tracking_uri=tracked)
    a, b = (histories(client, r.run_id) for r in (plain, wrapped))
    compared = set(a) - TIMING_METRICS
    assert {"train/loss", "val/loss", "test/acc"} <= compared
    for key in sorted(compared):
        assert a[key] == b[key], key


@pytest.mark.parametrize(("precision", "plain"), [("bf16-mixed", False), ("64-true", True)])
def test_other_precisions_train(tracked, monkeypatch, precision, plain):
    """Mixed precision goes through Lightning's backward and step (autocast); double
    precision takes the plain path. Both train and record finite metrics."""
    seen = []
    original = Task.on_fit_start

    def record_path(self):
        original(self)
        seen.append(self.plain_steps)

    monkeypatch.setattr(Task, "on_fit_start", record_path)
    _, result = train([*TINY_SYNTHETIC, f"trainer.precision={precision}"])
    assert seen == [plain]
    assert np.isfinite(result.test["test/acc"]) and result.value is not None
    assert MlflowClient().get_run(result.run_id).data.tags["precision"] == precision


def test_the_precision_lightning_trained_in_is_recorded(tracked):
    """Lightning trains 16-mixed as bf16-mixed on a CPU (with a warning): the param keeps
    what was asked, the tag says what trained."""
    _, result = train([*TINY_SYNTHETIC, "trainer.precision=16-mixed"])
    record = MlflowClient().get_run(result.run_id)
    assert record.data.params["trainer.precision"] == "16-mixed"
    expected = "16-mixed" if torch.cuda.is_available() else "bf16-mixed"
    assert record.data.tags["precision"] == expected


# -- early stopping ------------------------------------------------------------------------
def test_early_stopping_stops_and_keeps_the_best(tracked):
    overrides = [
        "data=synthetic",
        "trainer.max_epochs=10",
        "trainer.progress=false",
        "trainer.early_stopping.patience=1",
        "optimizer.lr=1e-9",  # nothing improves
    ]
    _, result = train(overrides)
    client = MlflowClient(tracking_uri=tracked)
    record = client.get_run(result.run_id)
    assert record.info.status == "FINISHED"
    val_acc = values(client, result.run_id, "val/acc")
    assert len(val_acc) == result.epochs_run < 10
    assert record.data.metrics["best/acc"] == pytest.approx(max(val_acc))
    assert record.data.metrics["best/epoch"] == int(np.argmax(val_acc))
    assert "test/acc" in record.data.metrics


# -- failures close the run ----------------------------------------------------------------
def test_diverging_run_ends_failed(tracked):
    overrides = [*TINY_SYNTHETIC, "data.task=regression", "optimizer=sgd", "optimizer.lr=1e6"]
    with pytest.raises(NonFiniteLossError):
        train(overrides)
    client = MlflowClient(tracking_uri=tracked)
    record = only_run(client)
    assert record.info.status == "FAILED"
    assert record.info.end_time is not None
    assert record.data.tags["error"].startswith("NonFiniteLossError")
    assert "model_uri" not in record.data.tags


def test_exception_inside_fit_ends_failed(tracked, monkeypatch):
    def boom(self, batch, batch_idx):
        raise RuntimeError("boom in training_step")

    monkeypatch.setattr(Task, "training_step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(TINY_SYNTHETIC)
    record = only_run(MlflowClient(tracking_uri=tracked))
    assert record.info.status == "FAILED"
    assert record.data.tags["error"] == "RuntimeError: boom in training_step"


@pytest.mark.parametrize(
    ("hook", "epochs_logged"),
    [("on_train_epoch_start", [0]), ("on_test_start", [0, 1, 2])],
    ids=["during-fit", "during-test"],
)
def test_keyboard_interrupt_ends_killed(tracked, hook, epochs_logged):
    class CtrlC(L.Callback):
        pass

    def interrupt(self, trainer, pl_module):
        if trainer.current_epoch == 1 or hook == "on_test_start":
            raise KeyboardInterrupt

    setattr(CtrlC, hook, interrupt)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # not Lightning's SystemExit(1)
        train(TINY_SYNTHETIC, callbacks=[CtrlC()])
    assert signal.getsignal(signal.SIGINT) == handler
    client = MlflowClient(tracking_uri=tracked)
    record = only_run(client)
    assert record.info.status == "KILLED"
    assert "interrupted" in record.data.tags["error"]
    # the curve up to the interruption is kept
    assert [s for s, _ in history(client, record.info.run_id, "val/loss")] == epochs_logged
    assert "test/acc" not in record.data.metrics


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_start_run_ends_the_created_run_killed(tracked, monkeypatch, signum):
    """Ctrl-C (or SIGTERM, which the CLI turns into it) arriving while MLflow creates the
    run: the run it created is closed KILLED, not left RUNNING with nothing to end it."""
    import mlflow

    from sweep.interrupts import raise_keyboard_interrupt

    start_run = mlflow.start_run

    def start_then_signal(*args, **kwargs):
        run = start_run(*args, **kwargs)
        signal.raise_signal(signum)  # a real signal, at the worst moment
        return run

    monkeypatch.setattr(mlflow, "start_run", start_then_signal)
    handler = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(TINY_SYNTHETIC)
    finally:
        signal.signal(signal.SIGTERM, handler)
    record = only_run(MlflowClient(tracking_uri=tracked))
    assert record.info.status == "KILLED"
    assert "interrupted" in record.data.tags["error"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # that one
def test_a_ctrl_c_lost_in_a_finaliser_still_stops_the_training(tracked):
    """A real SIGINT whose handler runs inside a finaliser: Python discards the
    KeyboardInterrupt raised there ("Exception ignored in ..."). The CLI's handler
    remembers the signal, so the training stops at the end of that epoch all the same,
    its run KILLED, instead of going on as if Ctrl-C never came."""
    import gc

    from sweep import interrupts

    class Finaliser:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)  # its handler runs here, in the finaliser

    class LoseCtrlC(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                Finaliser()  # collected at once: the KeyboardInterrupt goes nowhere

    handler = signal.signal(signal.SIGINT, interrupts.raise_keyboard_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            train([*TINY_SYNTHETIC, "trainer.max_epochs=5"], callbacks=[LoseCtrlC()])
    finally:
        signal.signal(signal.SIGINT, handler)
        gc.collect()
    assert not interrupts._raised  # taken: the next training is not interrupted
    client = MlflowClient(tracking_uri=tracked)
    record = only_run(client)
    assert record.info.status == "KILLED"
    assert [s for s, _ in history(client, record.info.run_id, "val/loss")] == [0, 1]


def test_a_signal_inside_an_mlflow_sqlite_write_still_ends_the_run_killed(tracked, monkeypatch):
    """Ctrl-C landing inside a statement of MLflow's sqlite store, its write lock taken:
    the interrupted connection must not keep the lock (every later write would wait out
    sqlite's busy timeout and fail, its error replacing the KeyboardInterrupt). The run
    ends KILLED, tagged as interrupted, and the KeyboardInterrupt goes on."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from sweep import tracking

    armed: list[bool] = []

    def after_execute(conn, cursor, statement, *args) -> None:
        # The flush's own statement, in the main thread: the listener sees every engine's,
        # a thread an earlier test of this process left behind included.
        in_main = threading.current_thread() is threading.main_thread()
        if armed and in_main and statement.lstrip().startswith("SELECT runs.run_uuid"):
            armed.clear()
            signal.raise_signal(signal.SIGINT)  # a real signal, inside the write

    flush = tracking.Recorder.flush

    def arm_then_flush(self) -> None:
        if self._metrics and not hasattr(arm_then_flush, "fired"):
            arm_then_flush.fired = True
            armed.append(True)
        flush(self)

    monkeypatch.setattr(tracking.Recorder, "flush", arm_then_flush)
    event.listen(Engine, "after_cursor_execute", after_execute)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(TINY_SYNTHETIC)
    finally:
        event.remove(Engine, "after_cursor_execute", after_execute)
    assert hasattr(arm_then_flush, "fired") and not armed  # the signal came inside the write
    record = only_run(MlflowClient(tracking_uri=tracked))
    assert record.info.status == "KILLED"
    assert "interrupted" in record.data.tags["error"]


def bad_table(kind: str, path: Path) -> None:
    """Write a table that cannot be trained on, for ``kind`` of fault."""
    if kind == "missing":
        return
    frame = write_messy_csv(path).drop(columns=["id"])
    if kind == "too-few-rows":
        frame = frame.head(4)
    elif kind == "id-like-text":
        frame["customer"] = [f"C{i:05d}" for i in range(len(frame))]
    elif kind == "single-class":
        frame["the label"] = "yes"
    frame.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("missing", "file not found"),
        ("too-few-rows", "too few rows"),
        ("id-like-text", "'customer'"),
        ("single-class", "single class"),
    ],
)
def test_bad_data_leaves_no_run(tracked, tmp_path, kind, needle):
    bad_table(kind, tmp_path / "t.csv")
    with pytest.raises(DataError, match=needle):
        train(["data=csv", "data.path=t.csv", "data.target=the label", "trainer=fast"])
    assert count_runs(tmp_path / "mlflow.db") == 0


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_batch_norm_trains_when_a_batch_would_hold_one_row(tracked, loader):
    overrides = [*TINY_SYNTHETIC, "model.batch_norm=true", f"data.loader={loader}"]
    n_train = len(load_data(load_run_config(overrides)).x_train)
    _, result = train([*overrides, f"data.batch_size={n_train - 1}", "tracking.log_model=false"])
    record = MlflowClient(tracking_uri=tracked).get_run(result.run_id)
    assert record.info.status == "FINISHED"
    assert "test/acc" in record.data.metrics


# -- the command line ----------------------------------------------------------------------
def run_id_from(stdout: str) -> str:
    match = re.search(r"run id: ([0-9a-f]{32})", stdout)
    assert match, stdout
    return match.group(1)


def test_cli_train(cli_jobs):
    job = cli_jobs["synthetic"]
    proc = job.result()
    assert proc.returncode == 0, proc.stderr
    for name in ("test/acc", "test/f1", "best val/acc"):
        assert name in proc.stdout
    assert "Traceback" not in proc.stderr
    for noise in ("💡", "Tip:", "many workers", "type hints", "GPU available"):
        assert noise not in proc.stdout + proc.stderr, noise
    record = MlflowClient(tracking_uri=job.uri).get_run(run_id_from(proc.stdout))
    assert record.info.status == "FINISHED"
    assert record.data.tags["overrides"] == "data=synthetic trainer=fast"
    assert "train data=synthetic trainer=fast" in record.data.tags["command"]
    assert "test/acc" in record.data.metrics
    assert record.data.tags["model_uri"].startswith("models:/")


def test_cli_train_on_messy_csv(cli_jobs):
    job = cli_jobs["csv"]
    proc = job.result()
    assert proc.returncode == 0, proc.stderr
    run_id = run_id_from(proc.stdout)
    record = MlflowClient(tracking_uri=job.uri).get_run(run_id)
    assert record.info.status == "FINISHED"
    assert record.data.params["data.task"] == "classification"
    mlflow.set_tracking_uri(job.uri)  # models:/ URIs resolve through the tracking store
    model = mlflow.pyfunc.load_model(record.data.tags["model_uri"])
    raw = pd.read_csv(job.cwd / "my table.csv").drop(columns=["the label"])
    assert raw.isna().any().any()
    predicted = model.predict(raw)["prediction"]
    assert set(predicted) <= {"yes", "no"}
    assert (predicted.to_numpy() == job.frame["the label"].to_numpy()).mean() > 0.7
    proba = model.predict(raw.head(3), params={"proba": True})
    assert list(proba.columns) == ["prediction", "proba_no", "proba_yes"]


def test_cli_missing_data_file(cli, tmp_path):
    proc = cli("train", "data=csv", "data.path=missing.csv", "data.target=y", "trainer=fast")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "missing.csv" in lines[0]
    assert "Traceback" not in proc.stderr
    assert count_runs(tmp_path / "mlflow.db") == 0


def test_cli_unopenable_tracking_store_is_one_line(cli):
    bad = "sqlite:////etc/passwd/mlflow.db"  # its folder would be a file
    proc = cli("train", *TINY_SYNTHETIC, f"tracking.uri={bad}")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking.uri={bad}: cannot open the MLflow tracking"), line


def test_cli_diverging_run_is_one_line_and_ends_failed(tracked, capsys):
    """``sweep.cli.main`` in this process (a subprocess would only add import time)."""
    from sweep import cli

    overrides = [*TINY_SYNTHETIC, "data.task=regression", "optimizer=sgd", "optimizer.lr=1e6"]
    previous = signal.getsignal(signal.SIGTERM)  # cli.main installs its own handler
    try:
        assert cli.main(["train", *overrides]) == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: train/loss became nan"), line
    assert "optimizer.lr" in line
    record = only_run(MlflowClient(tracking_uri=tracked))
    assert record.info.status == "FAILED"
    assert record.data.tags["error"].startswith("NonFiniteLossError")


def endless_cli_train(cwd: Path, uri: str) -> subprocess.Popen:
    """``sweep train`` for 100,000 epochs in a subprocess, once its first epoch is shown."""
    proc = start_cli(
        "train",
        "data=synthetic",
        "trainer.max_epochs=100000",
        "trainer.early_stopping.enabled=false",
        cwd=cwd,
        uri=uri,
    )
    for line in proc.stdout:
        if line.startswith("epoch"):
            break
    return proc


def test_ctrl_c_on_the_command_line_leaves_the_run_killed(mlflow_store, tmp_path):
    """SIGINT, as a terminal's Ctrl-C sends it, once the first epoch has been shown."""
    # A child inherits an ignored SIGINT (a test run in the background): give it the default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = endless_cli_train(tmp_path, mlflow_store)
    finally:
        signal.signal(signal.SIGINT, previous)
    proc.send_signal(signal.SIGINT)
    done = finish_cli(proc)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    client = MlflowClient(tracking_uri=mlflow_store)
    record = only_run(client)
    assert record.info.status == "KILLED"
    assert "interrupted" in record.data.tags["error"]
    assert history(client, record.info.run_id, "val/loss")[0][0] == 0
    assert "test/acc" not in record.data.metrics


def test_a_run_whose_process_was_killed_outright_is_closed_by_the_next_one(tracked, tmp_path):
    """SIGKILL (the out-of-memory killer's signal) leaves MLflow's run RUNNING: the next
    run in the experiment on this host closes it KILLED, and leaves alone a run whose
    process is alive and a study's run (its study recovers it)."""
    proc = endless_cli_train(tmp_path, tracked)
    os.kill(proc.pid, signal.SIGKILL)
    finish_cli(proc)
    client = MlflowClient(tracking_uri=tracked)
    killed = only_run(client)
    assert killed.info.status == "RUNNING"
    assert killed.data.tags["worker"].endswith(f":{proc.pid}")

    experiment_id = killed.info.experiment_id
    alive = subprocess.Popen(["sleep", "60"])
    try:
        live_worker = f"{os.uname().nodename}:{alive.pid}"
        live = client.create_run(experiment_id, tags={"worker": live_worker})
        studys = client.create_run(
            experiment_id,
            tags={"worker": killed.data.tags["worker"], "mlflow.parentRunId": live.info.run_id},
        )
        result = run(load_run_config(TINY_SYNTHETIC))
    finally:
        alive.kill()
        alive.wait()

    closed = client.get_run(killed.info.run_id)
    assert closed.info.status == "KILLED"
    assert f"its process {killed.data.tags['worker']} ended" in closed.data.tags["error"]
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
    assert client.get_run(studys.info.run_id).info.status == "RUNNING"
    new = client.get_run(result.run_id)
    assert new.info.status == "FINISHED"
    assert new.data.tags["worker"] == f"{os.uname().nodename}:{os.getpid()}"


def test_sigterm_during_fit_closes_the_run(tracked, monkeypatch, capsys):
    """``sweep.cli.main`` in this process; SIGTERM sent to ourselves at epoch 1."""
    from sweep import cli

    def not_handled(signum, frame):
        raise RuntimeError("SIGTERM reached the test's handler, not the CLI's")

    original = Task.on_train_epoch_start

    def terminate_at_epoch_1(self):
        original(self)
        if self.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this returns

    monkeypatch.setattr(Task, "on_train_epoch_start", terminate_at_epoch_1)
    previous = signal.signal(signal.SIGTERM, not_handled)
    try:
        code = cli.main(["train", *TINY_SYNTHETIC, "trainer.max_epochs=5"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 130
    assert capsys.readouterr().err.strip() == "interrupted: the run is closed as KILLED"
    client = MlflowClient(tracking_uri=tracked)
    record = only_run(client)
    assert record.info.status == "KILLED"
    assert "interrupted" in record.data.tags["error"]
    assert [s for s, _ in history(client, record.info.run_id, "val/loss")] == [0]
