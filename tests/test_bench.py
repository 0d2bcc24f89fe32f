"""The benchmark report (the table make bench writes, from a results dict of each phase's
shape) and the arithmetic of the phases: worker throughput, the pruner replay.

The phases themselves are benchmarks (minutes, `make bench`), not tests; the compare phase's
fill is exercised in test_compare.
"""

from __future__ import annotations

import pytest

from sweep.benchmarks.__main__ import render
from sweep.benchmarks.pruners import PRUNERS, VARIANTS
from sweep.benchmarks.search import _median, match_speedup


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


def test_render_shows_what_ours_finds_in_the_templates_time() -> None:
    same_time = _search_arm([280, 300, 290], [0.981, 0.97, 0.98])
    same_time = {
        **same_time,
        "trials": 55,
        "seeds_at_least_baseline": 2,
        "per_seed": [{**r, "trials": 50 + i} for i, r in enumerate(same_time["per_seed"])],
    }
    table = render({**RESULTS, "search": {**RESULTS["search"], "ours_same_time": same_time}})
    assert "55 trials (3 pruned) in 290 s (the running trial finishes), best val 0.9800" in table
    assert "test 0.9700; ours >= template on 2 of 3" in table
    assert "(0.9800 / 0.9810; 0.9700 / 0.9700; 0.9750 / 0.9800)" in table
    assert all(line.count("|") == 4 for line in table.splitlines())
    assert "wall time (per seed)" not in render(RESULTS)  # results saved before this arm
    assert "best val, per seed" not in table  # saved before the time to match was measured


def test_render_shows_the_template_given_our_early_stopping_when_measured() -> None:
    reference = _search_arm([200, 230, 210], [0.979, 0.97, 0.975])
    ours = {**RESULTS["search"]["ours"], "seeds_at_least_baseline_our_patience": 1}
    search = {
        **RESULTS["search"],
        "ours": ours,
        "baseline_our_patience": reference,
        "speedup_vs_our_patience": 210 / 95,
    }
    table = render({**RESULTS, "search": search})
    assert "210 s / 95 s = **2.2x**; 0.9790 / 0.9760; 0.9700 / 0.9810; 0.9750 / 0.9700" in table
    assert "ours >= template on 1 of 3 seeds |" in table
    assert all(line.count("|") == 4 for line in table.splitlines())
    assert "patience 8" not in render(RESULTS)  # results saved before this arm


def test_render_shows_how_soon_ours_equals_the_templates_best_val() -> None:
    template = _search_arm([280, 300, 290], [0.98, 0.97, 0.975])
    template["per_seed"] = [
        {**r, "to_best_s": t} for r, t in zip(template["per_seed"], [200, 90, 150], strict=True)
    ]
    same_time = _search_arm([280, 300, 290], [0.981, 0.97, 0.98])
    matches = [50.0, None, 30.0]
    same_time = {
        **same_time,
        "trials": 55,
        "per_seed": [
            {**r, "trials": 50, "to_match_s": m}
            for r, m in zip(same_time["per_seed"], matches, strict=True)
        ],
        "match_speedup": match_speedup(template["per_seed"], [{"to_match_s": m} for m in matches]),
    }
    search = {**RESULTS["search"], "baseline": template, "ours_same_time": same_time}
    table = render({**RESULTS, "search": search})
    assert "median of the per-seed ratios **4.0x** (200 / 50 s; 90 / not reached; 150 / 30 s)" in (
        table
    )
    assert all(line.count("|") == 4 for line in table.splitlines())


