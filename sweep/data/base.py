"""What every data source produces, and the in-memory Lightning DataModule over it.

A source (mnist1d, digits, synthetic, csv) returns a :class:`Dataset`: raw splits, the
task, and a fitted :class:`Preprocessor`. Every statistic in the preprocessor is fitted
on the training split only; the same object travels with the logged model so that the
served model accepts the raw inputs the user has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sweep.errors import DataError

CLASSIFICATION = "classification"
REGRESSION = "regression"


class Preprocessor:
    """Turns raw inputs into float32 model inputs and encodes / decodes targets.

    Subclasses fit their statistics on the training split in ``fit`` and must stay
    picklable: they are stored inside the MLflow model.
    """

    task: str
    classes: list[Any] | None = None  # original labels, index = encoded class

    def fit(self, x_raw: Any, y_raw: Any) -> Preprocessor:
        raise NotImplementedError

    def transform(self, x_raw: Any) -> np.ndarray:
        raise NotImplementedError

    def encode_target(self, y_raw: Any) -> np.ndarray:
        raise NotImplementedError

    def decode_target(self, y: np.ndarray) -> np.ndarray:
        """Model outputs (class indices or values) back to the user's labels or units."""
        if self.task == CLASSIFICATION and self.classes is not None:
            return np.asarray(self.classes, dtype=object)[y]
        return y


class ArrayPreprocessor(Preprocessor):
    """Arrays of fixed shape (sequences, images, numeric tables) with integer or float targets.

    Standardises with one mean and one scale computed on the training split.
    """

    def __init__(self, task: str, input_shape: tuple[int, ...]):
        self.task = task
        self.input_shape = tuple(input_shape)
        self.mean = 0.0
        self.scale = 1.0
        self.target_mean = 0.0
        self.target_scale = 1.0

    def fit(self, x_raw: np.ndarray, y_raw: np.ndarray) -> ArrayPreprocessor:
        x = np.asarray(x_raw, dtype=np.float64)
        self.mean = float(x.mean())
        self.scale = float(x.std()) or 1.0
        if self.task == CLASSIFICATION:
            self.classes = sorted(np.unique(y_raw).tolist())
        else:
            y = np.asarray(y_raw, dtype=np.float64)
            self.target_mean = float(y.mean())
            self.target_scale = float(y.std()) or 1.0
        return self

    def transform(self, x_raw: Any) -> np.ndarray:
        x = np.asarray(x_raw, dtype=np.float32)
        expected = int(np.prod(self.input_shape))
        if x.ndim == 1:
            x = x[None, :]
        if int(np.prod(x.shape[1:])) != expected:
            raise ValueError(
                f"input has {int(np.prod(x.shape[1:]))} values per sample, "
                f"expected shape {self.input_shape}"
            )
        x = x.reshape((len(x), *self.input_shape))
        return ((x - self.mean) / self.scale).astype(np.float32)

    def encode_target(self, y_raw: Any) -> np.ndarray:
        if self.task == CLASSIFICATION:
            index = {c: i for i, c in enumerate(self.classes or [])}
            return np.asarray([index[v] for v in np.asarray(y_raw).tolist()], dtype=np.int64)
        y = np.asarray(y_raw, dtype=np.float64)
        return ((y - self.target_mean) / self.target_scale).astype(np.float32)

    def decode_target(self, y: np.ndarray) -> np.ndarray:
        if self.task == REGRESSION:
            return np.asarray(y, dtype=np.float64) * self.target_scale + self.target_mean
        return super().decode_target(y)


@dataclass
class Dataset:
    """Preprocessed splits plus everything the model and the tracker need to know."""

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    preprocessor: Preprocessor
    input_example: Any  # a few raw rows, as a user would send them to the served model
    info: dict[str, Any] = field(default_factory=dict)  # logged as data.* params

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_outputs(self) -> int:
        return len(self.preprocessor.classes or []) if self.task == CLASSIFICATION else 1

    @property
    def nbytes(self) -> int:
        """The splits' memory (inputs and targets)."""
        splits = (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)
        return sum(int(a.nbytes) for a in splits)

    def shape_info(self) -> dict[str, Any]:
        return {
            "n_train": len(self.x_train),
            "n_val": len(self.x_val),
            "n_test": len(self.x_test),
            "input_shape": "x".join(str(s) for s in self.input_shape),
            "num_outputs": self.num_outputs,
            "task": self.task,
            **self.info,
        }


def split_indices(
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test index split, stratified by ``stratify`` when given."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    test_idx = np.array([], dtype=np.int64)
    if test_fraction > 0:
        idx, test_idx = train_test_split(
            idx, test_size=test_fraction, random_state=seed, stratify=stratify
        )
    rest_stratify = None if stratify is None else stratify[idx]
    relative_val = val_fraction / (1.0 - test_fraction)
    train_idx, val_idx = train_test_split(
        idx, test_size=relative_val, random_state=seed + 1, stratify=rest_stratify
    )
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


#: Fewest rows a split may have: R² of one row is undefined, and BatchNorm cannot train on a
#: batch of one.
MIN_SPLIT_ROWS = 2


def check_split_sizes(
    train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray, source: str
) -> None:
    """DataError naming ``source`` when a split has fewer than ``MIN_SPLIT_ROWS`` rows."""
    sizes = {"train": len(train_idx), "validation": len(val_idx), "test": len(test_idx)}
    if min(sizes.values()) < MIN_SPLIT_ROWS:
        shown = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise DataError(
            f"{source}: too few rows for a train/validation/test split ({shown}); each split "
            f"needs at least {MIN_SPLIT_ROWS} rows: use more data or raise data.val_fraction "
            f"/ data.test_fraction"
        )


def split_or_explain(
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: np.ndarray | None,
    source: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`split_indices`, with every reason it cannot split as a one-line DataError."""
    try:
        parts = split_indices(n, val_fraction, test_fraction, seed, stratify)
    except ValueError as e:  # e.g. a stratified split smaller than the number of classes
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"{source}: cannot split {n} rows with data.val_fraction={val_fraction:g}, "
            f"data.test_fraction={test_fraction:g}: {reason}"
        ) from None
    check_split_sizes(*parts, source=source)
    return parts


def build_array_dataset(
    name: str,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    info: dict[str, Any] | None = None,
) -> Dataset:
    """Fit an :class:`ArrayPreprocessor` on the training rows and transform every split."""
    pre = ArrayPreprocessor(task, x.shape[1:]).fit(x[train_idx], y[train_idx])

    def prep(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pre.transform(x[rows]), pre.encode_target(y[rows])

    (xtr, ytr), (xva, yva), (xte, yte) = prep(train_idx), prep(val_idx), prep(test_idx)
    example = np.asarray(x[train_idx[:5]], dtype=np.float32).reshape(min(5, len(train_idx)), -1)
    return Dataset(name, task, xtr, ytr, xva, yva, xte, yte, pre, example, info or {})
