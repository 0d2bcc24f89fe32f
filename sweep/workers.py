"""Worker processes and crash recovery. Optuna's storage is the coordination point.

``sweep tune`` with ``study.n_workers=N`` creates the study and its parent run, then runs
trials itself as worker 0 beside N - 1 long-lived ``sweep worker`` processes; all pull
trials from the shared study until it has ``study.n_trials`` finished trials: no batches,
a slow trial idles no one. ``sweep worker`` on another machine joins the same study
(PostgreSQL storage), with ``study.n_workers=N`` the same way.

Crash safety:
- RDB storages (PostgreSQL) use Optuna's heartbeat: a silent trial is failed after the
  grace period and ``RetryHeartbeatStaleTrialCallback`` enqueues a copy.
- The journal file has no heartbeat (optuna #6615): each trial records ``host:pid`` of
  its worker, and a RUNNING trial whose local process is gone is failed and re-enqueued
  by whoever notices (the coordinator every few seconds, any worker or rerun at start).
- Either way, the dead trial's MLflow run is closed KILLED, never left RUNNING.
- A run outside any study (``sweep train``) records its ``host:pid`` too; the next one in
  its experiment on the host closes it KILLED if that process is gone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

POLL_SECONDS = 2.0  # how often dead workers are looked for
EXIT_POLL_SECONDS = 0.1  # how soon a worker's exit is noticed
STOP_GRACE_SECONDS = 60.0
# A RUNNING trial without a ``worker`` attr this long after its start is dead (see
# :func:`ownerless_grace_seconds`): a live worker records itself within milliseconds.
OWNERLESS_GRACE_SECONDS = 60.0
# How long after a first look a trial without a worker is looked at again: its start time
# is on the clock of the machine that made it (naive local time, Optuna's), which may be
# another time zone's, so only a second look tells a dead trial from one whose live worker
# is milliseconds from recording itself.
OWNERLESS_CONFIRM_SECONDS = 2.0
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


def this_process() -> str:
    """``host:pid`` of this process, as a trial's ``worker`` attr and a run's ``worker``
    tag record it: :func:`worker_gone` tells later whether it is alive."""
    return f"{platform.node()}:{os.getpid()}"


def _owner(trial) -> tuple[str, int] | None:
    return parse_worker(trial.user_attrs.get("worker"))


def parse_worker(worker: str | None) -> tuple[str, int] | None:
    """``"host:pid"`` (a trial's ``worker`` attr, the parent run's coordinator tag) as
    ``(host, pid)``; None when absent or malformed."""
    host, sep, pid = (worker or "").rpartition(":")
    return (host, int(pid)) if sep and host and pid.isdigit() else None


def worker_gone(worker: str | None) -> bool | None:
    """Whether the process ``"host:pid"`` is gone: True when it was on this host and has
    exited, False when it is alive, None when it cannot be told (none recorded, or on
    another host)."""
    owner = parse_worker(worker)
    if owner is None or owner[0] != platform.node():
        return None
    return not pid_alive(owner[1])


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


def ownerless_grace_seconds(study) -> float:
    """How long a RUNNING trial may go without its ``worker`` attr before it is taken for
    dead: the storage's heartbeat grace period where it has one (Optuna's own measure of
    a silent trial), else :data:`OWNERLESS_GRACE_SECONDS`."""
    backend = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    interval = getattr(backend, "heartbeat_interval", None)
    grace = getattr(backend, "grace_period", None) or (2 * interval if interval else None)
    return float(grace or OWNERLESS_GRACE_SECONDS)


def dead_trial_reason(trial, grace: float) -> str | None:
    """Why the RUNNING ``trial`` looks dead, or None when it may be alive: its worker
    process on this host is gone, or no worker recorded itself on it and its start is more
    than ``grace`` seconds from now (either way: see :func:`dead_trials`, which confirms
    that case with a second look)."""
    import datetime

    host = platform.node()
    owner = _owner(trial)
    if owner is None:
        # A live worker records itself first thing, milliseconds after Optuna creates the
        # trial; a trial still without one later lost its process (or its process lost the
        # storage) in between. Optuna's heartbeat never fails it: it has no heartbeat row
        # either (optuna #4026).
        started = trial.datetime_start
        if started is None or abs((datetime.datetime.now() - started).total_seconds()) < grace:
            return None
        return (
            f"no worker recorded it within {grace:g} s of its start (its process died or "
            "lost the storage)"
        )
    if owner[0] != host or pid_alive(owner[1]) or owner[1] == os.getpid():
        return None
    return f"worker process {owner[1]} on {host} died during the trial"


def dead_trials(study) -> list[tuple[Any, str]]:
    """The study's dead RUNNING trials, each with why (:func:`dead_trial_reason`).

    A trial without a worker counts only if it still has none, and is still RUNNING,
    :data:`OWNERLESS_CONFIRM_SECONDS` after the first look: its start time may be on
    another machine's clock, hours off in another time zone, and a live worker may be in
    the milliseconds between Optuna's ``ask`` and recording itself. The wait happens only
    where such a trial is seen, which is after a crash."""
    from optuna.trial import TrialState

    grace = ownerless_grace_seconds(study)
    dead: list[tuple[Any, str]] = []
    ownerless: list[tuple[Any, str]] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (reason := dead_trial_reason(trial, grace)) is not None:
            (dead if _owner(trial) else ownerless).append((trial, reason))
    if ownerless:
        time.sleep(OWNERLESS_CONFIRM_SECONDS)
        for trial, reason in ownerless:
            again = study._storage.get_trial(trial._trial_id)
            if again.state == TrialState.RUNNING and _owner(again) is None:
                dead.append((again, reason))
    return sorted(dead, key=lambda pair: pair[0].number)


def fail_dead_trials(study) -> list[int]:
    """Fail (and re-enqueue) the study's dead RUNNING trials (:func:`dead_trials`); a
    failed trial that had no MLflow run yet gets a FAILED one."""
    from optuna.trial import TrialState

    failed = []
    for trial, reason in dead_trials(study):
        storage = study._storage  # the public BaseStorage API, on the study's own storage
        storage.set_trial_user_attr(trial._trial_id, "error", reason)
        if "mlflow_run_id" not in trial.user_attrs:  # recorded while it may still be
            record_failed_run(study, trial._trial_id, trial.number, reason)  # updated
        if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            failed.append(trial.number)
            retry_trial(study, trial, reason)
    return failed


def record_failed_run(
    study, trial_id: int, number: int, error: str, tags: dict[str, str] | None = None
) -> str | None:
    """A FAILED child run of the study's parent run for trial ``number``, which failed
    before its own run existed: every trial has its run (`sweep check` says so). None when
    the study has no parent run yet."""
    from mlflow.tracking import MlflowClient

    from sweep import tracking
    from sweep.study import PARENT_RUN_ATTR

    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent_run_id:
        return None
    client = MlflowClient()
    run = client.create_run(
        client.get_run(parent_run_id).info.experiment_id,
        run_name=f"trial-{number:04d}",
        tags={
            **tracking.run_context_tags(),
            "mlflow.parentRunId": parent_run_id,
            "sweep.role": "trial",
            "study.name": study.study_name,
            "trial.number": str(number),
            "trial.state": "FAIL",
            "error": error,
            **(tags or {}),
        },
    )
    client.set_terminated(run.info.run_id, status="FAILED")
    study._storage.set_trial_user_attr(trial_id, "mlflow_run_id", run.info.run_id)
    return run.info.run_id


def fail_stale_trials(study) -> None:
    """Optuna's heartbeat check (RDB storages with a heartbeat only)."""
    import optuna

    storage = study._storage
    if getattr(storage, "heartbeat_interval", None) or (
        hasattr(storage, "get_heartbeat_interval") and storage.get_heartbeat_interval()
    ):
        optuna.storages.fail_stale_trials(study)


