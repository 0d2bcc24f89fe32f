"""Compare experiments and studies as pandas DataFrames.

Runs are read through MLflow's public search API (``MlflowClient.search_runs``, paged;
``get_metric_history``), so the same code works on the local sqlite store and on a
tracking server; on a database store (sqlite, PostgreSQL) a search without a filter
reads MLflow's tables directly instead, ten times faster (:mod:`sweep.run_records`).

- :func:`runs`: one row per run, params typed (numbers as numbers, bools as bools),
  every final metric (the latest value of each key).
- :func:`history`: per-epoch curves in long form (run_id, epoch, metric, value).
- :func:`summary`: one row per experiment/study: trials by state, best validation
  score, the champion's validation/test mean ± sd, total compute time.

``sweep compare experiments=[a,b] studies=[...] states=[COMPLETE,PRUNED]`` prints the
summary and runs tables (:func:`compare_command`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sweep.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from sweep.run_records import RunRecord

#: Runs per ``search_runs`` page. MLflow accepts up to 50,000 (checked in 3.17:
#: SEARCH_MAX_RESULTS_THRESHOLD; its default is 1,000). The sqlite store loads a page in
#: one ORM session (~65 objects per run) and looks up the page's inputs/outputs with one
#: ``IN (...)`` list of its run ids, so a page must stay under SQLite's bound-variable
#: limit (32,766 by default since 3.32). 10,000 keeps memory bounded; the page count
#: made no measurable difference to the time for 10,000 runs.
PAGE_SIZE = 10_000

#: Columns every row has, before the params and metrics.
BASE_COLUMNS = (
    "experiment",
    "study",
    "trial",
    "state",
    "role",
    "run_id",
    "run_name",
    "parent_run_id",
    "start",
    "duration_s",
    "monitor",
    "mode",
    "pruned_epoch",
    "error",
)

#: Row order within an experiment: the parent, trials and plain runs, champion re-runs.
ROLE_ORDER = {"study": 0, "trial": 1, "run": 1, "champion_rerun": 2}
#: DataFrame.attrs keys naming the param and metric columns of a runs() frame.
PARAMS_ATTR = "sweep.params"
METRICS_ATTR = "sweep.metrics"

#: Metrics logged once per run (summaries), not per epoch: left out of history() by default.
SUMMARY_PREFIXES = ("best/", "test/", "champion/", "trials/")
SUMMARY_KEYS = frozenset({"time/fit", "best_value", "pareto_size"})

#: Trial states a sweep run can carry in its ``trial.state`` tag (plain runs: run status).
TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL", "CHAMPION_RERUN")
#: What ``states=`` accepts: trial states, and MLflow run statuses for plain runs.
KNOWN_STATES = (*TRIAL_STATES, "FINISHED", "FAILED", "KILLED", "RUNNING")

_INT_RE = r"[+-]?\d+"


# -- connection and experiment lookup -----------------------------------------------------
def _client(tracking_uri: str | None):
    """A client on ``tracking_uri``, else MLFLOW_TRACKING_URI, else MLflow's default."""
    from mlflow.tracking import MlflowClient

    from sweep.tracking import setup

    # setup() also quiets the sqlite store's schema-migration chatter.
    return MlflowClient(tracking_uri=setup(_resolved_uri(tracking_uri)))


def _resolved_uri(tracking_uri: str | None) -> str:
    """The store's URI (see :func:`_client`), checked to exist or answer: reading runs
    must not create an empty sqlite store (nor wait minutes on an absent server)."""
    from sweep.tracking import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    from_env = not tracking_uri and os.environ.get("MLFLOW_TRACKING_URI")
    check_reachable(uri, "MLFLOW_TRACKING_URI" if from_env else "tracking.uri", must_exist=True)
    return uri


