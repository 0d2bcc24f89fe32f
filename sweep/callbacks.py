"""Lightning callbacks: per-epoch recording and display, best weights kept in memory."""

from __future__ import annotations

from typing import Any

import lightning as L

from sweep import interrupts


class EpochRecorder(L.Callback):
    """After each validation epoch: send the epoch's metrics to MLflow (step = epoch)
    and print one progress line when asked. After each training epoch: raise the
    KeyboardInterrupt of a signal that was lost (:mod:`sweep.interrupts`)."""

    def __init__(self, recorder: Any, max_epochs: int, progress: bool):
        self.recorder = recorder
        self.max_epochs = max_epochs
        self.progress = progress
        self.epochs_run = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here rather than in a callback of its own: Lightning calls every hook of every
        # callback on every batch, and a trial pays for each.
        interrupts.raise_if_lost()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not pl_module.epoch_metrics:
            return
        epoch = trainer.current_epoch
        self.epochs_run = epoch + 1
        self.recorder.metrics(pl_module.epoch_metrics, step=epoch)
        if self.progress:
            shown = "  ".join(
                f"{k} {v:.4g}" for k, v in pl_module.epoch_metrics.items() if k != "lr"
            )
            print(f"epoch {epoch + 1:>3}/{self.max_epochs}  {shown}", flush=True)


class BestWeights(L.Callback):
    """Keeps a copy of the weights at the best monitored validation value (no files)."""

    def __init__(self, monitor: str, mode: str):
        self.monitor, self.mode = monitor, mode
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.state_dict: dict | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from sweep.train import is_better, snapshot

        if trainer.sanity_checking or self.monitor not in pl_module.epoch_metrics:
            return
        value = pl_module.epoch_metrics[self.monitor]
        if is_better(value, self.best_value, self.mode):
            self.best_value = value
            self.best_epoch = trainer.current_epoch
            self.best_metrics = dict(pl_module.epoch_metrics)
            self.state_dict = snapshot(pl_module)
