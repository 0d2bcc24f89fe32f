"""The embedded study storage: Optuna's journal file, with a ``flock`` lock and an fsync
per trial state change rather than per write."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import weakref
from typing import Any

from optuna.storages.journal import JournalFileBackend

#: The journal's op codes (its on-disk format, Optuna's ``JournalOperation``) of the writes
#: about a trial while it runs: a sampled param, a report, a user or system attribute.
RUNNING_TRIAL_OPS = frozenset({5, 7, 8, 9})


class JournalFlock:
    """The journal file's inter-process lock: ``flock`` on a file beside the journal.

    A lock object for Optuna's ``JournalFileBackend`` (``acquire``/``release``), in place of
    its lock files. Those are polled with a back-off that doubles up to 1 s, so workers that
    report every epoch wait on each other far longer than the lock is held (measured, 2
    workers: 2.5-5x the time of flock for the same appends), and a worker killed while
    holding one stalls the others for its 30 s grace period. The kernel queues ``flock``
    waiters and drops the lock of a dead process at once. Local file systems only: many
    machines share a study through PostgreSQL.
    """

    def __init__(self, journal_path: str):
        self.path = f"{journal_path}.flock"
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        self._threads = threading.Lock()  # flock does not exclude threads sharing the fd
        weakref.finalize(self, os.close, self._fd)  # also safe at interpreter exit

    def acquire(self) -> bool:
        self._threads.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return True

    def release(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class JournalFile(JournalFileBackend):
    """Optuna's ``JournalFileBackend`` on a :class:`JournalFlock`, where the writes about a
    running trial (:data:`RUNNING_TRIAL_OPS`) are appended without an fsync of their own,
    and no write cut short is left in the file.

    Optuna fsyncs every append: about 1 ms here, and a trial of 30 epochs makes some 40
    appends (its params, a report per epoch, its attributes), a fifth of its overhead over
    a hand-written loop (measured). Such a write needs no fsync of its own: it is in the
    kernel once written, so a process that crashes loses nothing, and the trial's next
    state change (its ``tell``) fsyncs the file, which puts every earlier append on disk
    with it. Creating a study or a trial and ending a trial are fsynced as before, so only
    a machine that loses power mid-trial can lose that running trial's last reports; the
    trial is then failed as stale when the study resumes, and retried.

    A write that fails part way (a full disk, measured: Optuna leaves half a line) is cut
    off again, and so is a last line without its newline found on opening (a process
    killed mid-write, or an earlier version's full disk): Optuna's reader skips such a
    line, but the next append would be glued to it, and the whole journal would no longer
    read.
    """

    def __init__(self, file_path: str):
        self._flock = JournalFlock(file_path)
        self._journal_path = file_path
        super().__init__(file_path, lock_obj=self._flock)
        self._drop_torn_tail()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        # The lines exactly as Optuna writes them (read back by its read_logs).
        lines = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        sync = not all(log.get("op_code") in RUNNING_TRIAL_OPS for log in logs)
        self._flock.acquire()
        try:
            with open(self._journal_path, "ab", buffering=0) as f:
                start = f.seek(0, os.SEEK_END)
                try:
                    data = memoryview(lines.encode("utf-8"))
                    while data:
                        data = data[f.write(data) :]
                    if sync:
                        os.fsync(f.fileno())
                except BaseException:
                    f.truncate(start)  # not half a line
                    raise
        finally:
            self._flock.release()

    def _drop_torn_tail(self) -> None:
        """Cut the file after its last newline, when it does not end with one."""
        self._flock.acquire()
        try:
            with open(self._journal_path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                if end == 0:
                    return
                f.seek(end - 1)
                if f.read(1) == b"\n":
                    return  # the usual case: opened for reading only
                keep = end
                while keep > 0:  # back to the last newline, a block at a time
                    step = min(keep, 1 << 16)
                    keep -= step
                    f.seek(keep)
                    newline = f.read(step).rfind(b"\n")
                    if newline >= 0:
                        keep += newline + 1
                        break
            with open(self._journal_path, "rb+") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
        finally:
            self._flock.release()
