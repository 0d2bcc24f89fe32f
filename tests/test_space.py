"""Search spaces, samplers, pruners and study settings: every bad one fails in
``sweep.study.prepare`` (before any study, run or trial exists) with one line naming it;
the repeated-failure stop tells a broken setup from a partly bad space."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from sweep.errors import ConfigError, SearchSpaceError
from sweep.optuna_parts import PRUNERS

QUICK = ["data=synthetic", "search=tiny", "trainer.max_epochs=2", "champion.k=0"]


def _prepare(overrides: list[str]):
    from sweep.study import prepare

    return prepare([*QUICK, *overrides])


def _space(tmp_path: Path, text: str) -> list[str]:
    """Overrides selecting ``text`` as the search space, from the user's own folder."""
    folder = tmp_path / "myconf" / "search"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_text(text)
    return [f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "search=mine"]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            "model: {type: categorical, choices: [mlp, cnn]}\n"
            "model.width: {type: int, low: 8, high: 32, when: {model: []}}\n",
            "search.model.width.when.model: empty list",
        ),
        (
            "model: {type: categorical, choices: [mlp]}\n"
            "model.channels: {type: int, low: 8, high: 32, when: {model: cnn}}\n",
            "search.model.channels.when: model=cnn can never hold",
        ),
        (
            "model.channels: {type: int, low: 8, high: 32, when: {model: cnn}}\n",
            "search.model.channels.when: model=cnn can never hold; model is mlp in the base "
            "config and not searched",
        ),
        (
            "model.depth: {type: int, low: 1, high: 3}\n"
            "model.width: {type: int, low: 8, high: 32, when: {model.depth: 7}}\n",
            "search.model.width.when: model.depth=7 can never hold; search.model.depth "
            "samples ints in [1, 3]",
        ),
        (
            "model.depth: {type: int, low: 1, high: 3}\n"
            "model.width: {type: int, low: 8, high: 32, when: {model.depth: '2'}}\n",
            "search.model.width.when: model.depth=2 can never hold",
        ),
        (
            "model.width: {type: int, low: 8, high: 32, when: {model.width: 8}}\n",
            "search.model.width.when: model.width cannot depend on itself",
        ),
        (
            "optimizer.weight_decay: {type: float, low: 0.0, high: 0.1, when: {optimizer: sgd}}\n",
            "search.optimizer.weight_decay.when: optimizer=sgd can never hold; optimizer is "
            "adam in the base config",
        ),
        (
            "model.width: {type: int, low: 8, high: 32, when: {data.batch_size: [16, 32]}}\n",
            "search.model.width.when: data.batch_size=[16, 32] can never hold; "
            "data.batch_size is 64 in the base config",
        ),
        ("study.n_trials: {type: int, low: 1, high: 5}\n", "search.study.n_trials: not a run"),
        ("sampler.n_startup_trials: {type: int, low: 1, high: 5}\n", "search.sampler"),
        ("optimizer.lr: {type: float, low: 1.0e-3, high: .inf}\n", "high=inf: must be finite"),
        ("optimizer.lr: {type: float, low: .nan, high: 0.1}\n", "low=nan: must be finite"),
        ("model.width: {type: int, low: 8.5, high: 20}\n", "low=8.5: must be an integer"),
        ("model.width: {type: int, low: 8, high: 20, step: 2, log: true}\n", "step and log"),
        ("optimizer.lr: {type: float, low: 1.0e-3, high: 0.1, choices: [1]}\n", "unknown field"),
        ("optimizer.lr: 0.1\n", "search.optimizer.lr: expected a mapping"),
        (
            "optimizer: {lr: {type: float, low: 1.0e-3, high: 0.1}}\n",
            "search.optimizer: no type; a nested key is written dotted: optimizer.lr: {type: ..}",
        ),
        (
            "- optimizer.lr: {type: float, low: 1.0e-3, high: 0.1}\n",
            "search: expected a mapping of config keys to parameters",
        ),
        ("model: {type: int, low: 1, high: 2}\n", "'model' is a config group"),
        (
            "model.width: {type: int, low: 8, high: 20, when: {model: mlp}}\n"
            "model: {type: categorical, choices: [mlp, cnn]}\n",
            "'model' must be defined before 'model.width'",
        ),
        ("model.width: {type: int, low: 8, high: 20, when: {modell: mlp}}\n", "unknown key"),
        ("model.activation: {type: categorical, choices: [relu, banana]}\n", "'banana'"),
    ],
)
def test_bad_search_spaces_fail_in_prepare(mlflow_store, tmp_path, space, message):
    with pytest.raises(SearchSpaceError) as caught:
        _prepare(_space(tmp_path, space))
    assert message.replace("must be finite", "must be a finite number") in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_grid_needs_discrete_parameters_and_caps_n_trials(mlflow_store, tmp_path):
    with pytest.raises(SearchSpaceError, match=r"search\.optimizer\.lr: sampler=grid needs"):
        _prepare(["sampler=grid"])
    grid = _space(
        tmp_path,
        "model.width: {type: categorical, choices: [8, 16]}\n"
        "optimizer.lr: {type: float, low: 1.0e-3, high: 3.0e-3, step: 1.0e-3}\n",
    )
    # 2 x 3 points: a larger target would make every rerun evaluate a duplicate.
    assert _prepare([*grid, "sampler=grid", "study.n_trials=50"]).n_trials == 6
    assert _prepare([*grid, "sampler=grid", "study.n_trials=4"]).n_trials == 4


