"""Named experiments (conf/experiment/): presets of a study, chosen with experiment=NAME."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import finish_cli, start_cli
from omegaconf import OmegaConf

from sweep import config as config_mod
from sweep.errors import ConfigError

CONF = Path(config_mod.__file__).resolve().parents[1] / "conf"
SHIPPED = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _experiment_file(name: str) -> tuple[dict, dict]:
    """An experiment file's group overrides (``override /search: digits`` -> search:
    digits) and its own values."""
    text = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    groups = {}
    for entry in text.pop("defaults", []):
        ((key, option),) = entry.items()
        groups[key.removeprefix("override /")] = option
    return groups, text


def _leaves(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_experiments_are_shipped():
    assert {"digits", "mnist1d_arch", "mnist1d_small", "smoke"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_an_experiment_sets_its_groups_and_values_over_sweep_yaml(name):
    cfg = config_mod.compose("sweep", [f"experiment={name}"])
    groups, values = _experiment_file(name)
    assert groups or values
    own = _leaves(values)
    for group, option in groups.items():
        expected = config_mod.flatten(config_mod.compose("sweep", [f"{group}={option}"])[group])
        got = config_mod.flatten(cfg[group])
        for key in expected.keys() - {k.removeprefix(f"{group}.") for k in own}:
            assert got[key] == expected[key], f"{group}.{key}"
    for key, value in own.items():
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation: resolved below for the one that uses it
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, key


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_experiment_is_a_valid_study(name):
    """Everything tune checks before its first trial: config, space, sampler, pruner, data."""
    from sweep.study import prepare

    spec = prepare([f"experiment={name}"])
    assert spec.name == config_mod.compose("sweep", [f"experiment={name}"]).study.name
    assert spec.name != "mnist1d_default"  # its own study, not the default one


def test_the_command_line_overrides_the_experiment():
    cfg = config_mod.compose(
        "sweep", ["experiment=smoke", "study.n_trials=7", "trainer=default", "data=digits"]
    )
    assert cfg.study.n_trials == 7  # smoke: 5
    assert cfg.trainer.max_epochs == 30  # smoke: trainer=fast, 3
    assert cfg.study.name == "smoke_digits"  # smoke_${data.name}
    assert cfg.champion.k == 1  # still the experiment's


def test_an_unknown_experiment_names_the_shipped_ones():
    with pytest.raises(ConfigError) as info:
        config_mod.compose("sweep", ["experiment=nope"])
    message = str(info.value)
    assert message.startswith("experiment=nope: unknown option for 'experiment'")
    assert all(name in message for name in SHIPPED)


def test_a_study_group_given_to_train_says_where_it_belongs():
    with pytest.raises(ConfigError) as info:
        config_mod.compose("train", ["experiment=digits"])
    assert str(info.value) == (
        "experiment=digits: no config group 'experiment' in train.yaml "
        "(a study's group: sweep tune experiment=digits)"
    )


def test_chosen_option_reads_the_last_choice_of_a_group():
    assert config_mod.chosen_option(["experiment=a", "x=1", "experiment=b"], "experiment") == "b"
    assert config_mod.chosen_option(["+experiment=a"], "experiment") == "a"
    assert config_mod.chosen_option(["experiment=null"], "experiment") is None
    assert config_mod.chosen_option(["experiments=a", "study.experiment=c"], "experiment") is None


MINE = """\
# @package _global_
defaults:
  - override /data: synthetic
  - override /search: tiny
study:
  name: mine_study
  n_trials: 4
trainer:
  max_epochs: 3
champion:
  k: 0
tracking:
  log_model: false
"""


@pytest.mark.e2e
def test_a_users_own_experiment_runs_and_a_worker_joins_it(tracked, tmp_path):
    """An experiment in the user's own config folder, as the README says: its data and
    space reach every trial, the parent run records its name, and `sweep worker` with the
    same experiment and a larger n_trials joins the same study (`make worker EXP=...`)."""
    from mlflow.tracking import MlflowClient

    from sweep.check import check, load_study
    from sweep.study import tune

    folder = tmp_path / "myconf" / "experiment"
    folder.mkdir(parents=True)
    (folder / "mine.yaml").write_text(MINE)
    overrides = [f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "experiment=mine"]

    tune(overrides, progress=False)
    proc = start_cli("worker", *overrides, "study.n_trials=6", cwd=tmp_path, uri=tracked)
    worker = finish_cli(proc)
    assert worker.returncode == 0, worker.stderr[-3000:]

    study, _ = load_study(overrides)
    assert study.study_name == "mine_study"
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    by_worker = [t.user_attrs["worker"].endswith(f":{proc.pid}") for t in study.trials]
    assert by_worker == [False] * 4 + [True] * 2
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mine_study")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 6
    assert parents[0].data.params["experiment"] == "mine"
    for run in trials:
        assert run.data.params["data.name"] == "synthetic"
        assert run.data.params["trainer.max_epochs"] == "3"
        assert {"param.optimizer.lr", "param.model.width"} <= set(run.data.tags)
    assert check(overrides) == []
