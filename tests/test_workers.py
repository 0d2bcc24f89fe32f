"""Parallel studies with real worker processes: the embedded journal storage and a real
PostgreSQL server, SIGKILL mid-trial, SIGTERM, and `sweep check` afterwards."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, count_runs, free_port, run_cli, start_cli, wait_http

pytestmark = pytest.mark.e2e

QUICK = [
    "data=synthetic",
    "search=tiny",
    "trainer.max_epochs=2",
    "champion.k=0",
    "tracking.log_model=false",
    "study.seed=3",
]
# Trials long enough (~1.5-2 s each on 2 cores; 4000 samples x 12 epochs took 0.4 s,
# short enough for a whole study to end between two polls) to be caught RUNNING.
SLOW = [
    "data=synthetic",
    "data.num_samples=12000",
    "search=tiny",
    "trainer.max_epochs=15",
    "trainer.early_stopping.enabled=false",
    "pruner=none",
    "champion.k=0",
    "tracking.log_model=false",
]


def _load(name: str, extra: list[str] | None = None):
    from sweep.check import load_study

    return load_study([f"study.name={name}", *(extra or [])])[0]


def _check(name: str, extra: list[str] | None = None) -> list[str]:
    from sweep.check import check

    return check([f"study.name={name}", *(extra or [])])


def _all_runs(experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def _start(args: list[str], cwd: Path, uri: str, output: Path | None = None) -> subprocess.Popen:
    return start_cli(*args, cwd=cwd, uri=uri, output=output)


def _wait_for_running_trial(
    name: str,
    extra: list[str],
    proc: subprocess.Popen,
    owner_not: int | None = None,
    timeout: float = 120.0,
):
    """A RUNNING trial of the study that ``proc`` runs (optionally owned by another pid
    than ``owner_not``) and its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # it ended before one was seen: say why
            _out, err = proc.communicate()
            raise AssertionError(f"{proc.args} exited {proc.returncode}:\n{err[-3000:]}")
        time.sleep(0.2)
        try:
            study = _load(name, extra)
        except Exception:
            continue  # not created yet
        for trial in study.get_trials(deepcopy=False):
            worker = trial.user_attrs.get("worker")
            if trial.state.name == "RUNNING" and worker and "mlflow_run_id" in trial.user_attrs:
                pid = int(worker.rsplit(":", 1)[1])
                if pid != owner_not:
                    return trial, pid
    raise AssertionError(f"no RUNNING trial in study {name} within {timeout} s")


def _rerun_here(args: list[str]) -> None:
    """Run the `sweep tune ARGS` command ``args`` again, in this process: resuming is
    :func:`sweep.study.tune`'s work, and a new process would add only its imports (~10 s
    of CPU on a slow machine). test_sigterm_stops_cleanly_and_the_same_command_resumes
    reruns the command itself."""
    from sweep.study import tune

    assert args[0] == "tune", args
    tune(args[1:], progress=False)


def _assert_complete(name: str, n_trials: int, extra: list[str] | None = None):
    study = _load(name, extra)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == max(numbers) + 1  # numbered uniquely
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == n_trials
    assert "RUNNING" not in states
    assert all(r.info.status != "RUNNING" for r in _all_runs(name))
    assert _check(name, extra) == []
    return study


def _run_parallel_study(tracked, tmp_path, name: str, extra: list[str]):
    # SLOW trials: `sweep tune` runs trials itself from the start, and would finish 8 quick
    # ones alone before the other workers have imported torch.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep",
            "tune",
            *SLOW,
            "study.seed=3",
            *extra,
            f"study.name={name}",
            "study.n_trials=8",
            "study.n_workers=4",
        ],
        cwd=tmp_path,
        env=cli_env(tracked),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "locked" not in proc.stderr.lower()
    study = _assert_complete(name, 8, extra)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) >= 2, f"one worker did all the work: {workers}"
    _assert_distinct_points(study)


def _assert_distinct_points(study) -> None:
    """Workers sample with seeds of their own: no two sampled trials share a point (the
    enqueued base config and retries repeat a point on purpose)."""
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampled = [
        t.params["optimizer.lr"]
        for t in study.trials
        if t.number > 0
        and t.params
        and "retry_of" not in t.user_attrs
        and Retry.retried_trial_number(t) is None
    ]
    assert len(sampled) == len(set(sampled)), f"workers proposed the same points: {sampled}"