def _as_list(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _catalog(client) -> list[tuple[str, str, str]]:
    """(id, name, lifecycle stage) of every experiment, deleted ones too, via the API."""
    from mlflow.entities import ViewType

    found, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
        found += [(e.experiment_id, e.name, e.lifecycle_stage) for e in page]
        token = page.token
        if not token:
            return found


def _experiments(
    catalog: Sequence[tuple[str, str, str]], names: Sequence[str] | None
) -> dict[str, str]:
    """experiment id -> name, for ``names`` (names or ids) or every active experiment.

    As MLflow's ``get_experiment_by_name`` / ``get_experiment`` do, a name (or id) finds
    its experiment even when it is deleted; ``None`` lists the active ones.
    """
    active = {i: name for i, name, stage in catalog if stage == "active"}
    if names is None:
        return active
    by_name = {name: i for i, name, _ in catalog}
    by_id = {i: name for i, name, _ in catalog}
    found = {}
    for name in names:
        if name in by_name:
            found[by_name[name]] = name
        elif name.isdigit() and name in by_id:
            found[name] = by_id[name]
        else:
            known = ", ".join(sorted(active.values())) or "none"
            raise ConfigError(f"experiments: no experiment named {name!r}; known: {known}")
    return found


def _search(client, experiment_ids: list[str], filter_string: str) -> list:
    """Every active run of the experiments that matches the filter, page by page."""
    if not experiment_ids:
        return []
    found: list = []
    token = None
    with _gc_paused():
        while True:
            page = _search_page(client, experiment_ids, filter_string, token)
            found.extend(page)
            token = page.token
            if not token:
                return found


def _search_page(client, experiment_ids: list[str], filter_string: str, token: str | None):
    """One page of ``search_runs``; a filter MLflow cannot parse becomes a ConfigError."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    try:
        return client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=PAGE_SIZE,
            page_token=token,
        )
    except MlflowException as exc:
        if exc.error_code != "INVALID_PARAMETER_VALUE" or not filter_string:
            raise
        message = str(exc.message).strip().splitlines()[0]
        raise ConfigError(f"filter={filter_string!r}: {message}") from None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while MLflow loads a large result.

    The sqlite store builds ~65 ORM objects per run (params, tags, metrics); with the
    collector on, its generational passes rescan all of them again and again, which
    measured 2.5x slower for 10,000 runs. Nothing allocated there forms garbage cycles
    that must be freed before the load ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _and(*clauses: str | None) -> str:
    return " and ".join(f"{c}" for c in clauses if c)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


# -- typing MLflow's string params ---------------------------------------------------------
def typed(values: pd.Series) -> pd.Series:
    """A column of MLflow param strings as numbers / bools where every value is one.

    ``"None"`` (how ``str(None)`` is logged) becomes missing. A column that mixes numbers
    and words stays text: guessing per cell would make the column unusable for sorting.
    """
    import pandas as pd

    s = values.astype(object).where(values.notna() & (values.astype(object) != "None"), None)
    present = s.dropna()
    if present.empty:
        return s
    text = present.astype(str)
    lowered = text.str.lower()
    if lowered.isin(("true", "false")).all():
        flags = s.map(lambda v: None if v is None else str(v).lower() == "true")
        return flags.astype("boolean" if len(present) < len(s) else bool)
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all():
        if text.str.fullmatch(_INT_RE).all():
            ints = pd.to_numeric(s, errors="coerce")
            return ints.astype("Int64" if len(present) < len(s) else "int64")
        return pd.to_numeric(s, errors="coerce").astype(float)
    return s


def _check_states(states: Iterable[str]) -> None:
    """ConfigError naming the first state that no run can have (a typo would match nothing)."""
    for state in states:
        if state.upper() not in KNOWN_STATES:
            raise ConfigError(
                f"states: unknown state {state!r}; choose from: {', '.join(KNOWN_STATES)}"
            )


def _int_or_none(value: str | None) -> int | None:
    if value is None or not re.fullmatch(_INT_RE, value.strip()):
        return None
    return int(value)


# -- runs ------------------------------------------------------------------------------------
def runs(
    experiments: str | Iterable[str] | None = None,
    studies: str | Iterable[str] | None = None,
    states: str | Iterable[str] | None = None,
    filter: str | None = None,
    tracking_uri: str | None = None,
    include_parents: bool = False,
    tags: Iterable[str] = (),
) -> pd.DataFrame:
    """One row per MLflow run: identity, state, timing, typed params, final metrics.

    Args:
        experiments: experiment names (or ids); None = every active experiment.
        studies: study names (tag ``study.name``); plain ``sweep train`` runs have none,
            so giving studies leaves them out.
        states: keep these states only: COMPLETE, PRUNED, FAIL, CHAMPION_RERUN (the
            ``trial.state`` tag) or, for runs without one, the run status (FINISHED,
            FAILED, KILLED, RUNNING).
        filter: an MLflow search filter, e.g. ``"params.model.name = 'cnn'"``.
        tracking_uri: the store; default MLFLOW_TRACKING_URI, else MLflow's default.
        include_parents: also return the studies' parent runs (role ``study``); they hold
            study settings, not a training run, so they are left out by default.
        tags: extra tag keys to return as columns named ``tag.<key>``.

    Raises:
        ConfigError: an unknown experiment, study or state, a filter MLflow cannot parse, or an
            http(s) tracking URI where no server answers.

    Columns: experiment, study, trial (the trial number; the source trial for champion
    re-runs), state, role, run_id, run_name, parent_run_id, start (UTC timestamp),
    duration_s, monitor, mode, pruned_epoch, error, then one column per param (config
    key such as ``model.width``, typed) and per metric (``val/acc``, ``best/acc``,
    ``test/acc``, ``time/fit``, ...: the latest value logged).
    """
    import pandas as pd

    _check_states(_as_list(states) or [])
    uri = _resolved_uri(tracking_uri)
    names, found = _records(uri, _as_list(experiments), _as_list(studies), filter)
    wanted = {s.upper() for s in _as_list(states) or []}
    extra_tags = list(dict.fromkeys(_as_list(tags) or []))
    rows, params, metrics = [], [], []
    for run in found:
        row = _row(run, names)
        if row["role"] == "study" and not include_parents:
            continue
        if wanted and row["state"] not in wanted:
            continue
        row.update({f"tag.{k}": run.tags.get(k) for k in extra_tags})
        rows.append(row)
        params.append(run.params)
        metrics.append(run.metrics)
    return _frame(rows, params, metrics, [f"tag.{k}" for k in extra_tags], pd)


def _records(
    uri: str, experiments: list[str] | None, studies: list[str] | None, filter: str | None
) -> tuple[dict[str, str], list[RunRecord]]:
    """The chosen experiments (id -> name) and their runs to tabulate.

    Read straight from a database store when it can answer exactly (no search filter:
    that is MLflow's grammar) and its tables read; through MLflow's API otherwise.
    """
    from sweep import run_records

    study_names = None if studies is None else list(dict.fromkeys(studies))
    if not filter and run_records.is_database(uri):
        try:
            names = _experiments(run_records.read_experiments(uri), experiments)
            records = run_records.read_database(uri, list(names), study_names)
        except run_records.Unreadable:
            pass  # e.g. a new store without tables yet: MLflow's path creates them
        else:
            _check_studies(lambda: _client(uri), names, experiments, study_names, records)
            return names, records
    client = _client(uri)
    names = _experiments(_catalog(client), experiments)
    if study_names is None:
        found = _search(client, list(names), filter or "")
    else:
        # Tag filters take no IN (...) in MLflow's search grammar: one search per study.
        found = []
        for study in study_names:
            found.extend(_search(client, list(names), _and(filter, _study_clause(study))))
    records = [run_records.from_mlflow(run) for run in found]
    _check_studies(lambda: client, names, experiments, study_names, records, bool(filter))
    return names, records


def _study_clause(study: str) -> str:
    return f"tags.`study.name` = {_quote(study)}"


def _check_studies(
    client: Callable[[], Any],
    names: dict[str, str],
    experiments: list[str] | None,
    studies: list[str] | None,
    records: Sequence[RunRecord],
    filtered: bool = False,
) -> None:
    """ConfigError naming the first study no active run of the experiments carries.

    As for experiments, a typo must not read as "no runs". A study whose runs the states
    or the search filter leave out still exists (``filtered``: asked again without it).
    """
    seen = {r.tags.get("study.name") for r in records}
    missing = [s for s in studies or [] if s not in seen]
    if filtered:
        missing = [s for s in missing if not _has_runs(client(), list(names), s)]
    if not missing:
        return
    known = ", ".join(_known_studies(client(), list(names))) or "none"
    where = "" if experiments is None else f" in experiments {', '.join(sorted(names.values()))}"
    raise ConfigError(f"studies: no study named {missing[0]!r}{where}; known: {known}")


def _has_runs(client, experiment_ids: list[str], study: str) -> bool:
    """Whether any active run of the experiments belongs to ``study``."""
    from mlflow.entities import ViewType

    if not experiment_ids:
        return False
    found = client.search_runs(
        experiment_ids, _study_clause(study), run_view_type=ViewType.ACTIVE_ONLY, max_results=1
    )
    return bool(found)


def _known_studies(client, experiment_ids: list[str]) -> list[str]:
    """The studies of the experiments, from their parent runs (one per study: cheap)."""
    parents = _search(client, experiment_ids, "tags.`sweep.role` = 'study'")
    return sorted({name for r in parents if (name := r.data.tags.get("study.name"))})


def _row(run: RunRecord, names: dict[str, str]) -> dict[str, Any]:
    tags = run.tags
    role = tags.get("sweep.role")
    trial = tags.get("trial.number") or tags.get("champion.source_trial")
    state = tags.get("trial.state") or run.status
    if role == "study":
        state = run.status
    start, end = run.start_time, run.end_time
    return {
        "experiment": names.get(run.experiment_id, run.experiment_id),
        "study": tags.get("study.name"),
        "trial": _int_or_none(trial),
        "state": state,
        "role": role or "run",
        "run_id": run.run_id,
        "run_name": run.run_name,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "start": start,  # ms; converted for all rows at once in _frame
        "duration_s": (end - start) / 1000 if end and start else None,
        "monitor": tags.get("monitor"),
        "mode": tags.get("mode"),
        "pruned_epoch": _int_or_none(tags.get("trial.pruned_epoch")),
        "error": tags.get("trial.error") or tags.get("error"),
    }


def _frame(
    rows: list[dict], params: list[dict], metrics: list[dict], tag_columns: list[str], pd
) -> pd.DataFrame:
    base = pd.DataFrame.from_records(rows, columns=[*BASE_COLUMNS, *tag_columns])
    base["trial"] = base["trial"].astype("Int64")
    base["pruned_epoch"] = base["pruned_epoch"].astype("Int64")
    base["duration_s"] = base["duration_s"].astype(float)
    base["start"] = pd.to_datetime(base["start"].astype("Int64"), unit="ms", utc=True)
    # One frame per kind, built column-wise by pandas from the dicts: far faster than
    # growing rows, and a key missing from a run is simply missing (NaN / NA).
    param_frame = pd.DataFrame.from_records(params) if params else pd.DataFrame()
    metric_frame = pd.DataFrame.from_records(metrics) if metrics else pd.DataFrame()
    param_frame = param_frame.reindex(columns=sorted(param_frame.columns))
    metric_frame = metric_frame.reindex(columns=sorted(metric_frame.columns, key=_metric_order))
    typed_params = {col: typed(param_frame[col]) for col in param_frame.columns}
    taken = {*BASE_COLUMNS, *tag_columns}
    columns: dict[str, pd.Series] = {}
    param_names, metric_names = set(), set()
    for col, values in typed_params.items():
        name = col if col not in taken else f"params.{col}"
        columns[name] = values
        taken.add(name)
        param_names.add(name)
    for col in metric_frame.columns:
        name = col if col not in taken else f"metrics.{col}"
        columns[name] = metric_frame[col].astype(float)
        taken.add(name)
        metric_names.add(name)
    extra = pd.DataFrame(columns, index=base.index) if columns else None
    frame = base if extra is None else pd.concat([base, extra], axis=1)
    # Parent first, then trials (and plain runs) by number, then the champion re-runs.
    frame["_rank"] = frame["role"].map(ROLE_ORDER).fillna(1)
    frame = frame.sort_values(
        ["experiment", "study", "_rank", "trial", "start"], na_position="last", kind="stable"
    )
    frame = frame.drop(columns="_rank").reset_index(drop=True)
    # Which column came from where (a metric may lack a slash, "lr"; a param a dot, "seed").
    frame.attrs[PARAMS_ATTR] = [c for c in frame.columns if c in param_names]
    frame.attrs[METRICS_ATTR] = [c for c in frame.columns if c in metric_names]
    return frame


def _metric_order(key: str) -> tuple[int, str]:
    # val/ and best/ first (what selection reads), test/ after, the rest last.
    for rank, prefix in enumerate(("val/", "best/", "test/", "train/")):
        if key.startswith(prefix):
            return rank, key
    return 9, key


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The param columns of a :func:`runs` frame (``model.width``, ``seed``, ...)."""
    if PARAMS_ATTR in frame.attrs:  # kept by pandas through filtering and head()
        return [c for c in frame.attrs[PARAMS_ATTR] if c in frame.columns]
    return [c for c in _other_columns(frame) if not _looks_like_metric(c)]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a :func:`runs` frame (``val/acc``, ``test/f1``, ``lr``, ...)."""
    if METRICS_ATTR in frame.attrs:
        return [c for c in frame.attrs[METRICS_ATTR] if c in frame.columns]
    return [c for c in _other_columns(frame) if _looks_like_metric(c)]


def _other_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in BASE_COLUMNS and not c.startswith("tag.")]


def _looks_like_metric(column: str) -> bool:
    # Fallback when a frame lost its attrs (e.g. after a merge): sweep's metric names.
    return "/" in column or column in ("lr", *SUMMARY_KEYS)


def varying_params(frame: pd.DataFrame) -> list[str]:
    """Param columns whose value differs between the rows: what the runs compare."""
    out = []
    for col in param_columns(frame):
        values = frame[col].dropna()
        if values.astype(str).nunique() > 1 or (0 < len(values) < len(frame)):
            out.append(col)
    return out


# -- history ---------------------------------------------------------------------------------
def history(
    run_ids: str | Iterable[str],
    metrics: str | Iterable[str] | None = None,
    tracking_uri: str | None = None,
    max_workers: int = 8,
) -> pd.DataFrame:
    """Per-epoch curves of the runs, long form: run_id, epoch, metric, value.

    ``metrics`` None = every metric a run logged per epoch (train/*, val/*, lr,
    time/epoch, ...), i.e. all but the one-off summaries (best/*, test/*, time/fit).
    MLflow's client has no bulk history call, so histories are fetched concurrently
    (one ``get_metric_history`` per run and metric): over HTTP this hides the latency.
    """
    import pandas as pd

    client = _client(tracking_uri)
    ids = list(dict.fromkeys(_as_list(run_ids) or []))
    wanted = _as_list(metrics)

    def keys_of(run_id: str) -> list[tuple[str, str]]:
        if wanted is not None:
            return [(run_id, m) for m in wanted]
        logged = client.get_run(run_id).data.metrics
        return [(run_id, m) for m in sorted(logged) if is_epoch_metric(m)]

    def fetch(pair: tuple[str, str]) -> list[tuple[str, int, str, float]]:
        run_id, key = pair
        return [(run_id, m.step, key, m.value) for m in client.get_metric_history(run_id, key)]

    columns = ["run_id", "epoch", "metric", "value"]
    if not ids:
        return pd.DataFrame(columns=columns)
    workers = max(1, min(max_workers, len(ids)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pairs = [p for found in pool.map(keys_of, ids) for p in found]
        points = [p for found in pool.map(fetch, pairs) for p in found]
    frame = pd.DataFrame(points, columns=columns)
    frame["epoch"] = frame["epoch"].astype("int64")
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["run_id", "metric", "epoch"], kind="stable").reset_index(drop=True)


def is_epoch_metric(key: str) -> bool:
    """True for metrics logged per epoch; False for one-off summaries (best/*, test/*)."""
    return not key.startswith(SUMMARY_PREFIXES) and key not in SUMMARY_KEYS


# -- summary ---------------------------------------------------------------------------------
#: Parent-run tags summary() reads (written by sweep.champion).
CHAMPION_TAGS = ("champion.trial", "champion.model_uri", "champion.version")

SUMMARY_COLUMNS = (
    "experiment",
    "study",
    "runs",
    *[s.lower() for s in TRIAL_STATES],
    "other",
    "monitor",
    "best_val",
    "best_trial",
    "champion_trial",
    "champion_val_mean",
    "champion_val_sd",
    "champion_test_mean",
    "champion_test_sd",
    "champion_model",
    "compute_s",
    "parent_run_id",
)


def summary(
    experiments: str | Iterable[str] | None = None,
    studies: str | Iterable[str] | None = None,
    tracking_uri: str | None = None,
    frame: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per experiment and study: counts by state, best validation score, champion.

    ``best_val`` is the best monitored validation score (``best/<metric>`` of COMPLETE
    trials, or of finished plain runs), by the monitor's direction; the champion columns
    come from the study's parent run (metrics ``champion/*``, tags ``champion.*``);
    ``compute_s`` is the wall time of every training run (trials, re-runs, plain runs).
    ``frame`` reuses a :func:`runs` frame made with ``include_parents=True`` and
    ``tags=CHAMPION_TAGS``.
    """
    import pandas as pd

    if frame is None:
        frame = runs(
            experiments,
            studies,
            tracking_uri=tracking_uri,
            include_parents=True,
            tags=CHAMPION_TAGS,
        )
    out = [
        _summarise(experiment, None if _isna(study) else str(study), group)
        for (experiment, study), group in frame.groupby(
            ["experiment", "study"], dropna=False, sort=True
        )
    ]
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def _summarise(experiment: str, study: str | None, group: pd.DataFrame) -> dict[str, Any]:
    parents = group[group["role"] == "study"]
    work = group[group["role"] != "study"]
    counts = work["state"].value_counts().to_dict()
    row: dict[str, Any] = {
        "experiment": experiment,
        "study": study,
        "runs": len(work),
        **{s.lower(): int(counts.pop(s, 0)) for s in TRIAL_STATES},
        "other": ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "",
        "compute_s": float(work["duration_s"].sum(skipna=True)),
    }
    monitors = work["monitor"].dropna()
    monitor = monitors.mode().iloc[0] if len(monitors) else None
    row["monitor"] = monitor
    modes = work.loc[work["monitor"] == monitor, "mode"].dropna()
    minimize = (modes.mode().iloc[0] == "min") if len(modes) else monitor in ("val/loss", "val/mae")
    scored = work[work["state"].isin(("COMPLETE", "FINISHED")) & (work["role"] != "champion_rerun")]
    column = f"best/{monitor.split('/', 1)[1]}" if monitor else None
    if column and column in scored and scored[column].notna().any():
        values = scored[column].astype(float)
        best_index = values.idxmin() if minimize else values.idxmax()
        row["best_val"] = float(values[best_index])
        trial = scored.loc[best_index, "trial"]
        row["best_trial"] = None if _isna(trial) else int(trial)
    if len(parents):
        parent = parents.sort_values("start").iloc[-1]
        row["parent_run_id"] = parent["run_id"]
        for key in ("val_mean", "val_sd", "test_mean", "test_sd"):
            value = parent.get(f"champion/{key}")
            row[f"champion_{key}"] = None if _isna(value) else float(value)
        row["champion_trial"] = _int_or_none(_text(parent.get("tag.champion.trial")))
        model = _text(parent.get("tag.champion.model_uri"))
        version = _text(parent.get("tag.champion.version"))
        row["champion_model"] = f"{model} (v{version})" if model and version else model
    return row


def _isna(value: Any) -> bool:
    # None, NaN, NA and NaT alike.
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _text(value: Any) -> str | None:
    return None if _isna(value) else str(value)


# -- CLI ---------------------------------------------------------------------------------------
COMMAND_KEYS = ("experiments", "studies", "states", "filter", "tracking.uri", "limit")


def parse_command_args(args: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments of ``sweep compare``; lists as ``[a,b]`` or ``a,b``."""
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key not in COMMAND_KEYS:
            raise ConfigError(
                f"sweep compare: cannot use {arg!r}; give key=value with key one of: "
                f"{', '.join(COMMAND_KEYS)}"
            )
        value = value.strip()
        if key in ("experiments", "studies", "states"):
            items = value.removeprefix("[").removesuffix("]").split(",")
            out[key] = [i.strip().strip("'\"") for i in items if i.strip().strip("'\"")]
        elif key == "limit":
            out[key] = _limit(value)
        else:
            out[key.replace(".", "_")] = _unquote(value) or None
    _check_states(out.get("states", []))
    return out


def _limit(value: str) -> int:
    """``limit=``: how many runs to print, 0 or more."""
    if not re.fullmatch(_INT_RE, value):
        raise ConfigError(f"limit={value!r}: must be a whole number >= 0")
    if int(value) < 0:
        raise ConfigError(f"limit={value!r}: must be >= 0")
    return int(value)


def _unquote(value: str) -> str:
    """Drop one pair of enclosing quotes; a filter's own quoted literals stay intact."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def compare_command(args: list[str]) -> int:
    """``sweep compare experiments=[a,b] studies=[...] states=[...] filter=... limit=50``:
    print the summary table (one row per experiment/study) and the runs table."""
    from rich.console import Console

    options = parse_command_args(args)
    limit = options.pop("limit", 50)
    states = options.pop("states", None)
    frame = runs(
        options.get("experiments"),
        options.get("studies"),
        filter=options.get("filter"),
        tracking_uri=options.get("tracking_uri"),
        include_parents=True,
        tags=CHAMPION_TAGS,
    )
    console = Console()
    if frame.empty:
        console.print("no runs found")
        return 0
    header, rows = _summary_rows(summary(frame=frame))
    for table in fitted_tables("experiments", header, rows, 2, console.width):
        console.print(table)
    work = frame[frame["role"] != "study"]
    if states:
        work = work[work["state"].isin([s.upper() for s in states])]
    shown = work.head(limit)
    title = f"runs ({len(shown)} of {len(work)})" if len(work) > limit else "runs"
    header, rows = _runs_rows(shown)
    for table in fitted_tables(title, header, rows, 2, console.width):
        console.print(table)
    return 0


def fitted_tables(title: str, header: list[str], rows: list[list[str]], keys: int, width: int):
    """Rich tables of ``rows`` that each fit ``width`` columns of text, as pandas prints a
    wide frame: the columns in blocks, each block after the first repeating the first
    ``keys`` columns. A single squeezed table would cut every cell to an ellipsis."""
    from rich.table import Table

    def needed(i: int) -> int:  # the column's widest text, plus borders and padding
        return max([len(header[i]), *(len(r[i]) for r in rows)]) + 3  # rows may be none

    blocks: list[list[int]] = []
    block: list[int] = list(range(min(keys, len(header))))
    used = 1 + sum(needed(i) for i in block)
    for i in range(len(block), len(header)):
        if used + needed(i) > width and len(block) > keys:
            blocks.append(block)
            block = list(range(keys))
            used = 1 + sum(needed(k) for k in block)
        block.append(i)
        used += needed(i)
    blocks.append(block)
    tables = []
    for n, columns in enumerate(blocks):
        suffix = f" ({n + 1}/{len(blocks)})" if len(blocks) > 1 else ""
        table = Table(title=title + suffix)
        for i in columns:
            table.add_column(header[i], overflow="fold")
        for row in rows:
            table.add_row(*(row[i] for i in columns))
        tables.append(table)
    return tables


def _summary_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    columns = ["experiment", "study", "runs", "complete", "pruned", "fail", "other"]
    header = [*columns, "best val", "champion val", "champion test", "model", "compute"]
    rows = []
    for _, r in table.iterrows():
        best = "" if _isna(r["best_val"]) else f"{r['monitor']} {r['best_val']:.4f}"
        if not _isna(r["best_trial"]):
            best += f" (trial {int(r['best_trial'])})"
        rows.append(
            [
                *[_cell(r[c]) for c in columns],
                best,
                _mean_sd(r["champion_val_mean"], r["champion_val_sd"]),
                _mean_sd(r["champion_test_mean"], r["champion_test_sd"]),
                _cell(r["champion_model"]),
                f"{r['compute_s']:.1f} s",
            ]
        )
    return header, rows


def _runs_rows(shown: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    metric_cols = [
        c for c in metric_columns(shown) if c.startswith(("best/", "test/")) and c != "best/epoch"
    ]
    # tracking.* (experiment name, store URI) differ between experiments by construction.
    params = [c for c in varying_params(shown) if not c.startswith("tracking.")]
    columns = [
        "experiment",
        "trial",
        "state",
        "run_name",
        *params,
        *metric_cols,
        "duration_s",
    ]
    return columns, [[_cell(r[c]) for c in columns] for _, r in shown.iterrows()]


def _mean_sd(mean: Any, sd: Any) -> str:
    if _isna(mean):
        return ""
    return f"{mean:.4f} ± {0.0 if _isna(sd) else sd:.4f}"


def _cell(value: Any) -> str:
    if _isna(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
