"""The embedded storage's journal lock (sweep.journal.JournalFlock), with real
processes: it excludes other processes, a killed holder releases it at once, and four
processes writing one study leave a complete, consistent journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sweep.journal import JournalFlock
from sweep.optuna_parts import build_storage

HOLD = """
import sys, time
from sweep.journal import JournalFlock
lock = JournalFlock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""

WRITE = """
import sys, optuna
from sweep.optuna_parts import build_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="s", storage=build_storage(sys.argv[1]))
for _ in range(10):
    trial = study.ask()
    for step in range(20):
        trial.report(float(step), step)
    trial.set_user_attr("worker", sys.argv[2])
    study.tell(trial, 1.0)
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_waits_for_another_process(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    holder = _hold(path, 1.5)
    started = time.monotonic()
    lock = JournalFlock(str(path))
    lock.acquire()
    waited = time.monotonic() - started
    lock.release()
    assert holder.wait(timeout=10) == 0
    assert waited > 0.5  # it was held by the other process until it let go


def test_a_killed_holder_releases_the_lock_at_once(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    holder = _hold(path, 600)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    started = time.monotonic()
    lock = JournalFlock(str(path))
    lock.acquire()
    lock.release()
    assert time.monotonic() - started < 1.0  # no stale lock file, no grace period


def test_four_processes_write_one_consistent_study(tmp_path: Path) -> None:
    import optuna

    url = f"journal:///{tmp_path / 'optuna.journal'}"
    optuna.create_study(study_name="s", storage=build_storage(url))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITE, url, str(i)], env=env) for i in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    trials = optuna.load_study(study_name="s", storage=build_storage(url)).trials
    assert sorted(t.number for t in trials) == list(range(40))
    assert all(t.state.name == "COMPLETE" and len(t.intermediate_values) == 20 for t in trials)
    assert sorted(t.user_attrs["worker"] for t in trials) == sorted("0123" * 10)


def test_the_journal_op_codes_of_a_running_trial_are_optunas() -> None:
    from optuna.storages.journal._storage import JournalOperation as Op

    from sweep.journal import RUNNING_TRIAL_OPS

    assert {
        Op.SET_TRIAL_PARAM,
        Op.SET_TRIAL_INTERMEDIATE_VALUE,
        Op.SET_TRIAL_USER_ATTR,
        Op.SET_TRIAL_SYSTEM_ATTR,
    } == RUNNING_TRIAL_OPS


def test_only_trial_state_changes_are_fsynced_and_everything_reads_back(
    tmp_path: Path, monkeypatch
) -> None:
    import optuna

    url = f"journal:///{tmp_path / 'optuna.journal'}"
    study = optuna.create_study(study_name="s", storage=build_storage(url))
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    trial = study.ask()
    assert len(synced) == 1  # a new trial
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    for step in range(30):
        trial.report(1.0 / (step + 1), step)
    trial.set_user_attr("run_id", "abc")
    assert len(synced) == 1  # the running trial's writes: no fsync of their own
    study.tell(trial, 0.5)
    assert len(synced) == 2  # the trial ends: its writes go to disk with this fsync
    again = optuna.load_study(study_name="s", storage=build_storage(url)).trials[0]
    assert again.state.name == "COMPLETE" and again.value == 0.5
    assert again.intermediate_values == {s: 1.0 / (s + 1) for s in range(30)}
    assert again.params.keys() == {"lr"} and again.user_attrs == {"run_id": "abc"}


WRITE_PAST_A_SIZE_LIMIT = """
import os, resource, signal, sys, optuna
from sweep.optuna_parts import build_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="s", storage=build_storage(sys.argv[1]))
trial = study.ask()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then the write fails with EFBIG
# The file may grow by 40 bytes only: the next append is cut part way, as on a full disk.
limit = os.path.getsize(sys.argv[2]) + 40
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    trial.set_user_attr("note", "x" * 200)
except OSError as error:
    print("failed:", error.errno, flush=True)
"""


def test_a_write_cut_short_leaves_no_half_line_and_the_study_reads_on(tmp_path: Path) -> None:
    """A write that fails part way (a size limit here, a full disk in use) is cut off
    again: Optuna's own append leaves half a line, and the next append glued to it made
    the whole journal unreadable (measured on a full disk)."""
    import errno

    import optuna

    path = tmp_path / "optuna.journal"
    url = f"journal:///{path}"
    optuna.create_study(study_name="s", storage=build_storage(url))
    out = subprocess.run(
        [sys.executable, "-c", WRITE_PAST_A_SIZE_LIMIT, url, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == f"failed: {errno.EFBIG}", out.stderr[-2000:]
    assert path.read_bytes().endswith(b"\n")
    study = optuna.load_study(study_name="s", storage=build_storage(url))
    study.enqueue_trial({})  # an append after the failed one
    again = optuna.load_study(study_name="s", storage=build_storage(url))
    assert [t.state.name for t in again.trials] == ["RUNNING", "WAITING"]
    assert "note" not in again.trials[0].user_attrs


def test_a_torn_last_line_found_on_opening_is_cut_off(tmp_path: Path) -> None:
    """As a process killed mid-write, or an earlier version on a full disk, leaves it."""
    import optuna

    path = tmp_path / "optuna.journal"
    url = f"journal:///{path}"
    study = optuna.create_study(study_name="s", storage=build_storage(url))
    study.tell(study.ask(), 1.0)
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"op_code":8,"worker_id":"x","trial_id":0,"user_at')  # no newline
    storage = build_storage(url)
    assert path.read_bytes() == whole
    optuna.load_study(study_name="s", storage=storage).enqueue_trial({})
    again = optuna.load_study(study_name="s", storage=build_storage(url))
    assert [t.state.name for t in again.trials] == ["COMPLETE", "WAITING"]
