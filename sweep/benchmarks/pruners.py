"""Pruners replayed on the curves of unpruned searches: how much time each saves, and
whether it keeps each search's best trial.

The default study runs without pruning (lean trials, one worker) for several sampler
seeds; every trial's reports (its best val acc after each epoch) and duration are kept.
Each pruner then sees those trials in order, as Optuna would show them: a trial it prunes
costs the share of its duration up to that epoch and becomes PRUNED for the later ones.
This is how ``conf/sweep.yaml``'s default was chosen. A replay assumes the sampler would
propose the same points; in a real pruned study TPE sees the pruned trials and may
propose others from then on, which the search benchmark measures.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from sweep.benchmarks.common import workdir

#: The pruner configs compared (conf/pruner/), the default first.
PRUNERS = ("percentile_all", "median", "percentile", "hyperband", "successive_halving")


def unpruned_trials(seed: int, n_trials: int) -> list[dict[str, Any]]:
    """The default study with ``pruner=none``: each trial's reports, value and seconds."""
    from sweep.check import load_study
    from sweep.study import tune

    with workdir("pruners"):
        overrides = [
            "search=default",
            f"study.seed={seed}",
            f"study.n_trials={n_trials}",
            "pruner=none",
            "champion.k=0",
            "study.name=unpruned",
        ]
        tune(overrides, progress=False)
        study, _ = load_study(overrides)
        return [
            {
                "reports": [t.intermediate_values[s] for s in sorted(t.intermediate_values)],
                "value": t.value,
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
            }
            for t in study.trials
            if t.state.name == "COMPLETE"
        ]


def replay(trials: list[dict[str, Any]], pruner) -> dict[str, Any]:
    """Show ``trials`` to ``pruner`` in order: the seconds they would have taken and the
    best value among those it lets complete."""
    import optuna
    from optuna.trial import TrialState

    # A fixed name: Hyperband assigns brackets by hashing it with the trial number.
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner)
    seconds, best = 0.0, None
    for record in trials:
        trial = study.ask()
        reports = record["reports"]
        ran = len(reports)
        for step, value in enumerate(reports):
            trial.report(value, step)
            if trial.should_prune():
                ran = step + 1
                break
        seconds += record["seconds"] * ran / max(len(reports), 1)
        if ran < len(reports):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, record["value"])
            best = record["value"] if best is None else max(best, record["value"])
    return {"seconds": seconds, "best": best}


def _pruner(name: str):
    from sweep.config import compose
    from sweep.optuna_parts import build_pruner

    cfg = compose("sweep", [f"pruner={name}"])
    return build_pruner(cfg.pruner, int(cfg.trainer.max_epochs), 1)


def run(n_trials: int = 20, seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> dict[str, Any]:
    import optuna
    import torch

    from sweep.optuna_parts import env_threads

    torch.set_num_threads(env_threads(1))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.time()
    searches = {seed: unpruned_trials(seed, n_trials) for seed in seeds}
    out: dict[str, Any] = {
        "n_trials": n_trials,
        "seeds": list(seeds),
        "recording_s": time.time() - started,
    }
    for name in PRUNERS:
        per_seed = []
        for trials in searches.values():
            result = replay(trials, _pruner(name))
            full = sum(t["seconds"] for t in trials)
            per_seed.append(
                {
                    "time_fraction": result["seconds"] / full,
                    "kept_best": result["best"] == max(t["value"] for t in trials),
                }
            )
        out[name] = {
            "time_fraction": statistics.median(r["time_fraction"] for r in per_seed),
            "kept_best": sum(r["kept_best"] for r in per_seed),
            "per_seed": per_seed,
        }
    return out


if __name__ == "__main__":
    print(run())
