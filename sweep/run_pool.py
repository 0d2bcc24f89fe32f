"""Training runs that do not depend on each other, spread over this process and N - 1
spawned ones: the champion's re-runs after a study on several local workers.

This process runs jobs itself from the end of the list while the others start (each
imports torch, Lightning and MLflow: seconds) and take jobs from its front. Each process
trains as a study's worker of its index does (:func:`sweep.workers.worker_env`: its
share of the CPU threads and, with GPUs, its own GPU). Ctrl-C and SIGTERM reach the
spawned processes through this one only: it stops each once, and a job stopped that way
closes its run KILLED, as here. A job whose process died is run again here, once, after
its run (left RUNNING) is closed FAILED. A spawned process whose parent died stops the
same way by itself, and exits.

The processes are spawned (not forked: torch's threads, open sqlite connections), so, as
with any spawned process, they import this process's main module: a script calling
``sweep.study.tune`` with several workers needs the ``if __name__ == "__main__"`` guard
(``python -m sweep`` and the ``sweep`` command have it).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from sweep import interrupts
from sweep.workers import this_process

#: The environment a spawned process takes from :func:`sweep.workers.worker_env`.
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")

# In a spawned process (see _on_sigterm): whether a job is running, and whether it was
# told to stop.
_in_job = _stopping = False
# In a spawned process: the pid of the process that spawned it (see _watch_parent).
_parent: int | None = None
#: Seconds between a spawned process's looks at whether its parent is still there.
PARENT_CHECK_SECONDS = 1.0


@dataclass
class Job:
    """One ``sweep.train.run(cfg, **kwargs)``; ``key`` names its outcome."""

    key: Any
    cfg: Any
    kwargs: dict[str, Any] = field(default_factory=dict)


def run_jobs(
    jobs: list[Job], processes: int, threads: int, outcomes: dict[Any, Any] | None = None
) -> dict[Any, Any]:
    """Each job's outcome by key: its ``RunResult``, or the one-line error that ended it.

    With ``processes`` > 1, this process and up to ``processes - 1`` spawned ones run
    them, ``threads`` torch threads each; else this process runs them one by one. The
    outcomes go into ``outcomes`` as they are known: when Ctrl-C stops the jobs, the
    caller keeps those that finished."""
    outcomes = {} if outcomes is None else outcomes
    if processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            outcomes[job.key] = _run(job)
        return outcomes
    import torch

    from sweep.workers import gpu_ids, worker_env

    spawned = min(processes, len(jobs)) - 1
    context = multiprocessing.get_context("spawn")  # not fork: torch's threads, sqlite
    envs, gpus = context.Queue(), gpu_ids()
    for index in range(1, spawned + 1):
        env = worker_env(index, threads, gpus)
        envs.put({k: env[k] for k in ENV_KEYS if k in env})
    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # this process is one of the workers now
    pool = ProcessPoolExecutor(
        spawned, mp_context=context, initializer=_start_process, initargs=(envs, threads)
    )
    futures: list[Future] = []
    try:
        futures = [pool.submit(_run, job) for job in jobs]
        # From the end: a job the pool has not taken yet can be cancelled and run here.
        for job, future in zip(reversed(jobs), reversed(futures), strict=True):
            if not future.cancel():
                break  # the pool has this one and every one before it
            outcomes[job.key] = _run(job)
        wait(futures)
    except BaseException:
        _stop(futures)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(own_threads)
        orphans = _collect(jobs, futures, outcomes)
        for job in orphans:
            _close_orphan_run(job)
    for job in orphans:  # not when stopped: then the exception above goes on
        outcomes[job.key] = _run(job)
    return outcomes


def _collect(jobs: list[Job], futures: list[Future], outcomes: dict[Any, Any]) -> list[Job]:
    """The outcomes of the jobs the pool finished, into ``outcomes``; the jobs whose
    process died (killed, out of memory) before it could send one."""
    orphans = []
    for job, future in zip(jobs, futures, strict=False):  # none when stopped before submitting
        if job.key in outcomes or not future.done() or future.cancelled():
            continue
        error = future.exception()
        if error is None:
            outcomes[job.key] = future.result()
        elif isinstance(error, BrokenProcessPool):
            orphans.append(job)
    return orphans


def _run(job: Job) -> Any:
    global _in_job
    from sweep.tracking import one_line
    from sweep.train import run

    _in_job = True
    # The process that trained it, as a study's trials record theirs.
    tags = {**job.kwargs.get("tags", {}), "worker": this_process()}
    try:
        if _stopping:  # a job the pool had queued here before it was stopped
            raise KeyboardInterrupt("stopped before it started")
        return run(job.cfg, **{**job.kwargs, "tags": tags})
    except Exception as error:  # its run is closed FAILED with the error
        return one_line(error)
    finally:
        _in_job = False
        if _stopping and _parent_gone():
            os._exit(1)  # its run is closed; nobody is left to take a result or stop it


def _start_process(envs: Any, threads: int) -> None:
    """A spawned process: its worker's environment, threads and signals."""
    global _parent
    os.environ.update(envs.get())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: this process's parent stops it
    signal.signal(signal.SIGTERM, _on_sigterm)
    _parent = os.getppid()
    threading.Thread(target=_watch_parent, name="sweep-parent-watch", daemon=True).start()
    import torch

    torch.set_num_threads(threads)


def _parent_gone() -> bool:
    return _parent is not None and os.getppid() != _parent  # re-parented: it died


def _watch_parent() -> None:
    """A parent killed outright (SIGKILL, out of memory) cannot stop this process: it
    stops itself as if told to, closing its run KILLED, then exits instead of waiting
    for jobs from a pool that is gone."""
    while not _parent_gone():
        time.sleep(PARENT_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def _on_sigterm(signum: int, frame: Any) -> None:
    """Stopped by the parent: a running job stops (its run closed KILLED), once, and no
    other starts here (the pool queues a job or two per process ahead, beyond what
    cancelling reaches); the pool's shutdown then ends the process."""
    global _stopping
    if _stopping:
        return  # a second signal must not cut the closing of the run short
    _stopping = True
    if _in_job:
        interrupts.raise_keyboard_interrupt(signum)  # raised again if lost (sweep.interrupts)
    if _parent_gone():
        os._exit(1)  # idle, and no pool left to end it


def _stop(futures: list[Future]) -> None:
    """Ctrl-C or SIGTERM here: no new jobs, and one SIGTERM to each spawned process. The
    pool's shutdown then waits for them to close their runs and exit."""
    for future in futures:
        future.cancel()
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)


def _close_orphan_run(job: Job) -> None:
    """The job's run, left RUNNING by a process that died, closed FAILED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(job.kwargs.get("experiment") or "")
    if experiment is None:
        return
    query = f"attributes.run_name = '{job.kwargs.get('run_name')}'"
    query += " and attributes.status = 'RUNNING'"
    if job.kwargs.get("parent_run_id"):
        query += f" and tags.mlflow.parentRunId = '{job.kwargs['parent_run_id']}'"
    for run in client.search_runs([experiment.experiment_id], query):
        client.set_tag(run.info.run_id, "error", "its process died; run again")
        client.set_terminated(run.info.run_id, status="FAILED")
