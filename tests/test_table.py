"""The CSV / Parquet table source: task inference, preprocessing, and bad-data errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sweep.data.base import CLASSIFICATION, REGRESSION, split_indices
from sweep.data.table import MISSING, TablePreprocessor, load_table
from sweep.errors import DataError


def cfg(path: Path | str, target: str = "label", **overrides):
    base = {
        "name": "csv",
        "path": str(path),
        "target": target,
        "task": "auto",
        "drop": [],
        "max_categories": 50,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "batch_size": 8,
        "loader": "memory",
    }
    base.update(overrides)
    return OmegaConf.create(base)


def frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A small mixed table: id, numeric with blanks, a string feature, a string label."""
    rng = np.random.default_rng(seed)
    height = rng.normal(170, 10, n).round(1)
    height[[3, 11]] = np.nan
    return pd.DataFrame(
        {
            "id": np.arange(1000, 1000 + n),
            "height cm": height,  # a space in the name
            "colour": rng.choice(["red", "green", "blue"], n),
            "age": rng.integers(18, 80, n),
            "label": np.where(np.arange(n) % 2 == 0, "cat", "dog"),
        }
    )


def write_csv(tmp_path: Path, df: pd.DataFrame, name: str = "t.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_string_labels_round_trip_and_id_dropped(tmp_path):
    path = write_csv(tmp_path, frame())
    ds = load_table(cfg(path, drop=["id"]), seed=0)
    pre = ds.preprocessor
    assert ds.name == "csv"
    assert ds.task == CLASSIFICATION
    assert pre.classes == ["cat", "dog"]
    assert ds.y_train.dtype == np.int64
    assert list(pre.decode_target(pre.encode_target(["dog", "cat"]))) == ["dog", "cat"]
    assert "id" not in pre.feature_columns and "label" not in pre.feature_columns
    assert pre.feature_columns == ["height cm", "colour", "age"]
    assert pre.numeric_columns == ["height cm", "age"]
    assert pre.categorical_columns == ["colour"]
    assert pre.input_schema == {"height cm": "double", "colour": "string", "age": "double"}
    assert ds.num_outputs == 2
    assert ds.info["path"] == str(path)
    assert ds.info["target"] == "label"
    assert ds.info["n_features_raw"] == 3
    assert ds.info["n_features_encoded"] == 5 == ds.x_train.shape[1]
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 40
    # the input example is raw training rows without target and dropped columns
    assert list(ds.input_example.columns) == ["height cm", "colour", "age"]
    assert len(ds.input_example) == 5
    np.testing.assert_allclose(pre.transform(ds.input_example), ds.x_train[:5], rtol=1e-6)


def test_missing_values_imputed(tmp_path):
    df = frame()
    df.loc[[0, 5], "colour"] = None
    df.loc[[1, 2], "age"] = None
    path = write_csv(tmp_path, df)
    ds = load_table(cfg(path, drop=["id"]), seed=1)
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == np.float32
        assert np.isfinite(x).all()
    pre = ds.preprocessor
    out = pre.transform(pd.DataFrame({"height cm": [None], "colour": [None], "age": [np.nan]}))
    assert np.isfinite(out).all()
    # a missing number becomes the train median, i.e. (median - mean) / scale
    col = pre.encoded_columns.index("age")
    expected = (pre.medians["age"] - pre.means["age"]) / pre.scales["age"]
    assert out[0, col] == pytest.approx(expected, rel=1e-5)


def test_missing_target_rows_dropped(tmp_path):
    df = frame()
    df.loc[[4, 9, 17], "label"] = None
    path = write_csv(tmp_path, df)
    ds = load_table(cfg(path, drop=["id"]), seed=0)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 37
    assert ds.info["n_missing_target"] == 3


def test_one_hot_unseen_value_is_zeros():
    x = pd.DataFrame({"colour": ["red", "blue", None, "red"], "n": [1.0, 2.0, 3.0, 4.0]})
    pre = TablePreprocessor(CLASSIFICATION, ["colour", "n"]).fit(x, ["a", "b", "a", "b"])
    assert pre.categorical_columns == ["colour"]
    assert pre.vocabularies["colour"] == sorted(["red", "blue", MISSING])
    out = pre.transform(pd.DataFrame({"colour": ["purple", "red", None], "n": [1, 1, 1]}))
    onehot = out[:, : len(pre.vocabularies["colour"])]
    assert onehot[0].tolist() == [0, 0, 0]  # unseen
    assert onehot[1].sum() == 1 and onehot[1][pre.vocabularies["colour"].index("red")] == 1
    assert onehot[2][pre.vocabularies["colour"].index(MISSING)] == 1


def test_a_boolean_column_reads_the_same_however_true_is_spelt():
    """Trained on a bool column (pandas reads true/false in a CSV as bool): the text
    'true', as a CSV read as text or a JSON request gives it, is True, not unseen."""
    x = pd.DataFrame({"member": [True, False, True, False], "n": [1.0, 2.0, 3.0, 4.0]})
    pre = TablePreprocessor(CLASSIFICATION, ["member", "n"]).fit(x, ["a", "b", "a", "b"])
    assert pre.vocabularies["member"] == ["False", "True"]
    spelt = pd.DataFrame({"member": ["true", "FALSE", "True", False], "n": [1, 1, 1, 1]})
    as_bools = pd.DataFrame({"member": [True, False, True, False], "n": [1, 1, 1, 1]})
    assert np.array_equal(pre.transform(spelt), pre.transform(as_bools))


def test_a_boolean_in_a_numeric_column_is_refused_not_read_as_one():
    """pandas reads True as 1.0; a column trained on numbers never held one, so a JSON
    ``true`` there is a mistake to name, not a value."""
    x = pd.DataFrame({"n": [1.0, 2.0, 3.0, 4.0]})
    pre = TablePreprocessor(CLASSIFICATION, ["n"]).fit(x, ["a", "b", "a", "b"])
    for column in ([True, False], [2.0, True], pd.Series([True, None], dtype="boolean")):
        with pytest.raises(ValueError, match=r"column 'n': True is not a number"):
            pre.transform(pd.DataFrame({"n": column}))
    assert pre.transform(pd.DataFrame({"n": [None, "2.5"]})).shape == (2, 1)


def test_an_infinite_value_is_refused_not_imputed():
    """A missing number is imputed; an infinite one (a division by zero upstream, or a
    client's ``Infinity``) would be imputed silently, so prediction names its row."""
    x = pd.DataFrame({"n": [1.0, 2.0, 3.0, 4.0]})
    pre = TablePreprocessor(CLASSIFICATION, ["n"]).fit(x, ["a", "b", "a", "b"])
    finite = r"not a finite number within float32's range \(±3\.4e\+38\)"
    cases = (
        ([1.0, None, -np.inf], rf"row 2 \(0-based\) is -inf, {finite} \(1 such"),
        (["2", "inf", "Infinity"], rf"row 1 \(0-based\) is 'inf', {finite} \(2 such"),
        # Finite in float64, infinite in the model's float32.
        ([1.0, 1e300], rf"row 1 \(0-based\) is 1e\+300, {finite} \(1 such"),
    )
    for column, message in cases:
        with pytest.raises(ValueError, match=rf"column 'n': {message}"):
            pre.transform(pd.DataFrame({"n": column}))


@pytest.mark.parametrize("value", [np.inf, "-inf", 1e300, "-3.5e38"])
def test_an_infinite_value_in_the_file_is_a_data_error(tmp_path, value):
    """Infinite, or beyond float32's range (it trained as infinite: a loss of NaN at the
    first step, reported as divergence). Named with its column, file and data row (counted
    before rows without a target are dropped), whichever split the row falls in."""
    df = frame()
    df.loc[2, "label"] = None  # dropped: the row numbers still count it
    df["ratio"] = np.arange(40, dtype=object)
    df.loc[[9, 30], "ratio"] = value
    assert_data_error(
        cfg(write_csv(tmp_path, df)), "'ratio'", "t.csv", "2 value(s) infinite", "row 9 "
    )
    # Dropped, the column is no longer read.
    assert load_table(cfg(write_csv(tmp_path, df), drop=["ratio"]), seed=0).x_train.shape[0]


def test_statistics_fitted_on_train_only(tmp_path):
    n = 50
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "label": np.linspace(0.5, 99.5, n)})
    # The same seeded split load_table makes (regression: not stratified).
    tr, _va, te = split_indices(n, 0.2, 0.2, seed=3)
    held_out = te[0]
    df.loc[held_out, ["x", "label"]] = 1e6  # would dominate any statistic it entered
    ds = load_table(cfg(write_csv(tmp_path, df)), seed=3)
    pre = ds.preprocessor
    assert ds.task == REGRESSION
    assert len(ds.x_train) == len(tr)
    assert pre.means["x"] == pytest.approx(df["x"].to_numpy()[tr].mean())
    assert pre.scales["x"] == pytest.approx(df["x"].to_numpy()[tr].std())
    assert pre.medians["x"] == pytest.approx(np.median(df["x"].to_numpy()[tr]))
    assert pre.target_mean == pytest.approx(df["label"].to_numpy()[tr].mean())
    assert pre.target_scale == pytest.approx(df["label"].to_numpy()[tr].std())
    assert pre.means["x"] < 100
    # regression targets are standardised and decode back
    y = pre.encode_target([10.0, 20.0])
    np.testing.assert_allclose(pre.decode_target(y), [10.0, 20.0], rtol=1e-5)
    np.testing.assert_allclose(pre.decode_target(ds.y_train), df["label"].to_numpy()[tr], rtol=1e-5)


