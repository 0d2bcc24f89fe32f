"""The benchmark report (the table make bench writes, from a results dict of each phase's
shape) and the arithmetic of the phases: worker throughput, the pruner replay.

The phases themselves are benchmarks (minutes, `make bench`), not tests; the compare phase's
fill is exercised in test_compare.
"""

from __future__ import annotations

import pytest

from sweep.benchmarks.__main__ import render
from sweep.benchmarks.pruners import PRUNERS
from sweep.benchmarks.search import _median


def _search_arm(walls: list[float], best: list[float]) -> dict:
    per_seed = [
        {"wall_s": w, "to_target_s": w / 4, "best_val": b, "best_test": b - 0.01, "pruned": 3}
        for w, b in zip(walls, best, strict=True)
    ]
    arm = {key: _median([r[key] for r in per_seed]) for key in per_seed[0]}
    return {**arm, "per_seed": per_seed}


RESULTS = {
    "help_s": 0.12,
    "overhead": {
        "trial_s": 2.3,
        "hand_s": 2.0,
        "repetitions": 9,
        "ratio": 1.15,
        "ratio_range": [1.05, 1.3],
        "ratio_nomodel": 1.08,
        "ratio_nomodel_range": [1.0, 1.2],
    },
    "workers": {
        "n_trials": 16,
        "one": {"trials_per_min": 50.0},
        "two": {"trials_per_min": 95.0},
        "ratio": 1.9,
        "wall_ratio": 1.1,
    },
    "search": {
        "n_trials": 20,
        "target": 0.8,
        "seeds": [0, 1, 2],
        "baseline": _search_arm([280, 300, 290], [0.98, 0.97, 0.975]),
        "ours": _search_arm([90, 100, 95], [0.976, 0.981, 0.97]),
        "ours_2_workers": _search_arm([80, 85, 70], [0.975, 0.972, 0.99]),
        "speedup": 290 / 95,
        "speedup_2_workers": 290 / 80,
    },
    "compare": {"runs": 10000, "runs_s_best": 2.3, "runs_s_all": [3.1, 2.3, 2.4], "summary_s": 2.5},
}


def test_render_reports_medians_ratios_and_every_seed() -> None:
    table = render(RESULTS)
    lines = table.splitlines()
    assert lines[0] == "| benchmark | result | goal |"
    assert "**1.15x** (range 1.05-1.30)" in table
    assert "290 s / 95 s = **3.1x**; / 80 s = **3.6x**" in table  # medians over the seeds
    assert "median of 3 sampler seeds" in table
    assert "0.9800 / 0.9760 (0.9750); 0.9700 / 0.9810 (0.9720); 0.9750 / 0.9700 (0.9900)" in table
    assert "95.0 / 50.0 = **1.90x**" in table
    assert "**2.30 s** (best of 3; the first call in a fresh process" in table
    assert "3.10 s" in table
    assert all(line.count("|") == 4 for line in lines)  # no cell broke the markdown table


@pytest.mark.parametrize(
    "values, expected",
    [([3.0, 1.0, 2.0], 2.0), ([1.0, None, 2.0], 2.0), ([None, None, 1.0], None), ([4.0], 4.0)],
)
def test_search_median_counts_a_target_never_reached_as_slowest(values, expected) -> None:
    assert _median(values) == expected


def test_worker_throughput_sums_each_workers_own_rate() -> None:
    """Worker b starts 10 s late (imports): the study's span would halve its rate."""
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    from sweep.benchmarks.workers import _steady_trials_per_min

    t0 = datetime(2026, 1, 1)

    def trial(worker: str, start: float, seconds: float):
        begin = t0 + timedelta(seconds=start)
        return SimpleNamespace(
            user_attrs={"worker": worker},
            datetime_start=begin,
            datetime_complete=begin + timedelta(seconds=seconds),
        )

    a = [trial("host:1", 2 * i, 2) for i in range(10)]  # 10 trials in 20 s: 30 per minute
    b = [trial("host:2", 10 + 2 * i, 2) for i in range(5)]  # 5 in 10 s: 30 per minute
    assert _steady_trials_per_min(a) == pytest.approx(30)
    assert _steady_trials_per_min(a + b) == pytest.approx(60)


def test_render_adds_the_replayed_pruners_when_measured() -> None:
    seeds = [0, 1, 2]
    pruners = {
        name: {"time_fraction": 0.5 + i / 10, "kept_best": 3 - i % 2, "per_seed": []}
        for i, name in enumerate(PRUNERS)
    }
    table = render({**RESULTS, "pruners": {"n_trials": 20, "seeds": seeds, **pruners}})
    assert "percentile_all (default) 0.50, 3 of 3; median 0.60, 2 of 3" in table
    assert all(line.count("|") == 4 for line in table.splitlines())


def _curve_trials() -> list[dict]:
    """Two searches' worth of recorded trials: reports per epoch, value, seconds."""
    return [
        {"reports": [0.6, 0.8, 0.9], "value": 0.9, "seconds": 3.0},
        {"reports": [0.2, 0.3, 0.95], "value": 0.95, "seconds": 3.0},  # a slow starter
        {"reports": [0.7, 0.8, 0.85], "value": 0.85, "seconds": 6.0},
    ]


def test_replay_counts_the_time_up_to_each_pruned_epoch_and_the_best_kept() -> None:
    import optuna

    from sweep.benchmarks.pruners import replay

    none = replay(_curve_trials(), optuna.pruners.NopPruner())
    assert none == {"seconds": 12.0, "best": 0.95}
    # Prunes any report below 0.5 at once: the slow starter stops after 1 of its 3 epochs.
    threshold = replay(_curve_trials(), optuna.pruners.ThresholdPruner(lower=0.5))
    assert threshold == {"seconds": 3.0 + 1.0 + 6.0, "best": 0.9}