def test_match_speedup_is_the_median_ratio_a_seed_never_matched_counting_as_zero() -> None:
    template = [{"to_best_s": t} for t in (40.0, 30.0, 50.0, 12.0)]
    ours = [{"to_match_s": t} for t in (10.0, None, 25.0, 12.0)]
    assert match_speedup(template, ours) == 1.5  # ratios 4, 0, 2, 1
    assert match_speedup(template[:3], ours[:3]) == 2.0


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
        name: {
            "time_fraction": 0.5 + i / 10,
            "kept_best": 3 - i % 2,
            "tpe_path_kept": i % 3,
            "per_seed": [],
        }
        for i, name in enumerate((*PRUNERS, *VARIANTS))
    }
    table = render({**RESULTS, "pruners": {"n_trials": 20, "seeds": seeds, **pruners}})
    assert "percentile_all (default) 0.50, 3 of 3 (0); median 0.60, 2 of 3 (1)" in table
    variant = next(iter(VARIANTS))
    assert f"; {variant} {pruners[variant]['time_fraction']:.2f}, " in table
    assert all(line.count("|") == 4 for line in table.splitlines())


def test_render_reads_pruner_results_saved_before_the_tpe_path_was_measured() -> None:
    old = {name: {"time_fraction": 0.5, "kept_best": 3, "per_seed": []} for name in PRUNERS}
    table = render({**RESULTS, "pruners": {"n_trials": 20, "seeds": [0, 1, 2], **old}})
    assert "percentile_all (default) 0.50, 3 of 3; median 0.50, 3 of 3" in table


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
    assert {k: none[k] for k in ("seconds", "best", "pruned")} == {
        "seconds": 12.0,
        "best": 0.95,
        "pruned": [],
    }
    assert none["held"] == [{"value": v, "epochs": 3} for v in (0.9, 0.95, 0.85)]
    # Prunes any report below 0.5 at once: the slow starter stops after 1 of its 3 epochs.
    threshold = replay(_curve_trials(), optuna.pruners.ThresholdPruner(lower=0.5))
    assert threshold["seconds"] == 3.0 + 1.0 + 6.0
    assert (threshold["best"], threshold["pruned"]) == (0.9, [1])
    assert threshold["held"][1] == {"value": 0.2, "epochs": 1}


def test_replay_stops_a_trial_where_early_stopping_would_and_holds_its_best_by_then() -> None:
    import optuna

    from sweep.benchmarks.pruners import replay

    trials = [
        {"reports": [0.5, 0.7, 0.7, 0.7, 0.9], "value": 0.9, "seconds": 5.0},  # a late peak
        {"reports": [0.6, 0.8, 0.8, 0.85, 0.85], "value": 0.85, "seconds": 5.0},
    ]
    stopped = replay(trials, optuna.pruners.NopPruner(), patience=2)
    # The first waits two epochs at 0.7 and stops before its peak; the second rises in time.
    assert stopped["held"] == [{"value": 0.7, "epochs": 4}, {"value": 0.85, "epochs": 5}]
    assert (stopped["seconds"], stopped["best"], stopped["pruned"]) == (9.0, 0.85, [])


