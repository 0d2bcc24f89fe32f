"""Optuna studies over Hydra configs, tracked in MLflow.

``tune(overrides)`` is ``sweep tune``: compose ``conf/sweep.yaml``, validate the run
config, the search space, the sampler and the pruner, load the data once, then create
or resume the study and its parent MLflow run, run trials until the study has
``study.n_trials`` finished (COMPLETE + PRUNED) trials, and pick the champion.

A trial is :func:`sweep.train.run` on the base config plus the sampled overrides, with
a pruning callback: the same code path as ``sweep train``.
"""

from __future__ import annotations

import contextlib
import datetime
import platform
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweep import config as config_mod
from sweep.errors import (
    ConfigError,
    DiskFull,
    StorageLost,
    SweepError,
    TrackingLost,
    disk_full,
)
from sweep.space import (
    Param,
    base_points,
    grid_size,
    parse_space,
    suggest,
    to_overrides,
    validate_space,
)
from sweep.workers import this_process

PARENT_RUN_ATTR = "mlflow_parent_run_id"
COORDINATOR_TAG = "sweep.coordinator"  # the parent run's: the `sweep tune` running it
STORAGE_TAG = "sweep.storage"  # the parent run's: its study's Optuna storage (redacted)
FINISHED_STATES = ("COMPLETE", "PRUNED")
SWEEP_KEYS = (*config_mod.RUN_KEYS, "study", "champion", "search", "sampler", "pruner", "storage")
OBJECTIVE_EXTRAS = ("model/params", "time/fit")


class StudyAborted(SweepError):
    """The same error repeated in every recent trial: stop instead of burning the budget."""

    exit_code = 1


@dataclass
class StudySpec:
    """A sweep config resolved and validated: everything a coordinator or worker needs."""

    cfg: DictConfig
    overrides: list[str]
    name: str
    metrics: list[tuple[str, str]]  # (metric, "maximize" | "minimize")
    n_trials: int
    timeout: float | None
    seed: int
    n_workers: int
    max_repeated_failures: int
    threads: int  # torch threads in each worker process
    params: list[Param]
    storage_url: str
    task: str
    monitor: str = "val/acc"
    mode: str = "max"  # the monitored metric's direction (trainer.mode or the task's)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.metrics]

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1


# -- preparation: every check before the first trial ---------------------------------------
def prepare(overrides: list[str], check_space: bool = True) -> StudySpec:
    """Compose and validate everything; load the data once. Raises SweepError on bad input.

    ``check_space=False`` skips composing every option of the search space (~0.7 s), for
    the workers ``sweep tune`` starts after it has checked the same overrides itself."""
    from sweep.champion import check_settings
    from sweep.optuna_parts import (
        build_pruner,
        build_sampler,
        check_server_storage,
        env_threads,
        storage_url,
    )
    from sweep.train import load_data, monitor_of

    cfg = config_mod.compose("sweep", overrides)
    validate_sweep_config(cfg)
    study = cfg.study
    params = parse_space(cfg.search)

    def compose_run(extra: list[str]) -> DictConfig:
        # compose_fast: a space's probes differ in values only (Hydra: 150-300 ms each).
        probe = config_mod.compose_fast("sweep", config_mod.merge_overrides(overrides, extra))
        config_mod.validate_run_config(probe)
        return probe

    if check_space:
        validate_space(params, cfg, compose_run)
    dataset = load_data(cfg)  # bad data fails here, before any study or run exists
    monitor, mode = monitor_of(cfg, dataset.task)
    metrics = _objectives(study.metrics, monitor, mode, dataset.task)
    if len(metrics) == 1 and metrics[0] != (monitor, "maximize" if mode == "max" else "minimize"):
        overrides = _monitor_the_objective(cfg, metrics[0], list(overrides))
        monitor, mode = monitor_of(cfg, dataset.task)
    n_workers = resolve_workers(study.n_workers, str(cfg.trainer.accelerator), dataset.nbytes)
    threads = env_threads(n_workers, study.get("threads", "auto"))
    build_sampler(cfg.sampler, params, int(study.seed), n_workers, len(metrics))
    build_pruner(cfg.pruner, int(cfg.trainer.max_epochs), len(metrics))
    check_settings(cfg.get("champion"))
    check_server_storage(storage_url(cfg.storage))  # before the MLflow store is created
    n_trials = int(study.n_trials)
    if cfg.sampler.name == "grid":
        # GridSampler stops the study once every point is visited; a larger target
        # would make every rerun try one more (duplicate) point.
        n_trials = min(n_trials, grid_size(params, cfg))
    return StudySpec(
        cfg=cfg,
        overrides=list(overrides),
        name=str(study.name),
        metrics=metrics,
        n_trials=n_trials,
        timeout=study.timeout,
        seed=int(study.seed),
        n_workers=n_workers,
        max_repeated_failures=int(study.max_repeated_failures),
        threads=threads,
        params=params,
        storage_url=storage_url(cfg.storage),
        task=dataset.task,
        monitor=monitor,
        mode=mode,
    )


def validate_sweep_config(cfg: DictConfig) -> None:
    """The sweep config's keys and values (not its search space, data or storage): for
    every command that reads one, so that none takes a value another would refuse."""
    config_mod.check_top_level(cfg, SWEEP_KEYS)
    _check_study_block(cfg.study)  # first: tracking.experiment is the study's name
    config_mod.validate_run_config(cfg)


def _check_study_block(study: DictConfig) -> None:
    known = {
        "name",
        "metrics",
        "n_trials",
        "timeout",
        "seed",
        "n_workers",
        "threads",
        "max_repeated_failures",
    }
    for key in study:
        if key not in known:
            raise ConfigError(f"study.{key}: unknown key; known keys: {', '.join(sorted(known))}")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(study.name)):
        raise ConfigError(f"study.name={study.name!r}: use letters, digits, '_', '-', '.'")
    config_mod.INT1.check("study.n_trials", study.n_trials)
    config_mod.INT0.check("study.seed", study.seed)
    config_mod.INT1.check("study.max_repeated_failures", study.max_repeated_failures)
    if study.timeout is not None:
        config_mod.Rule("float", low=0, low_open=True).check("study.timeout", study.timeout)
    for key in ("n_workers", "threads"):
        if (value := study.get(key, "auto")) != "auto":
            try:
                config_mod.INT1.check(f"study.{key}", value)
            except ConfigError as e:
                raise ConfigError(f"{e}, or auto") from None


