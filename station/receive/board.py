"""The connections of every receiver process on one board, so that the listen limits
(``max_pending``, ``max_associations`` and their per-host forms) hold for the station as a
whole, however the kernel spreads connections over the processes.

The board is a file of fixed slots mapped into each receiver (``mmap``, shared): one slot
per connection, holding the receiver's PID, the peer's address and whether the connection
is pending or an association. A change takes a thread lock and an exclusive ``flock`` on
the file, reads the slots, checks the limits and writes one slot. It happens per
connection, never per C-STORE. When a receiver dies, the parent frees its slots
(``release``). Without a file (one process, tests) the board is private memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from station.config import ListenConfig

SLOT = struct.Struct("=i46sB1x")  # pid, peer address (ASCII, NUL-padded), state
FREE, PENDING, ESTABLISHED = 0, 1, 2


def slots_for(listen: ListenConfig) -> int:
    """Enough slots for every connection the limits let in at once."""
    return listen.max_pending + listen.max_associations


class Board:
    def __init__(self, slots: int, path: Path | None = None) -> None:
        """A board of ``slots`` slots in the file ``path`` (created empty when missing),
        or in private memory."""
        self.slots = slots
        size = slots * SLOT.size
        self._fd: int | None = None
        if path is None:
            self._map = mmap.mmap(-1, size)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
        self._lock = threading.Lock()
        self.pid = os.getpid()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[tuple[int, bytes, int]]]:
        with self._lock:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield list(SLOT.iter_unpack(self._map))
            finally:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _write(self, index: int, pid: int, host: bytes, state: int) -> None:
        SLOT.pack_into(self._map, index * SLOT.size, pid, host, state)

    def admit(self, host: str, per_host: int, total: int) -> int | str:
        """Take a slot for a new pending connection from ``host``: its index, or why it is
        refused (too many pending from the host, or in all)."""
        key = host.encode("ascii", "replace")[:46].ljust(46, b"\0")
        with self._locked() as slots:
            pending = [h for _pid, h, state in slots if state == PENDING]
            if sum(h == key for h in pending) >= per_host:
                return "too_many_pending_host"
            if len(pending) >= total:
                return "too_many_pending"
            for index, (_pid, _host, state) in enumerate(slots):
                if state == FREE:
                    self._write(index, self.pid, key, PENDING)
                    return index
        return "too_many_pending"

    def establish(self, index: int, per_host: int, total: int) -> str | None:
        """Count the connection in slot ``index`` as an association; or why it must be
        rejected (too many associations from its host, or in all)."""
        with self._locked() as slots:
            _pid, key, _state = slots[index]
            established = [h for _pid, h, state in slots if state == ESTABLISHED]
            if sum(h == key for h in established) >= per_host:
                return "busy_host"
            if len(established) >= total:
                return "busy"
            self._write(index, self.pid, key, ESTABLISHED)
        return None

    def remove(self, index: int) -> None:
        with self._locked():
            self._write(index, 0, b"", FREE)

    def release(self, pid: int) -> int:
        """Free the slots of a receiver that has ended; how many it held."""
        with self._locked() as slots:
            held = [i for i, (owner, _h, state) in enumerate(slots) if owner == pid and state]
            for index in held:
                self._write(index, 0, b"", FREE)
        return len(held)

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
