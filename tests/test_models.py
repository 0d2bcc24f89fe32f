"""Networks, metrics, optimisers and schedulers (no training loop)."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf
from torch.nn import functional as F

from sweep.config import default_monitor
from sweep.models.networks import CNN, MLP, build_network, count_parameters
from sweep.models.task import (
    Task,
    build_optimizer,
    build_scheduler,
    classification_metrics,
    regression_metrics,
)


def conf(group: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / group / f"{option}.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


# -- networks ------------------------------------------------------------------------------
@pytest.mark.parametrize("input_shape", [(40,), (8, 8), (12,)])
@pytest.mark.parametrize("num_outputs", [1, 10])
def test_mlp_forward_shape(input_shape, num_outputs):
    net = MLP(
        input_shape, num_outputs, depth=2, width=16, activation="gelu", dropout=0.1, batch_norm=True
    )
    out = net(torch.randn(5, *input_shape))
    assert out.shape == (5, num_outputs)


def test_mlp_depth_zero_is_linear():
    net = MLP((8, 8), 3, depth=0, width=16, activation="relu", dropout=0.0, batch_norm=False)
    assert count_parameters(net) == 64 * 3 + 3


@pytest.mark.parametrize("input_shape", [(40,), (8, 8), (12,)])
def test_cnn_forward_shape_1d_and_2d(input_shape):
    net = CNN(input_shape, 10, channels=4, depth=3, kernel_size=3, dropout=0.1, batch_norm=True)
    out = net(torch.randn(6, *input_shape))
    assert out.shape == (6, 10)
    conv = net.features[0]
    assert isinstance(conv, torch.nn.Conv1d if len(input_shape) == 1 else torch.nn.Conv2d)


def test_cnn_rejects_3d_samples():
    with pytest.raises(ValueError, match="1-D or 2-D"):
        CNN((3, 8, 8), 10, channels=4, depth=1, kernel_size=3, dropout=0.0, batch_norm=False)


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("input_shape", [(40,), (8, 8)])
def test_build_network_from_every_model_config(model, input_shape):
    net = build_network(conf("model", model), input_shape, 10)
    net.eval()
    assert net(torch.randn(3, *input_shape)).shape == (3, 10)
    assert count_parameters(net) > 0


def test_build_network_unknown_name():
    with pytest.raises(ValueError, match="unknown model"):
        build_network({"name": "resnet"}, (8,), 2)


# -- metrics -------------------------------------------------------------------------------
def logits_for(pred: list[int], num_classes: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(pred), num_classes).float() * 5.0


def test_classification_metrics_by_hand():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = logits_for([0, 1, 1, 1, 2, 0], 3)
    m = classification_metrics(logits, y, 3)
    assert float(m["acc"]) == pytest.approx(4 / 6)
    # class 0: P=1/2 R=1/2 F1=1/2; class 1: P=2/3 R=1 F1=4/5; class 2: P=1 R=1/2 F1=2/3
    assert float(m["f1"]) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert float(m["loss"]) == pytest.approx(float(F.cross_entropy(logits, y)))


def test_classification_metrics_perfect_and_absent_class():
    y = torch.tensor([0, 1, 1, 0])
    m = classification_metrics(logits_for([0, 1, 1, 0], 3), y, 3)  # class 2 never occurs
    assert float(m["acc"]) == 1.0
    assert float(m["f1"]) == pytest.approx(1.0)


def test_regression_metrics_perfect_prediction():
    y = torch.tensor([1.0, -2.0, 3.5, 0.0])
    m = regression_metrics(y.unsqueeze(-1).clone(), y, target_scale=7.0)
    assert float(m["r2"]) == pytest.approx(1.0)
    assert float(m["mae"]) == pytest.approx(0.0)
    assert float(m["loss"]) == pytest.approx(0.0)


def test_regression_metrics_by_hand():
    y = torch.tensor([1.0, 2.0, 4.0])
    pred = torch.tensor([[1.0], [2.0], [3.0]])
    m = regression_metrics(pred, y, target_scale=2.0)
    assert float(m["loss"]) == pytest.approx(1 / 3)
    assert float(m["mae"]) == pytest.approx(2.0 / 3)  # in the target's units
    # mean 7/3, total sum of squares 42/9, residual sum of squares 1
    assert float(m["r2"]) == pytest.approx(1 - 9 / 42)


def test_default_monitor():
    assert default_monitor("classification") == ("val/acc", "max")
    assert default_monitor("regression") == ("val/loss", "min")


# -- optimisers and schedulers -------------------------------------------------------------
EXPECTED_OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def test_every_optimizer_option_is_covered():
    assert set(options("optimizer")) == set(EXPECTED_OPTIMIZERS)


@pytest.mark.parametrize("name", options("optimizer"))
def test_build_optimizer(name):
    cfg = conf("optimizer", name)
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = build_optimizer(cfg, params)
    assert type(opt) is EXPECTED_OPTIMIZERS[name]
    group = opt.param_groups[0]
    assert group["lr"] == cfg["lr"]
    assert group["weight_decay"] == cfg["weight_decay"]
    if "momentum" in cfg:
        assert group["momentum"] == cfg["momentum"]
    # one step moves the weights
    params[0].sum().backward()
    opt.step()
    assert not torch.equal(params[0].detach(), torch.ones(3))


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizers_step_exactly_like_torchs_default_loop(name):
    """build_optimizer uses torch's multi-tensor (foreach) steps for speed: the weights
    must stay bit-identical to the per-tensor loop torch uses on the CPU by default, or
    the same seed would give other metrics than before."""
    cfg = {**conf("optimizer", name), "weight_decay": 1e-3}
    if "momentum" in cfg:
        cfg["momentum"] = 0.9

    def trained(make_optimizer) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        opt = make_optimizer(net.parameters())
        x, y = torch.randn(64, 7), torch.randint(0, 3, (64,))
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    def per_tensor(params):
        opt = build_optimizer(cfg, params)
        for group in opt.param_groups:
            group["foreach"] = False
        return opt

    fast = trained(lambda params: build_optimizer(cfg, params))
    assert build_optimizer(cfg, [torch.nn.Parameter(torch.ones(1))]).defaults["foreach"]
    for a, b in zip(fast, trained(per_tensor), strict=True):
        assert torch.equal(a, b)


def test_sgd_nesterov_needs_momentum():
    cfg = {**conf("optimizer", "sgd"), "momentum": 0.0, "nesterov": True}
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.ones(2))])
    assert opt.param_groups[0]["nesterov"] is False


def test_build_optimizer_unknown():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer({"name": "lbfgs", "lr": 1.0, "weight_decay": 0.0}, [])


def lr_after(scheduler, optimizer, epochs: int, metric: float = 1.0) -> list[float]:
    lrs = []
    for _ in range(epochs):
        optimizer.step()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metric)
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("name", options("scheduler"))
def test_build_scheduler(name):
    cfg = conf("scheduler", name)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    sched = build_scheduler(cfg, opt, max_epochs=20, mode="max")
    if name == "none":
        assert sched is None
        return
    lrs = lr_after(sched, opt, 20)
    if name == "cosine":
        assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
        assert lrs[-1] == pytest.approx(0.1 * cfg["min_lr_ratio"])
    elif name == "step":
        assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
        assert lrs[cfg["step_size"] - 1] == pytest.approx(0.1 * cfg["gamma"])
        assert lrs[cfg["step_size"] - 2] == pytest.approx(0.1)
    elif name == "plateau":
        assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
        assert sched.mode == "max"
        # a metric that never improves: the lr is cut once `patience` epochs went by
        patience = cfg["patience"]
        assert lrs[patience] == pytest.approx(0.1)
        assert lrs[patience + 1] == pytest.approx(0.1 * cfg["factor"])
    else:  # a new option: add its expectations here
        pytest.fail(f"no expectations for scheduler {name!r}")


def test_build_scheduler_unknown():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler({"name": "warmup"}, opt, 10)


@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_task_configure_optimizers(scheduler):
    net = build_network(conf("model", "mlp"), (12,), 3)
    task = Task(
        net,
        "classification",
        3,
        optimizer=conf("optimizer", "adam"),
        scheduler=conf("scheduler", scheduler),
        max_epochs=5,
        monitor="val/acc",
        mode="max",
    )
    configured = task.configure_optimizers()
    if scheduler == "none":
        assert isinstance(configured, torch.optim.Adam)
        return
    assert isinstance(configured["optimizer"], torch.optim.Adam)
    assert configured["lr_scheduler"]["interval"] == "epoch"
    if scheduler == "plateau":
        # The task steps it (manual optimisation): no "monitor" for Lightning, which would
        # ignore it with a warning in every run; with Lightning stepping it, it is there.
        assert "monitor" not in configured["lr_scheduler"]
        assert configured["lr_scheduler"]["scheduler"].mode == "max"
        task.automatic_optimization = True
        assert task.configure_optimizers()["lr_scheduler"]["monitor"] == "val/acc"


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_epoch_train_loss_is_the_mean_over_the_rows(loader):
    """Each batch's loss counts by its rows (the last batch is smaller): with a learning
    rate of zero the weights never move, so the epoch's train/loss is the loss over the
    whole training split at once."""
    import lightning as L

    from sweep.data import load_dataset
    from sweep.data.module import ArrayDataModule

    ds = load_dataset(OmegaConf.create(conf("data", "synthetic")))
    assert len(ds.x_train) % 50 != 0
    net = build_network({**conf("model", "mlp"), "dropout": 0.0}, ds.input_shape, 3)
    task = Task(
        net,
        "classification",
        3,
        optimizer={**conf("optimizer", "sgd"), "lr": 0.0},
        scheduler=conf("scheduler", "none"),
        max_epochs=1,
        monitor="val/acc",
        mode="max",
    )
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=ArrayDataModule(ds, batch_size=50, seed=0, loader=loader))
    with torch.no_grad():
        x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
        expected = float(F.cross_entropy(net(x), y))
    assert task.epoch_metrics["train/loss"] == pytest.approx(expected, rel=1e-5)