def resolve_workers(value: Any, accelerator: str = "auto", data_bytes: int = 0) -> int:
    """``auto``: one worker per visible GPU; where trials train on the CPU (no GPU, or
    ``trainer.accelerator=cpu``), one per CPU core this process may use, each on one torch
    thread unless ``study.threads`` says otherwise, as many as the available memory holds
    (each worker holds the data, ``data_bytes``, beside its own ~1 GB); one on Apple's MPS
    (a single device).

    One core per process suits the small models a sweep trains: a model's step spreads
    poorly over threads (measured on 2 cores: two one-thread workers finish 1.85-1.88x the
    trials per minute of one two-thread worker)."""
    from sweep.workers import gpu_ids, usable_cores, workers_memory_allows

    if value != "auto":
        return int(value)
    if accelerator != "cpu":
        if gpus := len(gpu_ids()):
            return gpus
        if accelerator == "mps" or _mps_available():
            return 1
    fits = workers_memory_allows(data_bytes)
    return usable_cores() if fits is None else min(usable_cores(), fits)


def _mps_available() -> bool:
    try:
        import torch

        return bool(torch.backends.mps.is_available())
    except Exception:
        return False


_METRICS_FORM = "give auto, a metric name, or a list like [{name: val/acc, direction: maximize}]"


def _objectives(raw: Any, monitor: str, mode: str, task: str) -> list[tuple[str, str]]:
    if raw == "auto" or raw is None:
        return [(monitor, "maximize" if mode == "max" else "minimize")]
    items = config_mod.to_container(raw)
    if isinstance(items, str | dict):
        items = [items]
    if not isinstance(items, list):
        raise ConfigError(f"study.metrics={items!r}: {_METRICS_FORM}")
    allowed = (*config_mod.VAL_METRICS[task], *OBJECTIVE_EXTRAS)
    metrics = []
    for item in items:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ConfigError(f"study.metrics: {item!r} is not a metric; {_METRICS_FORM}")
        unknown = sorted(set(item) - {"name", "direction"})
        if unknown:
            raise ConfigError(
                f"study.metrics: unknown key {unknown[0]!r} in {item}; known keys: direction, name"
            )
        name = item.get("name")
        if name not in allowed:
            raise ConfigError(
                f"study.metrics: unknown metric {name!r} for a {task} task; "
                f"choose from: {', '.join(allowed)}"
            )
        default = "minimize" if name in ("val/loss", "val/mae", *OBJECTIVE_EXTRAS) else "maximize"
        direction = item.get("direction", default)
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"study.metrics: direction of {name} must be maximize or minimize")
        if name in (m for m, _ in metrics):
            raise ConfigError(f"study.metrics: {name} is listed twice")
        metrics.append((name, direction))
    if not metrics:
        raise ConfigError("study.metrics: give at least one metric (or auto)")
    return metrics


def _monitor_the_objective(
    cfg: DictConfig, objective: tuple[str, str], overrides: list[str]
) -> list[str]:
    """A single-objective study monitors its objective in every trial: the best epoch (the
    trial's value), early stopping and the pruner all read the monitored metric, so
    ``study.metrics=val/loss`` with the default monitor (val/acc) would prune on accuracy
    in a loss's direction. Returns the overrides that make the monitor follow, and sets
    them on ``cfg``; a ConfigError where the user set another monitor or mode."""
    name, direction = objective
    mode = "max" if direction == "maximize" else "min"
    if not name.startswith("val/"):
        raise ConfigError(
            f"study.metrics={name}: alone it would ignore the model's quality; list it "
            f"beside a val/* metric (a multi-objective study)"
        )
    extra = []
    for key, wanted in (("monitor", name), ("mode", mode)):
        given = cfg.trainer[key]
        if given not in ("auto", wanted):
            raise ConfigError(
                f"study.metrics={name} ({direction}): trainer.{key}={given} disagrees; each "
                f"trial monitors the objective (best epoch, early stopping, pruning): set "
                f"trainer.{key}={wanted}, or leave it auto"
            )
        cfg.trainer[key] = wanted
        extra.append(f"trainer.{key}={wanted}")
    return config_mod.merge_overrides(overrides, extra)


# -- the study and its parent MLflow run ----------------------------------------------------
def open_study(spec: StudySpec, create: bool = True):
    """Create the study (once, before any worker starts: optuna #1092) or load it.

    ``create=False`` is a worker joining the study: other workers sample beside it, so its
    sampler gets a seed of its own (:func:`worker_seed`) and TPE's constant liar.
    """
    import optuna

    from sweep.optuna_parts import build_pruner, build_sampler, build_storage, missing_storage_file

    missing = missing_storage_file(spec.storage_url)
    no_file = missing is not None
    if no_file and not create:  # joining makes none
        raise ConfigError(f"study.name={spec.name}: no such study (no storage at {missing})")
    if no_file:
        check_experiment_is_free(spec)  # a new study: refused before its file exists
    storage_cfg = spec.cfg.storage
    storage = build_storage(
        spec.storage_url, storage_cfg.get("heartbeat_interval"), storage_cfg.get("grace_period")
    )
    seed, n_workers = (spec.seed, spec.n_workers) if create else (worker_seed(spec.seed), 2)
    sampler = build_sampler(spec.cfg.sampler, spec.params, seed, n_workers, len(spec.metrics))
    pruner = build_pruner(spec.cfg.pruner, int(spec.cfg.trainer.max_epochs), len(spec.metrics))
    # Optuna logs every failed trial with a traceback; our progress line and the trial's
    # MLflow run carry the one-line reason instead.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if not create:
        try:
            study = optuna.load_study(
                study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            raise ConfigError(
                f"study.name={spec.name}: no such study in {storage_label(spec.storage_url)}"
            ) from None
        check_identity(study, spec, record=False)
        return study
    if not no_file and spec.name not in optuna.get_all_study_names(storage):
        check_experiment_is_free(spec)  # a new study: refused before it exists
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=spec.name,
        directions=spec.directions,
        load_if_exists=True,
    )
    check_identity(study, spec, record=True)  # first: other data changes the metrics too
    existing = [d.name.lower() for d in study.directions]
    if existing != spec.directions:
        raise ConfigError(
            f"study.metrics: study '{spec.name}' exists with directions "
            f"{existing}, not {spec.directions}; use another study.name"
        )
    return study