def _scripted_epochs(values: list[float], patience: int, min_delta: float) -> int:
    """Epochs Lightning's own EarlyStopping runs on a model whose val/acc is ``values``."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    class Scripted(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.weight * batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/acc", values[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(1, 1)))
    trainer = L.Trainer(
        max_epochs=len(values),
        callbacks=[EarlyStopping("val/acc", mode="max", patience=patience, min_delta=min_delta)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Scripted(), data, data)
    return trainer.current_epoch


@pytest.mark.parametrize(
    ("values", "patience", "min_delta"),
    [
        ([0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.8], 2, 0.0),
        ([0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.8], 3, 0.0),
        ([0.5, 0.4, 0.45, 0.3, 0.9, 0.9], 3, 0.0),
        ([0.5, 0.52, 0.54, 0.56, 0.58, 0.6], 1, 0.05),
    ],
)
def test_early_stopped_epochs_match_lightnings_early_stopping(values, patience, min_delta):
    from sweep.benchmarks.pruners import early_stopped_epochs

    best_so_far = [max(values[: i + 1]) for i in range(len(values))]
    expected = _scripted_epochs(values, patience, min_delta)
    assert early_stopped_epochs(best_so_far, patience, min_delta) == expected
    assert early_stopped_epochs(best_so_far, None) == len(values)


def _finals(values: list[float], enqueued: int = 0) -> list[dict]:
    return [{"value": v, "sampled": i >= enqueued} for i, v in enumerate(values)]


def test_tpe_path_is_kept_while_no_pruned_trial_would_be_in_the_good_group() -> None:
    from sweep.benchmarks.pruners import tpe_good_count, tpe_path_kept

    assert [tpe_good_count(n) for n in (1, 10, 11, 20, 300)] == [1, 1, 2, 2, 25]
    # Sampled from trial 3 on: trial 2 leads when trials 3 and 4 are sampled, trial 4
    # when trial 5 is (the good group holds 1 trial of 3, 4 or 5).
    values = [0.5, 0.6, 0.9, 0.7, 0.95, 0.8]
    assert tpe_path_kept(_finals(values), pruned=[0, 1, 3, 5], n_startup=3)
    assert not tpe_path_kept(_finals(values), pruned=[2], n_startup=3)
    assert not tpe_path_kept(_finals(values), pruned=[4], n_startup=3)
    # Pruned trials fill the group only where too few completed (Optuna's _split_trials):
    # trial 0, the only one finished when trial 1 is sampled, is in it, pruned or not;
    # when trial 2 is sampled the group holds trial 1, which leads unpruned too.
    assert tpe_path_kept(_finals(values), pruned=[0], n_startup=1)
    # Here trial 0 leads unpruned when trial 2 is sampled, and trial 1 does when it is pruned.
    assert not tpe_path_kept(_finals([0.6, 0.5, 0.9]), pruned=[0], n_startup=1)
    # The random start-up trials and the enqueued ones are not proposed from the good group.
    assert tpe_path_kept(_finals(values), pruned=[2], n_startup=6)
    assert tpe_path_kept(_finals([0.5, 0.9, 0.6, 0.4], enqueued=4), pruned=[1], n_startup=0)
    assert not tpe_path_kept(_finals([0.5, 0.9, 0.6, 0.4], enqueued=3), pruned=[1], n_startup=0)


def _curve(x: float, steps: int = 8) -> list[float]:
    """A learning curve of one hyperparameter: low x starts fast and plateaus low, high x
    starts slow and ends high (the slow starters pruning is hard on)."""
    import math

    return [(0.6 + 0.4 * x) * (1 - math.exp(-(step + 1) * (1.2 - x))) for step in range(steps)]


def _search(seed: int, pruner) -> list[dict]:
    """A TPE search over the curves above, pruned by ``pruner``; each trial's x and reports."""
    import optuna

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        for step, value in enumerate(_curve(x)):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    sampler = optuna.samplers.TPESampler(n_startup_trials=4, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=16)
    return [
        {"x": t.params["x"], "value": t.value, "reports": _curve(t.params["x"]), "seconds": 1.0}
        for t in study.trials
    ]


def test_tpe_path_kept_predicts_when_optunas_tpe_proposes_the_unpruned_trials() -> None:
    """The replay's claim, on Optuna's own TPE: a pruned search proposes exactly the
    unpruned search's points when tpe_path_kept says so, and other points otherwise."""
    import optuna

    from sweep.benchmarks.pruners import replay, tpe_path_kept
    from sweep.pruners import AllTrialsPercentilePruner

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seen = set()
    for seed in range(8):
        unpruned = _search(seed, optuna.pruners.NopPruner())
        pruner = lambda: AllTrialsPercentilePruner(70.0, n_startup_trials=2, n_warmup_steps=2)  # noqa: E731
        predicted = tpe_path_kept(unpruned, replay(unpruned, pruner())["pruned"], n_startup=4)
        pruned = _search(seed, pruner())
        assert predicted == ([t["x"] for t in pruned] == [t["x"] for t in unpruned]), seed
        seen.add(predicted)
    assert seen == {True, False}  # both cases occurred


def _stalling_curve(x: float, steps: int = 8) -> list[float]:
    """``_curve`` at a coarse rounding: it stalls for a few epochs, then rises again."""
    return [round(v, 1) for v in _curve(x, steps)]


