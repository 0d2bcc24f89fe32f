"""The user's own table: a CSV or Parquet file with one target column (``data=csv``).

``load_table`` reads the file, infers the task, drops rows without a target, splits
(seeded, stratified when possible) and fits a :class:`TablePreprocessor` on the training
rows only. The preprocessor travels with the logged model, so the served model takes the
same raw columns the file has. Everything wrong with the file is a one-line
:class:`~sweep.errors.DataError` naming the file or the column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from sweep.data.base import (
    CLASSIFICATION,
    MIN_SPLIT_ROWS,
    REGRESSION,
    Dataset,
    Preprocessor,
    check_split_sizes,
    split_indices,
)
from sweep.errors import ConfigError, DataError

MISSING = "__missing__"  # the category of a missing value in a string column
MAX_AUTO_CLASSES = 20  # integer targets with at most this many values are class labels
GARBAGE_FRACTION = 0.9  # text column this numeric (or more) is a numeric column with typos
# A text column with a different value in (almost) every row is an id or free text: its
# one-hot columns would only memorise the training rows.
IDENTIFIER_MIN_VALUES = 20
IDENTIFIER_DISTINCT_FRACTION = 0.9
OTHER_DELIMITERS = (";", "\t", "|")  # tried when a CSV reads as a single column
PARQUET_SUFFIXES = (".parquet", ".pq")
_SNIFF_BYTES = 65536


# --------------------------------------------------------------------------- helpers


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _list_columns(columns: Iterable[Any], limit: int = 20) -> str:
    names = [repr(str(c)) for c in columns]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _py(value: Any) -> Any:
    """numpy scalar -> python scalar, so labels pickle and print as the user wrote them."""
    return value.item() if isinstance(value, np.generic) else value


def _has_bools(values: pd.Series) -> bool:
    # pd.to_numeric turns True/False into 1/0; a yes/no column is a category, not a number.
    return bool(values.map(lambda v: isinstance(v, bool | np.bool_)).any())


def _non_numeric(values: pd.Series) -> pd.Series:
    """The non-missing values of ``values`` that pd.to_numeric cannot parse."""
    present = values[values.notna()]
    parsed = pd.to_numeric(present, errors="coerce")
    return present[parsed.isna()]


#: The largest magnitude a feature or target may have: the model computes in float32, in
#: which a larger value is infinite (a loss of NaN at the first step, seen as divergence).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def out_of_range(values: np.ndarray) -> np.ndarray:
    """Positions of infinite values and of finite ones beyond float32's range (NaN aside)."""
    return np.flatnonzero(np.abs(values) > FLOAT32_MAX)


def _to_float(values: pd.Series, column: str) -> np.ndarray:
    """Numbers as float64 with missing values as NaN; ValueError names the column, and the
    row of an infinite value (imputing it would hide the bad row)."""
    if ptypes.is_bool_dtype(values) or ptypes.is_object_dtype(values):
        # pd.to_numeric reads True as 1.0; a numeric column never held one (column_kind).
        flag = next((v for v in values if isinstance(v, bool | np.bool_)), None)
        if flag is not None:
            raise ValueError(f"column {column!r}: {_py(flag)!r} is not a number")
    if ptypes.is_object_dtype(values) or ptypes.is_string_dtype(values):
        bad = _non_numeric(values)
        bad = bad[bad.astype(str).str.strip() != ""]  # blanks are missing values, not typos
        if len(bad):
            raise ValueError(f"column {column!r}: cannot convert {bad.iloc[0]!r} to a number")
    try:
        numbers = pd.to_numeric(values, errors="coerce")
        out = np.array(numbers.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"column {column!r}: cannot convert to numbers ({_one_line(e)})") from None
    bad = out_of_range(out)
    if len(bad):
        raise ValueError(
            f"column {column!r}: row {bad[0]} (0-based) is {_py(values.iloc[bad[0]])!r}, not "
            f"a finite number within float32's range (±{FLOAT32_MAX:.1e}) ({len(bad)} such "
            f"row(s) in all); leave it empty to impute it"
        )
    return out