def storage_label(url: str) -> str:
    """A storage as the parent run's ``sweep.storage`` tag records it: the password hidden,
    a file by its absolute path (a relative ``sqlite:///x.db`` depends on the directory)."""
    from sweep.optuna_parts import storage_file
    from sweep.tracking import redact

    path = storage_file(url)
    if path is None:
        return redact(url)
    scheme, absolute = url.partition(":")[0], str(path.resolve())
    # journal:///p names /p; sqlite:////p does (SQLAlchemy's rule): see storage_file.
    return f"{scheme}:///{absolute.lstrip('/') if scheme == 'journal' else absolute}"


def check_experiment_is_free(spec: StudySpec) -> None:
    """Before a new study is created: the MLflow experiment named after it must not hold a
    study of the same name that lives on in another Optuna storage. The two would share one
    experiment and one registered model: `sweep check` of either would list the other's
    runs, and the champion alias would go to whichever finished last. A study that is gone
    (its storage file deleted, or the study deleted from it), or whose parent run was
    deleted in MLflow, leaves the name free."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`sweep.role` = 'study'",
        max_results=100,
    )
    mine = storage_label(spec.storage_url)
    for run in parents:
        theirs = run.data.tags.get(STORAGE_TAG)
        if theirs is None or theirs == mine:
            continue  # recorded before this tag existed, or this storage, where it is gone
        if _study_lives_in(theirs, spec.name, run.data.tags.get("host")):
            raise ConfigError(
                f"study.name={spec.name}: MLflow experiment '{spec.name}' holds study "
                f"'{spec.name}' of another Optuna storage ({theirs}); use another "
                f"study.name, or delete that study's parent run ({run.info.run_id}) in MLflow"
            )


def _study_lives_in(label: str, name: str, host: str | None) -> bool:
    """Whether the storage ``label`` (a ``sweep.storage`` tag) may still hold study
    ``name``: looked up when it is a file on this machine; a database, or a file on
    another machine, is taken to hold it (its credentials and disks are not ours)."""
    import optuna

    from sweep.optuna_parts import build_storage, storage_file

    path = storage_file(label)
    if path is None or host != platform.node():
        return True
    if not path.is_file():
        return False
    try:
        return name in optuna.get_all_study_names(build_storage(label))
    except Exception:
        return True  # unreadable now (locked, or another version): do not guess it gone


IDENTITY_ATTR = "sweep.identity"
TARGET_ATTR = "sweep.n_trials"  # the study's target, set by its `sweep tune`
STARTED_ATTR = "sweep.started"  # when its latest `sweep tune` started (local ISO time)
# Data keys that change how a study trains, not which rows it trains, validates and tests on.
_DATA_SETTINGS = {"batch_size", "loader"}


def study_identity(spec: StudySpec) -> dict[str, str]:
    """What a study's values mean: the data keys that decide its rows (the data set, the
    file's contents, target, split) and its objectives. Trials of other data or objectives
    cannot be ranked with its own; anything else (space, sampler, epochs) may change."""
    searched = {p.key for p in spec.params}
    identity = {}
    for key, value in config_mod.flatten(spec.cfg.data).items():
        if key in _DATA_SETTINGS or f"data.{key}" in searched:
            continue
        if key == "path" and value:
            value = _file_fingerprint(Path(str(value)).expanduser())  # the same file anywhere
        elif key == "task":
            value = spec.task  # auto resolved: auto and classification can be the same
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = f"{float(value):.12g}"  # data.noise=0 is 0.0
        identity[f"data.{key}"] = str(value)
    identity["study.metrics"] = ",".join(name for name, _ in spec.metrics)
    return identity


def _file_fingerprint(path: Path) -> str:
    """``sha256:<16 hex>``: a file by its contents, whatever its name or folder."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def check_identity(study, spec: StudySpec, record: bool) -> None:
    """Refuse to resume or join a study with another data set or objective; a study that
    has no identity yet gets this one when ``record``."""
    mine = study_identity(spec)
    recorded = study.user_attrs.get(IDENTITY_ATTR)
    if recorded is None:
        if record:
            study.set_user_attr(IDENTITY_ATTR, mine)
        return
    for key, now in mine.items():  # the data first: a new data set changes the metrics too
        before = recorded.get(key)
        if before is None or before == now:
            continue
        if key == "data.path":
            raise ConfigError(
                f"data.path={spec.cfg.data.path}: other contents ({now}) than the file study "
                f"'{spec.name}' was run on ({before}); use another study.name, or that file"
            )
        raise ConfigError(
            f"{key}={now}: study '{spec.name}' was run with {key}={before}; "
            f"use another study.name, or the same {key}"
        )


def worker_seed(seed: int) -> int:
    """The sampler seed of one worker process of a parallel study.

    Each process samples with its own sampler; seeded alike, they would all propose the
    same points (a seeded RandomSampler, or TPE's random start-up trials, repeat their
    sequence). A parallel study's trial order depends on timing anyway, so each worker
    mixes its host and pid into the study's seed. A single-process study keeps the seed.
    """
    import zlib

    return (seed + zlib.crc32(this_process().encode())) % 2**31


