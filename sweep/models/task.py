"""The LightningModule: loss, metrics, optimiser and scheduler for a classification or
regression task. Metrics are computed once per epoch over the whole split (exact, not
averaged over batches) and exposed in ``epoch_metrics`` for the tracker and the pruner.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import DoublePrecision, Precision
from torch import nn
from torch.nn import functional as F

from sweep.errors import NonFiniteLossError

CLASSIFICATION_METRICS = ("val/loss", "val/acc", "val/f1")
REGRESSION_METRICS = ("val/loss", "val/mae", "val/r2")


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    pred = logits.argmax(dim=1)
    acc = (pred == y).float().mean()
    confusion = torch.bincount(y * num_classes + pred, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes).float()
    tp = confusion.diag()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = confusion.sum(1) > 0  # macro-F1 over the classes present in this split
    return {"loss": F.cross_entropy(logits, y), "acc": acc, "f1": f1[present].mean()}


def regression_metrics(pred: torch.Tensor, y: torch.Tensor, target_scale: float) -> dict:
    pred = pred.squeeze(-1)
    mse = F.mse_loss(pred, y)
    ss_tot = ((y - y.mean()) ** 2).sum().clamp(min=1e-12)
    return {
        "loss": mse,
        "mae": (pred - y).abs().mean() * target_scale,  # in the target's own units
        "r2": 1 - ((pred - y) ** 2).sum() / ss_tot,
    }


class Task(L.LightningModule):
    """Trains ``network`` for ``task``; validation and test metrics per epoch."""

    def __init__(
        self,
        network: nn.Module,
        task: str,
        num_outputs: int,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any],
        max_epochs: int,
        monitor: str,
        mode: str,
        target_scale: float = 1.0,
        gradient_clip_val: float = 0.0,
    ):
        super().__init__()
        # Manual optimisation, so that one Lightning step can run a whole epoch of
        # in-memory mini-batches: Lightning's per-step hooks cost about 0.5 ms each, as much
        # as a small model's step. For the same reason, in full precision (32 or 64 bit)
        # each mini-batch calls backward() and the torch optimiser's step() directly: what
        # Lightning's manual_backward / LightningOptimizer.step do there, less their
        # dispatch (measured: 26% of a 30-epoch mnist1d fit). Mixed precision goes through
        # Lightning (autocast, loss scaling). Gradient clipping and lr scheduling are here.
        self.automatic_optimization = False
        self.plain_steps = False  # decided in on_fit_start, from the precision plugin
        self.gradient_clip_val = gradient_clip_val
        self.log_to_logger = False  # no Lightning logger: sweep.tracking records metrics
        self.network = network
        self.task = task
        self.num_outputs = num_outputs
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.max_epochs = max_epochs
        self.monitor, self.mode = monitor, mode
        self.target_scale = target_scale
        self.epoch_metrics: dict[str, float] = {}
        self.test_metrics: dict[str, float] = {}
        self.trained_on = ""  # the device of the last fit, see describe_device
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Each mini-batch's (detached) loss and size: summed once per epoch, not per step.
        self._train_losses: list[torch.Tensor] = []
        self._train_sizes: list[int] = []
        self._epoch_start = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return F.cross_entropy(out, y)
        return F.mse_loss(out.squeeze(-1), y)

    def _metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.task == "classification":
            return classification_metrics(out, y, self.num_outputs)
        return regression_metrics(out, y, self.target_scale)

    # -- training ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "move_to"):
            datamodule.move_to(self.device)
        # Exactly the full-precision plugins: their backward and step are the plain ones.
        self.plain_steps = type(self.trainer.precision_plugin) in (Precision, DoublePrecision)
        self.trained_on = describe_device(self.device)

    def on_train_epoch_start(self) -> None:
        self._train_losses.clear()
        self._train_sizes.clear()
        self._epoch_start = time.perf_counter()

    def training_step(self, batch, batch_idx: int) -> None:
        """One mini-batch (x, y) from a DataLoader, or an epoch's worth of in-memory
        mini-batches (an iterable of them) from the in-memory DataModule."""
        is_single = (
            isinstance(batch, tuple | list) and len(batch) == 2 and torch.is_tensor(batch[0])
        )
        optimizer = self.optimizers()
        if self.plain_steps:
            optimizer = optimizer.optimizer  # the torch optimiser under Lightning's wrapper
        # Lightning converts the inputs of each batch it sees to the precision's dtype
        # (float64 for 64-true); an epoch's in-memory mini-batches are converted here.
        plugin = self.trainer.precision_plugin
        convert = None if is_single or type(plugin) is Precision else plugin.convert_input
        losses, sizes = self._train_losses, self._train_sizes
        for x, y in [batch] if is_single else batch:
            if convert is not None:
                x, y = convert((x, y))
            loss = self._loss(self(x), y)
            optimizer.zero_grad()
            if self.plain_steps:
                loss.backward()
            else:
                self.manual_backward(loss)
            if self.gradient_clip_val:
                self.clip_gradients(
                    optimizer,
                    gradient_clip_val=self.gradient_clip_val,
                    gradient_clip_algorithm="norm",
                )
            optimizer.step()
            # Kept on the device: no host sync per step; summed and checked once per epoch.
            losses.append(loss.detach())
            sizes.append(len(y))

    def _train_loss(self) -> float:
        """The epoch's mean training loss over its rows (each batch weighted by its size)."""
        if not self._train_losses:
            return 0.0
        losses = torch.stack(self._train_losses)
        sizes = torch.tensor(self._train_sizes, dtype=losses.dtype, device=losses.device)
        return float((losses * sizes).sum()) / sum(self._train_sizes)

    # -- validation / test ------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self._outputs.append((self(x).detach(), y))

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self._outputs.append((self(x).detach(), y))

    def _epoch_end_metrics(self, prefix: str) -> dict[str, float]:
        out = torch.cat([o for o, _ in self._outputs])
        y = torch.cat([t for _, t in self._outputs])
        self._outputs.clear()
        return {f"{prefix}/{k}": float(v) for k, v in self._metrics(out.float(), y).items()}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._outputs.clear()
            return
        metrics = self._epoch_end_metrics("val")
        train_loss = self._train_loss()
        epoch = self.current_epoch
        for name, value in (("train/loss", train_loss), ("val/loss", metrics["val/loss"])):
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{name} became {value} at epoch {epoch}")
        if self.log_to_logger:
            self.log_dict(metrics, on_epoch=True, prog_bar=False)
        else:
            # Our own tracker records everything; Lightning's EarlyStopping only reads the
            # monitored value from trainer.callback_metrics. Set it there: self.log's
            # result bookkeeping costs ~0.3 ms an epoch, as much as a small model's step.
            self.trainer.callback_metrics[self.monitor] = torch.tensor(metrics[self.monitor])
        self.epoch_metrics = {
            "train/loss": train_loss,
            **metrics,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "time/epoch": time.perf_counter() - self._epoch_start,
        }
        self._step_scheduler(metrics)

    def _step_scheduler(self, metrics: dict[str, float]) -> None:
        """Once per epoch, after validation (where Lightning would step it)."""
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metrics[self.monitor])
        else:
            scheduler.step()

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._epoch_end_metrics("test")

    # -- optimisation -----------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimizer_cfg, self.parameters())
        scheduler = build_scheduler(self.scheduler_cfg, optimizer, self.max_epochs, self.mode)
        if scheduler is None:
            return optimizer
        config = {"scheduler": scheduler, "interval": "epoch"}
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if plateau and self.automatic_optimization:
            # Only Lightning's own stepping reads it; in manual optimisation (ours, see
            # _step_scheduler) it would be ignored with a warning in every run.
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}


