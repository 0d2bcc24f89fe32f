"""Batch prediction on files (``sweep predict``): chunks in, rows plus predictions out,
and one-line errors with exit status 2 for everything a user can get wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from sweep import cli
from sweep.config import load_run_config
from sweep.deploy import DeployError, predict_file
from sweep.train import run

# One test process runs this module: its module-scoped fixtures are built once.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("predict")]

FEATURES = ["age", "height", "color"]


def write_table(path: Path, n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Classification table: string labels, an int column, a float, a category, an id."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "age": rng.integers(1, 15, size=n),
            "height": rng.normal(30, 8, size=n).round(2),
            "color": rng.choice(["black", "white", "brown"], size=n),
        }
    )
    score = (df["age"] - 7) / 3 + (df["color"] == "black") * 1.2 + (df["height"] - 30) / 10
    df["label"] = np.where(score > 0.6, "cat", np.where(score < -0.6, "dog", "bird"))
    df.to_csv(path, index=False)
    return df


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: Path):
    """A table model and a digits model in a module-private store; the store's root."""
    root = tmp_path_factory.mktemp("predict")
    shutil.copy(_empty_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    write_table(root / "train.csv", n=240, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        table = run(
            load_run_config(
                [
                    "data=csv",
                    f"data.path={root / 'train.csv'}",
                    "data.target=label",
                    "data.drop=[id]",
                    "trainer=fast",
                ]
            )
        )
        digits = run(load_run_config(["data=digits", "trainer=fast", "trainer.max_epochs=1"]))
        yield {"root": root, "uri": uri, "table": table.model_uri, "digits": digits.model_uri}


@pytest.fixture
def in_store(trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(trained["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    return trained["root"]


def new_rows(path: Path, n: int = 150) -> pd.DataFrame:
    """Rows to predict: other values, columns shuffled, blanks, the label and an extra column."""
    df = write_table(path.with_suffix(".tmp.csv"), n=n, seed=7)
    df.loc[3, "age"] = np.nan  # a missing value in an int column: imputed by the model
    df.loc[4, "color"] = np.nan
    df = df[["label", "color", "id", "height", "age"]].assign(note="x")
    df.to_csv(path, index=False)
    return pd.read_csv(path)


# -- round trips ----------------------------------------------------------------------------
def test_csv_round_trip_through_the_cli(trained, in_store, capsys):
    rows = new_rows(in_store / "new.csv")
    out = in_store / "out" / "preds.csv"
    code = cli.main(
        [
            "predict",
            f"model={trained['table']}",
            "input=new.csv",
            f"output={out}",
            "chunk_size=40",  # 150 rows: four chunks
            "proba=true",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "wrote 150 rows" in err
    written = pd.read_csv(out)
    # Every input row and column kept, in order, values unchanged; predictions appended.
    proba = ["proba_bird", "proba_cat", "proba_dog"]
    assert list(written.columns) == [*rows.columns, "prediction", *proba]
    pd.testing.assert_frame_equal(written[rows.columns], rows)
    expected = mlflow.pyfunc.load_model(trained["table"]).predict(
        rows[FEATURES], params={"proba": True}
    )
    assert written["prediction"].tolist() == expected["prediction"].tolist()
    assert set(written["prediction"]) <= {"cat", "dog", "bird"}
    np.testing.assert_allclose(written[proba], expected[proba], rtol=1e-5)
    assert not list(out.parent.glob(".*.tmp"))  # the temporary file was moved into place


def test_parquet_in_and_out(trained, in_store):
    rows = new_rows(in_store / "rows.csv", n=60)
    rows.to_parquet(in_store / "rows.parquet")
    summary = predict_file(
        trained["table"], in_store / "rows.parquet", in_store / "p.parquet", chunk_size=25
    )
    assert summary.rows == 60
    assert summary.prediction_columns == ["prediction"]
    written = pd.read_parquet(in_store / "p.parquet")
    expected = mlflow.pyfunc.load_model(trained["table"]).predict(rows[FEATURES])
    assert written["prediction"].tolist() == expected["prediction"].tolist()
    assert written["id"].tolist() == rows["id"].tolist()


def test_semicolon_file_with_decimal_commas_reads_as_training_does(trained, in_store):
    """A ``;``-separated file with decimal commas (1,5): read like a training file, so the
    numbers are numbers and every row is predicted."""
    rows = new_rows(in_store / "comma.csv", n=40)
    rows.to_csv(in_store / "euro.csv", sep=";", decimal=",", index=False)
    assert "," in (in_store / "euro.csv").read_text().splitlines()[1]  # 30,25 style numbers
    summary = predict_file(trained["table"], "euro.csv", "euro_out.csv", progress=False)
    written = pd.read_csv(in_store / "euro_out.csv")
    expected = mlflow.pyfunc.load_model(trained["table"]).predict(rows[FEATURES])
    assert summary.rows == 40
    assert written["prediction"].tolist() == expected["prediction"].tolist()


def test_default_output_name(trained, in_store):
    new_rows(in_store / "batch.csv", n=10)
    summary = predict_file(trained["table"], "batch.csv", progress=False)
    assert summary.output == Path("batch.predictions.csv")
    assert len(pd.read_csv(in_store / "batch.predictions.csv")) == 10


def test_array_model_on_a_file_of_pixels(trained, in_store):
    from sklearn.datasets import load_digits

    images = load_digits().images[:30].reshape(30, -1)
    pd.DataFrame(images, columns=[f"p{i}" for i in range(64)]).to_csv("pixels.csv", index=False)
    summary = predict_file(trained["digits"], "pixels.csv", "digits_out.csv", chunk_size=8)
    written = pd.read_csv(in_store / "digits_out.csv")
    expected = mlflow.pyfunc.load_model(trained["digits"]).predict(images.astype(np.float32))
    assert summary.rows == 30
    assert written["prediction"].tolist() == expected["prediction"].tolist()
    # The same pixels saved without a header (np.savetxt): the first row is a sample too.
    np.savetxt(in_store / "bare.csv", images, delimiter=",", fmt="%g")
    summary = predict_file(trained["digits"], "bare.csv", "bare_out.csv", progress=False)
    assert summary.rows == 30
    bare = pd.read_csv(in_store / "bare_out.csv")
    assert bare["prediction"].tolist() == expected["prediction"].tolist()
    assert bare.shape == (30, 65)


# -- errors: one line, exit status 2, no output file -----------------------------------------
def bad_inputs(root: Path) -> None:
    df = new_rows(root / "ok.csv", n=20)
    df.drop(columns=["height"]).to_csv(root / "no_height.csv", index=False)
    garbage = df.astype({"height": object})
    garbage.loc[12, "height"] = "tall"
    garbage.to_csv(root / "garbage.csv", index=False)
    infinite = df.astype({"height": object})
    infinite.loc[15, "height"] = "-inf"
    infinite.to_csv(root / "infinite.csv", index=False)
    (root / "empty.csv").write_text("")
    (root / "header_only.csv").write_text("age,height,color\n")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["input=nothere.csv"], ["input: file not found", "nothere.csv"]),
        (["input=no_height.csv"], ["missing column(s) 'height'", "model inputs"]),
        (["input=garbage.csv"], ["column 'height' must be numeric", "data row 13", "'tall'"]),
        (
            ["input=infinite.csv"],
            ["column 'height' must be finite and within float32's range", "data row 16", "-inf"],
        ),
        (["input=infinite.csv", "chunk_size=7"], ["data row 16 has -inf"]),
        (["input=empty.csv"], ["empty"]),
        (["input=header_only.csv"], ["no data rows"]),
        (["input=ok.csv", "output=ok.csv"], ["is the input file"]),
        (["input=ok.csv", "output=out/failed.xlsx"], ["failed.xlsx: write to a file named .csv"]),
        (["input=ok.csv", "chunk_size=0"], ["chunk_size=0: must be >= 1"]),
        (["input=ok.csv", "proba=maybe"], ["proba=maybe: must be true or false"]),
        (["input=ok.csv", "colour=red"], ["colour: unknown option"]),
        (["input=ok.csv", "model=models:/no_such@champion"], ["no_such not found"]),
        (["input=ok.csv", "model=runs:/0123456789abcdef/model"], ["not found"]),
    ],
    ids=[
        "missing-file",
        "missing-column",
        "garbage-value",
        "infinite-value",
        "infinite-value-third-chunk",
        "empty-file",
        "header-only",
        "output-is-input",
        "output-format-unknown",
        "bad-chunk-size",
        "bad-proba",
        "unknown-option",
        "unknown-model",
        "unknown-run",
    ],
)
def test_errors_are_one_line_with_status_2(trained, in_store, capsys, args, needles):
    bad_inputs(in_store)
    before = set(in_store.rglob("*"))
    model = [] if any(a.startswith("model=") for a in args) else [f"model={trained['table']}"]
    output = [] if any(a.startswith("output=") for a in args) else ["output=out/failed.csv"]
    code = cli.main(["predict", *model, *args, *output])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert err == error_lines[0]  # nothing else: no blank line from a progress bar
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]
    assert "Traceback" not in err
    assert not (in_store / "out" / "failed.csv").exists()
    assert not [p for p in set(in_store.rglob("*")) - before if p.suffix == ".tmp"]


def test_missing_store_is_an_error_not_a_new_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # MLflow's default
    (tmp_path / "rows.csv").write_text("age,height,color\n3,30,black\n")
    code = cli.main(["predict", "model=models:/pets@champion", "input=rows.csv"])
    assert code == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_signature_requires_every_feature_column():
    """MLflow marks a column optional when the example has a missing value in it; the
    preprocessor needs them all, so the logged signature requires them all."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import AnyType

    from sweep.data.table import TablePreprocessor
    from sweep.packaging import _features_as_any

    x = pd.DataFrame({"age": [3.0, 4.0, 5.5], "color": ["black", None, "white"]})
    preprocessor = TablePreprocessor("classification", ["age", "color"]).fit(x, ["a", "b", "a"])
    inferred = infer_signature(x, pd.DataFrame({"prediction": ["a", "b", "a"]}))
    assert inferred.inputs.required_input_names() == ["age"]
    inputs = _features_as_any(inferred, preprocessor).inputs
    assert inputs.required_input_names() == ["age", "color"]
    assert isinstance(inputs.input_dict()["age"].type, AnyType)
    assert isinstance(inputs.input_dict()["color"].type, AnyType)  # may arrive all-NaN


def test_a_batch_with_a_text_column_entirely_missing_predicts(trained, in_store):
    """A text column that is missing in every row of a batch arrives as float NaN; the
    preprocessor encodes it as a missing category instead of MLflow refusing the batch."""
    model = mlflow.pyfunc.load_model(trained["table"])
    rows = new_rows(in_store / "no_colors.csv", n=6).assign(color=np.nan)
    predicted = model.predict(rows)
    assert len(predicted) == 6 and predicted["prediction"].notna().all()


def test_a_column_an_older_signature_calls_optional_is_still_required(trained, in_store):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from sweep.deploy import _input_spec, _model_input

    model = mlflow.pyfunc.load_model(trained["table"])
    logged = model.metadata.signature
    model.metadata.signature = ModelSignature(
        Schema([ColSpec(c.type, c.name, required=c.name != "color") for c in logged.inputs]),
        logged.outputs,
        logged.params,
    )
    spec = _input_spec(model)
    assert spec.columns == FEATURES
    rows = new_rows(in_store / "no_color.csv", n=5).drop(columns=["color"])
    with pytest.raises(DeployError, match=r"missing column\(s\) 'color'.*'age', 'height', 'color'"):
        _model_input(rows, spec, Path("no_color.csv"), 0)


def test_predict_file_raises_deploy_error(trained, in_store):
    with pytest.raises(DeployError, match="file not found"):
        predict_file(trained["table"], in_store / "absent.csv")