def check_not_run_elsewhere(study, spec: StudySpec) -> None:
    """Refuse to run a study that a live ``sweep tune`` on this host is running: both
    would pick a champion at the end, and the second would reset the first's trial
    target. More processes join a study with ``sweep worker``. A coordinator on another
    host cannot be checked (nor one whose parent run has ended)."""
    from mlflow.tracking import MlflowClient

    from sweep.workers import worker_gone

    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not run_id:
        return
    try:
        run = MlflowClient().get_run(run_id)
    except Exception:
        return  # gone from the store: ensure_parent_run makes a new one
    coordinator = run.data.tags.get(COORDINATOR_TAG)
    if run.info.status != "RUNNING" or coordinator == this_process():
        return
    if worker_gone(coordinator) is False:
        raise ConfigError(
            f"study.name={spec.name}: already running in `sweep tune` {coordinator} (parent "
            f"run {run_id}); add processes with `sweep worker`, or wait until it ends"
        )


def ensure_parent_run(study, spec: StudySpec) -> str:
    """The study's parent MLflow run: reused on resume, created once otherwise."""
    from mlflow.tracking import MlflowClient

    from sweep import tracking

    client = MlflowClient()
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        reopened = None
        with contextlib.suppress(Exception):  # gone from the store: a new one below
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            reopened = run
        if reopened is not None:
            with _ended_on_error(run_id):
                _record_resumed_settings(reopened, spec)
            return run_id
    experiment_id = tracking.ensure_experiment(spec.name)
    run = client.create_run(
        experiment_id,
        run_name=f"study-{spec.name}",
        tags={
            **tracking.run_context_tags(),
            "sweep.role": "study",
            "study.name": spec.name,
            COORDINATOR_TAG: this_process(),
            STORAGE_TAG: storage_label(spec.storage_url),
        },
    )
    with _ended_on_error(run.info.run_id):
        study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        _log_study_settings(client, run.info.run_id, spec)
    return run.info.run_id


@contextlib.contextmanager
def _ended_on_error(run_id: str) -> Iterator[None]:
    """A parent run just created or reopened is not left RUNNING when what follows fails
    (a store error, Ctrl-C) before the study's own try/finally ends it."""
    from sweep import tracking

    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        with contextlib.suppress(Exception):  # the store itself may be what failed
            tracking.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
        raise


def _log_study_settings(client, run_id: str, spec: StudySpec) -> None:
    from sweep.tracking import Recorder

    with Recorder(run_id) as recorder:
        recorder.params(_study_settings(spec))
        recorder.text(OmegaConf.to_yaml(spec.cfg.search), "search_space.yaml")
        recorder.text(OmegaConf.to_yaml(config_mod.run_part(spec.cfg)), "base_config.yaml")


def _record_resumed_settings(run, spec: StudySpec) -> None:
    """A resumed study's parent run keeps the params of its first invocation (MLflow
    params cannot change). The settings this invocation changes or adds
    (``study.n_trials=40`` to run 20 more, another pruner, ...) become ``resumed.<key>``
    tags with the value now in force, and ``study.invocations`` counts the invocations."""
    from sweep.tracking import Recorder, as_params

    logged = dict(run.data.params)
    if "storage" in logged:  # as this version writes it (older ones: journal:////abs)
        logged["storage"] = _same_storage_as(logged["storage"], spec.storage_url)
    changed = {k: v for k, v in as_params(_study_settings(spec)).items() if logged.get(k) != v}
    invocations = int(run.data.tags.get("study.invocations", "1")) + 1
    with Recorder(run.info.run_id) as recorder:
        if "search_space" in changed:  # the space in force from now on, beside the first
            recorder.text(OmegaConf.to_yaml(spec.cfg.search), f"search_space.{invocations}.yaml")
        recorder.tags(
            {
                "study.invocations": invocations,
                COORDINATOR_TAG: this_process(),
                # Where the study is now (the parent runs of older studies lack it).
                STORAGE_TAG: storage_label(spec.storage_url),
                **{f"resumed.{k}": v for k, v in changed.items()},
            }
        )


def _same_storage_as(logged: str, url: str) -> str:
    """``url`` redacted when ``logged`` names the same storage, else ``logged``."""
    from sweep.tracking import redact

    return redact(url) if storage_label(logged) == storage_label(url) else logged


def _study_settings(spec: StudySpec) -> dict[str, Any]:
    from sweep.tracking import redact

    experiment = config_mod.chosen_option(spec.overrides, "experiment")
    return {
        **({"experiment": experiment} if experiment else {}),
        "study.name": spec.name,
        "study.n_trials": spec.n_trials,
        "study.seed": spec.seed,
        "study.timeout": spec.timeout,
        "study.n_workers": spec.n_workers,
        "study.threads": spec.threads,
        "study.metrics": ",".join(f"{m}:{d}" for m, d in spec.metrics),
        "storage": redact(spec.storage_url),
        "search_space": _digest(OmegaConf.to_yaml(spec.cfg.search)),
        **{f"sampler.{k}": v for k, v in config_mod.flatten(spec.cfg.sampler).items()},
        **{f"pruner.{k}": v for k, v in config_mod.flatten(spec.cfg.pruner).items()},
        **{f"base.{k}": v for k, v in config_mod.flatten(config_mod.run_part(spec.cfg)).items()},
    }


