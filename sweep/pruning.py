"""The Optuna pruning hook for Lightning.

Reports the monitored validation metric to the trial after every validation epoch. When
the trial should be pruned it sets ``trainer.should_stop`` instead of raising inside
``fit`` (which would send Lightning down its failure path); the caller raises
``optuna.TrialPruned`` after the run is recorded. No ``min_epochs`` is set, so the stop
takes effect at the end of the current epoch.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class OptunaPruning(L.Callback):
    def __init__(self, trial: Any, monitor: str):
        self.trial = trial
        self.monitor = monitor
        self.pruned_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in pl_module.epoch_metrics:
            return
        epoch = trainer.current_epoch
        self.trial.report(pl_module.epoch_metrics[self.monitor], step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            trainer.should_stop = True
