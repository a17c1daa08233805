"""The build lock of a cache directory (an ``fcntl`` lock on its ``.lock`` file): builders of one directory
take turns; readers never take it."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the build lock of a cache directory, waiting while another builder holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def all_locked(directories: list[Path]) -> Iterator[None]:
    """Hold the build locks of several cache directories, taken in the order given."""
    if not directories:
        yield
        return
    with locked(directories[0]), all_locked(directories[1:]):
        yield


@contextmanager
def locked_if_free(directory: Path) -> Iterator[bool]:
    """Hold the build lock of an existing cache directory if no builder holds it now: yields whether it was taken."""
    with open(directory / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
