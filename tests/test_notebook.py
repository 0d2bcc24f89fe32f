"""dashboards/compare_experiments.ipynb executes headless (nbclient + ipykernel) on two
real tiny studies and shows their tables and plots."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compare import PLAIN, ROOT, STUDY_A, STUDY_B, TinyStore, tiny_store

# One test process builds the shared tiny store (tiny_store) and runs every test on it.
pytestmark = pytest.mark.xdist_group("tiny_store")

NOTEBOOK = ROOT / "dashboards" / "compare_experiments.ipynb"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return tiny_store(tmp_path_factory)


def _execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiments: str, uri: str | None):
    """Run the notebook with ``tmp_path`` as the kernel's working directory (Jupyter's is
    the notebook's folder); ``uri=None``: no store given, the notebook finds its own."""
    import nbclient
    import nbformat

    # The notebook's parameters come from the environment; the kernel inherits it.
    monkeypatch.setenv("SWEEP_EXPERIMENTS", experiments)
    if uri is None:
        monkeypatch.delenv("SWEEP_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("SWEEP_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,  # per cell
        kernel_name="python3",
        startup_timeout=60,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return notebook


def _outputs(notebook) -> list[dict]:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def test_notebook_compares_two_studies(
    store: TinyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = _execute(tmp_path, monkeypatch, f"{STUDY_A},{STUDY_B}", store.uri)
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"in 2 experiments: {STUDY_A}, {STUDY_B}" in text
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    summary = next(t for t in tables if "champion_val_mean" in t)
    assert STUDY_A in summary and STUDY_B in summary and PLAIN not in summary
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) >= 4  # strip, val vs test, >=1 parameter scatter, learning curves
    curves = figures[-1]["data"]["application/vnd.plotly.v1+json"]
    assert {STUDY_A, STUDY_B} <= {t["name"].split(" / ")[0] for t in curves["data"]}
    # Parameters must be the first code cell, tagged for papermill.
    first = next(c for c in notebook.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])


def test_notebook_opened_in_dashboards_reads_the_projects_store(
    store: TinyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jupyter starts the kernel in dashboards/; `make sweep` wrote mlflow.db one level up."""
    import shutil

    from nbclient.exceptions import CellExecutionError

    dashboards = tmp_path / "project" / "dashboards"
    dashboards.mkdir(parents=True)
    with pytest.raises(CellExecutionError, match=r"no MLflow store at .*: run `make sweep`"):
        _execute(dashboards, monkeypatch, STUDY_A, None)
    assert list(tmp_path.rglob("mlflow.db")) == []  # reading created no empty store
    shutil.copy(store.root / "mlflow.db", tmp_path / "project" / "mlflow.db")
    outputs = _outputs(_execute(dashboards, monkeypatch, STUDY_A, None))
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"in 1 experiments: {STUDY_A}" in text
