"""The pruners made for best-so-far reports (sweep.pruners), on real Optuna studies."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweep.pruners import AllTrialsPercentilePruner, PlateauPruner

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _finished(state: TrialState, curve: list[float]):
    """A finished trial with best-so-far reports ``curve`` at epochs 0, 1, ..."""
    value = curve[-1] if state == TrialState.COMPLETE else None
    return create_trial(
        state=state, value=value, intermediate_values=dict(enumerate(curve)), params={}
    )


def _should_prune(study: optuna.Study, curve: list[float]) -> bool:
    trial = study.ask()
    for step, value in enumerate(curve):
        trial.report(value, step)
    pruned = trial.should_prune()
    study.tell(trial, state=TrialState.FAIL)  # leave no RUNNING trial behind
    return pruned


def _study(pruner, direction: str = "maximize", trials=()) -> optuna.Study:
    study = optuna.create_study(direction=direction, pruner=pruner)
    for trial in trials:
        study.add_trial(trial)
    return study


# Three trials pruned early (0.5) and two that completed (0.9): the survivors.
EARLY_PRUNED = [_finished(TrialState.PRUNED, [0.4, 0.5]) for _ in range(3)]
SURVIVORS = [_finished(TrialState.COMPLETE, [0.6, 0.8, 0.9, 0.9, 0.9]) for _ in range(2)]
SLOW_STARTER = [0.3, 0.5, 0.55, 0.6, 0.6]


def test_pruned_trials_count_at_their_last_value_unlike_optunas_median():
    """At epoch 4 the slow starter (0.6) is below both survivors but above the three
    trials pruned at 0.5: Optuna's median ranks it among the survivors and prunes it."""
    trials = [*EARLY_PRUNED, *SURVIVORS]
    ours = _study(
        AllTrialsPercentilePruner(50, n_startup_trials=1, n_warmup_steps=0), trials=trials
    )
    optunas = _study(optuna.pruners.MedianPruner(n_startup_trials=1), trials=trials)
    assert not _should_prune(ours, SLOW_STARTER)
    assert _should_prune(optunas, SLOW_STARTER)
    # Keeping only the top 30% of the five, 0.6 is out (the 70th percentile is 0.82).
    top30 = _study(
        AllTrialsPercentilePruner(30, n_startup_trials=1, n_warmup_steps=0), trials=trials
    )
    assert _should_prune(top30, SLOW_STARTER)


def test_an_early_stopped_trial_counts_with_its_last_value():
    stopped = [_finished(TrialState.COMPLETE, [0.9, 0.95]) for _ in range(3)]  # stopped at epoch 1
    study = _study(
        AllTrialsPercentilePruner(50, n_startup_trials=1, n_warmup_steps=0), trials=stopped
    )
    assert _should_prune(study, [0.5, 0.6, 0.7, 0.8])  # at epoch 3, against 0.95
    assert not _should_prune(study, [0.5, 0.6, 0.7, 0.96])


def test_minimize_prunes_the_high_values():
    trials = [_finished(TrialState.COMPLETE, [1.0, 0.5, 0.4]) for _ in range(3)]
    study = _study(
        AllTrialsPercentilePruner(50, n_startup_trials=1, n_warmup_steps=0), "minimize", trials
    )
    assert _should_prune(study, [1.2, 0.9, 0.8])
    assert not _should_prune(study, [0.9, 0.5, 0.3])


def test_nothing_is_pruned_during_warmup_or_before_enough_trials_finished():
    trials = [*EARLY_PRUNED, *SURVIVORS]
    bad = [0.1, 0.1, 0.1, 0.1, 0.1]
    warm = _study(
        AllTrialsPercentilePruner(50, n_startup_trials=1, n_warmup_steps=5), trials=trials
    )
    assert not _should_prune(warm, bad)
    startup = _study(
        AllTrialsPercentilePruner(50, n_startup_trials=6, n_warmup_steps=0), trials=trials
    )
    assert not _should_prune(startup, bad)
    nan = _study(AllTrialsPercentilePruner(50, n_startup_trials=1, n_warmup_steps=0), trials=trials)
    assert _should_prune(nan, [0.9, float("nan")])


@pytest.mark.parametrize("percentile", [0, -5, 101])
def test_a_percentile_out_of_range_is_refused(percentile):
    with pytest.raises(ValueError, match="percentile must be in"):
        AllTrialsPercentilePruner(percentile)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_plateau_pruner_asks_only_after_patience_epochs_without_improvement():
    always = optuna.pruners.ThresholdPruner(lower=10.0)  # would prune any of these values
    study = _study(PlateauPruner(always, patience=2))
    assert not _should_prune(study, [0.5, 0.6, 0.7, 0.8])  # still improving
    assert not _should_prune(study, [0.5, 0.6, 0.7, 0.7])  # one epoch flat
    assert _should_prune(study, [0.5, 0.6, 0.7, 0.7, 0.7])  # two epochs flat
    # Optuna's PatientPruner waits for a best-so-far value to fall, which never happens.
    optunas = _study(optuna.pruners.PatientPruner(always, patience=2))
    assert not _should_prune(optunas, [0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7])
