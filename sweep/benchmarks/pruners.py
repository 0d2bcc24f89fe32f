"""Pruners replayed on the curves of unpruned searches: how much time each saves, and
whether it keeps each search's best trial.

The default study runs without pruning (lean trials, one worker) for several sampler
seeds; every trial's reports (its best val acc after each epoch) and duration are kept.
Each pruner then sees those trials in order, as Optuna would show them: a trial it prunes
costs the share of its duration up to that epoch and becomes PRUNED for the later ones.
This is how ``conf/sweep.yaml``'s default was chosen.

A replay assumes the sampler proposes the same points. Whether TPE would, the curves
tell exactly: TPE splits the finished trials into a good group (the best
``ceil(0.1 n)`` completed ones) and the rest, and uses nothing else of their values. A
pruned trial is never in the good group, so TPE proposes the trials of the unpruned
search as long as no trial the pruner stopped would have been in the good group when a
later trial was sampled (:func:`tpe_path_kept`). Where the path is kept, the pruned
search finds the unpruned one's best val; where it is not, the search goes elsewhere
and its best val may be higher or lower, which the search benchmark measures.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from sweep.benchmarks.common import workdir

#: The pruner configs compared (conf/pruner/ and overrides), the default first.
PRUNERS = ("percentile_all", "median", "percentile", "hyperband", "successive_halving")
#: The default pruner made more patient (kept: the top 50% from epoch 5 on), to show
#: what keeping TPE's path on every seed costs.
VARIANTS = {"percentile_all 50% from epoch 5": ["pruner.percentile=50", "pruner.n_warmup_steps=4"]}


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
                # Enqueued (the base points), not proposed by the sampler.
                "sampled": "fixed_params" not in t.system_attrs,
            }
            for t in study.trials
            if t.state.name == "COMPLETE"
        ]


def replay(trials: list[dict[str, Any]], pruner) -> dict[str, Any]:
    """Show ``trials`` to ``pruner`` in order: the seconds they would have taken, the
    best value among those it lets complete, and the positions of those it prunes."""
    import optuna
    from optuna.trial import TrialState

    # A fixed name: Hyperband assigns brackets by hashing it with the trial number.
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner)
    seconds, best, pruned = 0.0, None, []
    for index, record in enumerate(trials):
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
            pruned.append(index)
        else:
            study.tell(trial, record["value"])
            best = record["value"] if best is None else max(best, record["value"])
    return {"seconds": seconds, "best": best, "pruned": pruned}


def tpe_good_count(n_finished: int) -> int:
    """How many of ``n_finished`` trials TPE's good group holds: Optuna's default gamma
    for one objective, ``min(ceil(0.1 n), 25)``."""
    return min(math.ceil(0.1 * n_finished), 25)


def tpe_path_kept(trials: list[dict[str, Any]], pruned: list[int], n_startup: int) -> bool:
    """Whether TPE would propose the unpruned search's trials had these been pruned.

    At each trial TPE proposes (sampled, after its ``n_startup`` random ones) its good
    group is the best :func:`tpe_good_count` completed trials before it. Unpruned, that
    is the best of all of them by final value; pruned trials cannot be in it. The two
    groups, hence the proposals, are the same as long as no pruned trial would have been
    in the unpruned search's group.
    """
    stopped = set(pruned)
    for n, trial in enumerate(trials):
        if n < n_startup or not trial.get("sampled", True):
            continue
        earlier = sorted(range(n), key=lambda i: trials[i]["value"], reverse=True)
        if stopped & set(earlier[: tpe_good_count(n)]):
            return False
    return True


def _pruner(name: str, overrides: list[str] = ()):
    from sweep.config import compose
    from sweep.optuna_parts import build_pruner

    cfg = compose("sweep", [f"pruner={name}", *overrides])
    return build_pruner(cfg.pruner, int(cfg.trainer.max_epochs), 1)


def _tpe_startup() -> int:
    from sweep.config import compose

    return int(compose("sweep", ["sampler=tpe"]).sampler.n_startup_trials)


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
    pruners = {name: (name, []) for name in PRUNERS}
    pruners.update({label: ("percentile_all", o) for label, o in VARIANTS.items()})
    n_startup = _tpe_startup()
    for label, (name, overrides) in pruners.items():
        per_seed = []
        for trials in searches.values():
            result = replay(trials, _pruner(name, overrides))
            full = sum(t["seconds"] for t in trials)
            per_seed.append(
                {
                    "time_fraction": result["seconds"] / full,
                    "kept_best": result["best"] == max(t["value"] for t in trials),
                    "tpe_path_kept": tpe_path_kept(trials, result["pruned"], n_startup),
                }
            )
        out[label] = {
            "time_fraction": statistics.median(r["time_fraction"] for r in per_seed),
            "kept_best": sum(r["kept_best"] for r in per_seed),
            "tpe_path_kept": sum(r["tpe_path_kept"] for r in per_seed),
            "per_seed": per_seed,
        }
    return out


if __name__ == "__main__":
    print(run())
