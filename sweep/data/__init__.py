"""Data sources and the in-memory DataModule. ``load_dataset(cfg.data, seed)`` is the entry."""

from __future__ import annotations

from typing import Any

from sweep.data.base import CLASSIFICATION, REGRESSION, Dataset, Preprocessor

__all__ = ["CLASSIFICATION", "REGRESSION", "Dataset", "Preprocessor", "load_dataset"]


def load_dataset(data_cfg: Any) -> Dataset:
    """Load, split (by ``data_cfg.split_seed``) and preprocess the data set ``data_cfg.name``."""
    name, seed = data_cfg.name, int(data_cfg.split_seed)
    if name == "mnist1d":
        from sweep.data.sources import load_mnist1d

        return load_mnist1d(data_cfg, seed)
    if name == "digits":
        from sweep.data.sources import load_digits

        return load_digits(data_cfg, seed)
    if name == "synthetic":
        from sweep.data.sources import load_synthetic

        return load_synthetic(data_cfg, seed)
    if name == "csv":
        from sweep.data.table import load_table

        return load_table(data_cfg, seed)
    raise ValueError(f"unknown data set {name!r}")  # config validation rejects it earlier
