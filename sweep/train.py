"""One training run: config in, result out. ``sweep train`` calls it once; every Optuna
trial calls it too, with sampled overrides and a pruning callback (one code path).

Steps: seeded init -> Lightning fit (train, validate every epoch, early stopping) ->
best weights by validation restored (kept in memory, no checkpoint files) -> one test
evaluation -> everything recorded in MLflow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweep import config as config_mod


@dataclass
class RunResult:
    """What a run produced. ``value`` is the best monitored validation score."""

    run_id: str | None
    monitor: str
    mode: str
    value: float | None
    best_epoch: int | None
    epochs_run: int
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    num_params: int = 0
    fit_seconds: float = 0.0
    pruned_epoch: int | None = None
    model_uri: str | None = None

    def metric(self, name: str) -> float:
        """A value a study can optimise: a val/ metric at the best epoch, params, time."""
        if name == self.monitor and self.value is not None:
            return self.value
        extra = {"model/params": float(self.num_params), "time/fit": self.fit_seconds}
        if name in extra:
            return extra[name]
        if name in self.val:
            return self.val[name]
        raise KeyError(name)


@functools.lru_cache(maxsize=4)
def _cached_dataset(data_yaml: str):
    from sweep.data import load_dataset

    return load_dataset(OmegaConf.create(data_yaml))


def load_data(cfg: DictConfig):
    """The run's data set, loaded once per process per data config (trials share it)."""
    dataset = _cached_dataset(OmegaConf.to_yaml(cfg.data))
    config_mod.check_monitor(cfg, dataset.task)
    return dataset


def monitor_of(cfg: DictConfig, task: str) -> tuple[str, str]:
    # Not from sweep.models.task: a study's coordinator would import Lightning for it.
    monitor, mode = config_mod.default_monitor(task)
    if cfg.trainer.monitor != "auto":
        monitor = cfg.trainer.monitor
        mode = "min" if monitor in ("val/loss", "val/mae") else "max"
    if cfg.trainer.mode != "auto":
        mode = cfg.trainer.mode
    return monitor, mode