def close_orphan_runs(study, checked: set[int] | None = None) -> list[str]:
    """Close the MLflow runs of FAIL trials that are still RUNNING (their worker died).

    ``checked``: numbers of FAIL trials looked at already, skipped and added to (a failed
    trial's run never becomes RUNNING again): a supervisor looking every few seconds then
    reads each failed trial's run once, not once a look."""
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from sweep.tracking import store_lost

    if store_lost() is not None:
        return []  # closed when the study resumes with the store back
    client = MlflowClient()
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not run_id or (checked is not None and trial.number in checked):
            continue
        try:
            run = client.get_run(run_id)
        except Exception:
            continue  # looked at again next time
        if run.info.status == "RUNNING":
            reason = trial.user_attrs.get("error") or "trial failed (worker died or went silent)"
            client.set_tag(run_id, "error", reason)
            client.set_tag(run_id, "trial.state", "FAIL")
            client.set_terminated(run_id, status="KILLED")
            closed.append(run_id)
        if checked is not None:
            checked.add(trial.number)
    return closed


def running_reruns(parent_run_id: str) -> list[Any]:
    """The study's champion re-runs still RUNNING (each tagged with its ``worker``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = (
        f"tags.mlflow.parentRunId = '{parent_run_id}' and "
        "tags.`sweep.role` = 'champion_rerun' and attributes.status = 'RUNNING'"
    )
    return client.search_runs([experiment_id], query, max_results=1000)


def close_dead_reruns(parent_run_id: str) -> list[str]:
    """Champion re-runs left RUNNING by a process on this host that died (a killed `sweep
    tune` or re-run process), closed KILLED: the champion's selection re-trains them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    closed = []
    for run in running_reruns(parent_run_id):
        if worker_gone(run.data.tags.get("worker")):
            client.set_tag(run.info.run_id, "error", "its process died; re-trained on resume")
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