def _refuse_out_of_range(
    df: pd.DataFrame, columns: Iterable[str], path: Path, rows: np.ndarray
) -> None:
    """DataError for an infinite value, or one beyond float32's range, in a numeric feature
    column of the file: a missing value is imputed, but an infinite one is most often a
    division by zero upstream, and imputing it would hide that; a 1e300 would train as
    infinite. ``rows[i]`` is the file's data row of ``df``'s row ``i``."""
    for column in columns:
        numbers = pd.to_numeric(df[column], errors="coerce")
        bad = out_of_range(numbers.to_numpy(dtype=np.float64, na_value=np.nan))
        if len(bad):
            raise DataError(
                f"column {column!r} in {path} has {len(bad)} value(s) infinite or beyond "
                f"float32's range (±{FLOAT32_MAX:.1e}), the first "
                f"{_py(df[column].iloc[bad[0]])!r} in data row {rows[bad[0]]} (0-based); "
                f"blank them to impute them, fix or rescale them, or list the column in "
                f"data.drop"
            )


def _category_keys(values: pd.Series) -> np.ndarray:
    """Each value as its string form; missing and blank values become ``MISSING``."""
    keys = values.astype(object).where(values.notna(), MISSING).astype(str)
    keys = keys.where(keys.str.strip() != "", MISSING)
    return keys.to_numpy(dtype=object)


def _as_vocabulary(keys: np.ndarray, vocab: list[str]) -> np.ndarray:
    """``keys`` with a boolean spelt otherwise than at training (``true`` where pandas read
    ``True`` from the training file, as a CSV read as text or JSON gives it) as the
    vocabulary spells it: else it would encode as an unseen category."""
    spelt = {v.lower(): v for v in vocab if v.lower() in ("true", "false")}
    if not spelt:
        return keys
    return np.array([k if k in vocab else spelt.get(k.lower(), k) for k in keys], dtype=object)


def column_kind(values: pd.Series, column: str) -> str:
    """``"numeric"`` or ``"categorical"``; DataError for a numeric column with stray text."""
    if ptypes.is_bool_dtype(values):
        return "categorical"
    if ptypes.is_numeric_dtype(values):
        return "numeric"
    if not (ptypes.is_object_dtype(values) or ptypes.is_string_dtype(values)):
        return "categorical"  # dates, categoricals, ...: one-hot of their string form
    present = values[values.notna()]
    if len(present) == 0 or _has_bools(present):
        return "categorical"
    bad = _non_numeric(present)
    fraction = 1.0 - len(bad) / len(present)
    if fraction == 1.0:
        return "numeric"  # e.g. a Parquet object column of mixed ints and floats
    if fraction >= GARBAGE_FRACTION:
        raise DataError(
            f"column {column!r} looks numeric but has non-numeric values, e.g. "
            f"{bad.iloc[0]!r} ({len(bad)} of {len(present)}); fix or blank them, "
            f"or list the column in data.drop"
        )
    return "categorical"


def infer_task(y: pd.Series) -> str:
    """Strings, bools and integer-valued targets with few values -> classification."""
    if ptypes.is_bool_dtype(y) or not ptypes.is_numeric_dtype(y):
        return CLASSIFICATION
    values = y.to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[np.isfinite(values)]
    integral = bool(np.all(values == np.round(values)))
    if integral and len(np.unique(values)) <= MAX_AUTO_CLASSES:
        return CLASSIFICATION
    return REGRESSION


def _sorted_labels(labels: Iterable[Any]) -> list[Any]:
    unique = list(dict.fromkeys(_py(v) for v in labels))
    try:
        return sorted(unique)
    except TypeError:  # mixed types (e.g. a Parquet object column): sort by text
        return sorted(unique, key=str)


# --------------------------------------------------------------------------- preprocessor