def quiet_lightning() -> None:
    """Silence Lightning's interactive tips; real warnings still show."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch.trainer.connectors",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Our in-memory batches are not DataLoaders; the worker hint does not apply.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)`.*")


def run(
    cfg: DictConfig,
    *,
    parent_run_id: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
    callbacks: list | None = None,
    overrides: list[str] | None = None,
    load_first: bool = True,
    on_start: Callable[[str], None] | None = None,
    result_tags: Callable[[RunResult], dict[str, Any]] | None = None,
) -> RunResult:
    """Train, validate and test one config and record it as one MLflow run.

    ``load_first`` loads the data before the MLflow run exists, so bad data leaves no
    run behind (``sweep train``); a trial passes False so its run records the failure.
    ``callbacks`` are extra Lightning callbacks (the pruning hook of a trial); each
    epoch's validation metrics are in ``pl_module.epoch_metrics`` when their
    ``on_train_epoch_end`` runs (Lightning's validation hooks do not run in a fit: see
    :class:`sweep.callbacks.EpochValidation`). ``on_start(run_id)`` is called once the
    MLflow run exists; ``result_tags(result)`` gives tags written with the run's last
    batch (a trial's state).
    """
    from sweep import tracking

    if load_first:
        load_data(cfg)
    tracking.setup(cfg.tracking.uri, check_store=True)
    run_tags = {"overrides": " ".join(overrides or []), **(tags or {})}
    if parent_run_id is None:
        # No study watches this run: it records its process, and closes the runs of
        # processes that left theirs RUNNING (see close_abandoned_runs).
        from sweep.workers import close_abandoned_runs, this_process

        run_tags.setdefault("worker", this_process())
        close_abandoned_runs(tracking.ensure_experiment(experiment or cfg.tracking.experiment))
    with tracking.open_run(
        experiment or cfg.tracking.experiment, run_name, parent_run_id, run_tags
    ) as recorder:
        if on_start is not None:
            on_start(recorder.run_id)
        return _train_in_run(cfg, recorder, callbacks or [], result_tags)


def _train_in_run(
    cfg: DictConfig,
    recorder,
    callbacks: list,
    result_tags: Callable[[RunResult], dict[str, Any]] | None = None,
) -> RunResult:
    import lightning as L

    from sweep.callbacks import BestWeights, EpochRecorder, EpochValidation
    from sweep.data.module import ArrayDataModule
    from sweep.models.networks import build_network, count_parameters
    from sweep.models.task import Task

    quiet_lightning()
    dataset = load_data(cfg)
    monitor, mode = monitor_of(cfg, dataset.task)
    run_cfg = config_mod.run_part(cfg)
    recorder.params(
        {
            **config_mod.flatten(run_cfg),
            **{f"data.{k}": v for k, v in dataset.shape_info().items()},
        }
    )
    recorder.text(OmegaConf.to_yaml(run_cfg), "config.yaml")

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    network = build_network(cfg.model, dataset.input_shape, dataset.num_outputs)
    num_params = count_parameters(network)
    recorder.params({"model.num_params": num_params})
    task = Task(
        network,
        dataset.task,
        dataset.num_outputs,
        optimizer=config_mod.to_container(cfg.optimizer),
        scheduler=config_mod.to_container(cfg.scheduler),
        max_epochs=int(cfg.trainer.max_epochs),
        monitor=monitor,
        mode=mode,
        target_scale=getattr(dataset.preprocessor, "target_scale", 1.0),
        gradient_clip_val=float(cfg.trainer.gradient_clip_val),
    )
    datamodule = ArrayDataModule(
        dataset, int(cfg.data.batch_size), int(cfg.seed), str(cfg.data.loader)
    )
    best = BestWeights(monitor, mode)
    epoch_recorder = EpochRecorder(
        recorder, int(cfg.trainer.max_epochs), bool(cfg.trainer.progress)
    )
    # Validation first: the others read its metrics at the end of each epoch.
    all_callbacks = [EpochValidation(), epoch_recorder, best, *callbacks]
    es = cfg.trainer.early_stopping
    if es.enabled:
        from lightning.pytorch.callbacks import EarlyStopping

        all_callbacks.append(
            EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=int(es.patience),
                min_delta=float(es.min_delta),
                check_finite=True,
            )
        )
    trainer = build_trainer(cfg, all_callbacks)
    started = time.perf_counter()
    with interrupts_kept():
        trainer.fit(task, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started
    if best.state_dict is None:
        raise RuntimeError("no validation epoch completed")
    task.load_state_dict(best.state_dict)
    pruned_epoch = next(
        (
            getattr(c, "pruned_epoch", None)
            for c in callbacks
            if getattr(c, "pruned_epoch", None) is not None
        ),
        None,
    )
    test: dict[str, float] = {}
    model_uri = model_id = None
    if pruned_epoch is None:
        # One evaluation on the held-out test split, with the best validation weights.
        with interrupts_kept():
            trainer.test(task, datamodule=datamodule, verbose=False)
        test = dict(task.test_metrics)
        if cfg.tracking.log_model:
            from sweep.packaging import log_model

            # The model holds the best epoch's weights: its metrics are that epoch's (and
            # the test scores below), its params the run's.
            best_epoch = int(best.best_epoch or 0)
            info = log_model(
                task.network,
                config_mod.to_container(cfg.model),
                dataset,
                step=best_epoch,
                params=recorder.logged_params,
            )
            model_uri, model_id = info.model_uri, info.model_id
            recorder.link_to_model(model_id, best_epoch)
    result = RunResult(
        run_id=recorder.run_id,
        monitor=monitor,
        mode=mode,
        value=best.best_value,
        best_epoch=best.best_epoch,
        epochs_run=epoch_recorder.epochs_run,
        val=dict(best.best_metrics),
        test=test,
        num_params=num_params,
        fit_seconds=fit_seconds,
        pruned_epoch=pruned_epoch,
        model_uri=model_uri,
    )
    summary = {
        f"best/{k.split('/', 1)[1]}": v for k, v in result.val.items() if k.startswith("val/")
    }
    recorder.metrics(
        {**summary, "time/fit": fit_seconds, "best/epoch": float(best.best_epoch or 0)}
    )
    recorder.metrics(test, model_id=model_id)
    recorder.tags(
        {
            "monitor": monitor,
            "mode": mode,
            "best_epoch": best.best_epoch,
            "device": task.trained_on,
            # What trained, where Lightning replaced what was asked (16-mixed on a CPU
            # trains in bf16-mixed): the config param keeps what was asked.
            "precision": str(trainer.precision),
            **({"model_uri": model_uri} if model_uri else {}),
            **(result_tags(result) if result_tags else {}),
        }
    )
    return result


@contextlib.contextmanager
def interrupts_kept():
    """Lightning turns Ctrl-C / SIGTERM inside fit or test into ``sys.exit(1)``; hand the
    KeyboardInterrupt back so callers (the CLI, a study worker) see an interruption."""
    try:
        yield
    except SystemExit as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise exc.__context__ from None
        raise


def build_trainer(cfg: DictConfig, callbacks: list):
    import lightning as L

    t = cfg.trainer
    return L.Trainer(
        max_epochs=int(t.max_epochs),
        accelerator=str(t.accelerator),
        devices=int(t.devices),
        precision=str(t.precision),
        deterministic=bool(t.deterministic),
        callbacks=callbacks,
        # Lean: our own tracker records metrics, best weights stay in memory.
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,  # each epoch's validation is EpochValidation's (a callback)
    )


def is_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def snapshot(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
