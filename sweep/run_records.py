"""Runs as plain records, read through MLflow's search API or straight from its database.

:func:`sweep.compare.runs` needs, per run, its identity, status, times, tags, params and
latest metrics. ``MlflowClient.search_runs`` gives those for any store, but on a
database-backed store it builds ~65 ORM objects per run and converts each into entities:
10,000 runs took 9-11 s on the 2-core dev machine, nearly all inside that load.
:func:`read_database` reads the same four tables MLflow's search reads (``runs``,
``tags``, ``params``, ``latest_metrics``) with one plain SELECT each, in about a tenth
of the time. It serves only the searches it can answer exactly (experiments, optional
study names, active runs); anything else, a tracking server or a search filter, goes
through MLflow's API. tests/test_compare.py checks both paths give equal frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

#: URI schemes of MLflow's database-backed (SqlAlchemyStore) tracking stores.
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class Unreadable(Exception):
    """The database did not answer a read (no tables yet, another schema): use MLflow's API."""


@dataclass
class RunRecord:
    """What :func:`sweep.compare.runs` reads of one MLflow run."""

    run_id: str
    run_name: str | None
    experiment_id: str
    status: str
    start_time: int | None
    end_time: int | None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def from_mlflow(run) -> RunRecord:
    """The record of an ``mlflow.entities.Run``."""
    info, data = run.info, run.data
    return RunRecord(
        run_id=info.run_id,
        run_name=info.run_name,
        experiment_id=info.experiment_id,
        status=info.status,
        start_time=info.start_time,
        end_time=info.end_time,
        tags=data.tags,
        params=data.params,
        metrics=data.metrics,
    )


def is_database(uri: str) -> bool:
    """True for a tracking URI served by MLflow's SqlAlchemyStore (``sqlite:///...``)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in DATABASE_SCHEMES


def read_database(
    uri: str, experiment_ids: Sequence[str], studies: Sequence[str] | None = None
) -> list[RunRecord]:
    """The active runs of the experiments (of those studies only, when given).

    The same rows, in the same order (newest start first, then run id), that MLflow's
    ``search_runs`` returns for those experiments with ``ViewType.ACTIVE_ONLY`` and, per
    study, the filter ``tags.`study.name` = '<study>'``; metrics are the latest values,
    NaN where MLflow stored a NaN.
    """
    if not experiment_ids or (studies is not None and not studies):
        return []
    where = "r.experiment_id IN :experiments AND r.lifecycle_stage = 'active'"
    in_lists: dict[str, list] = {"experiments": [int(e) for e in experiment_ids]}
    if studies is not None:
        where += (
            " AND r.run_uuid IN (SELECT run_uuid FROM tags"
            " WHERE key = 'study.name' AND value IN :studies)"
        )
        in_lists["studies"] = list(studies)
    with _connected(uri) as select:
        runs, tags, params, metrics = (
            select(sql.replace("{where}", where), in_lists)
            for sql in (
                "SELECT r.run_uuid, r.name, r.experiment_id, r.status, r.start_time,"
                " r.end_time FROM runs r WHERE {where} ORDER BY r.start_time DESC, r.run_uuid",
                _JOINED.format(columns="t.key, t.value", table="tags"),
                _JOINED.format(columns="t.key, t.value", table="params"),
                _JOINED.format(columns="t.key, t.value, t.is_nan", table="latest_metrics"),
            )
        )
    records = {
        run_id: RunRecord(run_id, name, str(exp), status, start, end)
        for run_id, name, exp, status, start, end in runs
    }
    # A row of a run created after the first SELECT has no record: it is left out.
    for run_id, key, value in tags:
        if run_id in records:
            records[run_id].tags[key] = value
    for run_id, key, value in params:
        if run_id in records:
            records[run_id].params[key] = value
    for run_id, key, value, is_nan in metrics:
        if run_id in records:
            records[run_id].metrics[key] = float("nan") if is_nan else float(value)
    return list(records.values())


#: The rows of a per-run table for the runs the WHERE clause picks.
_JOINED = (
    "SELECT t.run_uuid, {columns} FROM {table} t"
    " JOIN runs r ON r.run_uuid = t.run_uuid WHERE {{where}}"
)


def read_experiments(uri: str) -> list[tuple[str, str, str]]:
    """(id, name, lifecycle stage) of every experiment in the database, deleted ones too."""
    with _connected(uri) as select:
        rows = select("SELECT experiment_id, name, lifecycle_stage FROM experiments", {})
    return [(str(i), name, stage) for i, name, stage in rows]


@contextlib.contextmanager
def _connected(uri: str) -> Iterator[Callable[[str, dict[str, list]], list[tuple]]]:
    """A ``select(sql, in_lists)`` on the database; any database error is :class:`Unreadable`.

    SQLAlchemy renders the SQL for the store's dialect (each ``:name`` an expanded IN
    list, strings quoted as literals); rows come from the driver's cursor as plain
    tuples: building SQLAlchemy's Row objects cost more than the queries for 10,000 runs.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    errors: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError,)
    try:
        with engine.connect() as conn:
            errors += (engine.dialect.loaded_dbapi.Error,)

            def select(sql: str, in_lists: dict[str, list]) -> list[tuple]:
                clause = sa.text(sql).bindparams(
                    *(sa.bindparam(k, v, expanding=True) for k, v in in_lists.items())
                )
                compiled = clause.compile(
                    dialect=engine.dialect, compile_kwargs={"literal_binds": True}
                )
                cursor = conn.connection.cursor()
                try:
                    cursor.execute(str(compiled))
                    return cursor.fetchall()
                finally:
                    cursor.close()

            yield select
    except errors as exc:
        raise Unreadable(str(exc).splitlines()[0]) from exc
    finally:
        engine.dispose()