def test_a_conditional_grid_counts_each_distinct_point_once(mlflow_store, tmp_path):
    from sweep.space import grid_size, parse_space

    grid = _space(
        tmp_path,
        "model: {type: categorical, choices: [mlp, cnn]}\n"
        "model.width: {type: int, low: 8, high: 32, step: 8, when: {model: mlp}}\n"
        "model.depth: {type: int, low: 1, high: 2, when: {model: mlp, model.width: [8, 16]}}\n"
        "model.channels: {type: categorical, choices: [4, 8], when: {model: cnn}}\n"
        "optimizer.lr: {type: categorical, choices: [0.001, 0.01]}\n",
    )
    # (mlp: widths 8 and 16 at 2 depths, 24 and 32 without + cnn: 2 channels) x 2 lr;
    # the product of every parameter's values would be 2 x 4 x 2 x 2 x 2 = 64.
    spec = _prepare([*grid, "sampler=grid", "study.n_trials=500"])
    assert spec.n_trials == (2 * 2 + 2 + 2) * 2 == 16
    # A condition on the base config: with the mlp as base, only the mlp's keys vary.
    base_only = parse_space(
        {
            "model.width": {"type": "categorical", "choices": [8, 16], "when": {"model": "mlp"}},
            "model.channels": {"type": "int", "low": 4, "high": 6, "when": {"model": "cnn"}},
        }
    )
    assert grid_size(base_only, spec.cfg) == 2
    # Unconditional: the product, counted without walking it (10^12 points).
    wide = parse_space({f"k{i}": {"type": "int", "low": 1, "high": 10} for i in range(12)})
    assert grid_size(wide, spec.cfg) == 10**12


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sampler.n_startup_trials=-1"], "sampler.n_startup_trials=-1: must be >= 0"),
        (["sampler=gp", "sampler.n_startup_trials=-3"], "sampler.n_startup_trials=-3"),
        (["sampler=qmc", "sampler.qmc_type=bogus"], "sampler=qmc: The `qmc_type='bogus'`"),
        (["sampler=nsga2", "sampler.population_size=1"], "sampler=nsga2: `population_size`"),
        (["+sampler.foo=1"], "sampler.foo: unknown option for sampler 'tpe'"),
        (["pruner=percentile", "pruner.percentile=150"], "pruner=percentile: Percentile must"),
        (
            ["pruner=percentile_all", "pruner.percentile=0"],
            "pruner=percentile_all: percentile must be in (0, 100], got 0",
        ),
        (["pruner=median", "pruner.n_warmup_steps=-1"], "pruner.n_warmup_steps=-1: must be >= 0"),
        (["pruner=patient", "pruner.patience=-1"], "pruner.patience=-1: must be >= 0"),
        (["pruner=hyperband", "pruner.reduction_factor=1"], "pruner.reduction_factor=1"),
        (["pruner=hyperband", "pruner.min_resource=0"], "pruner.min_resource=0: must be >= 1"),
        (["pruner=hyperband", "pruner.max_resource=bogus"], "pruner.max_resource='bogus'"),
        (
            ["pruner=hyperband", "pruner.min_resource=5", "trainer.max_epochs=2"],
            "pruner.min_resource=5: must be <= max_resource (2",
        ),
        (["pruner=successive_halving", "pruner.reduction_factor=1"], "reduction_factor=1"),
        (["pruner=successive_halving", "pruner.min_resource=bogus"], "successive_halving"),
        (["study.metrics=[val/acc,val/acc]"], "study.metrics: val/acc is listed twice"),
        (["+champion.bogus=1"], "champion.bogus: unknown key"),
        (["champion.registered_name=team/model"], "champion.registered_name='team/model'"),
        (["+n_trail=5"], "n_trail: unknown key; known keys: champion, data"),
    ],
)
def test_bad_sampler_pruner_study_or_champion_settings_fail_in_prepare(
    mlflow_store, overrides, message
):
    with pytest.raises(ConfigError) as caught:
        _prepare(overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2"])
def test_every_shipped_sampler_config_passes(mlflow_store, tmp_path, sampler):
    discrete = _space(tmp_path, "model.width: {type: categorical, choices: [8, 16]}\n")
    assert _prepare([*discrete, f"sampler={sampler}"]).cfg.sampler.name == sampler


@pytest.mark.parametrize("pruner", PRUNERS)
def test_every_pruner_has_a_shipped_config_that_passes(mlflow_store, pruner):
    assert _prepare([f"pruner={pruner}"]).cfg.pruner.name == pruner


def _scripted_study(outcomes: str, limit: int):
    """A real in-memory Optuna study whose trials end as scripted: ``o`` finishes, a
    letter fails with that error. Returns the trials run and the stop message."""
    import optuna

    from sweep.study import StopOnRepeatedFailure

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study()
    stop = StopOnRepeatedFailure(limit)

    def objective(trial):
        outcome = outcomes[trial.number]
        if outcome != "o":
            trial.set_user_attr("error", f"ValueError: bad point {outcome} at epoch {trial.number}")
            raise ValueError(outcome)
        return 1.0

    study.optimize(objective, n_trials=len(outcomes), catch=(ValueError,), callbacks=[stop])
    return len(study.trials), stop.message


def test_the_same_error_from_the_start_stops_after_limit_trials():
    ran, message = _scripted_study("aaaaaaaaaa", limit=3)
    assert ran == 3
    assert message is not None
    assert message.endswith("3 trials in a row failed with: ValueError: bad point a at epoch 2")


def test_a_partly_bad_space_does_not_stop_the_study():
    # Once a trial has finished the space has working points: three failures in a row
    # (a diverging corner of the space) are chance, not a broken setup.
    ran, message = _scripted_study("oaaaoaaoaaaaoo", limit=3)
    assert (ran, message) == (14, None)
    # Different errors in a row are not "the same error".
    ran, message = _scripted_study("ababab", limit=3)
    assert (ran, message) == (6, None)


def test_after_a_success_a_long_run_of_one_error_still_stops():
    ran, message = _scripted_study("o" + "a" * 12, limit=2)
    assert ran == 1 + 2 * 3
    assert "6 trials in a row failed with: ValueError: bad point a" in message


# -- the first trials of a new study -------------------------------------------------------------
def test_base_points_are_the_base_then_each_other_group_option_at_its_defaults() -> None:
    from sweep.space import base_points
    from sweep.study import prepare, trial_config

    spec = prepare(["search=default", "data=synthetic"])
    points = base_points(spec.params, spec.cfg, lambda p: trial_config(spec, p), limit=5)
    assert [p["model"] for p in points] == ["mlp", "cnn"]  # every architecture early
    base, cnn = points
    assert base["optimizer.lr"] == pytest.approx(0.003) and base["model.width"] == 128
    # The cnn point carries the cnn config's own defaults, and no mlp-only key.
    cnn_cfg = trial_config(spec, {"model": "cnn"})
    assert cnn["model.channels"] == cnn_cfg.model.channels
    assert "model.width" not in cnn and "model.depth" not in cnn
    assert base_points(spec.params, spec.cfg, lambda p: trial_config(spec, p), limit=1) == [base]


def test_a_new_study_enqueues_at_most_a_quarter_of_its_trials(tmp_path: Path) -> None:
    import optuna

    from sweep.study import enqueue_base_point, prepare

    def enqueued(n_trials: int) -> list[str]:
        spec = prepare(["search=default", "data=synthetic", f"study.n_trials={n_trials}"])
        study = optuna.create_study(direction="maximize")
        enqueue_base_point(study, spec)
        return [
            t.params.get("model") or t.system_attrs["fixed_params"]["model"] for t in study.trials
        ]

    assert enqueued(20) == ["mlp", "cnn"]
    assert enqueued(4) == ["mlp"]  # a tiny study keeps its budget for the sampler


def _epochs(hook, values: list[float]) -> SimpleNamespace:
    """Run the hook's epoch ends on a trainer and module that carry only what it reads."""
    trainer = SimpleNamespace(current_epoch=0, should_stop=False)
    for epoch, value in enumerate(values):
        trainer.current_epoch = epoch
        hook.on_train_epoch_end(trainer, SimpleNamespace(epoch_metrics={"val/x": value}))
        if trainer.should_stop:
            break
    return trainer


def test_pruning_hook_reports_the_best_value_so_far() -> None:
    import optuna

    from sweep.pruning import OptunaPruning

    for mode, values, expected in (
        ("max", [0.4, 0.7, 0.5, 0.8], [0.4, 0.7, 0.7, 0.8]),
        ("min", [1.0, 0.6, 0.9, 0.5], [1.0, 0.6, 0.6, 0.5]),
    ):
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
        trial = study.ask()
        trainer = _epochs(OptunaPruning(trial, "val/x", mode), values)
        assert not trainer.should_stop
        stored = study.trials[0].intermediate_values
        assert stored == dict(enumerate(expected))


def test_pruning_hook_stops_the_trainer_at_the_epoch_the_pruner_says() -> None:
    import optuna

    from sweep.pruning import OptunaPruning

    # Prune below 0.6 from epoch 1 on: a noisy epoch after a good one does not prune (the
    # best so far is reported), a trial that never got there stops at epoch 1.
    pruner = optuna.pruners.ThresholdPruner(lower=0.6, n_warmup_steps=1)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    kept, stopped = OptunaPruning(study.ask(), "val/x"), OptunaPruning(study.ask(), "val/x")
    assert not _epochs(kept, [0.7, 0.3, 0.5]).should_stop and kept.pruned_epoch is None
    trainer = _epochs(stopped, [0.5, 0.55, 0.9])
    assert trainer.should_stop and stopped.pruned_epoch == 1 == trainer.current_epoch


@pytest.mark.parametrize(("model", "searched"), [("mlp", {"model.width"}), ("cnn", set())])
def test_a_condition_on_an_unsearched_group_reads_the_base_option(mlflow_store, model, searched):
    import optuna

    from sweep.config import compose
    from sweep.space import parse_space, suggest

    params = parse_space(
        {"model.width": {"type": "int", "low": 8, "high": 16, "when": {"model": "mlp"}}}
    )
    trial = optuna.create_study().ask()
    assert set(suggest(trial, params, compose("sweep", [f"model={model}"]))) == searched