def test_four_local_workers_share_the_embedded_journal_storage(tracked, tmp_path):
    _run_parallel_study(tracked, tmp_path, "par_journal", [])
    assert (tmp_path / ".sweep" / "optuna.journal").exists()


def test_two_workers_walk_a_conditional_grid_each_point_once(tracked, tmp_path):
    """Each worker's grid sampler proposes a point only once the others' are stored.
    ``study.n_workers=auto`` on two CPU cores: two workers of one torch thread each, and
    the champion's re-runs spread over two processes as well."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        if os.environ.get("CI") == "true":  # CI's machine has two cores: this must run
            pytest.fail("needs two usable CPU cores and affinity masks (Linux)")
        pytest.skip("needs two CPU cores and affinity masks (Linux)")
    folder = tmp_path / "myconf" / "search"
    folder.mkdir(parents=True)
    (folder / "cgrid.yaml").write_text(
        "model: {type: categorical, choices: [mlp, cnn]}\n"
        "model.width: {type: categorical, choices: [8, 16, 24], when: {model: mlp}}\n"
        "model.channels: {type: categorical, choices: [4, 8], when: {model: cnn}}\n"
        "optimizer.lr: {type: categorical, choices: [0.003, 0.01]}\n"
    )
    extra = [f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "search=cgrid", "sampler=grid"]
    quick = [o for o in QUICK if not o.startswith(("champion.", "tracking."))]
    args = ["tune", *quick, *extra, "study.name=cgrid2", "study.n_trials=20"]
    args += ["study.n_workers=auto", "champion.k=2", "champion.seeds=2"]
    cores = set(sorted(os.sched_getaffinity(0))[:2])
    proc = start_cli(*args, cwd=tmp_path, uri=tracked, cores=cores)
    _out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    study = _assert_complete("cgrid2", 10, extra)  # (3 mlp + 2 cnn) x 2 lr, not 20
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(points)) == len(points) == 10
    # `sweep tune` is worker 0: it ran trials itself while its worker process imported.
    assert f"{platform.node()}:{proc.pid}" in {t.user_attrs["worker"] for t in study.trials}
    runs = _all_runs("cgrid2")
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "study"]
    assert parent.data.params["study.n_workers"] == "2"
    assert parent.data.params["study.threads"] == "1"
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert {r.data.tags["device"] for r in trials} == {"cpu (1 threads)"}
    reruns = [r for r in runs if r.data.tags.get("sweep.role") == "champion_rerun"]
    assert len(reruns) == 4 and {r.info.status for r in reruns} == {"FINISHED"}
    assert {r.data.tags["device"] for r in reruns} == {"cpu (1 threads)"}
    assert len({r.data.tags["worker"] for r in reruns}) == 2  # `sweep tune` and one more
    assert parent.data.tags["champion.model_uri"] == "models:/cgrid2@champion"


@pytest.mark.postgres
def test_four_workers_share_a_postgresql_storage(tracked, tmp_path, postgres_url):
    _run_parallel_study(
        tracked, tmp_path, "par_pg", ["storage=postgres", f"storage.url={postgres_url}"]
    )
    assert not (tmp_path / ".sweep" / "optuna.journal").exists()


def _worker_pids(marker: str) -> list[int]:
    """Live ``sweep worker`` processes whose command line holds ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in args and marker.encode() in args:
            pids.append(int(proc.name))
    return pids


def test_workers_started_early_are_stopped_when_the_tracking_store_fails(tracked, tmp_path):
    """Workers start while `sweep tune` opens MLflow and the study; when that fails they
    are stopped at once: one-line error, no study, no worker left behind."""
    name = "early_fail"
    bad = "sqlite:////etc/passwd/mlflow.db"  # its folder would be a file
    proc = _start(
        ["tune", *QUICK, f"study.name={name}", "study.n_workers=2", f"tracking.uri={bad}"],
        tmp_path,
        tracked,
    )
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-3000:]
    assert err.strip().splitlines() == [
        f"error: tracking.uri={bad}: cannot open the MLflow tracking store: "
        "FileExistsError: [Errno 17] File exists: '/etc/passwd'"
    ]
    assert _worker_pids(f"study.name={name}") == []
    with pytest.raises(Exception, match=name):
        _load(name)