def close_abandoned_runs(experiment_id: str) -> list[str]:
    """Close KILLED the experiment's runs without a parent (``sweep train``, ``sweep rerun``,
    ``sweep.train.run`` from Python) that a process on this host left RUNNING and is gone.

    MLflow leaves a run RUNNING when its process is killed outright (SIGKILL, the
    out-of-memory killer) or cannot write the run's end (a full disk). No study recovers
    such a run, so the next one started in the experiment on this host closes it."""
    from mlflow.tracking import MlflowClient

    from sweep.tracking import terminate_run

    query = f"attributes.status = 'RUNNING' and tags.worker LIKE '{platform.node()}:%'"
    closed = []
    for run in MlflowClient().search_runs([experiment_id], query, max_results=1000):
        worker = run.data.tags.get("worker")
        if "mlflow.parentRunId" in run.data.tags or not worker_gone(worker):
            continue  # a study's run (its study closes it), or its process is alive
        reason = f"its process {worker} ended without closing the run (killed, or out of disk)"
        terminate_run(run.info.run_id, "KILLED", reason)
        closed.append(run.info.run_id)
    return closed


def recover(study, checked: set[int] | None = None) -> None:
    """Everything a live process does about dead ones (``checked``: see
    :func:`close_orphan_runs`)."""
    fail_stale_trials(study)
    fail_dead_trials(study)
    close_orphan_runs(study, checked)


def retry_interrupted(study) -> None:
    """A trial this process was running when interrupted: enqueue it for the next run."""
    from optuna.trial import TrialState

    me = this_process()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.user_attrs.get("worker") == me and str(
            trial.user_attrs.get("error", "")
        ).startswith("interrupted"):
            retry_trial(study, trial, "interrupted")


def study_target(study, own: int, args: list[str]) -> int:
    """How many finished trials a joining worker aims for: the study's own target, as its
    `sweep tune` set it, unless this worker's command sets ``study.n_trials`` itself (to
    add trials). The config's default would otherwise stop a worker of a 200-trial study
    at 20, or add 17 trials to a 3-trial one."""
    from sweep.config import override_key
    from sweep.study import TARGET_ATTR

    if any(override_key(a) == "study.n_trials" for a in args):
        return own
    return int(study.user_attrs.get(TARGET_ATTR, own))


