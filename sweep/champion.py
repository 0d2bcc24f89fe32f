"""The champion: the top-k trials by validation score, re-trained with several seeds,
the best by mean validation score registered in the MLflow Model Registry with the alias
``champion``. Selection never reads a test score; test scores are only reported.
"""

from __future__ import annotations

import contextlib
import io
import statistics
from typing import Any

from sweep import config as config_mod
from sweep.errors import ConfigError, SweepError
from sweep.space import to_overrides

CHAMPION_ATTR = "champion"
RERUNS_ATTR = "champion_reruns"
ALIAS = "champion"
SETTINGS = ("k", "seeds", "registered_name")


class ChampionError(SweepError):
    """Every candidate's re-run failed: the study has trials but no model to register."""

    exit_code = 1


def check_settings(champion_cfg: Any) -> None:
    """The ``champion`` block, checked before the first trial: a name the registry would
    refuse must not fail the study only after all its trials have run."""
    values = config_mod.to_container(champion_cfg) or {}
    for key in values:
        if key not in SETTINGS:
            raise ConfigError(f"champion.{key}: unknown key; known keys: {', '.join(SETTINGS)}")
    config_mod.INT0.check("champion.k", values.get("k", 0))
    config_mod.INT1.check("champion.seeds", values.get("seeds", 1))
    name = values.get("registered_name")
    if name is None:
        return
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/:"):
        raise ConfigError(
            f"champion.registered_name={name!r}: must be a non-empty name without '/' or ':' "
            f"(or null for the study name)"
        )


def candidates(study, spec, k: int) -> list:
    """The top-k COMPLETE trials by the objective; with several objectives, the top-k of
    the Pareto front by validation score (the monitored metric, as the champion is picked
    by it), whichever objective comes first (``model/params`` say).

    k distinct configs: a point sampled twice (random and grid samplers repeat points, TPE
    can) is one candidate, its best-ranked trial; re-training it twice with the same seeds
    would give the same scores twice."""
    from optuna.trial import TrialState

    if spec.multi_objective:
        reverse = spec.mode == "max"
        scored = [t for t in study.best_trials if t.user_attrs.get(spec.monitor) is not None]
        ranked = sorted(scored, key=lambda t: t.user_attrs[spec.monitor], reverse=reverse)
    else:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        reverse = spec.directions[0] == "maximize"
        ranked = sorted((t for t in trials if t.values), key=lambda t: t.values[0], reverse=reverse)
    return _distinct_points(ranked)[:k]


def _distinct_points(trials: list) -> list:
    """The first trial of each distinct point (params), in the given order."""
    seen: set = set()
    distinct = []
    for trial in trials:
        point = tuple(sorted(trial.params.items()))
        if point not in seen:
            seen.add(point)
            distinct.append(trial)
    return distinct


def select_champion(study, spec, parent_run_id: str) -> dict[str, Any] | None:
    """Re-train the candidates, pick by mean validation score, register the winner."""
    from sweep.study import count_finished

    champion_cfg = spec.cfg.champion
    name = champion_cfg.get("registered_name") or spec.name
    # What the selection depends on: a resumed study with nothing new keeps its champion,
    # but a changed k, seed count or name selects again.
    basis = {
        "at_finished": count_finished(study),
        "k": int(champion_cfg.k),
        "seeds": int(champion_cfg.seeds),
        "registered_name": name,
    }
    previous = study.user_attrs.get(CHAMPION_ATTR)
    if previous and all(previous.get(k) == v for k, v in basis.items()):
        return previous
    top = candidates(study, spec, int(champion_cfg.k))
    if not top:
        return None
    seeds = [int(spec.cfg.seed) + 1000 + i for i in range(int(champion_cfg.seeds))]
    scored = _score_candidates(study, spec, parent_run_id, top, seeds)
    maximize = spec.mode == "max"
    best = max(scored, key=lambda s: s["val_mean"] if maximize else -s["val_mean"])
    registered = _register(best, spec, name)
    champion = {
        **{k: v for k, v in best.items() if k != "results"},
        **registered,
        **basis,
    }
    study.set_user_attr(CHAMPION_ATTR, champion)
    _log_to_parent(parent_run_id, champion)
    return champion


