"""A trial's config is composed once per group choice and copied with its sampled values
set (sweep.config.compose_with_values): it must equal what Hydra composes from the full
override list, for every kind of parameter of the shipped spaces."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sweep import config as config_mod
from sweep.errors import ConfigError


def _points(spec, n: int) -> list[dict]:
    """``n`` points of the study's space, sampled by Optuna as a trial would."""
    import optuna

    from sweep.space import suggest

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    points = []
    for _ in range(n):
        trial = study.ask()
        points.append(suggest(trial, spec.params, spec.cfg))
        study.tell(trial, 0.0)
    return points


@pytest.mark.parametrize(
    "base",
    [
        ["data=synthetic", "search=default"],
        # A base override of a searched key and of a searched group: the point wins.
        ["data=synthetic", "search=default", "optimizer.lr=0.05", "model=cnn"],
        ["data=synthetic", "search=mnist1d_arch", "trainer.max_epochs=4"],
    ],
)
def test_trial_config_equals_a_full_hydra_compose(base: list[str]) -> None:
    from sweep.space import to_overrides
    from sweep.study import prepare, trial_config

    spec = prepare(base)
    points = _points(spec, 12)
    assert {"mlp", "cnn"} <= {p.get("model") for p in points}  # both groups were sampled
    for point in points:
        full = config_mod.compose(
            "sweep", config_mod.merge_overrides(base, to_overrides(spec.params, point))
        )
        fast = trial_config(spec, point)
        assert OmegaConf.to_container(fast, resolve=True) == OmegaConf.to_container(
            full, resolve=True
        ), point


def test_compose_with_values_copies_and_rejects_unknown_keys() -> None:
    first = config_mod.compose_with_values("train", [], {"optimizer.lr": 0.5})
    second = config_mod.compose_with_values("train", [], {})
    assert first.optimizer.lr == 0.5
    assert second.optimizer.lr != 0.5  # the cached base was copied, not changed
    with pytest.raises(ConfigError, match=r"^model\.no_such_key: unknown key in 'model'; known"):
        config_mod.compose_with_values("train", [], {"model.no_such_key": 3})


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer.lr=1e-3", "model.width=64", "seed=7"],
        ["model=cnn", "model.channels=24", "optimizer=sgd", "optimizer.momentum=0.5"],
        ["data=csv", "data.path='my table.csv'", "data.target=label", "data.drop=[id]"],
        ["trainer.monitor=val/f1", "model.width=32", "model.width=48", "scheduler=cosine"],
        ["+model.extra=3", "trainer.early_stopping.patience=2", "model.batch_norm=false"],
        ["tracking.uri=null", "data.batch_size=256", "model.activation=gelu"],
    ],
)
def test_compose_fast_equals_compose(overrides: list[str]) -> None:
    """Plain value overrides set on a cached composition give Hydra's own result."""
    fast = config_mod.compose_fast("train", overrides)
    full = config_mod.compose("train", overrides)
    assert OmegaConf.to_container(fast) == OmegaConf.to_container(full)


def test_compose_fast_names_an_unknown_key_like_compose() -> None:
    with pytest.raises(ConfigError) as fast:
        config_mod.compose_fast("train", ["model.widht=3"])
    with pytest.raises(ConfigError) as full:
        config_mod.compose("train", ["model.widht=3"])
    assert str(fast.value) == str(full.value)