@pytest.mark.parametrize(
    ("label", "task"),
    [
        (["a", "b", "c", "a"] * 10, CLASSIFICATION),
        ([0.5, 1.25, 3.75, 9.1] * 10, REGRESSION),
        ([0, 1, 2, 1] * 10, CLASSIFICATION),
        ([True, False, True, False] * 10, CLASSIFICATION),
        (list(range(40)), REGRESSION),  # many distinct integers: a quantity
    ],
)
def test_task_inference(tmp_path, label, task):
    df = pd.DataFrame({"f": np.arange(40) % 7, "label": label})
    ds = load_table(cfg(write_csv(tmp_path, df)), seed=0)
    assert ds.task == task
    if task == CLASSIFICATION:
        assert all(type(c) in (str, int, bool) for c in ds.preprocessor.classes)


def test_explicit_task_respected(tmp_path):
    df = pd.DataFrame({"f": np.arange(40) % 7, "label": [0, 1, 2, 3] * 10})
    ds = load_table(cfg(write_csv(tmp_path, df), task="regression"), seed=0)
    assert ds.task == REGRESSION and ds.y_train.dtype == np.float32


def test_rare_class_falls_back_to_unstratified(tmp_path):
    df = pd.DataFrame({"f": np.arange(30.0), "label": ["a"] * 15 + ["b"] * 14 + ["c"]})
    ds = load_table(cfg(write_csv(tmp_path, df)), seed=0)
    assert ds.preprocessor.classes == ["a", "b", "c"]
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 30