def _digest(text: str) -> str:
    """12 hex digits that change with ``text``: a param that says whether two invocations
    searched the same space (the space itself is the run's ``search_space.yaml``)."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- one trial --------------------------------------------------------------------------------
class Objective:
    """Callable for ``study.optimize``: one trial = one tracked training run."""

    def __init__(self, spec: StudySpec, parent_run_id: str, on_trial_start=None):
        self.spec = spec
        self.parent_run_id = parent_run_id
        # Called once the trial is RUNNING with its point in the storage (may be called
        # again): other workers then sample knowing it, which TPE's constant liar and the
        # grid of a conditional space (BruteForceSampler) need to propose another point.
        self.on_trial_start = on_trial_start or (lambda: None)
        self.sampler_name = str(spec.cfg.sampler.name)
        # Signals that came while a finished trial's result was being recorded: the trial
        # is kept, the study stops after it, and optimize() then raises KeyboardInterrupt.
        self.interrupted: list[int] = []
        # The failure of a trial that found the study unable to go on (the tracking store
        # gone, a full disk): the study stops after it; optimize() then raises its error.
        self.stopped_by: BaseException | None = None

    def __call__(self, trial) -> float | list[float]:
        import optuna

        from sweep import tracking

        trial.set_user_attr("worker", this_process())
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            error = _one_line(exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                tracking.release_interrupted(exc)
                error = f"interrupted ({error})"
            elif (lost := tracking.store_lost(exc) or disk_full(exc)) is not None:
                error = lost
                self._stop_for(trial, exc)
            trial.set_user_attr("error", error)
            with tracking.closing_write():
                if "mlflow_run_id" not in trial.user_attrs:
                    self._record_early_failure(trial)  # failed before its run existed
                _tag_run(trial, "FAIL", {"trial.error": error})
            raise
        finally:
            self.on_trial_start()  # when sampling failed

    def _stop_for(self, trial, failure: BaseException) -> None:
        """Stop the study after this trial, whose point is enqueued to run again first when
        the study resumes: without the tracking store or disk space no trial can be
        recorded, and each would fail the same way (after minutes of MLflow's retries, for
        a store). optimize() then raises the error of ``failure``."""
        from sweep.workers import retry_trial

        self.stopped_by = failure
        trial.study.stop()
        with contextlib.suppress(Exception):  # a full disk may hold the storage too: then
            retry_trial(trial.study, trial, _one_line(failure))  # the resume retries it

    def _record_early_failure(self, trial) -> None:
        """A FAILED child run for a trial that failed before training started, so that
        every trial has its run."""
        from sweep.workers import record_failed_run

        error = trial.user_attrs.get("error", "")
        tags = {"sampler": self.sampler_name}
        record_failed_run(trial.study, trial._trial_id, trial.number, error, tags)

    def _run(self, trial) -> float | list[float]:
        import optuna

        from sweep.pruning import OptunaPruning
        from sweep.tracking import deferred_signals
        from sweep.train import run

        sampled = suggest(trial, self.spec.params, self.spec.cfg)
        self.on_trial_start()
        overrides = config_mod.merge_overrides(
            self.spec.overrides, to_overrides(self.spec.params, sampled)
        )
        cfg = trial_config(self.spec, sampled)
        config_mod.validate_run_config(cfg)
        run_cfg = config_mod.run_part(cfg)
        pruning = (
            None
            if self.spec.multi_objective
            else OptunaPruning(trial, self.spec.monitor, self.spec.mode)
        )
        tags = {
            "sweep.role": "trial",
            "study.name": self.spec.name,
            "trial.number": trial.number,
            "sampler": self.sampler_name,
            "pruner": str(cfg.pruner.name),
            **{f"param.{k}": v for k, v in sampled.items()},
        }
        retry_of = _retried_trial_number(trial)
        if retry_of is not None:
            tags["trial.retry_of"] = retry_of
        result = run(
            run_cfg,
            parent_run_id=self.parent_run_id,
            experiment=self.spec.name,
            run_name=f"trial-{trial.number:04d}",
            tags=tags,
            callbacks=[pruning] if pruning else [],
            overrides=overrides,
            load_first=False,
            on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
            result_tags=_state_tags,  # with the run's last batch: no store call of its own
        )
        # The training is done: a Ctrl-C from here on must not throw its result away.
        with deferred_signals(self.interrupted):
            for name, value in {**result.val, **result.test}.items():
                trial.set_user_attr(name, value)
            trial.set_user_attr("model/params", result.num_params)
            trial.set_user_attr("best_epoch", result.best_epoch)
            if result.pruned_epoch is not None:
                trial.set_user_attr("pruned_epoch", result.pruned_epoch)
        if self.interrupted:
            trial.study.stop()  # after this trial; optimize() raises KeyboardInterrupt
        if result.pruned_epoch is not None:
            raise optuna.TrialPruned(f"pruned at epoch {result.pruned_epoch}")
        values = [result.metric(name) for name, _ in self.spec.metrics]
        return values[0] if len(values) == 1 else values


def trial_config(spec: StudySpec, sampled: dict[str, Any]) -> DictConfig:
    """The sweep config of one sampled point: what composing the study's overrides plus the
    point's overrides gives, with Hydra composing only the group choices (see
    :func:`sweep.config.compose_with_values`). The study's own plain values
    (``study.n_trials=40``) are set on top too, so resuming a study in the same process
    with another value reuses the cached composition (Hydra: ~0.2 s a trial)."""
    groups = {p.key for p in spec.params if p.is_group}
    chosen = {k: v for k, v in sampled.items() if k in groups}
    values = {k: v for k, v in sampled.items() if k not in groups}
    overrides = config_mod.merge_overrides(spec.overrides, to_overrides(spec.params, chosen))
    hydra_part, plain = config_mod.split_value_overrides(overrides)
    return config_mod.compose_with_values("sweep", hydra_part, {**plain, **values})


def _retried_trial_number(trial) -> int | None:
    """The trial this one retries (a heartbeat-stale or killed trial), if any."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    frozen = trial.study._storage.get_trial(trial._trial_id)
    retry_of = frozen.user_attrs.get("retry_of")  # a local dead or interrupted trial
    if retry_of is not None:
        return retry_of
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)  # a heartbeat retry


def _one_line(exc: BaseException) -> str:
    from sweep.tracking import one_line

    return one_line(exc)


def _state_tags(result) -> dict[str, Any]:
    """The MLflow tags of a trial whose training finished: COMPLETE, or PRUNED at an
    epoch. A trial that fails is tagged FAIL by :func:`_tag_run` instead."""
    if result.pruned_epoch is not None:
        return {"trial.state": "PRUNED", "trial.pruned_epoch": result.pruned_epoch}
    return {"trial.state": "COMPLETE"}


def _tag_run(trial, state: str, extra: dict[str, Any]) -> None:
    from sweep.tracking import Recorder

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        with Recorder(run_id) as recorder:  # one store call for all the tags
            recorder.tags({"trial.state": state, **extra})


