"""Re-train exactly what a logged run trained: ``sweep rerun RUN_ID [overrides]``.

Every run logs its resolved run config as the artifact ``config.yaml`` and the code it ran
as the tags ``git.commit`` / ``git.dirty``. A rerun reads them back, warns when the code
may differ (another commit, uncommitted changes, other library versions), and trains
the same config through :func:`sweep.train.run`, so the new run is recorded like any
other, in the same store and experiment, tagged ``rerun_of=<run_id>``. Training is
seeded, so on CPU the rerun's validation and test metrics equal the source run's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweep.errors import ConfigError, SweepError

#: Config groups a ``group=option`` override may switch (conf/<group>/<option>.yaml).
GROUPS = ("data", "model", "optimizer", "scheduler", "trainer", "tracking")
#: Library versions that change numerics; a difference is worth a warning.
NUMERIC_PACKAGES = ("torch", "lightning")


class RerunError(SweepError):
    """The source run cannot be found or has no usable config; one line."""


@dataclass
class SourceRun:
    """What the source run recorded."""

    run_id: str
    experiment: str
    config: DictConfig
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    name: str | None = None


@dataclass
class Rerun:
    """The new run and how its metrics compare with the source run's."""

    source: SourceRun
    result: Any  # sweep.train.RunResult
    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    @property
    def compared(self) -> list[tuple[str, float | None, float | None]]:
        """(metric, source value, rerun value) for every non-timing metric of either run."""
        names = sorted(n for n in {*self.source.metrics, *self.metrics} if not is_timing_metric(n))
        return [(n, self.source.metrics.get(n), self.metrics.get(n)) for n in names]

    @property
    def differences(self) -> list[str]:
        """Names of metrics whose values are not identical (NaN equals NaN)."""
        return [n for n, a, b in self.compared if not _same(a, b)]


def is_timing_metric(name: str) -> bool:
    """Wall-clock metrics (time/fit, time/epoch) legitimately differ between runs."""
    return name.startswith("time/")


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


# --------------------------------------------------------------------------- source run


def load_source(run_id: str, tracking_uri: str) -> SourceRun:
    """The source run's config, params, tags and final metrics from the tracking store."""
    import os

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from sweep.deploy import require_store
    from sweep.tracking import redact

    try:
        require_store(tracking_uri)
    except SweepError as exc:
        raise RerunError(f"run {run_id}: {exc}") from None
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RerunError(
            f"run {run_id!r} not found in the tracking store {redact(tracking_uri)} "
            f"(set MLFLOW_TRACKING_URI to the store that holds it)"
        ) from None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    except (MlflowException, OSError):
        raise RerunError(
            f"run {run_id} has no config.yaml artifact: not a training run "
            f"(a study's parent run?) or its artifacts are gone"
        ) from None
    try:
        config = OmegaConf.create(text)
    except Exception as exc:  # YAML or OmegaConf syntax
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RerunError(f"run {run_id}: config.yaml cannot be read: {first}") from None
    if not isinstance(config, DictConfig):
        raise RerunError(f"run {run_id}: config.yaml is not a mapping")
    missing = [key for key in GROUPS if not isinstance(config.get(key), DictConfig)]
    if missing:
        raise RerunError(f"run {run_id}: config.yaml has no '{missing[0]}' section")
    experiment = client.get_experiment(run.info.experiment_id)
    return SourceRun(
        run_id=run_id,
        experiment=experiment.name,
        config=config,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        name=run.info.run_name,
    )


def code_warnings(source_tags: dict[str, str], current_tags: dict[str, str]) -> list[str]:
    """Why the rerun may not run the same code as the source run did."""
    out: list[str] = []
    source_commit = source_tags.get("git.commit")
    current_commit = current_tags.get("git.commit")
    if not source_commit:
        out.append("the source run records no git commit: cannot check that the code is the same")
    elif current_commit and current_commit != source_commit:
        out.append(
            f"the source run trained at commit {source_commit[:12]}, HEAD is "
            f"{current_commit[:12]}: the code may differ (git checkout {source_commit[:12]})"
        )
    if source_tags.get("git.dirty") == "true":
        out.append("the source run was trained with uncommitted changes; they are not recorded")
    if current_tags.get("git.dirty") == "true":
        out.append("the working tree has uncommitted changes: the code may differ")
    for package in NUMERIC_PACKAGES:
        key = f"version.{package}"
        then, now = source_tags.get(key), current_tags.get(key)
        if then and now and then != now:
            out.append(f"{package} was {then} for the source run, is {now} now: numbers may differ")
    if "trial.pruned_epoch" in source_tags:
        out.append(
            f"the source run was pruned at epoch {source_tags['trial.pruned_epoch']}; the "
            f"rerun trains without pruning, so its metrics will differ"
        )
    return out


