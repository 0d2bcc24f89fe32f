"""Where a platform trial's time goes: timers around its steps, beside the hand loop's
training steps and the rest of it.

The timers wrap the named functions (a pair of clock reads per call, about 200 calls a
trial) for the rounds measured here only, and are removed after; the overhead ratio is
measured without them (:mod:`sweep.benchmarks.overhead`). A step counts only inside a
trial's objective (the study's own parent-run writes are not a trial's), except Optuna's
``tell``, which ends the trial after its objective has returned.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

#: (label, module, attribute path): the timed steps. A label named twice adds both up.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("objective", "sweep.study", "Objective.__call__"),
    ("fit", "lightning.pytorch", "Trainer.fit"),
    ("training_steps", "sweep.models.task", "Task.training_step"),
    ("validation", "sweep.callbacks", "EpochValidation.on_train_epoch_end"),
    ("epoch_end_metrics", "sweep.models.task", "Task.on_validation_epoch_end"),
    ("callbacks", "sweep.callbacks", "EpochRecorder.on_train_epoch_end"),
    ("callbacks", "sweep.callbacks", "BestWeights.on_train_epoch_end"),
    ("report", "optuna.trial", "Trial.report"),
    ("should_prune", "optuna.trial", "Trial.should_prune"),
    ("user_attrs", "optuna.trial", "Trial.set_user_attr"),
    ("trainer_init", "lightning.pytorch", "Trainer.__init__"),
    ("test", "lightning.pytorch", "Trainer.test"),
    ("trial_config", "sweep.study", "trial_config"),
    ("run_start", "mlflow", "start_run"),
    ("run_end", "mlflow", "end_run"),
    ("batched_writes", "sweep.tracking", "Recorder.flush"),
    ("config_yaml", "sweep.tracking", "Recorder.text"),
    ("log_model", "sweep.packaging", "log_model"),
    ("state_tag", "sweep.study", "_tag_run"),
)
GATE = "objective"  # the label of the step the others are counted inside


@contextlib.contextmanager
def timers(
    totals: dict[str, float], steps: tuple[tuple[str, str, str], ...] = STEPS
) -> Iterator[None]:
    """Wrap every step of ``steps``; add the seconds of each call made inside a call of the
    :data:`GATE` step to ``totals[label]``. The steps are unwrapped on leaving."""
    inside = [False]
    undo: list[tuple[Any, str, Any]] = []

    def timed(label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if label != GATE and not inside[0]:
                return fn(*args, **kwargs)
            outer = label == GATE and not inside[0]
            inside[0] = True
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - started
                if outer:
                    inside[0] = False

        return wrapper

    try:
        for label, module, path in steps:
            *owners, name = path.split(".")
            owner: Any = importlib.import_module(module)
            for attr in owners:
                owner = getattr(owner, attr)
            fn = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            undo.append((owner, name, fn))
            setattr(owner, name, timed(label, fn))
        yield
    finally:
        for owner, name, fn in reversed(undo):
            setattr(owner, name, fn)


def groups(steps: dict[str, float], trial_ms: float) -> dict[str, float]:
    """A trial's milliseconds in parts that add up to it: its training steps; the rest of
    ``fit`` (validation, the metrics of each epoch, Lightning's loops and hooks); Optuna
    (reports, pruning checks, user attributes); our per-epoch callbacks (curves, best
    weights); MLflow (the run's start and end, batched params, tags and curves,
    config.yaml, the model, the state tag); and the rest (the trial's config, the Trainer,
    the test, Optuna's ask and tell)."""
    s = {key: steps.get(key, 0.0) for key, _, _ in STEPS}
    in_fit = s["training_steps"] + s["report"] + s["should_prune"] + s["callbacks"]
    parts = {
        "training_steps": s["training_steps"],
        "rest_of_fit": s["fit"] - in_fit,
        "optuna": s["report"] + s["should_prune"] + s["user_attrs"],
        "callbacks": s["callbacks"],
        "mlflow": sum(
            s[k]
            for k in (
                "run_start",
                "run_end",
                "batched_writes",
                "config_yaml",
                "log_model",
                "state_tag",
            )
        ),
    }
    parts["other"] = trial_ms - sum(parts.values())
    return parts


def measure(
    hand: Callable[[dict[str, float]], float],
    trial: Callable[[int], float],
    first: int,
    rounds: int = 3,
) -> dict[str, Any]:
    """``rounds`` pairs of a hand loop (``hand(split)``: its seconds, its training steps'
    in ``split``) and a timed platform trial (``trial(count)``: the study's ``count``-th,
    from ``first`` on). Milliseconds per trial, means over the rounds (the parts then add
    up to the trial): each step, the parts (:func:`groups`), the trial, the hand loop."""
    per_round: list[dict[str, float]] = []
    for i in range(rounds):
        split: dict[str, float] = {}
        hand_s = hand(split)
        totals: dict[str, float] = {}
        with timers(totals):
            trial_s = trial(first + i)
        ms = {k: 1000 * v for k, v in totals.items()}
        per_round.append(
            {
                **{f"step.{k}": v for k, v in ms.items()},
                **{f"part.{k}": v for k, v in groups(ms, 1000 * trial_s).items()},
                "trial": 1000 * trial_s,
                "hand": 1000 * hand_s,
                "hand_training_steps": 1000 * split.get("training_steps", 0.0),
            }
        )
    keys = sorted(set().union(*per_round))
    return {
        "rounds": rounds,
        "ms": {k: round(statistics.fmean(r.get(k, 0.0) for r in per_round), 1) for k in keys},
    }