class TablePreprocessor(Preprocessor):
    """Raw table rows -> float32 features; class labels <-> indices; targets standardised.

    Numeric columns: median impute, then standardise. String/bool columns: one-hot over the
    training vocabulary (missing is its own category ``__missing__``, unseen values encode
    as all zeros). Every statistic comes from the rows given to :meth:`fit`, the training
    split. Only plain python containers are stored, so the object pickles anywhere.
    """

    def __init__(
        self,
        task: str,
        feature_columns: Sequence[str],
        categorical_columns: Iterable[str] | None = None,
        max_categories: int = 50,
    ):
        self.task = task
        self.feature_columns = [str(c) for c in feature_columns]
        self.max_categories = int(max_categories)
        # None: decided from the dtypes of the rows given to fit
        self._given_categorical = None if categorical_columns is None else set(categorical_columns)
        self.numeric_columns: list[str] = []
        self.categorical_columns: list[str] = []
        self.input_schema: dict[str, str] = {}
        self.medians: dict[str, float] = {}
        self.means: dict[str, float] = {}
        self.scales: dict[str, float] = {}
        self.vocabularies: dict[str, list[str]] = {}
        self.encoded_columns: list[str] = []
        self.classes = None
        self.target_mean = 0.0
        self.target_scale = 1.0

    @property
    def n_features_encoded(self) -> int:
        return len(self.encoded_columns)

    def fit(self, x_raw: pd.DataFrame, y_raw: Any) -> TablePreprocessor:
        """Fit every statistic on the training rows ``x_raw`` and their targets ``y_raw``."""
        x = self._frame(x_raw)
        categorical = self._given_categorical
        if categorical is None:
            categorical = {c for c in self.feature_columns if column_kind(x[c], c) == "categorical"}
        self.numeric_columns = [c for c in self.feature_columns if c not in categorical]
        self.categorical_columns = [c for c in self.feature_columns if c in categorical]
        self.input_schema = {
            c: "string" if c in categorical else "double" for c in self.feature_columns
        }
        self.encoded_columns = []
        for c in self.feature_columns:
            if c in categorical:
                keys = _category_keys(x[c])
                vocab = sorted(set(keys.tolist()))
                self._check_cardinality(c, vocab, n_present=int((keys != MISSING).sum()))
                self.vocabularies[c] = vocab
                self.encoded_columns += [f"{c}={v}" for v in vocab]
            else:
                values = _to_float(x[c], c)
                median = float(np.nanmedian(values)) if np.isfinite(values).any() else 0.0
                filled = np.where(np.isnan(values), median, values)
                std = float(filled.std()) if len(filled) else 0.0
                self.medians[c] = median
                self.means[c] = float(filled.mean()) if len(filled) else 0.0
                self.scales[c] = std if np.isfinite(std) and std > 0 else 1.0
                self.encoded_columns.append(c)
        if self.task == CLASSIFICATION:
            self.classes = _sorted_labels(pd.Series(y_raw).dropna().tolist())
        else:
            y = np.asarray(pd.to_numeric(pd.Series(y_raw)), dtype=np.float64)
            self.target_mean = float(y.mean())
            std = float(y.std())
            self.target_scale = std if np.isfinite(std) and std > 0 else 1.0
        return self

    def _check_cardinality(self, column: str, vocab: list[str], n_present: int) -> None:
        """DataError for a text column too varied to one-hot encode."""
        n_values = len(vocab) - (MISSING in vocab)
        if n_values > self.max_categories:
            raise DataError(
                f"column {column!r} has {n_values} distinct values in the training split, "
                f"more than data.max_categories={self.max_categories}; list it in "
                f"data.drop or raise data.max_categories"
            )
        if (
            n_values >= IDENTIFIER_MIN_VALUES
            and n_values >= IDENTIFIER_DISTINCT_FRACTION * n_present
        ):
            raise DataError(
                f"column {column!r} has a different value in almost every training row "
                f"({n_values} distinct in {n_present}), like an id or free text; "
                f"list it in data.drop"
            )

    def _frame(self, x_raw: Any) -> pd.DataFrame:
        if isinstance(x_raw, pd.DataFrame):
            x = x_raw
        elif isinstance(x_raw, dict) and not any(ptypes.is_list_like(v) for v in x_raw.values()):
            x = pd.DataFrame([x_raw])  # one row as {column: value}
        else:
            x = pd.DataFrame(x_raw)
        x = x.rename(columns=str)
        missing = [c for c in self.feature_columns if c not in x.columns]
        if missing:
            raise ValueError(
                f"input is missing column(s) {_list_columns(missing)}; "
                f"expected {_list_columns(self.feature_columns)}"
            )
        return x

    def transform(self, x_raw: Any) -> np.ndarray:
        """Rows with the original feature columns (any order, extras ignored) -> float32."""
        x = self._frame(x_raw)
        n = len(x)
        blocks: list[np.ndarray] = []
        for c in self.feature_columns:
            if c in self.vocabularies:
                vocab = self.vocabularies[c]
                codes = pd.Index(vocab).get_indexer(_as_vocabulary(_category_keys(x[c]), vocab))
                block = np.zeros((n, len(vocab)), dtype=np.float32)
                known = codes >= 0  # unseen values stay all zeros
                block[np.nonzero(known)[0], codes[known]] = 1.0
            else:
                values = _to_float(x[c], c)
                values = np.where(np.isnan(values), self.medians[c], values)
                block = ((values - self.means[c]) / self.scales[c]).reshape(n, 1)
            blocks.append(block.astype(np.float32))
        if not blocks:
            return np.zeros((n, 0), dtype=np.float32)
        return np.hstack(blocks).astype(np.float32)

    def encode_target(self, y_raw: Any) -> np.ndarray:
        """Class labels -> int64 indices, or values -> standardised float32."""
        values = pd.Series(y_raw)
        if self.task == CLASSIFICATION:
            index = {c: i for i, c in enumerate(self.classes or [])}
            try:
                return np.asarray([index[_py(v)] for v in values.tolist()], dtype=np.int64)
            except KeyError as e:
                raise ValueError(
                    f"unknown class label {e.args[0]!r}; known: {_list_columns(index)}"
                ) from None
        y = np.asarray(pd.to_numeric(values), dtype=np.float64)
        return ((y - self.target_mean) / self.target_scale).astype(np.float32)

    def decode_target(self, y: np.ndarray) -> np.ndarray:
        if self.task == REGRESSION:
            return np.asarray(y, dtype=np.float64) * self.target_scale + self.target_mean
        return super().decode_target(y)