# --------------------------------------------------------------------------- config


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Hydra-syntax overrides on a logged config: ``key=value``, ``+key=value``, ``~key``
    and ``group=option`` (the option's defaults from conf/, e.g. ``model=cnn``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from sweep import config as config_mod

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse override: {str(exc).splitlines()[0]}") from None
    groups = [o for o in parsed if o.key_or_group in GROUPS and not o.is_delete()]
    group_ids = {id(o) for o in groups}
    if groups:
        # A group switch takes the option's file as a whole; dotted overrides then apply.
        # Keys of the switched groups go along (data=csv needs data.path to compose).
        switched = tuple(f"{o.key_or_group}." for o in groups)
        inside = [o.input_line for o in parsed if o.key_or_group.startswith(switched)]
        composed = config_mod.compose("train", [*(o.input_line for o in groups), *inside])
        for o in groups:
            cfg[o.key_or_group] = config_mod.to_container(composed[o.key_or_group])
    for o in parsed:
        key = o.key_or_group
        if id(o) in group_ids:
            continue
        if o.is_sweep_override():
            raise ConfigError(f"{o.input_line}: a rerun takes one value per key, not a sweep")
        if o.is_delete():
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            if not isinstance(parent, DictConfig) or leaf not in parent:
                raise ConfigError(f"{key}: cannot delete, not in the logged config")
            del parent[leaf]
            continue
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__" and not o.is_add():
            if key.split(".")[0] not in config_mod.RUN_KEYS:  # study.*, say: not a run's
                known = ", ".join(sorted(config_mod.RUN_KEYS))
                raise ConfigError(f"{key}: unknown key; known keys: {known}")
            raise ConfigError(f"{key}: unknown key (not in the logged config; use +{key}=...)")
        OmegaConf.update(cfg, key, o.value(), merge=False, force_add=True)
    return cfg


def build_config(source: SourceRun, overrides: list[str], tracking_uri: str) -> DictConfig:
    """The source run's config, made runnable here, with ``overrides`` on top; validated.
    A value that cannot be resolved (``${oc.env:UNSET}``, ``${nope}``) is a ConfigError
    naming its key."""
    try:
        return _build_config(source, overrides, tracking_uri)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}: {first}") from None


def _build_config(source: SourceRun, overrides: list[str], tracking_uri: str) -> DictConfig:
    from sweep import config as config_mod

    cfg = apply_overrides(source.config, [])
    keys = {config_mod.override_key(o) for o in overrides}
    # The file the source trained on: its config may hold a path relative to the directory
    # it ran in; the params record the absolute path the loader resolved.
    if cfg.data.get("name") == "csv" and "data.path" not in keys and "data" not in keys:
        logged = source.params.get("data.path")
        if logged and Path(logged).is_absolute() and not Path(str(cfg.data.path)).is_absolute():
            cfg.data.path = logged
    # Same store as the source run (where it was found), unless overridden.
    if "tracking.uri" not in keys and cfg.tracking.get("uri") not in (None, tracking_uri):
        cfg.tracking.uri = tracking_uri
    cfg = apply_overrides(cfg, overrides)
    config_mod.check_top_level(cfg, config_mod.RUN_KEYS)  # +foo=1 is a typo, not a setting
    config_mod.validate_run_config(cfg)
    return cfg


# --------------------------------------------------------------------------- rerun


def rerun(run_id: str, overrides: list[str] | None = None, warn: Any = None) -> Rerun:
    """Re-train the source run's config; the new run is tagged ``rerun_of=<run_id>``.

    ``warn(message)`` receives each reason the code may differ (printed by the CLI).
    """
    from mlflow.tracking import MlflowClient

    from sweep import config as config_mod
    from sweep import tracking
    from sweep.train import run

    overrides = list(overrides or [])
    tracking_uri = tracking.setup(None)
    source = load_source(run_id, tracking_uri)
    cfg = build_config(source, overrides, tracking_uri)  # bad overrides fail before warnings
    warnings = code_warnings(source.tags, tracking.run_context_tags())
    for message in warnings:
        if warn is not None:
            warn(message)
    keys = {config_mod.override_key(o) for o in overrides}
    # The source's experiment: a study's trials log to the study's, not tracking.experiment.
    overridden = "tracking.experiment" in keys or "tracking" in keys
    experiment = None if overridden else source.experiment
    tags = {"rerun_of": run_id, "sweep.role": "rerun"}
    if experiment is not None and not overrides and source.tags.get("study.name"):
        # The same training beside its study's runs: it counts in the study's row of
        # compare.summary(). With overrides it trains something else, outside the study.
        tags["study.name"] = source.tags["study.name"]
    result = run(
        cfg,
        experiment=experiment,
        run_name=f"rerun-{source.name or run_id[:8]}",
        tags=tags,
        overrides=overrides,
    )
    tracking.setup(cfg.tracking.uri)
    metrics = dict(MlflowClient().get_run(result.run_id).data.metrics)
    return Rerun(source=source, result=result, metrics=metrics, warnings=warnings)


def rerun_command(args: list[str]) -> int:
    """``sweep rerun RUN_ID [hydra overrides]``: train again, print the metric comparison."""
    from rich.console import Console
    from rich.table import Table

    if not args or "=" in args[0] or args[0].startswith("-"):
        raise RerunError("usage: sweep rerun RUN_ID [overrides]  (the run id comes first)")
    run_id, overrides = args[0].strip(), list(args[1:])
    err = Console(stderr=True, highlight=False)
    outcome = rerun(
        run_id,
        overrides,
        warn=lambda m: err.print(f"[yellow]warning:[/yellow] {m}", soft_wrap=True),
    )

    table = Table(title=f"sweep rerun {run_id}", show_header=True)
    table.add_column("metric")
    table.add_column("source", justify="right")
    table.add_column("rerun", justify="right")
    table.add_column("same", justify="center")
    for name, before, after in outcome.compared:
        table.add_row(
            name,
            "-" if before is None else f"{before:.6g}",
            "-" if after is None else f"{after:.6g}",
            "yes" if _same(before, after) else "[red]no[/red]",
        )
    console = Console(highlight=False)
    console.print(table)
    differing = outcome.differences
    if not differing:
        console.print("reproduced exactly: every metric is identical (timings excepted)")
    elif overrides:
        console.print(f"{len(differing)} metric(s) differ (overrides given: {' '.join(overrides)})")
    else:
        console.print(f"[red]{len(differing)} metric(s) differ[/red]: {', '.join(differing)}")
    console.print(f"new run id: {outcome.result.run_id}  (rerun_of={run_id})", soft_wrap=True)
    return 0
