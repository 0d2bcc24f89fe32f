"""Data sources and the in-memory DataModule. ``load_dataset(cfg.data, seed)`` is the entry."""

from __future__ import annotations

from typing import Any

from sweep.data.base import CLASSIFICATION, REGRESSION, Dataset, Preprocessor

__all__ = ["CLASSIFICATION", "REGRESSION", "Dataset", "Preprocessor", "load_dataset"]


#: Loaders by ``data.name`` as "module:function"; each takes ``(data_cfg, split_seed)`` and
#: returns a :class:`Dataset`. Imported lazily: only the chosen one pays its imports.
LOADERS: dict[str, str] = {
    "mnist1d": "sweep.data.sources:load_mnist1d",
    "digits": "sweep.data.sources:load_digits",
    "synthetic": "sweep.data.sources:load_synthetic",
    "csv": "sweep.data.table:load_table",
}


def load_dataset(data_cfg: Any) -> Dataset:
    """Load, split (by ``data_cfg.split_seed``) and preprocess the data set ``data_cfg.name``."""
    import importlib

    name = data_cfg.name
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}")  # config validation rejects it earlier
    module, function = LOADERS[name].split(":")
    return getattr(importlib.import_module(module), function)(data_cfg, int(data_cfg.split_seed))
