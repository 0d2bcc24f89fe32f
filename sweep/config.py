"""Compose run configs with Hydra and validate them before any work starts.

Hydra is initialised once per process (initialising again raises, hydra #3364) and
``compose`` is called per run or trial. Every error becomes a :class:`ConfigError` with
one line naming the key and what is allowed. Nothing here imports torch or MLflow.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweep.errors import ConfigError

#: conf/ beside the package (the repository layout); SWEEP_CONF_DIR points elsewhere.
CONF_DIR = Path(os.environ.get("SWEEP_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))

RUN_KEYS = ("data", "model", "optimizer", "scheduler", "trainer", "tracking", "seed")
VAL_METRICS = {
    "classification": ("val/acc", "val/f1", "val/loss"),
    "regression": ("val/loss", "val/mae", "val/r2"),
}


def default_monitor(task: str) -> tuple[str, str]:
    """The validation metric to monitor for a task, and its direction."""
    return ("val/acc", "max") if task == "classification" else ("val/loss", "min")


# -- composition ------------------------------------------------------------------------
def _ensure_hydra() -> None:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        # Not used as a context manager: the initialisation lives for the process.
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides; raise ConfigError on error."""
    cfg = _hydra_compose(config_name, tuple(overrides))
    _check_missing(cfg)
    return cfg


def _hydra_compose(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    from hydra import compose as hydra_compose

    _ensure_hydra()
    try:
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as exc:  # Hydra wraps OmegaConf errors; unwrap to one line
        message = _composition_message(exc, config_name, overrides)
        if message.endswith(": unknown key") or ": unknown key in " in message:
            message += _known_keys_hint(message.split(":", 1)[0], config_name, overrides)
        raise ConfigError(message) from None


def _check_missing(cfg: DictConfig) -> None:
    """``???`` values are not errors at compose time (Hydra): required keys left unset."""
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))  # resolves interpolations on the way
    except Exception as exc:  # e.g. ${oc.env:UNSET}: OmegaConf names the key
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(exc).strip().splitlines()[0]}") from None
    if missing:
        raise ConfigError(f"{missing[0]}: required value is missing (set {missing[0]}=...)")


