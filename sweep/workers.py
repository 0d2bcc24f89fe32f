"""Worker processes and crash recovery. Optuna's storage is the coordination point.

``sweep tune`` with ``study.n_workers=N`` creates the study and its parent run, then
starts N long-lived ``sweep worker`` processes that pull trials from the shared study
until it has ``study.n_trials`` finished trials: no batches, a slow trial idles no one.
``sweep worker`` on another machine joins the same study (PostgreSQL storage).

Crash safety:
- RDB storages (PostgreSQL) use Optuna's heartbeat: a silent trial is failed after the
  grace period and ``RetryHeartbeatStaleTrialCallback`` enqueues a copy.
- The journal file has no heartbeat (optuna #6615): each trial records ``host:pid`` of
  its worker, and a RUNNING trial whose local process is gone is failed and re-enqueued
  by whoever notices (the coordinator every few seconds, any worker or rerun at start).
- Either way, the dead trial's MLflow run is closed KILLED, never left RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any

POLL_SECONDS = 2.0
STOP_GRACE_SECONDS = 60.0
WORKER_INDEX_ENV = "SWEEP_WORKER_INDEX"  # set in the worker processes a supervisor starts
# Set in workers `sweep tune` starts before its study exists: they import and prepare, then
# wait for one line on stdin ("go": join the study; end of input: exit, nothing done).
WAIT_ENV = "SWEEP_WORKER_WAIT"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0): check its state.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _owner(trial) -> tuple[str, int] | None:
    worker = trial.user_attrs.get("worker")
    if not worker or ":" not in worker:
        return None
    host, pid = worker.rsplit(":", 1)
    return host, int(pid)


def _already_retried(study, number: int) -> bool:
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("retry_of") == number or Retry.retried_trial_number(t) == number:
            return True
    return False


def retry_trial(study, trial, reason: str) -> None:
    """Enqueue a copy of ``trial`` (same params) unless one exists already."""
    if trial.params and not _already_retried(study, trial.number):
        study.enqueue_trial(
            dict(trial.params), user_attrs={"retry_of": trial.number, "retry_reason": reason}
        )


def fail_dead_trials(study) -> list[int]:
    """Fail (and re-enqueue) RUNNING trials whose worker process on this host is gone."""
    from optuna.trial import TrialState

    host = platform.node()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = _owner(trial)
        if owner is None or owner[0] != host or pid_alive(owner[1]) or owner[1] == os.getpid():
            continue
        reason = f"worker process {owner[1]} on {host} died during the trial"
        storage = study._storage  # the public BaseStorage API, on the study's own storage
        storage.set_trial_user_attr(trial._trial_id, "error", reason)
        if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            failed.append(trial.number)
            retry_trial(study, trial, reason)
    return failed


def fail_stale_trials(study) -> None:
    """Optuna's heartbeat check (RDB storages with a heartbeat only)."""
    import optuna

    storage = study._storage
    if getattr(storage, "heartbeat_interval", None) or (
        hasattr(storage, "get_heartbeat_interval") and storage.get_heartbeat_interval()
    ):
        optuna.storages.fail_stale_trials(study)


def close_orphan_runs(study) -> list[str]:
    """Close the MLflow runs of FAIL trials that are still RUNNING (their worker died)."""
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    client = MlflowClient()
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id:
            continue
        try:
            run = client.get_run(run_id)
        except Exception:
            continue
        if run.info.status == "RUNNING":
            reason = trial.user_attrs.get("error") or "trial failed (worker died or went silent)"
            client.set_tag(run_id, "error", reason)
            client.set_tag(run_id, "trial.state", "FAIL")
            client.set_terminated(run_id, status="KILLED")
            closed.append(run_id)
    return closed


def recover(study) -> None:
    """Everything a live process does about dead ones."""
    fail_stale_trials(study)
    fail_dead_trials(study)
    close_orphan_runs(study)


def retry_interrupted(study) -> None:
    """A trial this process was running when interrupted: enqueue it for the next run."""
    from optuna.trial import TrialState

    me = f"{platform.node()}:{os.getpid()}"
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.user_attrs.get("worker") == me and str(
            trial.user_attrs.get("error", "")
        ).startswith("interrupted"):
            retry_trial(study, trial, "interrupted")


