"""Run-config composition and validation: every bad value is one line naming its key."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, cli_env, count_runs
from omegaconf import OmegaConf

from sweep.config import (
    SCHEMAS,
    flatten,
    load_run_config,
    merge_overrides,
    override_key,
    run_part,
)
from sweep.errors import ConfigError

HEAVY = ("torch", "mlflow", "lightning", "pytorch_lightning")


# -- accepted ------------------------------------------------------------------------------
def test_defaults_compose_and_validate():
    cfg = load_run_config([])
    assert cfg.data.name == "mnist1d"
    assert cfg.model.name == "mlp"
    assert cfg.optimizer.name == "adam"
    assert cfg.scheduler.name == "none"
    assert cfg.trainer.max_epochs >= 1
    assert cfg.seed == 0
    assert set(run_part(cfg)) == {
        "data",
        "model",
        "optimizer",
        "scheduler",
        "trainer",
        "tracking",
        "seed",
    }


def test_issue_example_cnn_sgd():
    cfg = load_run_config(
        ["model=cnn", "optimizer=sgd", "optimizer.lr=0.05", "data.batch_size=128"]
    )
    assert cfg.model.name == "cnn"
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.lr == 0.05
    assert cfg.data.batch_size == 128


def test_issue_example_csv():
    # Not loaded here: the file is checked when the data is loaded, not at compose time.
    cfg = load_run_config(["data=csv", "data.path=x.csv", "data.target=label"])
    assert cfg.data.name == "csv"
    assert cfg.data.path == "x.csv"
    assert cfg.data.target == "label"


@pytest.mark.parametrize(
    ("group", "options"),
    [(group, sorted(options)) for group, options in SCHEMAS.items()],
)
def test_every_group_option_validates(group, options):
    """Each conf/<group>/*.yaml has a schema, and each schema a yaml that passes it."""
    on_disk = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    assert on_disk == options
    for option in options:
        extra = ["data.path=x.csv", "data.target=y"] if (group, option) == ("data", "csv") else []
        cfg = load_run_config([f"{group}={option}", *extra])
        assert cfg[group].name == option


def test_flatten_and_overrides_helpers():
    assert flatten(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": 2})) == {
        "a.b": 1,
        "a.c": [1, 2],
        "d": 2,
    }
    assert override_key("+model.width=3") == "model.width"
    assert override_key("~model.width") == "model.width"
    assert merge_overrides(["model=cnn", "optimizer.lr=1"], ["optimizer.lr=2"]) == [
        "model=cnn",
        "optimizer.lr=2",
    ]


# -- rejected ------------------------------------------------------------------------------
def reject(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(overrides)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    return message


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optimizer.lr=0"], "optimizer.lr"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["data.batch_size=0"], "data.batch_size"),
        (["model.dropout=1.0"], "model.dropout"),
        (["model.dropout=-0.1"], "model.dropout"),
        (["model=cnn", "model.dropout=1.0"], "model.dropout"),
        (["trainer.max_epochs=0"], "trainer.max_epochs"),
        (["optimizer.lr=abc"], "optimizer.lr"),
        (["model.batch_norm=maybe"], "model.batch_norm"),
        (["trainer.max_epochs=2.5"], "trainer.max_epochs"),
        (["optimizer.lrr=1"], "optimizer.lrr"),
        (["+optimizer.lrr=1"], "optimizer.lrr"),
        (["data=csv"], "data.path"),
        (["data=csv", "data.path=x.csv"], "data.target"),
        (["trainer.monitor=val/r2"], "trainer.monitor"),
        (["data=synthetic", "data.task=regression", "trainer.monitor=val/acc"], "trainer.monitor"),
        (["data=digits", "data.val_fraction=0.5", "data.test_fraction=0.5"], "data.val_fraction"),
        (["data=digits", "data.val_fraction=0.7", "data.test_fraction=0.4"], "data.val_fraction"),
        (["data.val_fraction=0"], "data.val_fraction"),
        (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma"),
        (["seed=-1"], "seed"),
        (["optimizer.lr=inf"], "optimizer.lr"),
        (["optimizer.weight_decay=inf"], "optimizer.weight_decay"),
        (["optimizer.lr=nan"], "optimizer.lr"),
        (["data=synthetic", "data.noise=2"], "data.noise"),
        (["data=synthetic", "data.noise=inf"], "data.noise"),
    ],
)
def test_bad_values_name_their_key(overrides, key):
    message = reject(overrides)
    assert re.search(rf"(^|\W){re.escape(key)}(\W|$)", message), message


def test_a_key_of_another_option_says_which_option_has_it():
    assert reject(["scheduler.gamma=0.5"]) == (
        "scheduler.gamma: unknown key in 'scheduler'; scheduler=none has no keys; "
        "it is a key of scheduler=step"
    )
    assert reject(["model.channels=8"]).endswith("; it is a key of model=cnn")


def test_a_config_file_that_is_not_yaml_names_the_file_and_line(tmp_path):
    from sweep.config import compose

    folder = tmp_path / "myconf" / "search"
    folder.mkdir(parents=True)
    (folder / "broken.yaml").write_text("optimizer.lr: {type: float, low: 0.001\n")
    with pytest.raises(ConfigError) as info:
        compose("sweep", [f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "search=broken"])
    assert str(info.value) == (
        f"{folder / 'broken.yaml'} line 2: not valid YAML: while parsing a flow mapping; "
        "expected ',' or '}', but got '<stream end>'"
    )


def test_range_is_explained():
    assert reject(["optimizer.lr=inf"]) == "optimizer.lr=inf: must be a finite number"
    assert "[0, 1] for classification" in reject(["data=synthetic", "data.noise=1.5"])
    load_run_config(["data=synthetic", "data.task=regression", "data.noise=1.5"])  # a std
    assert "> 0" in reject(["optimizer.lr=0"])
    assert "[0, 1)" in reject(["model.dropout=1.0"])
    assert "integer" in reject(["data.batch_size=abc"])
    assert "true or false" in reject(["model.batch_norm=maybe"])


def test_unknown_key_lists_known_keys():
    message = reject(["+optimizer.lrr=1"])
    assert "unknown key" in message
    assert "lr" in message
    assert "unknown key" in reject(["optimizer.lrr=1"])


def test_unknown_group_option_lists_choices():
    message = reject(["model=foo"])
    assert "model" in message and "foo" in message
    assert "cnn" in message and "mlp" in message


def test_monitor_error_lists_task_metrics():
    message = reject(["data=digits", "trainer.monitor=val/r2"])
    assert "classification" in message
    assert "val/acc" in message


def test_unparsable_override_is_one_line():
    message = reject(["optimizer.lr=[1,"])
    assert "optimizer.lr" in message


# -- the CLI -------------------------------------------------------------------------------
def test_cli_config_error_is_one_line_and_leaves_no_run(cli, tmp_path):
    proc = cli("train", "optimizer.lr=-1")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "optimizer.lr" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert count_runs(tmp_path / "mlflow.db") == 0
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_cli_unknown_option_is_one_line(cli):
    proc = cli("train", "model=foo")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cnn" in proc.stderr and "mlp" in proc.stderr


def imported_modules(args: list[str], tmp_path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m sweep ARGS``; the top-level modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sweep", *args],
        cwd=tmp_path,
        env=cli_env(f"sqlite:///{tmp_path / 'mlflow.db'}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            modules.add(name.split(".")[0])
    assert modules, proc.stderr[-2000:]
    return proc, modules


def test_help_imports_no_heavy_library(tmp_path):
    proc, modules = imported_modules(["--help"], tmp_path)
    assert proc.returncode == 0
    assert "train" in proc.stdout
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_config_error_imports_no_heavy_library(tmp_path):
    proc, modules = imported_modules(["train", "optimizer.lr=-1"], tmp_path)
    assert proc.returncode == 2
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


# -- keys, devices, accelerator and store checked before any work --------------------------
@pytest.mark.parametrize(
    ("overrides", "key", "known"),
    [
        (["model.foo=3"], "model.foo", "width"),
        (["model=cnn", "model.width=3"], "model.width", "channels"),
        (["trainer.early_stopping.wait=3"], "trainer.early_stopping.wait", "patience"),
        (["foo=3"], "foo", "optimizer"),
        (["modle=cnn"], "modle", "model"),
        (["+foo=3"], "foo", "optimizer"),  # appended keys would be silently ignored
    ],
)
def test_unknown_keys_list_the_known_ones(overrides, key, known):
    message = reject(overrides)
    assert message.startswith(f"{key}: unknown key"), message
    assert "known keys:" in message and known in message.split("known keys:")[1], message


def test_override_without_value_is_explained():
    assert "expected key=value" in reject(["model.width"])


def test_one_run_trains_on_one_device():
    message = reject(["trainer.devices=2"])
    assert message.startswith("trainer.devices=2") and "n_workers" in message


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_accelerator_must_exist(accelerator):
    import torch

    overrides = [f"trainer.accelerator={accelerator}"]
    if torch.cuda.is_available():
        assert load_run_config(overrides).trainer.accelerator == accelerator
    else:
        message = reject(overrides)
        assert f"trainer.accelerator={accelerator}" in message and "auto" in message


def test_tracking_uri_scheme_checked_without_showing_secrets():
    message = reject(["tracking.uri=foo://user:secret@host/db"])
    assert message.startswith("tracking.uri") and "'foo://'" in message
    assert "sqlite://" in message and "secret" not in message
    for uri in (
        "sqlite:///x.db",
        "postgresql+psycopg2://u@h/db",
        "http://127.0.0.1:5000",
        "mlruns",
    ):
        assert load_run_config([f"tracking.uri={uri}"]).tracking.uri == uri


def test_test_split_is_required():
    assert "data.test_fraction" in reject(["data=digits", "data.test_fraction=0"])


def test_numeric_column_name_is_a_target():
    cfg = load_run_config(["data=csv", "data.path=x.csv", "data.target=0"])
    assert cfg.data.target == 0
    assert "data.target" in reject(["data=csv", "data.path=x.csv", "data.target=[a]"])


def test_cli_appended_unknown_key_is_one_line_and_leaves_no_run(cli, tmp_path):
    proc = cli("train", "+optimizer_lr=0.1")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: optimizer_lr: unknown key; known keys:"), line
    assert "optimizer" in line.split("known keys:")[1]
    assert not (tmp_path / "mlflow.db").exists()


def test_an_interpolation_that_cannot_resolve_is_one_line(capsys, tmp_path, monkeypatch):
    """``${oc.env:UNSET}`` fails while Hydra's result is checked for missing values: the
    key it sits on is named, no traceback, no store created."""
    from sweep.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEP_TEST_UNSET_VARIABLE", raising=False)
    assert main(["train", "optimizer.lr=${oc.env:SWEEP_TEST_UNSET_VARIABLE}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: optimizer.lr: ") and "SWEEP_TEST_UNSET_VARIABLE" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_a_bad_tracking_uri_from_the_environment_is_one_line(capsys, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI is checked before any data is loaded, and named as the culprit;
    only its scheme is shown (it may hold a password)."""
    from sweep.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://user:secret@host/db")
    assert main(["train", "data=synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MLFLOW_TRACKING_URI: unknown scheme 'foo://'")
    assert "secret" not in err and len(err.strip().splitlines()) == 1


# -- study.n_workers=auto, study.threads=auto ----------------------------------------------
GIB = 1 << 30


@pytest.fixture
def three_cores(monkeypatch):
    """A machine whose process may use 3 CPU cores, with 64 GiB free and no MPS device."""
    import os

    import sweep.study
    import sweep.workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(sweep.workers, "available_memory", lambda: 64 * GIB)
    monkeypatch.setattr(sweep.study, "_mps_available", lambda: False)


@pytest.mark.parametrize(
    ("visible", "accelerator", "workers"),
    [
        ("", "auto", 3),  # no GPU: one per usable core
        ("0,1", "auto", 2),  # one per visible GPU
        ("0,1", "gpu", 2),
        ("0,1", "cpu", 3),  # training on the CPU: the cores, whatever GPUs there are
    ],
)
def test_auto_workers_are_one_per_gpu_else_one_per_usable_core(
    three_cores, monkeypatch, visible, accelerator, workers
):
    from sweep.optuna_parts import env_threads
    from sweep.study import resolve_workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert resolve_workers("auto", accelerator) == workers
    assert resolve_workers(4, accelerator) == 4  # a number is taken as given
    assert env_threads(3) == 1 and env_threads(1) == 3 and env_threads(2, 2) == 2


def test_auto_cpu_workers_are_as_many_as_the_free_memory_holds(three_cores, monkeypatch):
    import sweep.workers
    from sweep.study import resolve_workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(sweep.workers, "available_memory", lambda: int(2.5 * GIB))
    assert resolve_workers("auto", data_bytes=0) == 2  # 1 GiB each
    assert resolve_workers("auto", data_bytes=GIB) == 1  # and the data in each
    assert resolve_workers("auto", data_bytes=10 * GIB) == 1  # never none
    monkeypatch.setattr(sweep.workers, "available_memory", lambda: None)
    assert resolve_workers("auto", data_bytes=10 * GIB) == 3  # unknown: the cores


def test_workers_started_by_tune_get_the_resolved_numbers_not_auto(monkeypatch):
    """A worker resolving `auto` itself would count the memory with the others' taken."""
    import subprocess
    from types import SimpleNamespace

    import sweep.workers

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kw: started.append(command))
    monkeypatch.setattr(sweep.workers, "gpu_ids", lambda: [])
    spec = SimpleNamespace(overrides=["study.n_workers=auto", "seed=3"], n_workers=3, threads=1)
    sweep.workers.start_local_workers(spec)
    assert len(started) == 2
    for command in started:
        assert command[-3:] == ["seed=3", "study.n_workers=3", "study.threads=1"]


def test_available_memory_is_the_least_of_the_machine_and_its_cgroup(tmp_path):
    from sweep.workers import available_memory

    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cgroup"
    assert available_memory(meminfo, cgroup) is None  # nothing to read: unknown
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:    8000000 kB\n")
    assert available_memory(meminfo, cgroup) == 8_000_000 * 1024
    (cgroup / "memory").mkdir(parents=True)
    (cgroup / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (cgroup / "memory" / "memory.usage_in_bytes").write_text("1000\n")
    assert available_memory(meminfo, cgroup) == 8_000_000 * 1024  # v1's "no limit"
    (cgroup / "memory.max").write_text(f"{3 * GIB}\n")
    (cgroup / "memory.current").write_text(f"{GIB}\n")
    assert available_memory(meminfo, cgroup) == 2 * GIB  # a container's limit, less its use
    (cgroup / "memory.max").write_text("max\n")
    assert available_memory(meminfo, cgroup) == 8_000_000 * 1024