def describe_device(device: torch.device) -> str:
    """Where a run trains, for its ``device`` tag: ``cuda:0 (NVIDIA H200)``, ``cpu (2
    threads)``, ``mps``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def build_optimizer(cfg: dict[str, Any], params) -> torch.optim.Optimizer:
    """The configured torch optimiser, with its ``foreach`` (multi-tensor) implementation.

    On the CPU torch defaults to the per-tensor loop, whose Python overhead is a fifth of a
    small model's training step; ``foreach`` does the same arithmetic in the same order
    (bit-identical weights, see tests/test_models.py): 3-7% faster per epoch in a plain
    loop over mnist1d (MLP at batch 100, CNN at 32 and 256; 2 cores), too little to show
    through a whole study's run-to-run noise. On CUDA it is torch's default already.
    ``fused`` would be faster still but rounds differently: the same seed would no longer
    give the same metrics."""
    name, lr, wd = cfg["name"], cfg["lr"], cfg["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            weight_decay=wd,
            momentum=cfg["momentum"],
            nesterov=cfg["nesterov"] and cfg["momentum"] > 0,
            foreach=True,
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, foreach=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=lr, weight_decay=wd, momentum=cfg["momentum"], foreach=True
        )
    raise ValueError(f"unknown optimizer {name!r}")


def build_scheduler(
    cfg: dict[str, Any], optimizer: torch.optim.Optimizer, max_epochs: int, mode: str = "min"
):
    name = cfg["name"]
    sched = torch.optim.lr_scheduler
    if name == "none":
        return None
    if name == "cosine":
        base = optimizer.param_groups[0]["lr"]
        return sched.CosineAnnealingLR(
            optimizer, T_max=max_epochs, eta_min=base * cfg["min_lr_ratio"]
        )
    if name == "step":
        return sched.StepLR(optimizer, step_size=cfg["step_size"], gamma=cfg["gamma"])
    if name == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg["factor"], patience=cfg["patience"]
        )
    raise ValueError(f"unknown scheduler {name!r}")