def test_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    frame().to_parquet(path, index=False)
    ds = load_table(cfg(path, drop=["id"]), seed=0)
    assert ds.task == CLASSIFICATION and ds.x_train.shape[1] == 5


def test_relative_path_resolves_against_cwd(tmp_path, monkeypatch):
    write_csv(tmp_path, frame())
    monkeypatch.chdir(tmp_path)
    ds = load_table(cfg("t.csv"), seed=0)
    assert ds.info["path"] == str(tmp_path / "t.csv")


def test_transform_column_order_extra_and_missing_columns(tmp_path):
    ds = load_table(cfg(write_csv(tmp_path, frame()), drop=["id"]), seed=0)
    pre = ds.preprocessor
    raw = ds.input_example
    shuffled = raw[["age", "colour", "height cm"]].assign(extra=1, label="cat")
    np.testing.assert_array_equal(pre.transform(shuffled), pre.transform(raw))
    with pytest.raises(ValueError, match="height cm"):
        pre.transform(raw.drop(columns=["height cm"]))
    with pytest.raises(ValueError, match="age"):
        pre.transform(raw.assign(age="old"))


def test_preprocessor_pickles(tmp_path):
    ds = load_table(cfg(write_csv(tmp_path, frame()), drop=["id"]), seed=0)
    pre = pickle.loads(pickle.dumps(ds.preprocessor))
    np.testing.assert_array_equal(pre.transform(ds.input_example), ds.x_train[:5])
    assert pre.classes == ds.preprocessor.classes