def _score_candidates(study, spec, parent_run_id: str, top: list, seeds: list[int]) -> list:
    """Each candidate re-trained with every seed: on this process, or spread over as many
    processes as the study had local workers. A candidate whose re-run fails (a seed on
    which it diverges) is dropped: it is not a config to ship. Raises ChampionError when
    every candidate failed."""
    from sweep.run_pool import run_jobs

    # Re-runs of a candidate are kept in the study: a resumed study re-trains only new ones,
    # and those without a model (re-run by an earlier version with tracking.log_model=false).
    cache = dict(study.user_attrs.get(RERUNS_ATTR, {}))
    key_of = {t.number: f"{t.number}:{','.join(map(str, seeds))}" for t in top}
    new = [t for t in top if not cache.get(key_of[t.number], {}).get("source_model_uri")]
    jobs = [job for trial in new for job in _rerun_jobs(trial, spec, parent_run_id, seeds)]
    outcomes: dict = {}
    errors = []
    try:
        run_jobs(jobs, spec.n_workers, spec.threads, outcomes)
    finally:  # interrupted too: the candidates whose re-runs all finished are kept
        for trial in new:
            results = [outcomes.get((trial.number, seed)) for seed in seeds]
            failed = next((r for r in results if isinstance(r, str)), None)
            if failed is not None:  # its runs are closed FAILED with the error
                errors.append(f"trial {trial.number}: {failed}")
            elif None not in results:
                cache[key_of[trial.number]] = _summarise(trial, spec, results)
        if new:
            study.set_user_attr(RERUNS_ATTR, cache)
    scored = [cache[key_of[t.number]] for t in top if key_of[t.number] in cache]
    if not scored:
        raise ChampionError(f"no champion: every candidate's re-run failed ({'; '.join(errors)})")
    return scored


def _rerun_jobs(trial, spec, parent_run_id: str, seeds: list[int]) -> list:
    """One job per seed: the trial's config, re-trained with that seed. A re-run always
    logs its model, even where the trials do not (``tracking.log_model=false``): the
    champion is the best re-run's model, registered."""
    from sweep.run_pool import Job

    with_model = config_mod.merge_overrides(spec.overrides, ["tracking.log_model=true"])
    overrides = config_mod.merge_overrides(with_model, to_overrides(spec.params, trial.params))
    hydra_part, values = config_mod.split_value_overrides(overrides)
    jobs = []
    for seed in seeds:
        cfg = config_mod.compose_with_values("sweep", hydra_part, {**values, "seed": seed})
        tags = {
            "sweep.role": "champion_rerun",
            "study.name": spec.name,
            "champion.source_trial": trial.number,
            "champion.seed": seed,
            "trial.state": "CHAMPION_RERUN",
        }
        kwargs = {
            "parent_run_id": parent_run_id,
            "experiment": spec.name,
            "run_name": f"champion-t{trial.number}-s{seed}",
            "tags": tags,
            "overrides": [*overrides, f"seed={seed}"],
            "load_first": False,
        }
        jobs.append(Job((trial.number, seed), config_mod.run_part(cfg), kwargs))
    return jobs


def test_metric_for(monitor: str, task: str) -> str:
    """The test score reported beside the validation score ``monitor``: its own test
    counterpart (val/f1 -> test/f1, val/loss -> test/loss), else the task's headline score
    (test/acc, test/r2)."""
    if monitor.startswith("val/"):
        return "test/" + monitor.removeprefix("val/")
    return "test/acc" if task == "classification" else "test/r2"


def _summarise(trial, spec, results: list) -> dict[str, Any]:
    """A candidate's re-runs: mean and spread of its validation and test scores."""
    vals = [r.value for r in results]
    test_metric = test_metric_for(spec.monitor, spec.task)
    tests = [r.test.get(test_metric, float("nan")) for r in results]
    maximize = spec.mode == "max"
    best_seed = max(results, key=lambda r: r.value if maximize else -r.value)
    return {
        "trial": trial.number,
        "monitor": spec.monitor,
        "seeds": len(results),
        "val_mean": statistics.fmean(vals),
        "val_sd": statistics.pstdev(vals),
        "test_metric": test_metric,
        "test_mean": statistics.fmean(tests),
        "test_sd": statistics.pstdev(tests),
        "source_model_uri": best_seed.model_uri,
        "source_run_id": best_seed.run_id,
        "params": dict(trial.params),
    }


def _register(best: dict[str, Any], spec, name: str) -> dict[str, Any]:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    # register_model prints "Successfully registered..." to stderr; our summary says it.
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(best["source_model_uri"], name)
    client.set_registered_model_alias(name, ALIAS, version.version)
    for key in ("val_mean", "val_sd", "test_mean", "test_sd", "trial", "monitor", "test_metric"):
        client.set_model_version_tag(name, version.version, key, str(best[key]))
    client.set_model_version_tag(name, version.version, "study", spec.name)
    return {
        "registered_name": name,
        "version": str(version.version),
        "model_uri": f"models:/{name}@{ALIAS}",
    }


def _log_to_parent(parent_run_id: str, champion: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for key in ("val_mean", "val_sd", "test_mean", "test_sd"):
        client.log_metric(parent_run_id, f"champion/{key}", float(champion[key]))
    for key in ("trial", "registered_name", "version", "model_uri", "source_run_id"):
        client.set_tag(parent_run_id, f"champion.{key}", str(champion[key]))
