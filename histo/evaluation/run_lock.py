"""One writer per run directory: the lock a training run holds while it writes there.

``<run>/run.lock`` names the writer (PID, host, start time); the lock itself is an ``flock`` on that
file, which the operating system drops when the process ends, however it ends (``kill -9``
included). So a lock file that nobody holds is stale: its writer died, and the next writer takes it
over and says so. The file is removed when its writer finishes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from histo.command import UserError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
RETRIES = 5


class RunDirBusy(UserError):
    """Another process is writing the run directory."""


@dataclass(frozen=True)
class Holder:
    """Who wrote a lock file."""

    pid: int | None
    host: str
    started: str

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, started {self.started}"


def holder(directory: str | Path) -> Holder | None:
    """The live writer of ``directory``, or None when nobody holds its lock (no lock file, or a stale one)."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """``with RunLock(directory):`` hold the directory's lock, or raise :class:`RunDirBusy` naming the
    writer that holds it. ``taken_over`` is the dead writer whose stale lock was taken over, if any."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_FILE
        self.taken_over: Holder | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        busy = 0
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder_ = _read(fd)
                os.close(fd)
                busy += 1
                if busy > RETRIES:
                    raise RunDirBusy(
                        f"{self.path.parent} is in use: another training run ({holder_.describe()}) is writing "
                        "there. Wait for it to finish, or train into another directory (hydra.run.dir=<dir>)."
                    ) from None
                time.sleep(0.1)  # a reader (holder()) may hold it for an instant
                continue
            if _same_file(fd, self.path):  # not a file its previous holder unlinked meanwhile
                break
            os.close(fd)
        previous = _read(fd)
        if previous.pid is not None:
            self.taken_over = previous
            log.warning("Took over the stale lock %s of a run that is no longer running (%s).", self.path,
                        previous.describe())
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiting opener then sees another file
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        data = {}
    return Holder(data.get("pid"), data.get("host", "an unknown host"), data.get("started", "at an unknown time"))


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
