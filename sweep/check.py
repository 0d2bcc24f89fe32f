"""``sweep check``: does MLflow agree with Optuna about a study?

Every trial should have exactly one child run in the study's experiment, in the matching
state (COMPLETE/PRUNED -> FINISHED, FAIL -> FAILED or KILLED, RUNNING -> RUNNING) and,
for completed single-objective trials, with the same best validation value; every trial
run should belong to a trial. Prints each mismatch; exit 0 only when there is none.
"""

from __future__ import annotations

import math
from typing import Any

EXPECTED_STATUS = {
    "COMPLETE": ("FINISHED",),
    "PRUNED": ("FINISHED",),
    "FAIL": ("FAILED", "KILLED"),
    "RUNNING": ("RUNNING",),
}


def load_study(overrides: list[str]):
    """The study named in the sweep config, loaded from its storage (no data, no training)."""
    from sweep import tracking
    from sweep.config import compose
    from sweep.optuna_parts import load_existing_study, storage_url

    cfg = compose("sweep", overrides)
    tracking.setup(cfg.tracking.uri)
    return load_existing_study(str(cfg.study.name), storage_url(cfg.storage)), cfg


def trial_runs(experiment_name: str) -> list[Any]:
    """All trial runs of the study's experiment (paged search, every status)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`sweep.role` = 'trial'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def mismatches(study, runs: list[Any]) -> list[str]:
    """Every disagreement between the study's trials and its trial runs."""
    problems: list[str] = []
    by_id = {r.info.run_id: r for r in runs}
    claimed: set[str] = set()
    single = len(study.directions) == 1
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name
        if state == "WAITING":
            continue
        run_id = trial.user_attrs.get("mlflow_run_id")
        label = f"trial {trial.number} ({state})"
        if not run_id:
            problems.append(f"{label}: no MLflow run")
            continue
        run = by_id.get(run_id)
        if run is None:
            problems.append(f"{label}: its MLflow run {run_id} is not in the experiment")
            continue
        claimed.add(run_id)
        status = run.info.status
        if status not in EXPECTED_STATUS.get(state, ()):
            what = " (left RUNNING with no live trial)" if status == "RUNNING" else ""
            problems.append(f"{label}: MLflow run {run_id} is {status}{what}")
        tagged = run.data.tags.get("trial.state")
        if state != "RUNNING" and tagged != state:
            problems.append(f"{label}: MLflow run {run_id} is tagged trial.state={tagged}")
        if state == "COMPLETE" and single:
            problems.extend(_value_mismatch(label, trial, run))
    for run in runs:
        if run.info.run_id not in claimed:
            number = run.data.tags.get("trial.number", "?")
            problems.append(
                f"run {run.info.run_id} (trial.number={number}, {run.info.status}) "
                f"has no trial in the study"
            )
    return problems


def _value_mismatch(label: str, trial, run) -> list[str]:
    monitor = run.data.tags.get("monitor", "")
    if not monitor.startswith("val/"):
        return []
    logged = run.data.metrics.get("best/" + monitor.split("/", 1)[1])
    if logged is None:
        return [f"{label}: MLflow run has no best/{monitor.split('/', 1)[1]} metric"]
    if not math.isclose(logged, trial.value, rel_tol=1e-6, abs_tol=1e-9):
        return [f"{label}: value {trial.value} in Optuna, {logged} in MLflow"]
    return []


def check(overrides: list[str]) -> list[str]:
    study, _ = load_study(overrides)
    return mismatches(study, trial_runs(study.study_name))


def check_command(args: list[str]) -> int:
    problems = check(args)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} mismatch(es)")
        return 1
    print("Optuna and MLflow agree")
    return 0
