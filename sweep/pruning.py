"""The Optuna pruning hook for Lightning.

Reports the monitored validation metric to the trial after every epoch's validation, as
its best value so far: a trial's objective is its validation score at the best epoch
(whose weights are restored), so that is the intermediate value to rank trials by, and
one noisy epoch (common in the first epochs of a CNN) neither prunes a trial that was
ahead nor keeps one that never was. When the trial should be pruned it sets
``trainer.should_stop`` instead of raising inside ``fit`` (which would send Lightning
down its failure path); the caller raises
``optuna.TrialPruned`` after the run is recorded. No ``min_epochs`` is set, so the stop
takes effect at the end of the current epoch.

:mod:`sweep.pruners` holds two pruners built for these reports.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class OptunaPruning(L.Callback):
    def __init__(self, trial: Any, monitor: str, mode: str = "max"):
        self.trial = trial
        self.monitor = monitor
        self.better = max if mode == "max" else min
        self.best: float | None = None
        self.pruned_epoch: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor not in pl_module.epoch_metrics:
            return
        epoch = trainer.current_epoch
        value = float(pl_module.epoch_metrics[self.monitor])
        if self.best is None or value != value:  # NaN: report it, the trial fails anyway
            self.best = value
        elif self.best == self.best:
            self.best = self.better(self.best, value)
        self.trial.report(self.best, step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            trainer.should_stop = True
