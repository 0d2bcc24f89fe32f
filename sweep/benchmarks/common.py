"""Shared helpers: a private working directory and tracking store per benchmark."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary cwd with its own MLflow sqlite store and Optuna journal."""
    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix=f"sweep-bench-{prefix}-") as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        try:
            yield Path(tmp)
        finally:
            os.chdir(old_cwd)
            if old_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old_uri


def median(values: list[float]) -> float:
    return statistics.median(values)


def trial_seconds(study) -> list[float]:
    return [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.trials
        if t.datetime_complete and t.datetime_start
    ]


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows: results differ by CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """The machine a result was measured on: cores, CPU, Python, torch and the GPU."""
    import torch

    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} cores ({cpu_name()}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, {gpu}"
    )