# --------------------------------------------------------------------------- loading


def _resolve(path_value: Any) -> Path:
    if path_value is None or str(path_value).strip() in ("", "???"):
        raise DataError("data.path: no file given; set data.path=my_table.csv")
    path = Path(str(path_value)).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        raise DataError(f"data.path: file not found: {path}")
    if path.is_dir():
        raise DataError(f"data.path: {path} is a directory, expected a CSV or Parquet file")
    return path


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (by suffix); every failure is a one-line DataError."""
    is_parquet = path.suffix.lower() in PARQUET_SUFFIXES
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise DataError(f"data.path: cannot open {path}: {_one_line(e)}") from None
    if size == 0:
        raise DataError(f"data.path: {path} is empty")
    if is_parquet:
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises many types for a bad file
            raise DataError(f"cannot read {path} as Parquet: {_one_line(e)}") from None
    else:
        # A NUL byte never occurs in a text CSV; pandas would give a confusing parse error.
        if b"\x00" in head:
            raise DataError(f"cannot read {path} as CSV: binary data, expected a text file")
        try:
            df = _read_csv(path, head)
        except pd.errors.EmptyDataError:
            raise DataError(f"data.path: {path} is empty (no header, no rows)") from None
        except UnicodeDecodeError as e:
            raise DataError(
                f"cannot read {path} as CSV: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                f"position {e.start}); save it as UTF-8"
            ) from None
        except Exception as e:  # ParserError, ValueError, ... : one line is enough
            raise DataError(f"cannot read {path} as CSV: {_one_line(e)}") from None
    df = df.rename(columns=str)
    if len(df.columns) == 0:
        raise DataError(f"data.path: {path} has no columns")
    if len(df) == 0:
        raise DataError(f"data.path: {path} has a header but no data rows")
    return df


def _read_csv(path: Path, head: bytes) -> pd.DataFrame:
    """Comma-separated, or ``;`` / tab / ``|`` when that is what the header line uses."""
    # low_memory=False: one dtype per column, not one per chunk
    return pd.read_csv(path, low_memory=False, **csv_options(path, head))


def csv_options(path: Path, head: bytes | None = None, sample_rows: int | None = None) -> dict:
    """The ``pandas.read_csv`` options of a CSV file: none for comma-separated; ``sep`` when
    it reads as a single column and its header line uses ``;``, tab or ``|``; and
    ``decimal=","`` for ``;`` files whose numbers use the European decimal comma (judged on
    ``sample_rows`` rows, or all). Training and ``sweep predict`` read files alike."""
    if len(pd.read_csv(path, nrows=0).columns) != 1:
        return {}
    if head is None:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    header = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    for delimiter in OTHER_DELIMITERS:
        if delimiter in header:
            sample = pd.read_csv(path, sep=delimiter, nrows=sample_rows, low_memory=False)
            if delimiter == ";" and _has_decimal_commas(sample):  # 1,5
                return {"sep": delimiter, "decimal": ","}
            return {"sep": delimiter}
    return {}


def _has_decimal_commas(df: pd.DataFrame) -> bool:
    """Some text column holds only numbers written with a decimal comma (``-1,5``)."""
    for column in df.columns:
        values = df[column]
        if not (ptypes.is_object_dtype(values) or ptypes.is_string_dtype(values)):
            continue
        text = values.dropna().astype(str).str.strip()
        numbers = text.str.fullmatch(r"[-+]?\d+(,\d+)?")
        if len(text) and numbers.all() and text.str.contains(",").any():
            return True
    return False


def _target_values(y: pd.Series, task: str, target: str, path: Path) -> tuple[pd.Series, str]:
    """Check the (non-missing) target values and settle the task."""
    if task == "auto" and not (ptypes.is_bool_dtype(y) or ptypes.is_numeric_dtype(y)):
        # Text targets that are numbers with a few typos would become nonsense classes.
        bad = _non_numeric(y)
        if _has_bools(y):
            pass  # yes/no labels
        elif len(bad) == 0:
            y = pd.to_numeric(y)
        elif 1.0 - len(bad) / len(y) >= GARBAGE_FRACTION:
            raise DataError(
                f"data.target: column {target!r} in {path} looks numeric but has non-numeric "
                f"values, e.g. {bad.iloc[0]!r} ({len(bad)} of {len(y)}); fix or blank them"
            )
    if task == "auto":
        task = infer_task(y)
    if task == REGRESSION:
        if ptypes.is_bool_dtype(y) or _has_bools(y):
            y = y.astype(np.float64)
        bad = _non_numeric(y)
        if len(bad):
            raise DataError(
                f"data.target: regression target {target!r} in {path} has non-numeric values, "
                f"e.g. {bad.iloc[0]!r}; use data.task=classification or fix the column"
            )
        y = pd.Series(np.asarray(pd.to_numeric(y), dtype=np.float64), index=y.index)
        bad = out_of_range(y.to_numpy())
        if len(bad):
            raise DataError(
                f"data.target: regression target {target!r} in {path} has {len(bad)} value(s) "
                f"infinite or beyond float32's range (±{FLOAT32_MAX:.1e}), the first "
                f"{y.iloc[bad[0]]!r}; fix or rescale them"
            )
        return y, task
    if ptypes.is_float_dtype(y):
        values = y.to_numpy(dtype=np.float64)
        if np.isfinite(values).all() and np.all(values == np.round(values)):
            y = y.astype(np.int64)  # 0.0/1.0 from an int column with blanks: labels 0/1
    n_classes = y.nunique()
    if n_classes < 2:
        raise DataError(
            f"data.target: column {target!r} in {path} has a single class "
            f"{_py(y.iloc[0])!r}; classification needs at least 2"
        )
    return y, task


def _split(
    y: pd.Series, task: str, val_fraction: float, test_fraction: float, seed: int, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(y)
    labels = y.astype(str).to_numpy() if task == CLASSIFICATION else None
    try:
        if labels is not None:
            try:
                return split_indices(n, val_fraction, test_fraction, seed, stratify=labels)
            except ValueError:
                pass  # a class too small to stratify: an ordinary seeded split instead
        tr, va, te = split_indices(n, val_fraction, test_fraction, seed)
    except ValueError as e:
        raise DataError(
            f"cannot split {n} rows of {path} with data.val_fraction={val_fraction}, "
            f"data.test_fraction={test_fraction}: {_one_line(e)}"
        ) from None
    if labels is not None:
        # Rows of a class missing from train could not be encoded; they train instead.
        seen = set(labels[tr].tolist())
        in_train = [pd.Series(labels[part]).isin(seen).to_numpy() for part in (va, te)]
        moved = [part[~mask] for part, mask in zip((va, te), in_train, strict=True)]
        tr = np.sort(np.concatenate([tr, *moved]))
        before = min(len(va), len(te))
        va, te = (part[mask] for part, mask in zip((va, te), in_train, strict=True))
        if before >= MIN_SPLIT_ROWS:  # else too few rows in all: check_split_sizes says so
            _refuse_rare_classes(labels, va, te, path)
    check_split_sizes(tr, va, te, str(path))
    return tr, va, te


def _refuse_rare_classes(labels: np.ndarray, va: np.ndarray, te: np.ndarray, path: Path) -> None:
    """DataError when classes too small for all three splits emptied validation or test
    (their rows train instead): larger splits would not help, so say what would."""
    if min(len(va), len(te)) >= MIN_SPLIT_ROWS:
        return
    counts = pd.Series(labels).value_counts()
    rare = int((counts < 3).sum())  # a class in train, validation and test needs 3 rows
    if rare:
        raise DataError(
            f"{path}: the target has {len(counts)} classes in {len(labels)} rows, {rare} of "
            f"them with fewer than 3 rows, whose rows train (a class missing from training "
            f"cannot be scored), leaving validation {len(va)} and test {len(te)} rows; "
            f"classification needs several rows per class (a numeric target: "
            f"data.task=regression)"
        )


def load_table(cfg: Any, seed: int) -> Dataset:
    """Load ``cfg.path``, split it (seeded) and fit the preprocessor on the training rows."""
    path = _resolve(cfg.get("path"))
    target = str(cfg.get("target"))
    task = str(cfg.get("task", "auto"))
    if task not in ("auto", CLASSIFICATION, REGRESSION):
        raise ConfigError(f"data.task: {task!r} is not one of auto, classification, regression")
    drop_cfg = cfg.get("drop") or []
    drop = [str(drop_cfg)] if isinstance(drop_cfg, str) else [str(c) for c in drop_cfg]

    df = read_table(path)
    if target not in df.columns:
        raise DataError(
            f"data.target: column {target!r} not in {path}; available: {_list_columns(df.columns)}"
        )
    unknown = [c for c in drop if c not in df.columns]
    if unknown:
        raise DataError(
            f"data.drop: column(s) {_list_columns(unknown)} not in {path}; "
            f"available: {_list_columns(df.columns)}"
        )
    if target in drop:
        raise DataError(f"data.drop: {target!r} is the target (data.target) and cannot be dropped")
    features = [c for c in df.columns if c != target and c not in drop]
    if not features:
        raise DataError(
            f"{path}: no feature columns left besides the target {target!r} and data.drop"
        )

    has_target = df[target].notna()
    if not has_target.any():
        raise DataError(f"data.target: column {target!r} in {path} has no values (all missing)")
    n_missing_target = int((~has_target).sum())
    file_rows = np.flatnonzero(has_target.to_numpy())
    df = df[has_target].reset_index(drop=True)
    y, task = _target_values(df[target], task, target, path)

    # Column kinds come from the whole file: a typo in a test row is still a typo.
    try:
        categorical = [c for c in features if column_kind(df[c], c) == "categorical"]
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    _refuse_out_of_range(df, [c for c in features if c not in categorical], path, file_rows)

    tr, va, te = _split(
        y,
        task,
        float(cfg.get("val_fraction", 0.15)),
        float(cfg.get("test_fraction", 0.15)),
        seed,
        path,
    )
    x = df[features]
    pre = TablePreprocessor(task, features, categorical, int(cfg.get("max_categories", 50)))
    try:
        pre.fit(x.iloc[tr], y.iloc[tr])
    except DataError as e:
        raise DataError(f"{path}: {e}") from None

    def prep(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return pre.transform(x.iloc[rows]), pre.encode_target(y.iloc[rows])

    (xtr, ytr), (xva, yva), (xte, yte) = prep(tr), prep(va), prep(te)
    example = x.iloc[tr[:5]].reset_index(drop=True)
    info = {
        "path": str(path),
        "target": target,
        "n_features_raw": len(features),
        "n_features_encoded": pre.n_features_encoded,
        "n_missing_target": n_missing_target,
    }
    return Dataset("csv", task, xtr, ytr, xva, yva, xte, yte, pre, example, info)
