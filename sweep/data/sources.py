"""Bundled and generated data sets: mnist1d, digits, synthetic. No network at run time."""

from __future__ import annotations

import functools
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from sweep.data.base import (
    CLASSIFICATION,
    REGRESSION,
    Dataset,
    build_array_dataset,
    check_split_sizes,
    split_or_explain,
)
from sweep.errors import DataError

#: Generated mnist1d arrays, kept between processes (git-ignored, beside the study storage).
MNIST1D_CACHE = Path(".sweep") / "cache"


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, test_fraction: float) -> dict[str, np.ndarray]:
    """The generated set, cached per process and on disk: generating costs 1-2 s of CPU,
    paid once per machine instead of once per worker process or ``sweep train``."""
    from importlib.metadata import version

    path = MNIST1D_CACHE / f"mnist1d-{version('mnist1d')}-{num_samples}-{test_fraction!r}.npz"
    arrays = _load_cached(path, ("x", "y", "x_test", "y_test"))
    if arrays is None:
        arrays = _generate_mnist1d(num_samples, test_fraction)
        _save_cached(path, arrays)
    return arrays


def _load_cached(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as cached:
            return {k: cached[k] for k in keys}
    except (OSError, KeyError, ValueError):
        return None  # absent or unreadable: computed again


def _save_cached(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        MNIST1D_CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, **arrays)
        partial.replace(path)  # atomic: a concurrent reader sees all of it or nothing
    except OSError:
        pass  # a read-only working directory: computed again next time


def _generate_mnist1d(num_samples: int, test_fraction: float) -> dict[str, np.ndarray]:
    # make_dataset generates offline; get_dataset() would try to download.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = 1.0 - test_fraction
    # make_dataset seeds the global `random` and numpy generators (seed 42): without the
    # restore, every later random choice in the process repeats, e.g. MLflow's run names.
    states = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def load_mnist1d(cfg: Any, seed: int) -> Dataset:
    arrays = _mnist1d_arrays(int(cfg.num_samples), float(cfg.test_fraction))
    x = np.concatenate([arrays["x"], arrays["x_test"]]).astype(np.float32)
    y = np.concatenate([arrays["y"], arrays["y_test"]]).astype(np.int64)
    n_train = len(arrays["x"])
    # The generator's test split is fixed; validation is a stratified part of its train split.
    train_idx, val_idx = _mnist1d_val_split(cfg, y[:n_train], seed)
    test_idx = np.arange(n_train, len(x))
    check_split_sizes(train_idx, val_idx, test_idx, "data=mnist1d")
    return build_array_dataset("mnist1d", CLASSIFICATION, x, y, train_idx, val_idx, test_idx)


def _mnist1d_val_split(cfg: Any, y_train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's stratified split of the generator's train part into train and
    validation, cached on disk beside the arrays: importing scikit-learn costs ~1.4 s of
    every process start (each study worker), and only this split needs it here."""
    from importlib.metadata import version

    val_fraction = float(cfg.val_fraction)
    path = MNIST1D_CACHE / (
        f"mnist1d-{version('mnist1d')}-{int(cfg.num_samples)}-{float(cfg.test_fraction)!r}"
        f"-val-{val_fraction!r}-seed-{seed}-sklearn-{version('scikit-learn')}.npz"
    )
    cached = _load_cached(path, ("train_idx", "val_idx"))
    if cached is not None:
        return cached["train_idx"], cached["val_idx"]
    from sklearn.model_selection import train_test_split

    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(y_train)), test_size=val_fraction, random_state=seed, stratify=y_train
        )
    except ValueError as e:  # a validation split smaller than the number of classes
        raise DataError(
            f"data=mnist1d: cannot carve data.val_fraction={val_fraction:g} out of "
            f"{len(y_train)} training samples: {str(e).strip().splitlines()[0]}"
        ) from None
    split = {"train_idx": np.sort(train_idx), "val_idx": np.sort(val_idx)}
    _save_cached(path, split)
    return split["train_idx"], split["val_idx"]


def load_digits(cfg: Any, seed: int) -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = bunch.images.astype(np.float32)  # (n, 8, 8): a CNN sees a 2-D image
    y = bunch.target.astype(np.int64)
    tr, va, te = split_or_explain(
        len(x), float(cfg.val_fraction), float(cfg.test_fraction), seed, y, "data=digits"
    )
    return build_array_dataset("digits", CLASSIFICATION, x, y, tr, va, te)


def load_synthetic(cfg: Any, seed: int) -> Dataset:
    from sklearn.datasets import make_classification, make_regression

    n, f = int(cfg.num_samples), int(cfg.num_features)
    if cfg.task == REGRESSION:
        x, y = make_regression(
            n_samples=n,
            n_features=f,
            n_informative=max(1, f // 2),
            noise=float(cfg.noise),
            random_state=seed,
        )
        stratify = None
    else:
        k = int(cfg.num_classes)
        # make_classification puts each class on a corner of an n_informative-dimensional
        # cube (2**n_informative corners) and adds up to 2 redundant features.
        informative = min(f, max(2, f // 2, math.ceil(math.log2(k))))
        if 2**informative < k:
            raise DataError(
                f"data=synthetic: data.num_classes={k} needs data.num_features >= "
                f"{math.ceil(math.log2(k))} (got {f})"
            )
        x, y = make_classification(
            n_samples=n,
            n_features=f,
            n_informative=informative,
            n_redundant=min(2, f - informative),
            n_classes=k,
            n_clusters_per_class=1,
            flip_y=float(cfg.noise),
            random_state=seed,
        )
        stratify = y
    tr, va, te = split_or_explain(
        n, float(cfg.val_fraction), float(cfg.test_fraction), seed, stratify, "data=synthetic"
    )
    return build_array_dataset("synthetic", str(cfg.task), x.astype(np.float32), y, tr, va, te)