def worker_command(args: list[str]) -> int:
    """``sweep worker [overrides]``: join an existing study and run trials until done."""
    from sweep import tracking
    from sweep.study import (
        PARENT_RUN_ATTR,
        StudyAborted,
        count_finished,
        open_study,
        optimize,
        prepare,
        warm_up,
    )

    waiting = bool(os.environ.get(WAIT_ENV))
    on_ctrl_c = signal.getsignal(signal.SIGINT)
    if waiting:
        # Until it says go, `sweep tune` alone answers Ctrl-C (it stops this process).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Started by `sweep tune`, which has checked the search space against these overrides.
    spec = prepare(args, check_space=WORKER_INDEX_ENV not in os.environ)
    # A waiting worker must not open the store: `sweep tune` may be creating it (the first
    # creation of an sqlite schema by several processes at once can race).
    # Nor check that it answers: `sweep tune` does, and says once if it does not.
    tracking.setup(spec.cfg.tracking.uri, check_store=not waiting, answer=not waiting)
    if waiting:
        warm_up(spec)  # while `sweep tune` creates the study and its parent run
        if sys.stdin.readline().strip() != "go":
            return 0  # it stopped before the study was ready
        signal.signal(signal.SIGINT, on_ctrl_c)
    study = open_study(spec, create=False)
    spec.n_trials = study_target(study, spec.n_trials, args)
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent_run_id:
        from sweep.errors import ConfigError

        raise ConfigError(
            f"study.name={spec.name}: the study has no parent run; start it with `sweep tune` first"
        )
    recover(study)
    codes: list[int] = []
    try:
        if spec.n_workers > 1 and WORKER_INDEX_ENV not in os.environ:
            # `sweep worker study.n_workers=N|auto` on a machine of its own: this process
            # and N - 1 more (one per GPU), as `sweep tune` runs them on its machine.
            failures, codes = run_with_local_workers(study, spec, parent_run_id)
        else:
            failures = optimize(study, spec, parent_run_id)
    except KeyboardInterrupt:
        retry_interrupted(study)
        raise
    if failures.message and count_finished(study) < spec.n_trials:
        if WORKER_INDEX_ENV in os.environ:
            # Its supervisor counts the same failures (StopOnRepeatedFailure reads the
            # study) and stops at its own next one, saying so: one line, not one a process.
            return 0
        raise StudyAborted(failures.message)
    return next((code for code in codes if code != 0), 0)