# -- callbacks after each trial ----------------------------------------------------------------
class StopOnRepeatedFailure:
    """Stops the study when its trials keep failing with the same error.

    Before any trial has finished since this callback was made, ``limit`` failures in a
    row with the same error (numbers aside) stop it: the setup is broken, not one point.
    Once a trial has finished, the space is known to hold points that work, and an error
    that belongs to part of the space (a learning rate that diverges at the top of its
    range) can come up several times in a row by chance; then it takes
    ``AFTER_SUCCESS x limit`` in a row.

    "In a row" is over the study's trials in the order they ended, whichever worker ran
    them, since its latest ``sweep tune`` started (``STARTED_ATTR``; else since this
    callback was made): with N workers, ``limit`` failures stop each worker at its next
    failure rather than after ``limit`` of its own (N x ``limit`` in all). The trials are
    read only when one fails.
    """

    AFTER_SUCCESS = 3

    def __init__(self, limit: int):
        self.limit = limit
        self.made = datetime.datetime.now()
        self.message: str | None = None

    def __call__(self, study, trial) -> None:
        if trial.state.name != "FAIL":
            return
        started = study.user_attrs.get(STARTED_ATTR)
        since = datetime.datetime.fromisoformat(started) if started else self.made
        ended = sorted(
            (t for t in study.get_trials(deepcopy=False) if _ended_since(t, since)),
            key=lambda t: (t.datetime_complete, t.number),
        )
        finished_one = any(t.state.name in FINISHED_STATES for t in ended)
        streak = 0
        for earlier in reversed(ended):
            if earlier.state.name != "FAIL" or _normalised_error(earlier) != _normalised_error(
                trial
            ):
                break
            streak += 1
        needed = self.limit * (self.AFTER_SUCCESS if finished_one else 1)
        if streak >= needed:
            self.message = (
                f"study '{study.study_name}' stopped: {streak} trials in a row failed with: "
                f"{_trial_error(trial)}"
            )
            study.stop()


def _trial_error(trial) -> str:
    return trial.user_attrs.get("error") or trial.system_attrs.get("fail_reason", "unknown")


def _normalised_error(trial) -> str:
    """The trial's error with its numbers (an epoch, a value) left out."""
    return re.sub(r"[-+]?\d[\d.e+-]*|nan|inf", "#", _trial_error(trial))


def _ended_since(trial, since: datetime.datetime) -> bool:
    return trial.datetime_complete is not None and trial.datetime_complete >= since


def count_finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


class ParentRunLogger:
    """Logs the best value so far to the parent run (step = trial number)."""

    def __init__(self, parent_run_id: str, multi_objective: bool):
        self.parent_run_id = parent_run_id
        self.multi_objective = multi_objective

    def __call__(self, study, trial) -> None:
        from mlflow.tracking import MlflowClient

        from sweep.tracking import store_lost

        if store_lost() is not None:
            return  # the study stops after this trial (Objective._stop_for_lost_store)
        client = MlflowClient()
        try:
            if self.multi_objective:
                client.log_metric(
                    self.parent_run_id, "pareto_size", len(study.best_trials), step=trial.number
                )
                return
            with contextlib.suppress(ValueError):  # no completed trial yet
                best = study.best_value
                client.log_metric(self.parent_run_id, "best_value", best, step=trial.number)
        except Exception as exc:
            if store_lost(exc) is None:
                raise
            study.stop()  # optimize() then raises TrackingLost


# -- running trials ------------------------------------------------------------------------------
def optimize(study, spec: StudySpec, parent_run_id: str, progress=None) -> StopOnRepeatedFailure:
    """Run trials in this process until the study has ``n_trials`` finished trials (all
    workers together), is stopped, or times out."""
    import torch

    from sweep.budget import TrialBudget, make_lock
    from sweep.tracking import store_lost

    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    budget = TrialBudget(spec.n_trials, make_lock(spec.storage_url, spec.name))
    failures = StopOnRepeatedFailure(spec.max_repeated_failures)
    callbacks = [failures, ParentRunLogger(parent_run_id, spec.multi_objective)]
    if progress is not None:
        callbacks.append(progress)
    callbacks.append(budget)  # last: it holds the start-a-trial lock until the next ask()
    objective = Objective(spec, parent_run_id, on_trial_start=budget.release)
    warm_up(spec)
    try:
        if budget.claim(study):
            study.optimize(
                objective,
                timeout=spec.timeout,
                catch=(Exception,),
                callbacks=callbacks,
                gc_after_trial=False,
            )
        if objective.interrupted:  # its trial was recorded whole: now the interruption
            raise KeyboardInterrupt(f"signal {objective.interrupted[0]}")
        stopped = objective.stopped_by
        if stopped is not None and (error := stopped_study_error(study, spec, stopped)):
            raise error
        if store_lost() is not None:  # found by ParentRunLogger, between trials
            raise lost_store_error(study, spec)
    except Exception as exc:
        if (lost := stopped_study_error(study, spec, exc)) is None:
            raise
        raise lost from exc
    finally:
        budget.release()
        torch.set_num_threads(threads)  # the champion's re-runs have this process's cores
    return failures


def stopped_study_error(study, spec: StudySpec, failure: BaseException) -> SweepError | None:
    """The one-line error for ``failure`` when the study had to stop for what it needs
    from outside: a full disk (DiskFull), a tracking store that stopped answering
    (TrackingLost) or the Optuna storage's database (StorageLost). A trial in progress may
    be left RUNNING in the storage then, until the study resumes:
    :func:`sweep.workers.recover` fails it and retries its point. Else None."""
    from sweep import tracking
    from sweep.optuna_parts import storage_lost

    if isinstance(failure, SweepError) or not isinstance(failure, Exception):
        return None
    if (full := disk_full(failure)) is not None:
        return DiskFull(
            f"{full}; study '{spec.name}' stopped: its finished trials are kept, and the "
            "same command, once there is space, resumes it, first with the trials cut short"
        )
    if tracking.store_lost(failure) is not None:
        return lost_store_error(study, spec)
    lost = storage_lost(spec.storage_url)
    if lost is None:
        return None
    return StorageLost(
        f"{lost}; study '{spec.name}' stopped: its finished trials are kept there, and the "
        "same command with the database back resumes it, first with the trials cut short"
    )