@functools.lru_cache(maxsize=16)
def _compose_cached(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    return _hydra_compose(config_name, overrides)  # values may still fill its ??? keys


def compose_with_values(
    config_name: str, overrides: list[str] | tuple[str, ...], values: dict[str, Any]
) -> DictConfig:
    """``compose(config_name, overrides)`` with the typed ``values`` set on top.

    The same config as composing ``overrides`` plus ``key=value`` overrides for ``values``,
    for a fraction of the cost: Hydra rebuilds its defaults tree on every compose (150-300
    ms here, a tenth of a small trial), while trials and search-space probes differ from a
    composed base only in some values. So the base (with the group choices, which do need
    Hydra) is composed once per process and copied, and the values are assigned to
    existing keys (struct mode: a key absent from the config is an error, as in Hydra).
    """
    cfg = copy.deepcopy(_compose_cached(config_name, tuple(overrides)))
    for key, value in values.items():
        _set_value(cfg, key, value)
    _check_missing(cfg)
    return cfg


def compose_fast(config_name: str, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """``compose(config_name, overrides)``, with plain ``a.b=value`` overrides (a dotted key,
    a number, bool, string or null) set on a cached composition of the others
    (:func:`compose_with_values`). Hydra's own parser reads the values, and Hydra applies
    every value override after composing the groups too, so the result is the same."""
    rest, values = split_value_overrides(overrides)
    return compose_with_values(config_name, rest, values)


def split_value_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[list[str], dict]:
    """Overrides that need Hydra (group choices, ``+``/``~``, ``hydra.*``, lists, sweeps,
    interpolations, anything it cannot parse), and the plain values, by key."""
    rest: list[str] = []
    values: dict[str, Any] = {}
    for text in overrides:
        plain = _plain_value(text)
        if plain is None:
            rest.append(text)
        else:
            key, value = plain
            values.pop(key, None)
            values[key] = value
    return rest, values


@functools.lru_cache(maxsize=4096)
def _plain_value(text: str) -> tuple[str, Any] | None:
    """``(key, value)`` of a plain ``a.b=value`` override, else None. Cached: a study parses
    the same overrides for every trial (Hydra's parser: 0.1 ms each here)."""
    from hydra.core.override_parser.types import OverrideType

    try:
        override = _overrides_parser().parse_override(text)
    except Exception:
        return None  # compose reports it as Hydra would
    key = override.key_or_group
    value = None if override.is_sweep_override() else override.value()
    plain = (
        override.type == OverrideType.CHANGE
        and override.package is None
        and "." in key
        and not key.startswith("hydra.")
        and not override.is_sweep_override()
        and (value is None or isinstance(value, bool | int | float | str))
        and not (isinstance(value, str) and "${" in value)
    )
    return (key, value) if plain else None


@functools.lru_cache(maxsize=1)
def _overrides_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _set_value(cfg: DictConfig, key: str, value: Any) -> None:
    """``key = value`` on a composed config, with compose()'s message for an unknown key."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    try:
        OmegaConf.update(cfg, key, value, merge=False)
    except (ConfigAttributeError, ConfigKeyError):
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if parent else cfg
        message = f"{key}: unknown key" + (f" in '{parent}'" if parent else "")
        if isinstance(node, DictConfig):
            message += "; known keys: " + ", ".join(sorted(str(k) for k in node if k != "name"))
        raise ConfigError(message) from None
    except Exception as exc:
        raise ConfigError(f"{key}={value!r}: {str(exc).strip().splitlines()[0]}") from None


def _composition_message(
    exc: BaseException, config_name: str = "", overrides: tuple[str, ...] = ()
) -> str:
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, OverrideParseException):
        if "=" not in str(exc.override) and not str(exc.override).startswith("~"):
            return f"cannot parse override {exc.override!r}: expected key=value"
        return f"cannot parse override {exc.override!r}: {str(exc).splitlines()[0]}"
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        options = ", ".join(exc.options or []) or "none"
        if group:
            return f"{group}={option}: unknown option for '{group}'; choose from: {options}"
        return f"{exc.missing_cfg_file}: config not found"
    yaml_message = _yaml_error_message(exc)
    if yaml_message:
        return yaml_message
    unknown_group = _UNKNOWN_GROUP.match(str(exc))
    if unknown_group:
        return _unknown_group_message(unknown_group.group(1), config_name, overrides)
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    full_key = getattr(cause, "full_key", None)
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if full_key and "not in struct" in first_line:
        parent = full_key.rpartition(".")[0]
        return f"{full_key}: unknown key" + (f" in '{parent}'" if parent else "")
    if full_key:
        return f"{full_key}: {first_line}"
    message = str(exc).strip().splitlines()
    return message[0] if message else type(exc).__name__


def _yaml_error_message(exc: BaseException) -> str | None:
    """A config file that is not valid YAML: ``file line N: what the parser expected``."""
    import yaml

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, yaml.MarkedYAMLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    mark = cause.problem_mark or cause.context_mark
    where = f"{mark.name} line {mark.line + 1}" if mark else "a config file"
    what = "; ".join(str(p) for p in (cause.context, cause.problem) if p)
    return f"{where}: not valid YAML: {what}"


_UNKNOWN_GROUP = re.compile(r"Could not override '([^']+)'\. No match in the defaults list")


def _unknown_group_message(group: str, config_name: str, overrides: tuple[str, ...]) -> str:
    """A group that exists under conf/ but not in this config's defaults list: in practice
    one of sweep.yaml's (search, sampler, experiment, ...) given to ``sweep train``."""
    given = next((o for o in overrides if override_key(o) == group), group)
    message = f"{given}: no config group '{group}' in {config_name or 'this config'}.yaml"
    if config_name == "train":
        message += f" (a study's group: sweep tune {given})"
    return message


def _known_keys_hint(
    full_key: str, config_name: str, overrides: list[str] | tuple[str, ...]
) -> str:
    """``"; known keys: a, b"``: the keys beside the unknown ``full_key``, read from the config
    composed without the overrides that set it; empty when that config cannot be built."""
    from hydra import compose as hydra_compose

    rest = [
        o
        for o in overrides
        if override_key(o) != full_key and not override_key(o).startswith(f"{full_key}.")
    ]
    parent = full_key.rpartition(".")[0]
    try:
        cfg = hydra_compose(config_name=config_name, overrides=rest)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # another override is broken too: its own error comes next time
        return ""
    if not isinstance(node, DictConfig):
        return ""
    known = ", ".join(sorted(str(k) for k in node if k != "name"))
    hint = f"; known keys: {known}" if known else f"; {parent}={node.get('name')} has no keys"
    owners = _options_with_key(parent, full_key.rpartition(".")[2])
    if owners:
        hint += f"; it is a key of {', '.join(f'{parent}={o}' for o in owners)}"
    return hint


def _options_with_key(group: str, key: str) -> list[str]:
    """The options of config group ``group`` (conf/<group>/*.yaml) that define ``key``."""
    import yaml

    owners = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")) if group else []:
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(values, dict) and key in values:
            owners.append(path.stem)
    return owners


def override_key(override: str) -> str:
    """The config key an override sets: ``+model.width=3`` -> ``model.width``."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` then ``extra``, where an override in ``extra`` replaces one of the same key."""
    keys = {override_key(o) for o in extra}
    return [o for o in base if override_key(o) not in keys] + list(extra)


def chosen_option(overrides: list[str] | tuple[str, ...], group: str) -> str | None:
    """The option the overrides pick for a config group (the last one wins, as in Hydra),
    or None: ``["experiment=digits"]`` -> ``"digits"``. Hydra's compose keeps no record of
    the choices, and a preset such as an experiment leaves no key of its own."""
    chosen = None
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+") == group:
            chosen = None if value in ("", "null") else value
    return chosen


def to_container(cfg: Any) -> Any:
    return (
        OmegaConf.to_container(cfg, resolve=True)
        if isinstance(cfg, DictConfig | ListConfig)
        else cfg
    )


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{'model': {'width': 3}}`` -> ``{'model.width': 3}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in to_container(cfg).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


# -- validation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """Type and range of one config value."""

    kind: str  # int | float | bool | str | column | choice | list | optional_str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()

    def check(self, key: str, value: Any) -> None:
        shown = "null" if value is None else repr(value)
        if self.kind == "choice":
            if value not in self.choices:
                allowed = ", ".join(str(c) for c in self.choices)
                raise ConfigError(f"{key}={shown}: must be one of: {allowed}")
            return
        if self.kind == "optional_str":
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{key}={shown}: must be a string or null")
            return
        if self.kind == "str":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{key}={shown}: must be a non-empty string")
            return
        if self.kind == "column":  # a column name; Hydra reads a header such as 0 as an int
            if (
                isinstance(value, bool)
                or not isinstance(value, str | int)
                or not str(value).strip()
            ):
                raise ConfigError(f"{key}={shown}: must be a column name")
            return
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{key}={shown}: must be true or false")
            return
        if self.kind == "list":
            if not isinstance(value, list | ListConfig):
                raise ConfigError(f"{key}={shown}: must be a list, e.g. {key}=[a,b]")
            return
        numeric = (int,) if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            raise ConfigError(
                f"{key}={shown}: must be {'an integer' if self.kind == 'int' else 'a number'}"
            )
        if not math.isfinite(value):
            raise ConfigError(f"{key}={shown}: must be a finite number")
        if not self._in_range(value):
            raise ConfigError(f"{key}={shown}: must be {self._describe_range()}")

    def _in_range(self, v: float) -> bool:
        if v != v:  # NaN
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (
            self.high is not None and (v > self.high or (self.high_open and v == self.high))
        )

    def _describe_range(self) -> str:
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


INT1 = Rule("int", low=1)
INT0 = Rule("int", low=0)
BOOL = Rule("bool")
FRACTION_OPEN = Rule("float", low=0, high=1, low_open=True, high_open=True)
DROPOUT = Rule("float", low=0, high=1, high_open=True)

_DATA_COMMON = {
    "name": Rule("str"),
    "batch_size": INT1,
    "split_seed": INT0,
    "val_fraction": FRACTION_OPEN,
    # > 0: every run ends with one evaluation on the held-out test split.
    "test_fraction": FRACTION_OPEN,
    "loader": Rule("choice", choices=("memory", "dataloader")),
}
SCHEMAS: dict[str, dict[str, dict[str, Rule]]] = {
    "data": {
        "mnist1d": {
            **_DATA_COMMON,
            "task": Rule("choice", choices=("classification",)),
            "num_samples": Rule("int", low=100),
        },
        "digits": {**_DATA_COMMON, "task": Rule("choice", choices=("classification",))},
        "synthetic": {
            **_DATA_COMMON,
            "task": Rule("choice", choices=("classification", "regression")),
            "num_samples": Rule("int", low=20),
            "num_features": Rule("int", low=2),
            "num_classes": Rule("int", low=2),
            "noise": Rule("float", low=0),
        },
        "csv": {
            **_DATA_COMMON,
            "path": Rule("str"),
            "target": Rule("column"),
            "task": Rule("choice", choices=("auto", "classification", "regression")),
            "drop": Rule("list"),
            "max_categories": INT1,
        },
    },
    "model": {
        "mlp": {
            "name": Rule("str"),
            "depth": INT0,
            "width": INT1,
            "activation": Rule("choice", choices=("relu", "gelu", "tanh", "silu")),
            "dropout": DROPOUT,
            "batch_norm": BOOL,
        },
        "cnn": {
            "name": Rule("str"),
            "channels": INT1,
            "depth": INT1,
            "kernel_size": INT1,
            "dropout": DROPOUT,
            "batch_norm": BOOL,
        },
    },
    "optimizer": {
        name: {
            "name": Rule("str"),
            "lr": Rule("float", low=0, low_open=True),
            "weight_decay": Rule("float", low=0),
            **extra,
        }
        for name, extra in (
            ("sgd", {"momentum": Rule("float", low=0, high=1, high_open=True), "nesterov": BOOL}),
            ("adam", {}),
            ("adamw", {}),
            ("rmsprop", {"momentum": Rule("float", low=0, high=1, high_open=True)}),
        )
    },
    "scheduler": {
        "none": {"name": Rule("str")},
        "cosine": {"name": Rule("str"), "min_lr_ratio": Rule("float", low=0, high=1)},
        "step": {
            "name": Rule("str"),
            "step_size": INT1,
            "gamma": Rule("float", low=0, high=1, low_open=True),
        },
        "plateau": {"name": Rule("str"), "factor": FRACTION_OPEN, "patience": INT0},
    },
}
TRAINER_SCHEMA = {
    "max_epochs": INT1,
    "accelerator": Rule("choice", choices=("auto", "cpu", "gpu", "cuda", "mps")),
    "devices": INT1,
    "precision": Rule("choice", choices=("32-true", "32", "16-mixed", "bf16-mixed", "64-true")),
    "gradient_clip_val": Rule("float", low=0),
    "deterministic": BOOL,
    "monitor": Rule("choice", choices=("auto", *sorted(set(sum(VAL_METRICS.values(), ()))))),
    "mode": Rule("choice", choices=("auto", "max", "min")),
    "early_stopping.enabled": BOOL,
    "early_stopping.patience": INT1,
    "early_stopping.min_delta": Rule("float", low=0),
    "progress": BOOL,
}
TRACKING_SCHEMA = {"uri": Rule("optional_str"), "experiment": Rule("str"), "log_model": BOOL}
#: URI schemes MLflow 3.17 has a tracking store for (``postgresql+psycopg2`` counts as postgresql).
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def check_section(section: str, values: dict[str, Any], schema: dict[str, Rule]) -> None:
    """Every key known, every value of the right type and range."""
    flat = flatten(values)
    for key in flat:
        if key not in schema:
            known = ", ".join(sorted(k for k in schema if k != "name"))
            raise ConfigError(f"{section}.{key}: unknown key; known keys: {known}")
    for key, rule in schema.items():
        if key not in flat:
            raise ConfigError(f"{section}.{key}: missing")
        rule.check(f"{section}.{key}", flat[key])


def validate_run_config(cfg: DictConfig) -> None:
    """Check the run part of a composed config (data, model, optimizer, ...)."""
    for key in RUN_KEYS:
        if key not in cfg:
            raise ConfigError(f"{key}: missing from the config")
    INT0.check("seed", cfg.seed)
    for group, options in SCHEMAS.items():
        section = cfg[group]
        name = section.get("name")
        if name not in options:
            raise ConfigError(f"{group}.name={name!r}: must be one of: {', '.join(options)}")
        check_section(group, section, options[name])
    check_section("trainer", cfg.trainer, TRAINER_SCHEMA)
    check_section("tracking", cfg.tracking, TRACKING_SCHEMA)
    check_devices(int(cfg.trainer.devices))
    check_tracking_uri(cfg.tracking.uri)
    data = cfg.data
    if float(data.get("test_fraction", 0)) + float(data.val_fraction) >= 1:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction = "
            f"{data.val_fraction + data.test_fraction:g}: must be < 1 (nothing left to train on)"
        )
    if data.name == "synthetic" and data.task == "classification" and data.noise > 1:
        raise ConfigError(
            f"data.noise={data.noise}: must be in [0, 1] for classification "
            f"(the fraction of labels flipped)"
        )
    if data.name != "csv":
        check_monitor(cfg, data.task)
    check_accelerator(str(cfg.trainer.accelerator))  # last: it may import torch


def check_devices(devices: int) -> None:
    """One run trains on one device: Lightning would start a process per device, each
    opening its own MLflow run, and the in-memory batches are not sharded across them."""
    if devices != 1:
        raise ConfigError(
            f"trainer.devices={devices}: must be 1 (one run, one device); to use several "
            f"GPUs run a study with one worker per GPU (study.n_workers=auto)"
        )


def check_tracking_uri(uri: str | None) -> None:
    """A URI MLflow can open, checked before training (MLflow fails only when logging).
    Only the scheme is shown: the URI may hold a password."""
    source = "tracking.uri"
    if not uri:  # null: MLFLOW_TRACKING_URI, else MLflow's default
        uri, source = os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"
    if not uri or "://" not in uri:
        return  # MLflow's default, or a local path
    from sweep.tracking import check_reachable

    check_reachable(uri, source, answer=False)  # the scheme only: nothing is opened yet


def check_accelerator(accelerator: str) -> None:
    """An explicit accelerator must exist on this machine. Imports torch only then."""
    if accelerator in ("auto", "cpu"):
        return
    import torch

    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    available = {"gpu": cuda or mps, "cuda": cuda, "mps": mps}[accelerator]
    if not available:
        found = ", ".join(n for n, ok in (("cuda", cuda), ("mps", mps)) if ok) or "none"
        raise ConfigError(
            f"trainer.accelerator={accelerator}: not available on this machine "
            f"(GPUs found: {found}); use trainer.accelerator=auto or cpu"
        )


def check_top_level(cfg: DictConfig, allowed: tuple[str, ...]) -> None:
    """No top-level key beside ``allowed``: ``+foo=1`` is a typo, not a setting."""
    unknown = sorted(str(k) for k in cfg if k not in allowed)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; known keys: {', '.join(sorted(allowed))}")


def check_monitor(cfg: DictConfig, task: str) -> None:
    """The monitored metric must exist for the task (csv tasks are known after loading)."""
    monitor = cfg.trainer.monitor
    if monitor != "auto" and monitor not in VAL_METRICS[task]:
        allowed = ", ".join(VAL_METRICS[task])
        raise ConfigError(f"trainer.monitor={monitor}: not a {task} metric; choose from: {allowed}")


def load_run_config(
    overrides: list[str] | tuple[str, ...] = (), config_name: str = "train"
) -> DictConfig:
    """Compose and validate: what ``sweep train`` runs."""
    cfg = compose(config_name, overrides)
    if config_name == "train":
        check_top_level(cfg, RUN_KEYS)
    validate_run_config(cfg)
    return cfg


def run_part(cfg: DictConfig) -> DictConfig:
    """Only the keys that define one training run (a sweep config carries more); a run
    config is returned as it is (a copy costs 2 ms)."""
    if list(cfg.keys()) == list(RUN_KEYS):
        return cfg
    return OmegaConf.create({k: to_container(cfg[k]) for k in RUN_KEYS})