def worker_command(args: list[str]) -> int:
    """``sweep worker [overrides]``: join an existing study and run trials until done."""
    from sweep import tracking
    from sweep.study import (
        PARENT_RUN_ATTR,
        StudyAborted,
        open_study,
        optimize,
        prepare,
        warm_up,
    )

    waiting = bool(os.environ.get(WAIT_ENV))
    if waiting:
        # Until it says go, `sweep tune` alone answers Ctrl-C (it stops this process).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Started by `sweep tune`, which has checked the search space against these overrides.
    spec = prepare(args, check_space=WORKER_INDEX_ENV not in os.environ)
    # A waiting worker must not open the store: `sweep tune` may be creating it (the first
    # creation of an sqlite schema by several processes at once can race).
    tracking.setup(spec.cfg.tracking.uri, check_store=not waiting)
    if waiting:
        warm_up(spec)  # while `sweep tune` creates the study and its parent run
        if sys.stdin.readline().strip() != "go":
            return 0  # it stopped before the study was ready
        signal.signal(signal.SIGINT, signal.default_int_handler)
    study = open_study(spec, create=False)
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent_run_id:
        from sweep.errors import ConfigError

        raise ConfigError(
            f"study.name={spec.name}: the study has no parent run; start it with `sweep tune` first"
        )
    recover(study)
    if spec.n_workers > 1 and WORKER_INDEX_ENV not in os.environ:
        # `sweep worker study.n_workers=N|auto` on a machine of its own: N worker
        # processes here (one per GPU), as `sweep tune` starts them on its machine.
        codes = run_local_workers(study, spec)
        return next((code for code in codes if code != 0), 0)
    try:
        failures = optimize(study, spec, parent_run_id)
    except KeyboardInterrupt:
        retry_interrupted(study)
        raise
    if failures.message:
        raise StudyAborted(failures.message)
    return 0


def gpu_ids() -> list[str]:
    """Visible GPUs (CUDA_VISIBLE_DEVICES if set), without importing torch when it is."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def worker_env(index: int, n_workers: int, gpus: list[str]) -> dict[str, str]:
    """One GPU per worker (round robin) and the CPU cores split between workers."""
    from sweep.optuna_parts import env_threads

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}  # mlflow #15713
    threads = str(env_threads(n_workers))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env[WORKER_INDEX_ENV] = str(index)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def start_local_workers(spec, wait: bool = False) -> list[subprocess.Popen]:
    """Start ``spec.n_workers`` ``sweep worker`` processes.

    With ``wait`` they may start before the study exists: each imports torch, Lightning
    and MLflow and loads the data (seconds), then waits until :func:`release_workers`.
    """
    gpus = gpu_ids()
    command = [sys.executable, "-m", "sweep", "worker", *spec.overrides]
    procs = []
    for i in range(spec.n_workers):
        env = worker_env(i, spec.n_workers, gpus)
        if wait:
            env[WAIT_ENV] = "1"
        stdin = subprocess.PIPE if wait else None
        procs.append(subprocess.Popen(command, env=env, stdin=stdin))
    return procs


def release_workers(procs: list[subprocess.Popen], go: bool) -> None:
    """Let waiting workers join the study (``go``), or stop them: they have touched
    neither the study nor MLflow yet, so killing them leaves nothing behind. Workers not
    waiting (started without ``wait``, or released already) are left alone."""
    for p in procs:
        if p.stdin is None or p.stdin.closed:
            continue
        with contextlib.suppress(OSError):  # it exited already (broken pipe)
            if go:
                p.stdin.write(b"go\n")
            p.stdin.close()
        if not go:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


def run_local_workers(
    study, spec, progress: Any | None = None, procs: list[subprocess.Popen] | None = None
) -> list[int]:
    """Start ``spec.n_workers`` worker processes (or release those already started, see
    :func:`start_local_workers`) and supervise them until they exit.

    Returns their exit codes. SIGINT/SIGTERM stop them cleanly (each records its
    current trial as FAIL and closes its run).
    """
    if procs:
        release_workers(procs, go=True)
    else:
        procs = start_local_workers(spec)
    try:
        while running := [p for p in procs if p.poll() is None]:
            # Wakes as soon as a worker exits (the last one ends the study), else polls.
            with contextlib.suppress(subprocess.TimeoutExpired):
                running[0].wait(timeout=POLL_SECONDS)
            recover(study)
            if progress is not None:
                progress.refresh(study)
    except BaseException:
        _stop(procs)
        raise
    recover(study)
    if progress is not None:
        progress.refresh(study)
    return [p.returncode for p in procs]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        if p.poll() is None:
            p.kill()
            p.wait()