def lost_store_error(study, spec: StudySpec) -> TrackingLost:
    """The one-line error of a study stopped because its tracking store stopped answering."""
    from sweep.tracking import store_lost

    return TrackingLost(
        f"{store_lost()}; study '{spec.name}' stopped: its {count_finished(study)} finished "
        "trials are kept, and the same command with the store back resumes it, first with "
        "the points of the trials cut short"
    )


def warm_up(spec: StudySpec) -> None:
    """Import what every trial uses (Lightning ~1.6 s, MLflow's model flavour ~0.4 s) before
    the first trial starts, so that its recorded duration is its own, not the process's."""
    import importlib

    importlib.import_module("sweep.pruning")  # Lightning
    if spec.cfg.tracking.log_model:
        importlib.import_module("sweep.packaging")


def tune(overrides: list[str], progress: bool = True) -> dict[str, Any]:
    """``sweep tune``: create or resume the study, run it, pick the champion, summarise."""
    from sweep import tracking
    from sweep.workers import close_dead_reruns, recover, release_workers, start_local_workers

    spec = prepare(overrides)
    # The other workers start now and import while this process opens the study and its
    # parent run (a worker needs ~5 s before its first trial; this needs 1-3 s).
    waiting = start_local_workers(spec, wait=True) if spec.n_workers > 1 else []
    try:
        tracking.setup(spec.cfg.tracking.uri, check_store=True)
        study = open_study(spec)
        check_not_run_elsewhere(study, spec)  # before this command changes anything
        study.set_user_attr(TARGET_ATTR, spec.n_trials)  # what joining workers aim for
        # Where every worker's StopOnRepeatedFailure starts counting.
        study.set_user_attr(STARTED_ATTR, datetime.datetime.now().isoformat())
        parent_run_id = ensure_parent_run(study, spec)
    except BaseException:
        release_workers(waiting, go=False)
        raise
    status = "FAILED"
    try:
        enqueue_base_point(study, spec)
        recover(study)  # trials and runs a killed earlier invocation left behind
        close_dead_reruns(parent_run_id)
        bar = _ProgressBar(spec, study) if progress else None
        with bar or contextlib.nullcontext():
            if spec.n_workers > 1:
                _run_worker_rounds(study, spec, parent_run_id, bar, waiting)
            else:
                failures = optimize(study, spec, parent_run_id, bar)
                if failures.message:
                    raise StudyAborted(failures.message)
        summary = finish(study, spec, parent_run_id)
        status = "FINISHED"
        return summary
    except Exception as exc:
        if (lost := stopped_study_error(study, spec, exc)) is None:
            raise
        raise lost from exc  # e.g. while picking the champion
    except (KeyboardInterrupt, SystemExit) as exc:
        status = "KILLED"
        from sweep.workers import retry_interrupted

        tracking.release_interrupted(exc)
        retry_interrupted(study)  # its point is tried again when the command is rerun
        raise
    finally:
        release_workers(waiting, go=False)  # those still waiting, if it failed before
        with tracking.closing_write():
            tracking.set_terminated(parent_run_id, status)
        tracking.checkpoint_stores()  # mlflow.db alone holds the whole study


