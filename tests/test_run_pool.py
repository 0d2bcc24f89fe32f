"""Independent training runs spread over this process and spawned ones (sweep.run_pool):
real runs in real processes, a process killed mid-run, and Ctrl-C."""

from __future__ import annotations

import _thread
import multiprocessing
import os
import platform
import signal
import threading
import time

import pytest
import torch
from conftest import TINY_SYNTHETIC
from mlflow.tracking import MlflowClient

from sweep.config import load_run_config
from sweep.run_pool import Job, run_jobs
from sweep.train import RunResult

pytestmark = pytest.mark.e2e

ME = f"{platform.node()}:{os.getpid()}"
# Seconds of training on 1 thread: long enough to be caught RUNNING.
SLOW = ["data=synthetic", "data.num_samples=6000", "trainer.max_epochs=40",
        "trainer.early_stopping.enabled=false", "trainer.progress=false"]  # fmt: skip
LONG = [*SLOW, "trainer.max_epochs=400"]  # stopped long before it ends
DIVERGES = [*TINY_SYNTHETIC, "data.task=regression", "optimizer=sgd", "optimizer.lr=1e12"]


def _jobs(names: list[str], overrides: list[str]) -> list[Job]:
    cfg = load_run_config([*overrides, "tracking.log_model=false"])
    kwargs = {"experiment": "pool", "tags": {"sweep.role": "test"}, "load_first": False}
    return [Job(name, cfg, {**kwargs, "run_name": name}) for name in names]


def _runs() -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("pool")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _when_running(workers: set[bool], action) -> threading.Thread:
    """In a thread: ``action()`` once runs are RUNNING in this process (True in
    ``workers``) and in a spawned one (False)."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = {
                r.data.tags.get("worker") == ME for r in _runs() if r.info.status == "RUNNING"
            }
            if workers <= running:
                action()
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_jobs_run_here_and_in_a_spawned_process_with_the_same_results(tracked):
    threads = torch.get_num_threads()
    outcomes = run_jobs(_jobs(["a", "b", "c", "d"], TINY_SYNTHETIC), processes=2, threads=1)
    assert torch.get_num_threads() == threads  # this process's own again
    assert set(outcomes) == {"a", "b", "c", "d"}
    assert all(isinstance(o, RunResult) for o in outcomes.values())
    # The same config and seed: the same scores in either process.
    assert len({(o.value, o.test["test/acc"]) for o in outcomes.values()}) == 1
    runs = _runs()
    assert sorted(r.info.run_name for r in runs) == ["a", "b", "c", "d"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    workers = {r.data.tags["worker"] for r in runs}
    assert len(workers) == 2 and ME in workers  # the pool takes the first, this one the last
    assert {r.data.tags["device"] for r in runs} == {"cpu (1 threads)"}


def test_a_failing_job_gives_its_error_and_the_others_go_on(tracked):
    jobs = [*_jobs(["bad"], DIVERGES), *_jobs(["ok1", "ok2"], TINY_SYNTHETIC)]
    outcomes = run_jobs(jobs, processes=2, threads=1)
    assert isinstance(outcomes["bad"], str) and "became" in outcomes["bad"]
    assert isinstance(outcomes["ok1"], RunResult) and isinstance(outcomes["ok2"], RunResult)
    runs = {r.info.run_name: r for r in _runs()}
    assert runs["bad"].data.tags["worker"] != ME  # failed in the spawned process
    assert runs["bad"].info.status == "FAILED" and "became" in runs["bad"].data.tags["error"]
    assert runs["ok1"].info.status == runs["ok2"].info.status == "FINISHED"


def test_a_job_whose_process_is_killed_is_closed_and_run_again_here(tracked):
    def kill_the_pool() -> None:
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    watcher = _when_running({False}, kill_the_pool)
    outcomes = run_jobs(_jobs(["there", "here"], SLOW), processes=2, threads=1)
    watcher.join()
    assert isinstance(outcomes["there"], RunResult) and isinstance(outcomes["here"], RunResult)
    runs = sorted(_runs(), key=lambda r: r.info.start_time)
    there = [r for r in runs if r.info.run_name == "there"]
    assert [r.info.status for r in there] == ["FAILED", "FINISHED"]
    assert "died" in there[0].data.tags["error"]
    assert there[0].data.tags["worker"] != ME and there[1].data.tags["worker"] == ME
    assert outcomes["there"].run_id == there[1].info.run_id


def test_ctrl_c_stops_every_job_and_leaves_no_run_running(tracked):
    # Ctrl-C (or SIGTERM, which the CLI turns into it) reaches this process only; it stops
    # the spawned one. Both runs in progress are closed KILLED.
    watcher = _when_running({True, False}, _thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(_jobs(["there", "here"], LONG), processes=2, threads=1)
    watcher.join()
    runs = {r.info.run_name: r for r in _runs()}
    assert runs["here"].info.status == runs["there"].info.status == "KILLED"
    assert runs["there"].data.tags["worker"] != ME
    assert not multiprocessing.active_children()


def test_ctrl_c_starts_none_of_the_jobs_the_pool_had_queued(tracked):
    """The pool hands a spawned process its next job before that one ends (beyond what
    cancelling reaches): once stopped, the process starts none of them."""
    watcher = _when_running({True, False}, _thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(_jobs(["a", "b", "c", "here"], LONG), processes=2, threads=1)
    watcher.join()
    runs = {r.info.run_name: r.info.status for r in _runs()}
    assert runs == {"a": "KILLED", "here": "KILLED"}  # "b" was queued, "c" cancelled
    assert not multiprocessing.active_children()


COORDINATOR = """
from sweep.config import load_run_config
from sweep.run_pool import Job, run_jobs

if __name__ == "__main__":
    cfg = load_run_config({overrides!r})
    kwargs = {{"experiment": "pool", "tags": {{"sweep.role": "test"}}, "load_first": False}}
    jobs = [Job(name, cfg, {{**kwargs, "run_name": name}}) for name in ("there", "here")]
    run_jobs(jobs, processes=2, threads=1)
"""


def test_a_spawned_process_whose_parent_is_killed_closes_its_run_and_exits(tracked, tmp_path):
    """The coordinator SIGKILLed mid-run cannot stop its pool: the spawned process sees
    it gone, closes its run KILLED, and exits rather than wait forever for jobs."""
    import subprocess
    import sys

    from conftest import cli_env

    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR.format(overrides=[*LONG, "tracking.log_model=false"]))
    coordinator = subprocess.Popen([sys.executable, str(script)], env=cli_env(tracked))
    try:
        deadline = time.monotonic() + 120
        while len([r for r in _runs() if r.info.status == "RUNNING"]) < 2:
            assert coordinator.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        coordinator.kill()
        coordinator.wait()
        there = next(r for r in _runs() if r.info.run_name == "there")
        host, pid = there.data.tags["worker"].rsplit(":", 1)
        assert host == platform.node() and int(pid) != coordinator.pid
        while time.monotonic() < deadline and _alive(int(pid)):
            time.sleep(0.2)
        assert not _alive(int(pid)), "the spawned process outlived its parent"
    finally:
        coordinator.kill()
    runs = {r.info.run_name: r.info.status for r in _runs()}
    assert runs == {"there": "KILLED", "here": "RUNNING"}  # "here" died with its process


def _alive(pid: int) -> bool:
    from sweep.workers import pid_alive

    return pid_alive(pid)
