"""Optuna's own samplers, pruners and storages, built from the config groups
``sampler/``, ``pruner/`` and ``storage/``: names map to Optuna's classes, except two
pruners made for the trials' best-so-far reports (``sweep.pruners``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sweep.config import to_container
from sweep.errors import ConfigError
from sweep.space import Param

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2")
PRUNERS = (
    "percentile_all",
    "median",
    "hyperband",
    "successive_halving",
    "percentile",
    "patient",
    "none",
)


def _options(cfg: Any, group: str, known: dict[str, type | tuple]) -> dict[str, Any]:
    values = {k: v for k, v in to_container(cfg).items() if k != "name"}
    for key, value in values.items():
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ConfigError(
                f"{group}.{key}: unknown option for {group} '{cfg.name}'; known: {allowed}"
            )
        kinds = known[key] if isinstance(known[key], tuple) else (known[key],)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise ConfigError(f"{group}.{key}={value!r}: wrong type")
    return values


def _at_least(group: str, options: dict[str, Any], low: int, *keys: str) -> None:
    """Integer options Optuna would accept silently (a negative n_startup_trials) or only
    reject at the first trial (reduction_factor=1) fail here, before the study exists."""
    for key in keys:
        value = options.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < low:
            raise ConfigError(f"{group}.{key}={value}: must be >= {low}")


def _optuna_checked(group: str, name: str, build):
    """``build()``, with Optuna's own argument errors turned into one config line."""
    try:
        return build()
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{group}={name}: {first}") from None


def build_sampler(cfg: Any, params: list[Param], seed: int, n_workers: int, n_objectives: int):
    """The sampler named by ``cfg.name``, seeded, and recorded as such in the parent run.

    Raises ConfigError for an unknown name or option, or a value Optuna refuses.
    """
    name = cfg.name
    if name not in SAMPLERS:
        raise ConfigError(f"sampler={name}: unknown sampler; choose from: {', '.join(SAMPLERS)}")
    return _optuna_checked(
        "sampler", name, lambda: _build_sampler(cfg, params, seed, n_workers, n_objectives)
    )


def _build_sampler(cfg: Any, params: list[Param], seed: int, n_workers: int, n_objectives: int):
    import warnings

    import optuna

    # TPE's `group` and GPSampler are marked experimental; we chose them deliberately.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    name = cfg.name
    if name == "tpe":
        o = _options(
            cfg,
            "sampler",
            {
                "n_startup_trials": int,
                "multivariate": bool,
                "group": bool,
                "constant_liar": (str, bool),
            },
        )
        _at_least("sampler", o, 0, "n_startup_trials")
        liar = o.get("constant_liar", "auto")
        if liar not in ("auto", True, False):
            raise ConfigError(f"sampler.constant_liar={liar!r}: must be auto, true or false")
        return optuna.samplers.TPESampler(
            n_startup_trials=o.get("n_startup_trials", 10),
            multivariate=o.get("multivariate", True),
            group=o.get("group", True),
            constant_liar=(n_workers > 1) if liar == "auto" else liar,
            seed=seed,
        )
    if name == "random":
        _options(cfg, "sampler", {})
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        _options(cfg, "sampler", {})
        space = {p.key: p.grid_values() for p in params}  # refuses unstepped floats
        if any(p.when for p in params):
            return _brute_force_sampler(seed)
        return optuna.samplers.GridSampler(space, seed=seed)
    if name == "cmaes":
        o = _options(cfg, "sampler", {"n_startup_trials": int})
        _at_least("sampler", o, 0, "n_startup_trials")
        if n_objectives > 1:
            raise ConfigError("sampler=cmaes: single-objective only; use sampler=nsga2 or tpe")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **o)
    if name == "gp":
        o = _options(cfg, "sampler", {"n_startup_trials": int})
        _at_least("sampler", o, 0, "n_startup_trials")
        return optuna.samplers.GPSampler(seed=seed, **o)
    if name == "qmc":
        o = _options(cfg, "sampler", {"qmc_type": str})
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False, **o)
    o = _options(cfg, "sampler", {"population_size": int})
    return optuna.samplers.NSGAIISampler(seed=seed, **o)