def enqueue_base_point(study, spec: StudySpec) -> None:
    """The first trials of a new study: the base config (its values inside the space),
    then each other option of a searched group at its defaults (see
    :func:`sweep.space.base_points`), together at most a quarter of ``study.n_trials``.

    Not for the grid sampler: it walks its own points, and refuses a trial whose point
    is not fully given (a base value outside the space).
    """
    if study.trials or spec.cfg.sampler.name == "grid":
        return
    limit = max(1, int(spec.cfg.study.n_trials) // 4)
    for point in base_points(spec.params, spec.cfg, lambda p: trial_config(spec, p), limit):
        if point:
            study.enqueue_trial(point, skip_if_exists=True)


def _run_worker_rounds(study, spec: StudySpec, parent_run_id: str, bar, waiting: list) -> None:
    """Run this process and the local workers (the ``waiting`` ones) until the study is
    done. Another round, in this process alone, is needed when a killed worker's trial was
    re-enqueued after the others had stopped (its RUNNING trial counted against the budget
    until it was found dead)."""
    from sweep.workers import run_with_local_workers

    failures, codes = run_with_local_workers(study, spec, parent_run_id, bar, procs=waiting)
    for _ in range(3):
        done = count_finished(study) >= spec.n_trials
        if failures.message and not done:
            raise StudyAborted(failures.message)
        if any(code in (130, -2, -15) for code in codes):
            raise KeyboardInterrupt(f"workers exited with {codes}")
        # -9: SIGKILL (or the OOM killer); its trial is failed and retried in the next round.
        if any(code not in (0, -9) for code in codes):
            failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
            reason = failed[-1].user_attrs.get("error", "unknown") if failed else "unknown"
            raise StudyAborted(
                f"study '{spec.name}' stopped: workers exited with {codes}; last failure: {reason}"
            )
        if done or spec.timeout is not None:
            return  # done, or the time budget is spent
        failures, codes = optimize(study, spec, parent_run_id, bar), []


def finish(study, spec: StudySpec, parent_run_id: str) -> dict[str, Any]:
    """Trials table and Pareto front to the parent run, then the champion."""
    from sweep.champion import select_champion
    from sweep.tracking import Recorder

    table = trials_table(study)
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    summary: dict[str, Any] = {
        "study": spec.name,
        "counts": counts,
        "table": table,
        "parent_run_id": parent_run_id,
        "champion": None,
        "direction": spec.directions[0],
        "metrics": list(spec.metrics),
    }
    with Recorder(parent_run_id) as recorder:
        recorder.text(table.to_csv(index=False), "trials.csv")
        recorder.metrics({f"trials/{k.lower()}": v for k, v in counts.items()})
        if spec.multi_objective:
            front = [t.number for t in study.best_trials]
            pareto = table[table["number"].isin(front)]
            recorder.text(pareto.to_csv(index=False), "pareto_front.csv")
            # A tag, not a param: a resumed study's front changes, and params cannot.
            recorder.tags({"pareto_trials": ",".join(map(str, front))})
            summary["pareto"] = pareto
    champion_cfg = spec.cfg.get("champion") or {}
    if int(champion_cfg.get("k", 0)) > 0:
        summary["champion"] = select_champion(study, spec, parent_run_id)
    return summary


def trials_table(study):
    """One row per trial: number, state, values, params, val/test metrics, run id."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        values = t.values or []
        for i, value in enumerate(values):
            row["value" if len(values) == 1 else f"value_{i}"] = value
        row.update({f"params.{k}": v for k, v in t.params.items()})
        row.update({k: v for k, v in t.user_attrs.items() if k != "worker"})
        if t.datetime_start and t.datetime_complete:
            row["duration_s"] = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append(row)
    return _with_integer_columns(pd.DataFrame(rows), rows)


def _with_integer_columns(table, rows: list[dict[str, Any]]):
    """Columns whose values are all ints as pandas' nullable ``Int64``: a conditional param
    (``model.width`` only for MLPs) or an attribute a pruned trial lacks leaves gaps that
    would otherwise turn the whole column into floats (128.0)."""
    kinds: dict[str, set[type]] = {}
    for row in rows:
        for key, value in row.items():
            kinds.setdefault(key, set()).add(type(value))
    for column, types in kinds.items():
        if types - {type(None)} == {int} and table[column].dtype != "int64":
            table[column] = table[column].astype("Int64")
    return table


class _ProgressBar:
    """Trial-level progress: done / n_trials, best so far, pruned and failed counts."""

    def __init__(self, spec: StudySpec, study):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.spec = spec
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        self.task = self.progress.add_task(
            f"study {spec.name}",
            total=spec.n_trials,
            completed=min(count_finished(study), spec.n_trials),
            info="",
        )
        self.started = time.perf_counter()
        self.refresh(study)  # a resumed study shows its best value and counts at once

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, study, trial) -> None:
        if trial.state.name == "FAIL":
            reason = trial.user_attrs.get("error", "unknown error")
            self.progress.console.print(f"trial {trial.number} failed: {reason}")
        self.refresh(study)

    def refresh(self, study) -> None:
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        info = f"pruned {states.count('PRUNED')}  failed {states.count('FAIL')}"
        if not self.spec.multi_objective:
            with contextlib.suppress(ValueError):
                info = f"best {study.best_value:.4f}  " + info
        self.progress.update(
            self.task, completed=min(count_finished(study), self.spec.n_trials), info=info
        )


def tune_command(overrides: list[str]) -> int:
    """CLI entry: run the study and print the top trials and the champion."""
    summary = tune(overrides)
    print_summary(summary)
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    """The end of ``sweep tune``: trial counts, the top trials (the Pareto front of a
    multi-objective study), the champion with its spread, where to look next."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and pipes: no 80-column squeeze
    counts = "  ".join(f"{state.lower()} {n}" for state, n in summary["counts"].items())
    console.print(f"study [bold]{summary['study']}[/bold]: {counts or 'no trials'}")
    view = _top_trials_view(summary)
    if view is not None:
        console.print(view)
    champion = summary.get("champion")
    if champion:
        seeds = f"{champion['seeds']} seed" + ("s" if champion["seeds"] != 1 else "")
        console.print(
            f"champion: trial {champion['trial']}  {champion['monitor']} "
            f"{champion['val_mean']:.4f} ± {champion['val_sd']:.4f} (val, {seeds})  "
            f"{champion['test_metric']} {champion['test_mean']:.4f} ± "
            f"{champion['test_sd']:.4f}  ->  {champion['model_uri']} (v{champion['version']})"
        )
    console.print("open the runs: make ui  ->  http://127.0.0.1:5000")
    console.print(f"dashboard:     make report STUDY={summary['study']}")


def _top_trials_view(summary: dict[str, Any], rows: int = 5):
    """A rich Table: the best finished trials by the (first) objective, COMPLETE before
    PRUNED (a pruned value is from the epoch it stopped at), or the Pareto front."""
    from rich.table import Table

    table = summary["table"]
    if not len(table) or ("value" not in table and "value_0" not in table):
        return None
    metrics = summary.get("metrics") or [("value", summary["direction"])]
    value_cols = ["value"] if "value" in table else [f"value_{i}" for i in range(len(metrics))]
    ascending = summary["direction"] == "minimize"
    if "pareto" in summary:
        top = summary["pareto"].sort_values(value_cols[0], ascending=ascending)
        title = f"Pareto front ({', '.join(f'{m} {d[:3]}' for m, d in metrics)})"
    else:
        ranked = [
            table[table["state"] == state].sort_values(value_cols[0], ascending=ascending)
            for state in FINISHED_STATES
        ]
        top = _concat_nonempty(ranked).head(rows)
        title = f"top trials (by validation {metrics[0][0]})"
    if not len(top):
        return None
    # The objective's own test score (val/f1 -> test/f1), else the task's headline one.
    own = metrics[0][0].replace("val/", "test/", 1) if metrics[0][0].startswith("val/") else None
    test_col = next((c for c in (own, "test/acc", "test/r2", "test/loss") if c in table), None)
    params = [c for c in table if c.startswith("params.")]
    cols = ["number", "state", *value_cols, *params, *([test_col] if test_col else [])]
    names = {v: m for v, (m, _) in zip(value_cols, metrics, strict=False)}
    view = Table(title=title)
    for col in cols:
        # The key's last part keeps the table narrow: params.optimizer.lr -> lr.
        view.add_column(col.rsplit(".", 1)[-1] if col in params else names.get(col, col))
    for _, row in top.iterrows():
        view.add_row(*[_fmt(row.get(c)) for c in cols])
    return view


def _concat_nonempty(frames: list):
    """``pandas.concat`` of non-empty frames (pandas warns about empty ones)."""
    import pandas as pd

    frames = [f for f in frames if len(f)]
    return pd.concat(frames) if frames else pd.DataFrame()


def _fmt(value: Any) -> str:
    import pandas as pd

    if value is pd.NA or (isinstance(value, float) and value != value):  # not sampled
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # an int column with gaps became float: 128.0 -> 128
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)
