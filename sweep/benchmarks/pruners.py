"""Pruners and early stopping replayed on the curves of the template-style search: how
much time each setting saves, and whether it keeps that search's best trial.

The default study runs for several sampler seeds with neither pruning nor early stopping
(lean trials, one worker): every trial trains all its epochs, as the template-style
search's trials do (its early stopping has patience 100), and scores what it scores there
(the same config on the same batches, ``sweep.benchmarks.search``). Every trial's reports
(its best val acc after each epoch) and duration are kept. Each setting then sees those
trials in order, as Optuna would show them: early stopping ends a trial at the epoch
Lightning's ``EarlyStopping`` would (its value is its best val by then), a trial the
pruner prunes ends at that epoch and becomes PRUNED for the later ones, and each costs
the share of its duration up to its last epoch. This is how ``conf/sweep.yaml``'s
default was chosen.

A replay assumes the sampler proposes the same points. Whether TPE would, the curves
tell exactly: TPE splits the finished trials into a good group (the best
``ceil(0.1 n)`` completed ones) and the rest, and uses nothing else of their values. So
TPE proposes the template-style search's trials as long as, whenever a trial is
sampled, the replayed study's good group holds the same trials as the template-style
study's (:func:`tpe_path_kept`): no trial that would be in it was pruned, or stopped
early below a trial that was not. Where the path is kept, the replayed best val is the
one the real study finds; where it is not, the search goes elsewhere and its best val may
be higher or lower, which the search benchmark measures.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from sweep.benchmarks.common import workdir

#: Optuna's pruners and ours, each with the default study's other settings (its early
#: stopping included); the first is the default study's pruner.
PRUNERS = ("percentile_all", "median", "percentile", "hyperband", "successive_halving")
#: Variants of the default study (overrides): without early stopping, the default pruner
#: made more patient (the top 50% kept from epoch 5 on), and early stopping alone; they
#: show what pruning and early stopping each cost in time and in TPE's path.
VARIANTS = {
    "percentile_all without early stopping": ["trainer.early_stopping.enabled=false"],
    "percentile_all 50% from epoch 5": ["pruner.percentile=50", "pruner.n_warmup_steps=4"],
    "percentile_all 50% from epoch 5 without early stopping": [
        "pruner.percentile=50",
        "pruner.n_warmup_steps=4",
        "trainer.early_stopping.enabled=false",
    ],
    "early stopping alone": ["pruner=none"],
}


def unpruned_trials(seed: int, n_trials: int) -> list[dict[str, Any]]:
    """The default study with ``pruner=none`` and no early stopping: each trial's reports,
    value and seconds."""
    from sweep.check import load_study
    from sweep.study import tune

    with workdir("pruners"):
        overrides = [
            "search=default",
            f"study.seed={seed}",
            f"study.n_trials={n_trials}",
            "pruner=none",
            "trainer.early_stopping.enabled=false",
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


def early_stopped_epochs(reports: list[float], patience: int | None, min_delta: float = 0.0) -> int:
    """How many epochs Lightning's ``EarlyStopping`` (mode max) lets a trial run, from its
    best-so-far reports: it stops once ``patience`` epochs in a row have not beaten the
    best by more than ``min_delta``. A best-so-far report rises exactly when the epoch's
    value beats the best, so with ``min_delta`` 0 this is exact. None: no early stopping."""
    if patience is None or not reports:
        return len(reports)
    best, waited = reports[0], 0
    for epoch in range(1, len(reports)):
        if reports[epoch] - min_delta > best:
            best, waited = reports[epoch], 0
        else:
            waited += 1
            if waited >= patience:
                return epoch + 1
    return len(reports)


def replay(
    trials: list[dict[str, Any]], pruner, patience: int | None = None, min_delta: float = 0.0
) -> dict[str, Any]:
    """Show ``trials`` to ``pruner`` in order, early-stopped with ``patience``: the
    seconds they would have taken, the best value among those it lets complete, the
    positions of those it prunes, and what the replayed study holds of each trial (its
    value, or its last report when pruned, and the epochs it ran)."""
    import optuna
    from optuna.trial import TrialState

    # A fixed name: Hyperband assigns brackets by hashing it with the trial number.
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner)
    seconds, best, pruned, held = 0.0, None, [], []
    for index, record in enumerate(trials):
        trial = study.ask()
        reports = record["reports"]
        ran = early_stopped_epochs(reports, patience, min_delta)
        for step, value in enumerate(reports[:ran]):
            trial.report(value, step)
            if trial.should_prune():
                pruned.append(index)
                ran = step + 1
                break
        seconds += record["seconds"] * ran / max(len(reports), 1)
        value = reports[ran - 1] if ran < len(reports) else record["value"]
        held.append({"value": value, "epochs": ran})
        if pruned and pruned[-1] == index:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
            best = value if best is None else max(best, value)
    return {"seconds": seconds, "best": best, "pruned": pruned, "held": held}


def tpe_good_count(n_finished: int) -> int:
    """How many of ``n_finished`` trials TPE's good group holds: Optuna's default gamma
    for one objective, ``min(ceil(0.1 n), 25)``."""
    return min(math.ceil(0.1 * n_finished), 25)


def tpe_good_group(values: list[float], pruned: set[int], epochs: list[int], k: int) -> set[int]:
    """The ``k`` trials in TPE's good group (Optuna's ``_split_trials``, maximising): the
    best completed ones (the earlier first on a tie), then, if there are fewer than
    ``k``, the pruned ones that ran most epochs, the higher last report first."""
    done = sorted((i for i in range(len(values)) if i not in pruned), key=lambda i: -values[i])
    stopped = sorted(pruned & set(range(len(values))), key=lambda i: (-epochs[i], -values[i]))
    return set((done + stopped)[:k])


def tpe_path_kept(
    trials: list[dict[str, Any]],
    pruned: list[int],
    n_startup: int,
    held: list[dict[str, Any]] | None = None,
) -> bool:
    """Whether TPE would propose the unpruned search's trials in the replayed study,
    which pruned ``pruned`` and holds ``held`` of each trial (its value and epochs; by
    default each trial's own value, all epochs).

    At each trial TPE proposes (sampled, after its ``n_startup`` random ones) its good
    group is the best :func:`tpe_good_count` finished trials before it; the proposals
    are the same as long as the two studies' groups hold the same trials.
    """
    values = [t["value"] for t in trials]
    held_values = [h["value"] for h in held] if held else values
    epochs = [h["epochs"] for h in held] if held else [len(t.get("reports", ())) for t in trials]
    stopped = set(pruned)
    for n, trial in enumerate(trials):
        if n < n_startup or not trial.get("sampled", True):
            continue
        k = tpe_good_count(n)
        if tpe_good_group(held_values[:n], stopped, epochs, k) != tpe_good_group(
            values[:n], set(), epochs, k
        ):
            return False
    return True


def _settings(overrides: list[str]) -> tuple[Any, int | None, float]:
    """The pruner, early-stopping patience (None: off) and min_delta of the default study
    with ``overrides``."""
    from sweep.config import compose
    from sweep.optuna_parts import build_pruner

    cfg = compose("sweep", list(overrides))
    es = cfg.trainer.early_stopping
    pruner = build_pruner(cfg.pruner, int(cfg.trainer.max_epochs), 1)
    return pruner, (int(es.patience) if es.enabled else None), float(es.min_delta)


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
        "curves": "no early stopping",  # the template-style search's trials
        # The default study's early stopping, which the PRUNERS rows use: patience or None.
        "early_stopping": _settings([])[1],
    }
    settings = {name: [f"pruner={name}"] for name in PRUNERS}
    settings.update(VARIANTS)
    n_startup = _tpe_startup()
    for label, overrides in settings.items():
        per_seed = []
        for trials in searches.values():
            pruner, patience, min_delta = _settings(overrides)
            result = replay(trials, pruner, patience, min_delta)
            full = sum(t["seconds"] for t in trials)
            per_seed.append(
                {
                    "time_fraction": result["seconds"] / full,
                    "kept_best": result["best"] == max(t["value"] for t in trials),
                    "tpe_path_kept": tpe_path_kept(
                        trials, result["pruned"], n_startup, result["held"]
                    ),
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
