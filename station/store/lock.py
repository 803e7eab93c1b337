"""One station per storage: an exclusive lock on ``<storage>/station.lock``.

``station run`` and ``station recover`` hold it (fcntl.flock, released by the kernel when
the process ends, even by kill -9) before touching the spool; the holder's PID is written
in the file so that a second station can say who has it. Read-only commands (status,
trace, check) and ``station retry`` (one SQLite transaction, safe beside a running station
in WAL mode) do not take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from station.errors import StorageInUse
from station.store.spool import FILE_MODE, make_folder

LOCK_NAME = "station.lock"


class StorageLock:
    """Held from ``acquire`` until ``release`` (or the end of the process)."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.path = storage / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> StorageLock:
        """Take the lock; raise StorageInUse naming the holder's PID when another has it."""
        make_folder(self.storage)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StorageInUse(
                f"storage {self.storage} is in use by PID {holder} (lock {self.path}): "
                "one station per storage; stop that one first or give this one its own "
                "storage.path"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def holder(self) -> str | None:
        """The PID of the station holding the lock now, or None; takes nothing, creates
        nothing (for ``station check`` beside a running station)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (or no storage): nobody holds it
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None