def _early_stopped_search(seed: int, pruner, patience: int) -> list[dict]:
    """A TPE search over the stalling curves, each trial reporting its best so far and
    stopped once ``patience`` reports in a row did not beat it (as EarlyStopping does)."""
    import optuna

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        best, waited = None, 0
        for step, value in enumerate(_stalling_curve(x)):
            best, waited = (value, 0) if best is None or value > best else (best, waited + 1)
            trial.report(best, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
            if waited >= patience:
                break
        return best

    sampler = optuna.samplers.TPESampler(n_startup_trials=4, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=16)
    return [t.params["x"] for t in study.trials]


def test_tpe_path_kept_predicts_the_proposals_of_an_early_stopped_study() -> None:
    """Early stopping lowers the value of a trial that stalls before its peak, which can
    take it out of TPE's good group even where nothing is pruned: tpe_path_kept, given
    what the replayed study holds of each trial, predicts that on Optuna's own TPE."""
    import optuna

    from sweep.benchmarks.pruners import replay, tpe_path_kept
    from sweep.pruners import AllTrialsPercentilePruner

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seen, blind = set(), 0
    for seed in range(8):
        xs = _early_stopped_search(seed, optuna.pruners.NopPruner(), patience=1000)
        unpruned = [
            {"value": max(c), "reports": [max(c[: i + 1]) for i in range(len(c))], "seconds": 1.0}
            for c in map(_stalling_curve, xs)
        ]
        for pruner in (
            optuna.pruners.NopPruner,
            lambda: AllTrialsPercentilePruner(70.0, n_startup_trials=2, n_warmup_steps=2),
        ):
            replayed = replay(unpruned, pruner(), patience=2)
            predicted = tpe_path_kept(unpruned, replayed["pruned"], 4, replayed["held"])
            assert predicted == (_early_stopped_search(seed, pruner(), 2) == xs), seed
            blind += predicted != tpe_path_kept(unpruned, replayed["pruned"], 4)
            seen.add(predicted)
    assert seen == {True, False}
    assert blind  # where it mattered that early stopping lowered a value


def test_gpu_check_summarises_each_seeds_search() -> None:
    from sweep.benchmarks.gpu import _search_summary

    def arm(wall: float, best: float) -> dict:
        return {"wall_s": wall, "best_val": best}

    seeds = [
        {"seed": 0, "template": arm(120.0, 0.9775), "ours": arm(35.0, 0.9775)},
        {"seed": 1, "template": arm(118.0, 0.9812), "ours": arm(40.0, 0.9800)},
        {"seed": 2, "template": arm(100.0, 0.9800), "ours": arm(50.0, 0.9825)},
    ]
    summary = _search_summary(20, seeds)
    assert [round(s["speedup"], 2) for s in summary["per_seed"]] == [3.43, 2.95, 2.0]
    assert summary["median_speedup"] == pytest.approx(118.0 / 40.0)
    assert summary["seeds_at_least_template"] == 2  # seed 1 found a lower best val
    assert summary["n_trials"] == 20


def test_gpu_check_names_the_machine_and_command_before_it_measures(tmp_path, monkeypatch):
    import json

    from sweep.benchmarks import overhead
    from sweep.benchmarks.common import cpu_name
    from sweep.benchmarks.gpu import main

    out = tmp_path / "gpu.json"
    on_disk_when_measuring: list[dict] = []

    def measure(repetitions: int) -> dict:  # what the file held as the measuring began
        on_disk_when_measuring.append(json.loads(out.read_text()))
        return {"ratio": 1.1, "repetitions": repetitions}

    monkeypatch.setattr(overhead, "run", measure)
    assert main(["--repetitions", "2", "--seeds", "--out", str(out)]) == 0
    [before] = on_disk_when_measuring
    assert cpu_name() in before["machine"] and "torch" in before["machine"]
    command = f"python -m sweep.benchmarks.gpu --repetitions 2 --seeds --out {out}"
    assert before["command"] == command
    assert "overhead" not in before
    saved = json.loads(out.read_text())
    assert saved["overhead"] == {"ratio": 1.1, "repetitions": 2} and "search" not in saved


class _Steps:
    """Stand-ins for a trial's objective and one of its steps."""

    def objective(self) -> None:
        self.step()

    def step(self) -> None:
        pass


def test_breakdown_times_steps_inside_the_objective_only_and_unwraps_them() -> None:
    from sweep.benchmarks import breakdown

    steps = (
        (breakdown.GATE, __name__, "_Steps.objective"),
        ("step", __name__, "_Steps.step"),
    )
    original = _Steps.__dict__["step"]
    totals: dict[str, float] = {}
    with breakdown.timers(totals, steps):
        assert _Steps.__dict__["step"] is not original
        _Steps().step()  # outside a trial: the study's own work
        assert totals == {}
        _Steps().objective()
    assert set(totals) == {breakdown.GATE, "step"}
    assert 0 < totals["step"] <= totals[breakdown.GATE]
    assert _Steps.__dict__["step"] is original


def test_breakdown_groups_the_steps_and_leaves_the_rest_of_the_trial_as_other() -> None:
    from sweep.benchmarks.breakdown import groups

    steps = {
        "fit": 1000.0,
        "training_steps": 800.0,
        "report": 20.0,
        "should_prune": 10.0,
        "callbacks": 5.0,
        "user_attrs": 3.0,
        "log_model": 50.0,
        "batched_writes": 30.0,
    }
    parts = groups(steps, trial_ms=1200.0)
    assert parts["rest_of_fit"] == 1000 - 800 - 20 - 10 - 5
    assert parts["optuna"] == 33 and parts["mlflow"] == 80
    assert parts["callbacks"] == 5 and parts["training_steps"] == 800
    # The trial outside fit and the steps timed outside it (user attrs, the model, writes).
    assert parts["other"] == 1200 - 1000 - 3 - 50 - 30


def test_render_shows_where_the_trials_time_goes_when_measured() -> None:
    assert "Where that trial's time goes" not in render(RESULTS)
    names = ("training_steps", "rest_of_fit", "optuna", "callbacks", "mlflow", "other")
    ms = {
        **{f"part.{n}": v for n, v in zip(names, (1800, 200, 40, 5, 130, 125), strict=True)},
        "step.log_model": 60,
        "trial": 2300,
        "hand": 2000,
        "hand_training_steps": 1750,
    }
    results = {**RESULTS, "overhead": {**RESULTS["overhead"], "breakdown": {"rounds": 3, "ms": ms}}}
    assert "2300 = 1800 + 200 + 40 + 5 + 130 (the model 60) + 125; 2000 (1750)" in render(results)


def test_render_compares_the_two_worker_arm_with_the_template_at_one_thread() -> None:
    assert "one torch thread" not in render(RESULTS)
    one = {
        "n_trials": 20,
        "seeds": [0, 1, 2],
        "threads": 1,
        "baseline": _search_arm([400, 420, 410], [0.975, 0.972, 0.99]),
        "ours": _search_arm([150, 160, 155], [0.975, 0.97, 0.99]),
    }
    table = render({**RESULTS, "search_1_thread": one})
    row = next(line for line in table.splitlines() if "one torch thread" in line)
    # Two workers (the search row's): 0.975, 0.972, 0.99 per seed, all at least the template.
    assert "0.9750 / 0.9750 (0.9750); 0.9720 / 0.9700 (0.9720); 0.9900 / 0.9900 (0.9900)" in row
    assert "ours >= template on 2 (3) of 3 seeds" in row
    assert "wall time 410 s / 155 s" in row


def test_header_names_each_machine_with_the_phases_run_on_it() -> None:
    from sweep.benchmarks.__main__ import machines_line

    assert machines_line({"overhead": "A", "search": "A"}) == "A"
    ran_on = {"overhead": "A", "search": "B", "pruners": "B", "compare": "A", "help_s": "A"}
    assert machines_line(ran_on) == "A; search, pruners on B"


def test_the_first_replayed_pruner_is_the_default_studys() -> None:
    """The table marks the first as the default."""
    from sweep.config import compose

    assert compose("sweep", []).pruner.name == PRUNERS[0]
