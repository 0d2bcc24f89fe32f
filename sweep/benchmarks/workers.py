"""1 vs 2 local workers on the same study: trials per minute, measured from the trials'
own start and end times (each worker's steady rate, summed) and from the command's wall
time.

Every trial costs the same (the MLP on mnist1d for a fixed number of epochs; only the
learning rate is searched, no pruning, no early stopping), so both runs do the same work
and the ratio measures the workers, not which points the sampler happened to pick.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sweep.benchmarks.common import workdir

SPACE = "optimizer.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
OVERRIDES = [
    "data=mnist1d",
    "model=mlp",
    "sampler=random",
    "pruner=none",
    "trainer.max_epochs=10",
    "trainer.early_stopping.enabled=false",
    "champion.k=0",
]


def _measure(n_workers: int, n_trials: int) -> dict[str, float]:
    from sweep.check import load_study

    with workdir(f"workers{n_workers}") as tmp:
        search = Path(tmp) / "conf" / "search"
        search.mkdir(parents=True)
        (search / "lr.yaml").write_text(SPACE)
        overrides = [
            *OVERRIDES,
            f"hydra.searchpath=[file://{tmp}/conf]",
            "search=lr",
            f"study.n_workers={n_workers}",
            f"study.n_trials={n_trials}",
            "study.name=throughput",
        ]
        started = time.time()
        subprocess.run(
            [sys.executable, "-m", "sweep", "tune", *overrides],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        wall = time.time() - started
        study, _ = load_study(overrides)
        trials = [t for t in study.trials if t.datetime_complete]
        return {
            "trials_per_min": _steady_trials_per_min(trials),
            "wall_s": wall,
            "wall_trials_per_min": 60 * len(trials) / wall,
        }


def _steady_trials_per_min(trials: list) -> float:
    """Each worker's trials over its own span (first start to last end), summed: workers
    finish importing at different times, and with trials of a second or so, the span of
    the whole study would measure that skew, not how fast workers run side by side."""
    by_worker: dict[str, list] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs.get("worker", "?"), []).append(t)
    rate = 0.0
    for own in by_worker.values():
        span = max(t.datetime_complete for t in own) - min(t.datetime_start for t in own)
        rate += 60 * len(own) / span.total_seconds()
    return rate


def run(n_trials: int = 12) -> dict[str, Any]:
    one = _measure(1, n_trials)
    two = _measure(2, n_trials)
    return {
        "n_trials": n_trials,
        "one": one,
        "two": two,
        "ratio": two["trials_per_min"] / one["trials_per_min"],
        "wall_ratio": two["wall_trials_per_min"] / one["wall_trials_per_min"],
    }


if __name__ == "__main__":
    print(run())
