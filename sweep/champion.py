"""The champion: the top-k trials by validation score, re-trained with several seeds,
the best by mean validation score registered in the MLflow Model Registry with the alias
``champion``. Selection never reads a test score; test scores are only reported.
"""

from __future__ import annotations

import statistics
from typing import Any

from sweep import config as config_mod
from sweep.space import to_overrides

CHAMPION_ATTR = "champion"
RERUNS_ATTR = "champion_reruns"
ALIAS = "champion"


def candidates(study, spec, k: int) -> list:
    """The top-k COMPLETE trials by the (first) objective; the Pareto front if several."""
    from optuna.trial import TrialState

    trials = (
        study.best_trials
        if spec.multi_objective
        else study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    )
    reverse = spec.directions[0] == "maximize"
    ranked = sorted((t for t in trials if t.values), key=lambda t: t.values[0], reverse=reverse)
    return ranked[:k]


def select_champion(study, spec, parent_run_id: str) -> dict[str, Any] | None:
    """Re-train the candidates, pick by mean validation score, register the winner."""
    from sweep.study import count_finished

    champion_cfg = spec.cfg.champion
    finished = count_finished(study)
    previous = study.user_attrs.get(CHAMPION_ATTR)
    if previous and previous.get("at_finished") == finished:
        return previous  # nothing new since the last selection (a resumed, finished study)
    top = candidates(study, spec, int(champion_cfg.k))
    if not top:
        return None
    seeds = [int(spec.cfg.seed) + 1000 + i for i in range(int(champion_cfg.seeds))]
    # Re-runs of a candidate are kept in the study: a resumed study re-trains only new ones.
    cache = dict(study.user_attrs.get(RERUNS_ATTR, {}))
    scored = []
    for trial in top:
        key = f"{trial.number}:{','.join(map(str, seeds))}"
        if key not in cache:
            cache[key] = _rerun(trial, spec, parent_run_id, seeds)
            study.set_user_attr(RERUNS_ATTR, cache)
        scored.append(cache[key])
    maximize = spec.monitor not in ("val/loss", "val/mae")
    best = max(scored, key=lambda s: s["val_mean"] if maximize else -s["val_mean"])
    registered = _register(best, spec, champion_cfg.get("registered_name") or spec.name)
    champion = {
        **{k: v for k, v in best.items() if k != "results"},
        **registered,
        "at_finished": finished,
    }
    study.set_user_attr(CHAMPION_ATTR, champion)
    _log_to_parent(parent_run_id, champion)
    return champion


def _rerun(trial, spec, parent_run_id: str, seeds: list[int]) -> dict[str, Any]:
    from sweep.train import run

    overrides = config_mod.merge_overrides(spec.overrides, to_overrides(spec.params, trial.params))
    results = []
    for seed in seeds:
        cfg = config_mod.compose("sweep", [*overrides, f"seed={seed}"])
        tags = {
            "sweep.role": "champion_rerun",
            "study.name": spec.name,
            "champion.source_trial": trial.number,
            "champion.seed": seed,
            "trial.state": "CHAMPION_RERUN",
        }
        results.append(
            run(
                config_mod.run_part(cfg),
                parent_run_id=parent_run_id,
                experiment=spec.name,
                run_name=f"champion-t{trial.number}-s{seed}",
                tags=tags,
                overrides=[*overrides, f"seed={seed}"],
                load_first=False,
            )
        )
    vals = [r.value for r in results]
    test_metric = "test/acc" if spec.task == "classification" else "test/r2"
    tests = [r.test.get(test_metric, float("nan")) for r in results]
    maximize = spec.monitor not in ("val/loss", "val/mae")
    best_seed = max(results, key=lambda r: r.value if maximize else -r.value)
    return {
        "trial": trial.number,
        "monitor": spec.monitor,
        "seeds": len(seeds),
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
