"""``sweep check``: does MLflow agree with Optuna about a study?

Every trial should have exactly one child run in the study's experiment, in the matching
state (COMPLETE/PRUNED -> FINISHED, FAIL -> FAILED or KILLED, RUNNING -> RUNNING) and,
for completed single-objective trials, with the same best validation value; every trial
run should belong to a trial. A RUNNING trial whose worker process on this host is gone,
and the study's parent run left RUNNING by a ``sweep tune`` on this host that is gone
(both what a SIGKILLed ``sweep tune`` leaves), are mismatches too. Prints each mismatch; exit 0
only when there is none.
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


def load_study(overrides: list[str], must_reach_store: bool = False):
    """The study named in the sweep config, loaded from its storage (no data, no training),
    with MLflow pointed at the config's store. Reading the study needs only Optuna's
    storage; ``must_reach_store`` (for comparing with MLflow's runs) also requires the
    tracking store to exist and answer (:func:`sweep.tracking.check_reachable`)."""
    from sweep import tracking
    from sweep.config import compose
    from sweep.optuna_parts import load_existing_study, storage_url
    from sweep.study import validate_sweep_config

    cfg = compose("sweep", overrides)
    validate_sweep_config(cfg)  # a value sweep tune would refuse is refused here too
    tracking.setup(cfg.tracking.uri, must_exist=must_reach_store, answer=must_reach_store)
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


def parent_run(study) -> Any | None:
    """The study's parent MLflow run (``sweep.role=study``); None if it has none."""
    from mlflow.tracking import MlflowClient

    from sweep.study import PARENT_RUN_ATTR

    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not run_id:
        return None
    try:
        return MlflowClient().get_run(run_id)
    except Exception:
        return None  # gone from the store: nothing left RUNNING


def mismatches(
    study, runs: list[Any], parent: Any | None = None, reruns: list[Any] | None = None
) -> list[str]:
    """Every disagreement between the study's trials and its trial runs; with ``parent``
    (the study's parent run), also that run left RUNNING by a coordinator that is gone,
    and any RUNNING champion re-run in ``reruns`` whose process is gone."""
    from sweep.workers import dead_trials, worker_gone

    dead_by_number = {trial.number: reason for trial, reason in dead_trials(study)}
    problems: list[str] = []
    by_id = {r.info.run_id: r for r in runs}
    claimed: set[str] = set()
    single = len(study.directions) == 1
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name
        if state == "WAITING":
            continue
        label = f"trial {trial.number} ({state})"
        if state == "RUNNING" and (dead := dead_by_number.get(trial.number)):
            if "worker" in trial.user_attrs:
                dead = f"its worker {trial.user_attrs['worker']} is gone"
            problems.append(
                f"{label}: {dead}; rerun the study's sweep tune (or sweep worker) command "
                f"to recover it"
            )
        run_id = trial.user_attrs.get("mlflow_run_id")
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
    for run in reruns or []:
        if worker_gone(run.data.tags.get("worker")):
            problems.append(
                f"champion re-run {run.info.run_id} ({run.info.run_name}) is RUNNING, but its "
                f"process {run.data.tags['worker']} is gone; rerun the study's sweep tune "
                f"command to close it"
            )
    if parent is not None and parent.info.status == "RUNNING":
        from sweep.study import COORDINATOR_TAG

        coordinator = parent.data.tags.get(COORDINATOR_TAG)
        if worker_gone(coordinator):
            problems.append(
                f"parent run {parent.info.run_id} (sweep.role=study) is RUNNING, but its "
                f"`sweep tune` {coordinator} is gone; rerun that command to finish it"
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
    study, _ = load_study(overrides, must_reach_store=True)
    from sweep.workers import running_reruns

    parent = parent_run(study)
    reruns = running_reruns(parent.info.run_id) if parent is not None else []
    return mismatches(study, trial_runs(study.study_name), parent, reruns)


def check_command(args: list[str]) -> int:
    problems = check(args)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} mismatch(es)")
        return 1
    print("Optuna and MLflow agree")
    return 0