def test_text_column_is_categorical_not_garbage(tmp_path):
    df = frame()
    df["city"] = ["Paris", "Oslo", "10", "Rome"] * 10  # mostly text: a category
    ds = load_table(cfg(write_csv(tmp_path, df), drop=["id"]), seed=0)
    assert "city" in ds.preprocessor.categorical_columns


# --------------------------------------------------------------------------- bad data


def bad(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def assert_data_error(c, *needles: str) -> str:
    with pytest.raises(DataError) as info:
        load_table(c, seed=0)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_missing_file(tmp_path):
    assert_data_error(cfg(tmp_path / "nope.csv"), "file not found", "nope.csv")


def test_directory(tmp_path):
    assert_data_error(cfg(tmp_path), str(tmp_path), "directory")


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    data = b"\x00" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes()
    assert_data_error(cfg(bad(tmp_path, "junk.csv", data)), "cannot read", "junk.csv", "as CSV")


def test_png(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02"
    assert_data_error(cfg(bad(tmp_path, "img.csv", png)), "cannot read", "img.csv")


def test_not_utf8(tmp_path):
    assert_data_error(
        cfg(bad(tmp_path, "latin.csv", "f,label\n1,caf\xe9\n".encode("latin-1"))),
        "latin.csv",
        "UTF-8",
    )


def test_bad_parquet(tmp_path):
    assert_data_error(cfg(bad(tmp_path, "t.parquet", "a,b\n1,2\n")), "t.parquet", "Parquet")


def test_empty_file(tmp_path):
    assert_data_error(cfg(bad(tmp_path, "empty.csv", "")), "empty.csv", "empty")
    assert_data_error(cfg(bad(tmp_path, "blank.csv", "\n\n")), "blank.csv", "empty")


def test_header_only(tmp_path):
    assert_data_error(cfg(bad(tmp_path, "head.csv", "f,label\n")), "head.csv", "no data rows")


def test_target_absent_lists_columns(tmp_path):
    df = pd.DataFrame({f"col{i}": [1, 2] for i in range(30)})
    message = assert_data_error(cfg(write_csv(tmp_path, df), target="y"), "'y'", "col0")
    assert "more" in message and "col29" not in message  # truncated


def test_unknown_drop_column(tmp_path):
    assert_data_error(cfg(write_csv(tmp_path, frame()), drop=["idx"]), "data.drop", "'idx'")


def test_target_all_missing(tmp_path):
    df = frame().assign(label=np.nan)
    assert_data_error(cfg(write_csv(tmp_path, df)), "'label'", "missing")


def test_single_class(tmp_path):
    df = frame().assign(label="cat")
    assert_data_error(cfg(write_csv(tmp_path, df)), "'label'", "single class")


def test_regression_target_not_numeric(tmp_path):
    assert_data_error(
        cfg(write_csv(tmp_path, frame()), task="regression"), "'label'", "non-numeric", "'cat'"
    )


@pytest.mark.parametrize("value", [np.inf, 1e300])
def test_a_regression_target_beyond_float32_is_a_data_error(tmp_path, value):
    df = frame().assign(label=np.arange(40.0))
    df.loc[7, "label"] = value
    assert_data_error(cfg(write_csv(tmp_path, df), task="regression"), "'label'", "1 value(s)")


def test_numeric_column_with_garbage(tmp_path):
    df = frame()
    df["weight"] = [str(v) for v in range(40)]
    df.loc[7, "weight"] = "abc"
    assert_data_error(cfg(write_csv(tmp_path, df)), "'weight'", "'abc'", "t.csv")


def test_no_features_left(tmp_path):
    df = pd.DataFrame({"id": [1, 2, 3], "label": ["a", "b", "a"]})
    assert_data_error(cfg(write_csv(tmp_path, df), drop=["id"]), "no feature columns", "t.csv")


def test_too_many_categories(tmp_path):
    df = frame()
    df["name"] = [f"person{i}" for i in range(40)]
    assert_data_error(
        cfg(write_csv(tmp_path, df), max_categories=10), "'name'", "max_categories", "t.csv"
    )


def test_identifier_like_text_column(tmp_path):
    """Distinct in every row (an id, a name, free text): one-hot would memorise the rows."""
    df = frame(n=60)
    df["customer"] = [f"C{i:04d}" for i in range(60)]
    assert_data_error(cfg(write_csv(tmp_path, df)), "'customer'", "data.drop", "t.csv")
    ds = load_table(cfg(write_csv(tmp_path, df), drop=["id", "customer"]), seed=0)
    assert "customer" not in ds.preprocessor.feature_columns


def test_many_repeated_categories_are_kept(tmp_path):
    df = frame(n=120)
    df["city"] = [f"city{i % 30}" for i in range(120)]  # 30 values, each seen about 4 times
    ds = load_table(cfg(write_csv(tmp_path, df), drop=["id"]), seed=0)
    assert len(ds.preprocessor.vocabularies["city"]) > 20


def test_too_few_rows_to_split(tmp_path):
    df = frame(n=40).head(4)
    assert_data_error(cfg(write_csv(tmp_path, df)), "too few rows", "validation", "t.csv")


def test_classes_of_one_row_each_are_named_as_the_reason_no_rows_validate(tmp_path):
    """A numeric target taken as classes (data.task=classification): every class's rows
    train, so larger validation and test fractions would not help (it said so before)."""
    df = frame(n=120).assign(label=np.arange(120.0) / 7)
    for fractions in ({}, {"val_fraction": 0.3, "test_fraction": 0.3}):
        path = write_csv(tmp_path, df)
        assert_data_error(
            cfg(path, task="classification", **fractions),
            "120 classes in 120 rows, 120 of them with fewer than 3 rows",
            "data.task=regression",
        )


def test_semicolons_and_decimal_commas(tmp_path):
    """The European convention: ';' between fields, ',' as the decimal mark."""
    df = frame(n=40)
    path = tmp_path / "eu.csv"
    df.to_csv(path, index=False, sep=";", decimal=",")
    assert "," in path.read_text().splitlines()[1]  # the heights are written 170,4
    ds = load_table(cfg(path, drop=["id"]), seed=0)
    pre = ds.preprocessor
    assert pre.input_schema == {"height cm": "double", "colour": "string", "age": "double"}
    heights = df["height cm"].dropna()
    assert heights.min() <= pre.medians["height cm"] <= heights.max()
    assert pre.classes == ["cat", "dog"]


def test_tab_separated(tmp_path):
    path = tmp_path / "t.tsv"
    frame().to_csv(path, index=False, sep="\t")
    ds = load_table(cfg(path, drop=["id"]), seed=0)
    assert ds.preprocessor.feature_columns == ["height cm", "colour", "age"]