#: A worker's own memory once torch, Lightning and MLflow are loaded and it trains (a
#: `sweep train` of the default CNN on mnist1d peaked at 0.66 GB on 2 cores), rounded up.
WORKER_BASE_BYTES = 1 << 30


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask, which ``taskset``,
    container CPU sets and batch schedulers narrow (``os.cpu_count()`` counts the
    machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows: no affinity masks
        return os.cpu_count() or 1


def available_memory(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Bytes this machine can still give processes (Linux's MemAvailable), less where this
    process's cgroup (a container) allows less; None where neither can be read."""
    found = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with meminfo.open() as f:
            line = next(x for x in f if x.startswith("MemAvailable:"))
        found.append(int(line.split()[1]) * 1024)
    for limit, usage in (  # cgroup v2, then v1
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        with contextlib.suppress(OSError, ValueError):
            cap = (cgroup / limit).read_text().strip()
            if cap != "max" and int(cap) < 1 << 60:  # v1 writes "no limit" as ~2**63
                found.append(int(cap) - int((cgroup / usage).read_text()))
    return min(found) if found else None


def workers_memory_allows(data_bytes: int) -> int | None:
    """How many worker processes the available memory holds, each holding the data
    (``data_bytes``) beside its own :data:`WORKER_BASE_BYTES`; None where unknown. The
    calling process, already loaded, counts as one of them: a margin."""
    available = available_memory()
    if available is None:
        return None
    return max(1, available // (WORKER_BASE_BYTES + data_bytes))


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


def worker_env(index: int, threads: int, gpus: list[str]) -> dict[str, str]:
    """The environment of worker ``index``: one GPU per worker (round robin) and
    ``threads`` CPU threads (``study.threads``: by default the cores split between the
    workers). Worker 0 is the process that starts the others: it sees every GPU and
    Lightning's ``devices: 1`` puts it on the first visible one."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}  # mlflow #15713
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env[WORKER_INDEX_ENV] = str(index)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def start_local_workers(spec, wait: bool = False) -> list[subprocess.Popen]:
    """Start the ``sweep worker`` processes 1 .. ``spec.n_workers - 1`` (worker 0 is the
    process that starts them, see :func:`run_with_local_workers`).

    With ``wait`` they may start before the study exists: each imports torch, Lightning
    and MLflow and loads the data (seconds), then waits until :func:`release_workers`.
    """
    from sweep.config import merge_overrides

    gpus = gpu_ids()
    # The numbers this process resolved, not `auto`: the workers would count the memory
    # again with this one's already taken.
    resolved = [f"study.n_workers={spec.n_workers}", f"study.threads={spec.threads}"]
    command = [sys.executable, "-m", "sweep", "worker", *merge_overrides(spec.overrides, resolved)]
    procs = []
    for i in range(1, spec.n_workers):
        env = worker_env(i, spec.threads, gpus)
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


def run_with_local_workers(
    study,
    spec,
    parent_run_id: str,
    progress: Any | None = None,
    procs: list[subprocess.Popen] | None = None,
) -> tuple[Any, list[int]]:
    """``spec.n_workers`` workers on this machine until the study is done: this process
    runs trials itself (worker 0: torch threads and, with GPUs, the first visible one, see
    :func:`worker_env`) beside ``procs`` (released, see :func:`start_local_workers`) or
    N - 1 worker processes started now, and supervises them meanwhile.

    Returns this process's failure record (see ``sweep.study.optimize``) and the other
    workers' exit codes. A worker started here is not idle while the others import
    (seconds): on 2 cores, 2 workers used to start their first trials 7 s after one.
    Ctrl-C and SIGTERM stop the others cleanly (each records its current trial as FAIL
    and closes its run).
    """
    from sweep.study import optimize

    if procs:
        release_workers(procs, go=True)
    else:
        procs = start_local_workers(spec)
    checked: set[int] = set()  # failed trials whose runs were looked at
    try:
        with _Supervisor(study, progress, checked):
            failures = optimize(study, spec, parent_run_id, progress)
        codes = wait_for_workers(procs, study, progress, checked)
    except BaseException:
        _stop(procs)
        raise
    return failures, codes


class _Supervisor:
    """While this process runs trials: every ``POLL_SECONDS``, in a thread, the trials of
    dead local workers are failed and re-enqueued, their runs closed (:func:`recover`),
    and the progress display shows the other workers' trials. Optuna's storages are
    thread-safe, as its own ``n_jobs`` threads need."""

    def __init__(self, study, progress: Any | None, checked: set[int]):
        self.study, self.progress, self.checked = study, progress, checked
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-supervisor", daemon=True)

    def __enter__(self) -> _Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(POLL_SECONDS):
            try:
                _look_after(self.study, self.progress, self.checked)
            except Exception as error:  # a failed look this time; the next may succeed
                print(f"warning: supervising the workers: {error}", file=sys.stderr)


def _look_after(study, progress: Any | None, checked: set[int]) -> None:
    recover(study, checked)
    if progress is not None:
        progress.refresh(study)


def wait_for_workers(
    procs: list[subprocess.Popen],
    study,
    progress: Any | None = None,
    checked: set[int] | None = None,
) -> list[int]:
    """Supervise worker processes until they exit; return their exit codes."""
    checked = set() if checked is None else checked
    next_look = time.monotonic() + POLL_SECONDS
    while any(p.poll() is None for p in procs):
        time.sleep(EXIT_POLL_SECONDS)
        if time.monotonic() >= next_look:
            _look_after(study, progress, checked)
            next_look = time.monotonic() + POLL_SECONDS
    _look_after(study, progress, checked)
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