def _brute_force_sampler(seed: int):
    """Optuna's grid for a conditional space. ``GridSampler`` walks the product of every
    parameter's values, so points that differ only in a parameter whose condition does not
    hold (a width for the cnn) train the same config again; ``BruteForceSampler`` walks
    the distinct points of a define-by-run space, each once."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.BruteForceSampler(seed=seed)


def build_pruner(cfg: Any, max_epochs: int, n_objectives: int):
    """The pruner named by ``cfg.name``; none for multi-objective studies, which Optuna
    cannot prune (the config is still validated).

    Raises ConfigError for an unknown name or option, or a value Optuna refuses.
    """
    import optuna

    name = cfg.name
    if name not in PRUNERS:
        raise ConfigError(f"pruner={name}: unknown pruner; choose from: {', '.join(PRUNERS)}")
    pruner = _optuna_checked("pruner", name, lambda: _build_pruner(cfg, max_epochs))
    return optuna.pruners.NopPruner() if n_objectives > 1 else pruner


def _build_pruner(cfg: Any, max_epochs: int):
    import optuna

    p = optuna.pruners
    name = cfg.name
    if name == "none":
        _options(cfg, "pruner", {})
        return p.NopPruner()
    warm = {"n_startup_trials": int, "n_warmup_steps": int}
    if name in ("percentile_all", "median", "percentile", "patient"):
        known = dict(warm)
        if name in ("percentile", "percentile_all"):
            known["percentile"] = (int, float)
        if name == "patient":
            known["patience"] = int
        o = _options(cfg, "pruner", known)
        _at_least("pruner", o, 0, "n_startup_trials", "n_warmup_steps", "patience")
        if name == "median":
            return p.MedianPruner(**o)
        if name == "percentile":
            return p.PercentilePruner(**o)
        from sweep.pruners import AllTrialsPercentilePruner, PlateauPruner

        if name == "percentile_all":
            return AllTrialsPercentilePruner(**o)
        patience = o.pop("patience", 0)
        return PlateauPruner(p.MedianPruner(**o), patience=patience)
    if name == "successive_halving":
        o = _options(cfg, "pruner", {"min_resource": (int, str), "reduction_factor": int})
        _at_least("pruner", o, 1, "min_resource")
        _at_least("pruner", o, 2, "reduction_factor")
        return p.SuccessiveHalvingPruner(**o)
    o = _options(
        cfg, "pruner", {"min_resource": int, "max_resource": (int, str), "reduction_factor": int}
    )
    _at_least("pruner", o, 1, "min_resource", "max_resource")
    _at_least("pruner", o, 2, "reduction_factor")
    if o.get("max_resource", "auto") == "auto":
        o["max_resource"] = max_epochs
    elif isinstance(o["max_resource"], str):
        raise ConfigError(f"pruner.max_resource={o['max_resource']!r}: must be an integer or auto")
    if o.get("min_resource", 1) > o["max_resource"]:
        raise ConfigError(
            f"pruner.min_resource={o.get('min_resource')}: must be <= max_resource "
            f"({o['max_resource']}; auto = trainer.max_epochs)"
        )
    return p.HyperbandPruner(**o)


def storage_url(cfg: Any, root: Path | None = None) -> str:
    """The storage URL: ``url`` if set, else the embedded file under the project."""
    if cfg.get("url"):
        return str(cfg.url)
    if not str(cfg.get("path") or "").strip():
        raise ConfigError("storage.path: empty; give the storage's file, or storage.url")
    path = Path(cfg.path)
    if not path.is_absolute():
        path = (root or Path.cwd()) / path
    if path.is_dir():
        raise ConfigError(f"storage.path={cfg.path}: a directory; give the storage's file in it")
    if cfg.name == "sqlite":
        return f"sqlite:///{path}"  # sqlite:////abs: SQLAlchemy's absolute path
    return f"journal:///{str(path).lstrip('/')}"  # journal:///abs, as file:///abs


def storage_file(url: str) -> Path | None:
    """The local file of a journal or SQLite storage URL, else None. ``journal:///p`` is
    the absolute path /p (as ``file:///p``); ``sqlite:///p`` is relative and
    ``sqlite:////p`` absolute (SQLAlchemy's rule)."""
    scheme, sep, rest = url.partition(":///")
    path = rest.split("?", 1)[0]
    if not sep or scheme not in ("journal", "sqlite") or path in ("", ":memory:"):
        return None
    return Path("/" + path.lstrip("/")) if scheme == "journal" else Path(path)


def _check_journal_file(path: Path) -> None:
    """An existing file must start like an Optuna journal (a JSON line with an op_code):
    Optuna would otherwise append its log to whatever file the path names."""
    import json

    if not path.is_file() or path.stat().st_size == 0:
        return  # a new journal, or a directory (open() names it)
    with path.open("rb") as handle:
        first = handle.readline(1 << 16)
    try:
        entry = json.loads(first)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or "op_code" not in entry:
        raise ValueError("not an Optuna journal (its first line is not a journal entry)")


def missing_storage_file(url: str) -> Path | None:
    """The file of a journal or SQLite storage URL when it does not exist, else None."""
    path = storage_file(url)
    return None if path is None or path.exists() else path


def load_existing_study(name: str, url: str):
    """The study ``name`` from the storage at ``url``, for reading (check, report); a
    ConfigError naming the studies there when it has none of that name. A storage file that
    does not exist is not created."""
    import optuna

    from sweep.tracking import redact

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    missing = missing_storage_file(url)
    if missing is not None:
        raise ConfigError(f"study.name={name}: no such study (no storage at {missing})")
    storage = build_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ConfigError(
            f"study.name={name}: no such study in {redact(url)}; "
            f"known: {', '.join(known) or 'none'}"
        ) from None


def build_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """Optuna's storage for a URL. ``journal:///path`` is the journal file (``flock``)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage

    from sweep.journal import JournalFile

    path = storage_file(url)
    journal = url.startswith("journal:")
    if journal and path is None:
        raise ConfigError(f"storage.url={url}: give the journal file, journal:///path/to/file")
    lock = Path(f"{path}.flock") if journal else None
    had_lock = lock is not None and lock.exists()
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if journal:
            _check_journal_file(path)
            storage = JournalStorage(JournalFile(str(path)))
            storage.get_all_studies()  # replays the journal: a damaged one fails here
            return storage
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if lock is not None and not had_lock:
            lock.unlink(missing_ok=True)  # ours: not left beside the user's file
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        kind = "journal" if url.startswith("journal:") else "SQLite file"
        raise ConfigError(f"storage {path}: cannot open it as an Optuna {kind}: {reason}") from None
    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}  # optuna #5600
    if heartbeat_interval:
        quiet_heartbeat_failures()
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        kwargs["heartbeat_stale_trial_callback"] = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=3
        )
    try:
        return RDBStorage(url, **kwargs)
    except Exception as exc:
        raise _unreachable(url, exc) from None


def quiet_heartbeat_failures() -> None:
    """A heartbeat that Optuna's thread cannot write (the database went away) is one line
    on stderr, not that thread's traceback: the trial's own failure, and the study's
    one-line error, say the rest. Other threads' failures print as before."""
    import sys
    import threading
    import traceback

    if getattr(threading.excepthook, "quiet_heartbeats", False):
        return
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        frames = traceback.extract_tb(args.exc_traceback)
        if not any(frame.name == "_record_heartbeat" for frame in frames):
            default(args)
            return
        from sweep.tracking import one_line

        error = one_line(args.exc_value) if args.exc_value else args.exc_type.__name__
        print(f"warning: Optuna could not record a trial's heartbeat: {error}", file=sys.stderr)

    hook.quiet_heartbeats = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def check_server_storage(url: str) -> None:
    """Check the storage creating nothing, before this command creates anything elsewhere
    (the MLflow store, a parent run): connect to a database server's (PostgreSQL, MySQL)
    and disconnect, so that a wrong host, database or password is a one-line error now;
    an existing file must be the kind its URL says (:func:`build_storage` opens it later,
    and names what else is wrong with one)."""
    if url.startswith(("journal:", "sqlite:")):
        _check_storage_file(url)
        return
    from sweep.tracking import probe_database

    try:
        probe_database(url)
    except Exception as exc:
        raise _unreachable(url, exc) from None


def storage_lost(url: str) -> str | None:
    """Why a storage on a database server no longer answers, after a storage call failed
    (one connection, in seconds), or None: it answers, or it is a local file."""
    if url.startswith(("journal:", "sqlite:")):
        return None
    from sweep.tracking import probe_database

    try:
        probe_database(url)
    except Exception as exc:
        return str(_unreachable(url, exc))
    return None


def _check_storage_file(url: str) -> None:
    """A journal URL names a file; an existing file is a journal or an SQLite database."""
    import sqlite3

    path = storage_file(url)
    journal = url.startswith("journal:")
    if journal and path is None:
        raise ConfigError(f"storage.url={url}: give the journal file, journal:///path/to/file")
    if path is None or not path.is_file():
        return  # new (created when opened), in memory, or a folder (build_storage names it)
    try:
        if journal:
            _check_journal_file(path)
        else:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except (OSError, ValueError, sqlite3.Error) as exc:
        kind = "journal" if journal else "SQLite file"
        raise ConfigError(f"storage {path}: cannot open it as an Optuna {kind}: {exc}") from None


def _unreachable(url: str, exc: Exception) -> ConfigError:
    from sweep.tracking import redact

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"storage.url={redact(url)}: cannot open Optuna storage: {first}")


def env_threads(n_workers: int, threads: int | str = "auto") -> int:
    """Torch threads per local worker: ``threads`` if set, else the usable cores split
    between the workers."""
    from sweep.workers import usable_cores

    if threads != "auto":
        return int(threads)
    return max(1, usable_cores() // max(1, n_workers))