def _wait_until_blocked(proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``proc`` sleeps and has used no CPU for 1.5 s (it blocks on a read)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        if ticks != last or fields[0] != "S":
            last, since = ticks, time.monotonic()
        elif time.monotonic() - since >= 1.5:
            return
        assert time.monotonic() < deadline, f"{proc.args} never blocked"
        time.sleep(0.1)


def test_a_waiting_worker_ignores_ctrl_c_and_exits_untouched_when_told(tracked, tmp_path):
    """A worker `sweep tune` starts early imports, then waits on stdin: Ctrl-C is the
    coordinator's to answer then, and end of input (the study never became ready) makes
    it exit 0 having opened neither the study nor MLflow."""
    from sweep.workers import WAIT_ENV, WORKER_INDEX_ENV

    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", "worker", *QUICK, "study.name=never_ready"],
        cwd=tmp_path,
        env={**cli_env(tracked), WORKER_INDEX_ENV: "0", WAIT_ENV: "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_blocked(proc)  # imports done, reading its stdin
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting
        _out, err = proc.communicate(input=b"", timeout=60)  # end of input, no "go"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert b"Traceback" not in err
    assert count_runs(tmp_path / "mlflow.db") == 0
    assert not (tmp_path / ".sweep" / "optuna.journal").exists()


def test_a_worker_killed_mid_trial_is_failed_retried_and_its_run_closed(tracked, tmp_path):
    name = "killed"
    # 6 trials: under load the second worker may take 15 s to start, in which time the
    # coordinator alone finished a study of 4 (seen once).
    args = ["tune", *SLOW, f"study.name={name}", "study.n_trials=6", "study.n_workers=2"]
    coordinator = _start(args, tmp_path, tracked)
    try:
        trial, pid = _wait_for_running_trial(name, [], coordinator, owner_not=coordinator.pid)
        os.kill(pid, signal.SIGKILL)
        _out, err = coordinator.communicate(timeout=400)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert coordinator.returncode == 0, err[-3000:]
    # Rerunning the same command has nothing left to do and leaves everything consistent.
    _rerun_here(args)
    study = _assert_complete(name, 6)
    killed = study.trials[trial.number]
    assert killed.state.name == "FAIL"
    assert "died" in killed.user_attrs["error"]
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert retries[0].params == killed.params
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "died" in run.data.tags["error"]


def test_a_joining_worker_aims_for_the_studys_own_target(tracked, tmp_path):
    """Without study.n_trials of its own, `sweep worker` stops at the target `sweep tune`
    set (3 here), not at the config's default (20); with one, it adds trials up to it."""
    from sweep.workers import worker_command

    args = [*QUICK, "study.name=target"]
    _rerun_here(["tune", *args, "study.n_trials=3"])
    assert worker_command(args) == 0  # what `sweep worker ARGS` runs
    assert len(_load("target").trials) == 3
    assert worker_command([*args, "study.n_trials=4"]) == 0
    assert len(_load("target").trials) == 4


def test_a_second_tune_of_a_study_a_live_tune_runs_is_refused_untouched(tracked, tmp_path):
    """Both would pick a champion at the end; the second would reset the target. The live
    `sweep tune` here is a process holding the parent run RUNNING as its coordinator, as
    one does while its trials run; once it is gone the study resumes."""
    from mlflow.tracking import MlflowClient

    from sweep.errors import ConfigError
    from sweep.study import COORDINATOR_TAG, PARENT_RUN_ATTR, TARGET_ATTR

    args = [*QUICK, "study.name=twice"]
    _rerun_here(["tune", *args, "study.n_trials=1"])
    parent_id = _load("twice").user_attrs[PARENT_RUN_ATTR]
    client = MlflowClient()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        client.update_run(parent_id, status="RUNNING")
        client.set_tag(parent_id, COORDINATOR_TAG, f"{platform.node()}:{live.pid}")
        with pytest.raises(ConfigError, match=rf"already running in `sweep tune` \S+:{live.pid}"):
            _rerun_here(["tune", *args, "study.n_trials=2"])
        study = _load("twice")
        assert study.user_attrs[TARGET_ATTR] == 1 and len(study.trials) == 1
        assert client.get_run(parent_id).info.status == "RUNNING"  # still the other's
    finally:
        live.kill()
        live.wait()
    _rerun_here(["tune", *args, "study.n_trials=2"])  # its coordinator is gone: resumed
    _assert_complete("twice", 2)
    assert client.get_run(parent_id).info.status == "FINISHED"


def _pause_mid_trial(name: str, proc: subprocess.Popen):
    """SIGSTOP ``proc`` (alive, frozen) while one of its trials is RUNNING with its MLflow
    run: that trial. Stopped between two trials, it goes on (SIGCONT) and is tried again."""
    me = f"{platform.node()}:{proc.pid}"
    for _ in range(20):
        _wait_for_running_trial(name, [], proc)
        proc.send_signal(signal.SIGSTOP)
        for trial in _load(name).get_trials(deepcopy=False):
            attrs = trial.user_attrs
            mine = attrs.get("worker") == me and "mlflow_run_id" in attrs
            if trial.state.name == "RUNNING" and mine:
                return trial
        proc.send_signal(signal.SIGCONT)
    raise AssertionError(f"{proc.args} was never stopped mid-trial")


def test_check_lists_the_trial_and_parent_run_a_sigkilled_tune_left_running(tracked, tmp_path):
    """`sweep tune` SIGKILLed mid-trial leaves its trial and both runs RUNNING: `sweep check`
    says so (it agreed before, while the same process was alive), ignores a trial it cannot
    check (another host's), and is clean once the same command has recovered and finished."""
    import optuna

    from sweep.study import PARENT_RUN_ATTR

    name = "check_killed"
    args = ["tune", *SLOW, f"study.name={name}", "study.n_trials=2"]
    proc = _start(args, tmp_path, tracked)
    try:
        trial = _pause_mid_trial(name, proc)
        assert _check(name) == []  # alive (stopped): its RUNNING trial and runs are fine
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    study = _load(name)
    parent = study.user_attrs[PARENT_RUN_ATTR]
    worker = f"{platform.node()}:{proc.pid}"
    assert study.trials[trial.number].state.name == "RUNNING"
    assert _check(name) == [
        f"trial {trial.number} (RUNNING): its worker {worker} is gone; rerun the "
        "study's sweep tune (or sweep worker) command to recover it",
        f"parent run {parent} (sweep.role=study) is RUNNING, but its `sweep tune` "
        f"{worker} is gone; rerun that command to finish it",
    ]
    # A trial RUNNING on another host cannot be checked from here.
    trial_id = study.trials[trial.number]._trial_id
    study._storage.set_trial_user_attr(trial_id, "worker", "elsewhere:1")
    assert len(_check(name)) == 1  # the parent run's `sweep tune` still is on this host
    study._storage.set_trial_user_attr(trial_id, "worker", worker)

    _rerun_here(args)
    study = _assert_complete(name, 2)  # `sweep check` clean among the rest
    assert study.trials[trial.number].state == optuna.trial.TrialState.FAIL
    assert "died" in study.trials[trial.number].user_attrs["error"]
    statuses = {r.info.run_id: r.info.status for r in _all_runs(name)}
    assert statuses[parent] == "FINISHED"
    assert statuses[trial.user_attrs["mlflow_run_id"]] == "KILLED"


def _sigterm_stops_quietly(proc: subprocess.Popen, when) -> None:
    """``when()`` (it waits for the moment), then SIGTERM: ``proc`` exits 130, no traceback."""
    try:
        when()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err


def test_sigterm_stops_cleanly_and_the_same_command_resumes(tracked, tmp_path):
    name = "sigterm"
    args = ["tune", *SLOW, f"study.name={name}", "study.n_trials=3"]
    proc = _start(args, tmp_path, tracked)
    _sigterm_stops_quietly(proc, lambda: _wait_for_running_trial(name, [], proc))
    study = _load(name)
    assert "RUNNING" not in [t.state.name for t in study.trials]
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    assert interrupted and "interrupted" in interrupted[0].user_attrs["error"]
    statuses = {r.info.run_id: r.info.status for r in _all_runs(name)}
    assert "RUNNING" not in statuses.values()
    assert statuses[interrupted[0].user_attrs["mlflow_run_id"]] == "KILLED"
    assert statuses[study.user_attrs["mlflow_parent_run_id"]] == "KILLED"

    again = run_cli(*args, cwd=tmp_path, uri=tracked, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    study = _assert_complete(name, 3)
    # The interrupted trial's point was not lost: it was retried.
    assert any(t.user_attrs.get("retry_of") == interrupted[0].number for t in study.trials)


def test_sigterm_during_the_parallel_champion_closes_every_run_and_resumes(tracked, tmp_path):
    """The re-runs of a two-worker study's champion, in `sweep tune` and a spawned
    process: SIGTERM to `sweep tune` alone stops both, quietly, and the command resumes."""
    name = "champ_sigterm"
    # Re-runs of ~7 s on a quiet 2-core VM, more than twice the spawned process's start
    # (~3 s, its imports): `sweep tune` is still well inside its first re-run when the
    # spawned process starts its own, so both are stopped mid-run. With 40 epochs (~3 s
    # re-runs) the first one sometimes ended before the signal reached it.
    slow = [o for o in SLOW if not o.startswith(("champion.", "tracking.", "trainer.max"))]
    args = ["tune", *slow, "trainer.max_epochs=120", f"study.name={name}", "study.n_trials=2"]
    args += ["study.n_workers=2"]
    args += ["champion.k=2", "champion.seeds=1"]  # one re-run per worker
    proc = _start(args, tmp_path, tracked)

    def two_reruns_running() -> None:  # one in `sweep tune`, one in the spawned process
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            reruns = [
                r for r in _all_runs(name) if r.data.tags.get("sweep.role") == "champion_rerun"
            ]
            if len({r.data.tags["worker"] for r in reruns if r.info.status == "RUNNING"}) == 2:
                return
            time.sleep(0.2)
        raise AssertionError("no two re-runs seen RUNNING at once")

    _sigterm_stops_quietly(proc, two_reruns_running)
    runs = _all_runs(name)
    assert "RUNNING" not in {r.info.status for r in runs}
    stopped = [r for r in runs if r.info.status == "KILLED"]
    roles = {r.data.tags.get("sweep.role") for r in stopped}
    assert roles == {"study", "champion_rerun"}
    assert len({r.data.tags["worker"] for r in stopped if r.data.tags.get("worker")}) == 2

    _rerun_here(args)
    study = _assert_complete(name, 2)
    assert study.user_attrs["champion"]["registered_name"] == name


def test_a_champion_rerun_a_sigkilled_tune_left_running_is_listed_and_closed(tracked, tmp_path):
    """SIGKILL during the champion: `sweep check` lists the RUNNING re-run and the parent
    run; the same command closes the re-run KILLED, re-trains it and checks clean."""
    name = "champ_kill"
    slow = [o for o in SLOW if not o.startswith(("champion.", "tracking.", "trainer.max"))]
    args = ["tune", *slow, "trainer.max_epochs=40", f"study.name={name}", "study.n_trials=1"]
    args += ["champion.k=1", "champion.seeds=2"]
    proc = _start(args, tmp_path, tracked)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            running = [
                r
                for r in _all_runs(name)
                if r.data.tags.get("sweep.role") == "champion_rerun" and r.info.status == "RUNNING"
            ]
            if running:
                break
            time.sleep(0.2)
        assert running, "no champion re-run seen RUNNING"
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    (orphan,) = running
    problems = _check(name)
    assert any(p.startswith(f"champion re-run {orphan.info.run_id} (") for p in problems)
    assert any(p.startswith("parent run ") for p in problems)
    _rerun_here(args)
    _assert_complete(name, 1)  # `sweep check` clean among the rest
    from mlflow.tracking import MlflowClient

    closed = MlflowClient().get_run(orphan.info.run_id)
    assert closed.info.status == "KILLED" and "died" in closed.data.tags["error"]


@pytest.mark.postgres
def test_multi_machine_recipe_tracking_server_postgres_and_a_joining_worker(tmp_path, postgres_url):
    """The README recipe: tracking server on PostgreSQL, a coordinator, a second worker
    joining by study name, `sweep check` clean - every process talks over the network."""
    backend = postgres_url.rsplit("/", 1)[0] + f"/{postgres_url.rsplit('/', 1)[1]}_mlflow"
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start(
        [
            "tracking-server",
            f"backend={backend}",
            f"artifacts={tmp_path / 'art'}",
            f"port={port}",
            "workers=1",  # one request-handling process is plenty here
        ],
        tmp_path,
        uri,
        output=tmp_path / "server.log",  # its request log: nobody reads it meanwhile
    )
    # Trials of a few seconds each (SLOW): long enough that the joining worker, which
    # takes seconds to start, still finds trials to pull.
    overrides = [
        *SLOW[:-2],
        "storage=postgres",
        f"storage.url={postgres_url}",
        "tracking=server",
        "study.name=multi",
        "study.n_trials=10",
        "champion.k=1",
        "champion.seeds=1",
    ]
    try:
        wait_http(f"{uri}/health")
        coordinator = _start(["tune", *overrides], tmp_path, uri)
        _wait_for_running_trial("multi", overrides[6:9], coordinator)
        # The joining machine runs `sweep worker study.n_workers=2`: two worker processes.
        worker_log = tmp_path / "worker.log"  # not read until the coordinator is done
        worker = _start(["worker", *overrides, "study.n_workers=2"], tmp_path, uri, worker_log)
        _out, err = coordinator.communicate(timeout=400)
        assert coordinator.returncode == 0, err[-3000:]
        assert worker.wait(timeout=120) == 0, worker_log.read_text()[-3000:]
        check = subprocess.run(
            [sys.executable, "-m", "sweep", "check", *overrides],
            cwd=tmp_path,
            env=cli_env(uri),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(uri)
        study = _load("multi", overrides[6:9])
        pids = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.trials}
        # The joining machine's worker processes (its `sweep worker` and the one it
        # started) took trials too.
        assert pids - {coordinator.pid}, pids
        _assert_distinct_points(study)
        version = MlflowClient(tracking_uri=uri).get_model_version_by_alias("multi", "champion")
        assert version.source  # the champion model went through the server's artifact store
        assert (tmp_path / "art").exists()
    finally:
        for proc in [p for p in locals().values() if isinstance(p, subprocess.Popen)]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        _drop_database(backend)


def _drop_database(url: str) -> None:
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_orphan_runs_are_closed_and_each_failed_trials_run_read_once(tracked, monkeypatch):
    """The supervisor looks every 2 s beside this process's own training: a failed trial's
    run is read the first time only, and the runs dead workers left RUNNING are closed."""
    import optuna
    from mlflow.tracking import MlflowClient

    from sweep import workers

    client = MlflowClient()
    experiment = client.create_experiment("orphans")
    study = optuna.create_study()
    runs = []
    for _ in range(3):
        run_id = client.create_run(experiment).info.run_id
        trial = study.ask()
        trial.set_user_attr("mlflow_run_id", run_id)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        runs.append(run_id)
    client.set_terminated(runs[0], status="FAILED")  # closed by its live worker, as usual
    reads, get_run = [], MlflowClient.get_run

    def counted(self, run_id):
        reads.append(run_id)
        return get_run(self, run_id)

    monkeypatch.setattr(MlflowClient, "get_run", counted)
    checked: set[int] = set()
    assert workers.close_orphan_runs(study, checked) == runs[1:]
    assert workers.close_orphan_runs(study, checked) == []
    assert reads == runs  # each once
    statuses = [get_run(client, r).info.status for r in runs]
    assert statuses == ["FAILED", "KILLED", "KILLED"]


def test_a_trial_no_worker_recorded_itself_on_is_failed_once_past_the_grace(tracked, tmp_path):
    """Optuna created the trial, then its process died or lost the storage before the
    trial recorded its worker: it has no owner and no heartbeat, and Optuna never fails it
    (optuna #4026). Past the grace period it is failed, its point retried and a FAILED run
    recorded for it; a younger one is left to its live worker. A start time on another
    machine's clock (an hour off: another time zone) counts only if a second look finds
    the trial still without a worker."""
    import datetime
    import threading

    import optuna
    from mlflow.tracking import MlflowClient

    from sweep import workers
    from sweep.check import mismatches
    from sweep.optuna_parts import build_storage
    from sweep.study import PARENT_RUN_ATTR

    client = MlflowClient()
    experiment = client.create_experiment("ownerless")
    parent = client.create_run(experiment).info.run_id
    study = optuna.create_study(study_name="ownerless")
    study.set_user_attr(PARENT_RUN_ATTR, parent)
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)

    def add_running(age: float, params: dict) -> int:
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=params,
            distributions={k: lr for k in params},
        )
        trial.datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=age)
        study.add_trial(trial)
        return study.get_trials(deepcopy=False)[-1]._trial_id

    add_running(120, {"optimizer.lr": 0.01})
    add_running(1, {})
    add_running(-3600, {})  # made by a machine whose clock is an hour ahead

    assert workers.ownerless_grace_seconds(study) == workers.OWNERLESS_GRACE_SECONDS
    dead = [p for p in mismatches(study, []) if "recover it" in p]
    reason = "no worker recorded it within 60 s of its start (its process died or lost the storage)"
    assert dead == [
        f"trial {n} (RUNNING): {reason}; rerun the study's sweep tune (or sweep worker) "
        "command to recover it"
        for n in (0, 2)
    ]
    # A trial made an hour ago by another machine's clock, whose live worker records
    # itself just after the first look.
    live = add_running(3600, {})
    records = threading.Timer(
        0.3, study._storage.set_trial_user_attr, (live, "worker", workers.this_process())
    )
    records.start()
    assert workers.fail_dead_trials(study) == [0, 2]
    records.join()
    old, young, ahead, late, retry = study.get_trials()
    states = [t.state.name for t in (old, young, ahead, late, retry)]
    assert states == ["FAIL", "RUNNING", "FAIL", "RUNNING", "WAITING"]
    assert old.user_attrs["error"] == ahead.user_attrs["error"] == reason
    assert retry.system_attrs["fixed_params"] == old.params == {"optimizer.lr": 0.01}
    assert retry.user_attrs["retry_of"] == 0  # the one without params has no point to retry
    run = client.get_run(old.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert (run.data.tags["trial.number"], run.data.tags["trial.state"]) == ("0", "FAIL")
    runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in (old, ahead)]
    assert not [p for p in mismatches(study, runs) if p.startswith(("trial 0 ", "trial 2 "))]
    assert workers.fail_dead_trials(study) == []  # once

    # An RDB storage with a heartbeat: its grace period is the measure.
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    beating = optuna.create_study(storage=build_storage(url, 1, 5))
    assert workers.ownerless_grace_seconds(beating) == 5.0


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_tracking_server_refuses_a_bad_workers_count_before_starting(value):
    from sweep.errors import ConfigError
    from sweep.server import server_command

    with pytest.raises(ConfigError, match=rf"^workers={value}: expected a whole number"):
        server_command([f"workers={value}", "backend=postgresql://nobody@127.0.0.1:1/none"])


def test_the_same_error_in_every_trial_stops_all_workers_and_is_said_once(tracked, tmp_path):
    """Failures in a row are counted over the study, not per worker: two workers stop
    after about ``study.max_repeated_failures`` trials, not twice that, and `sweep tune`
    alone says why."""
    folder = tmp_path / "myconf" / "search"
    folder.mkdir(parents=True)
    (folder / "explode.yaml").write_text(
        "optimizer.lr: {type: float, low: 1.0e10, high: 1.0e12, log: true}\n"
    )
    name = "explode2"
    proc = _start(
        [
            "tune",
            *QUICK,
            f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
            "search=explode",
            "data.task=regression",
            "optimizer=sgd",
            f"study.name={name}",
            "study.n_trials=20",
            "study.n_workers=2",
        ],
        tmp_path,
        tracked,
    )
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert "trials in a row failed with: NonFiniteLossError" in errors[0]
    states = [t.state.name for t in _load(name).trials]
    # 3 in a row, and the trial the other worker had started meanwhile.
    assert 3 <= states.count("FAIL") <= 4 and "RUNNING" not in states, states
