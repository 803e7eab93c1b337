"""The spool: received instances on disk, as they came.

Layout under the storage path::

    spool/<folder>/<n>.dcm   one instance each, fdatasynced before acknowledgement
    journal.sqlite           the state (see station.store.journal): which file holds which instance
    quarantine/              input refused as a whole (drop-folder files, zip members)
    station.lock             held by the running station (see lock.py)
    run/                     the receiver processes' metrics and connection board (emptied
                             at every start; station/receive/workers.py)

All of it is PHI: folders are created 0700 and files 0600, whatever the umask; the spool
and quarantine folders are made so at every start (an older station made them 0755).

Spool files are created empty ahead of need, a folder of them at a time, and made durable
with one folder fsync (``FreeFiles``); each receiver keeps ``storage.free_files`` of them,
made as it starts. An incoming data set is written into the next free file, so making it
durable before the acknowledgement takes one fdatasync: no file creation, rename or folder
fsync on that path (measured: 1.5 ms -> 0.8 ms per 9 KiB instance, journal commit
included). Names carry no UIDs; the journal maps them (``station
trace`` and ``station status`` show the way).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from station.dicom.status import Status
from station.errors import RejectedInstance

log = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def full_disk_reason(exc: Exception) -> str:
    """The rejection reason for a failure to store: disk_full when it was out of space
    (ENOSPC, EDQUOT, SQLite's "database or disk is full"), else internal."""
    full = getattr(exc, "errno", None) in DISK_FULL or "disk is full" in str(exc)
    return "disk_full" if full else "internal"


# Free space always kept for the journal, whatever storage.min_free_bytes says: with a
# disk filled to the last byte, series could no longer be completed or delivered.
JOURNAL_RESERVE_BYTES = 256 * 1024


WRITE_BUFFER = 256 * 1024
FILE_MODE = 0o600  # spooled instances are PHI: owner only, whatever the umask
FOLDER_MODE = 0o700


def make_folder(path: Path, mode: int = FOLDER_MODE) -> None:
    """Create ``path`` and any missing parents with exactly ``mode`` (default owner-only;
    mkdir applies the umask, so each new folder gets an explicit chmod). Existing folders
    keep theirs."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # made meanwhile by another thread: its maker sets the mode
        os.chmod(folder, mode)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writing the range out, without waiting


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except AttributeError:  # not Linux
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], call)


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing ``length`` bytes from ``offset`` to the disk now,
    without waiting (advice: nothing where there is no sync_file_range). The fdatasync
    before an acknowledgement then finds most of a large data set on the disk already."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


# Files made at once when the reserve is empty (the filler fell behind): enough to bridge
# until it catches up, few enough not to hold the instance waiting for one long.
ON_DEMAND = 16
FOLDER_FILES = 256  # free files per spool folder
REFILL_NICENESS = 19  # the filler thread's (Linux schedules threads by their own)
LULL_SECONDS = 0.5  # the filler waits for this long without a take...
LOW_SHARE = 8  # ...unless fewer than 1/8 of the reserve are left


class FreeFiles:
    """Empty spool files, created and made durable ahead of need, a folder at a time.

    A receiver calls ``start`` before it accepts, so that ``reserve`` files are made while
    it is idle and a burst of up to that many instances pays no file creation on its way in
    (creating a file costs 0.05 to 1.5 ms of kernel time on ext4, more than the rest of an
    instance's receipt); a background thread tops the reserve up when it runs below half,
    in the next lull of receiving (or at once when less than an eighth is left).
    ``take`` hands out the next one, making a few on demand if the reserve is empty. Files
    never taken (at a crash or a stop) are taken over by the next start's receivers
    (``Spool.remove_orphans``).
    """

    def __init__(self, root: Path, reserve: int = FOLDER_FILES) -> None:
        self.root = root
        self.reserve = reserve
        self._ready: deque[Path] = deque()
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._filler: threading.Thread | None = None
        self._last_take = 0.0

    def start(self, adopt: Sequence[Path] = ()) -> None:
        """Take over the free files in the folders ``adopt`` (left by the last run),
        make the rest of the reserve now (a receiver, before it accepts: the first burst
        then competes with no file creation), then keep it topped up in the background."""
        with self._lock:
            for folder in adopt:
                self._ready.extend(sorted(p for p in folder.iterdir() if not p.stat().st_size))
        while self._top_up():
            pass
        with self._lock:
            self._want()

    def take(self) -> Path:
        with self._lock:
            self._last_take = time.monotonic()
            path = self._ready.popleft() if self._ready else None
            if len(self._ready) < self.reserve // 2:
                self._want()
        if path is not None:
            return path
        made = self._create(ON_DEMAND)
        with self._lock:
            self._ready.extend(made[1:])
        return made[0]

    def _want(self) -> None:
        """Wake the filler (started the first time), holding the lock."""
        if self._filler is None and self.reserve > 0:
            self._filler = threading.Thread(target=self._refill, name="spool-free", daemon=True)
            self._filler.start()
        self._wanted.set()

    def _refill(self) -> None:
        # Topping up is background work: under load the kernel runs it after the receipts.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REFILL_NICENESS)
        while True:
            self._wanted.wait()
            self._await_lull()
            if not self._top_up():  # full, or failing: wanted again at a take below half
                self._wanted.clear()

    def _top_up(self) -> bool:
        """Make a folder of files towards the reserve; False when it is full or none can be
        made (the disk is full or gone: take() then makes them on demand and says so)."""
        with self._lock:
            short = self.reserve - len(self._ready)
        if short <= 0:
            return False
        try:
            made = self._create(min(FOLDER_FILES, short))
        except OSError as exc:
            log.warning("cannot create spool files ahead under %s: %s", self.root, exc)
            return False
        with self._lock:
            self._ready.extend(made)
        return True

    def _await_lull(self) -> None:
        """Creating files competes with the receipts for the CPU and the file system's
        journal: wait until nothing was taken for LULL_SECONDS, unless the reserve runs low."""
        while True:
            with self._lock:
                quiet = time.monotonic() - self._last_take
                low = len(self._ready) < self.reserve // LOW_SHARE
            if low or quiet >= LULL_SECONDS:
                return
            time.sleep(LULL_SECONDS - quiet)

    def _create(self, count: int) -> list[Path]:
        """A new folder of ``count`` empty files, durable: created, then the folder and its
        parent fsynced (that commits the new inodes and names with them). The mode is set
        explicitly only when the umask left the first file other than FILE_MODE (it costs
        an inode update per file)."""
        folder = self.root / uuid.uuid4().hex[:12]
        folder.mkdir()
        os.chmod(folder, FOLDER_MODE)
        paths = []
        chmod = True
        for n in range(count):
            path = folder / f"{n:04d}.dcm"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                if chmod:
                    chmod = stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE
                if chmod:
                    os.fchmod(fd, FILE_MODE)
            finally:
                os.close(fd)
            paths.append(path)
        fsync_dir(folder)
        fsync_dir(self.root)
        return paths


class Spool:
    """Where instances live between receipt and delivery."""

    def __init__(self, root: Path, min_free_bytes: int, free_files: int = FOLDER_FILES) -> None:
        self.root = root
        self.files = root / "spool"
        self.quarantine = root / "quarantine"
        self.min_free_bytes = min_free_bytes
        make_folder(root)
        for folder in (self.files, self.quarantine):
            make_folder(folder)
            os.chmod(folder, FOLDER_MODE)
        self.free = FreeFiles(self.files, free_files)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, incoming: int = 0) -> None:
        """Refuse new data (0xA700) before the disk falls below the configured reserve, and
        never below JOURNAL_RESERVE_BYTES: what was taken in must still be completed,
        routed and delivered, and each of those steps writes the journal."""
        free = self.free_bytes()
        reserve = max(self.min_free_bytes, JOURNAL_RESERVE_BYTES)
        if free - incoming < reserve:
            raise RejectedInstance(
                Status.OUT_OF_RESOURCES,
                "disk_full",
                f"only {free} bytes free under {self.root}; storage.min_free_bytes is "
                f"{self.min_free_bytes} (at least {JOURNAL_RESERVE_BYTES} stay for the journal)",
            )

    def claim(self, incoming: int = 0) -> Path:
        """An empty spool file to write one incoming instance into (``incoming``: its size,
        when known). Refused with 0xA700 when the disk is short or no file can be created
        there. The caller either commits it or removes it."""
        self.check_space(incoming)
        try:
            return self.free.take()
        except OSError as exc:
            raise RejectedInstance(
                Status.OUT_OF_RESOURCES, full_disk_reason(exc), f"cannot create a spool file: {exc}"
            ) from exc

    def refuse(self, path: Path, exc: Exception, doing: str) -> RejectedInstance:
        """Remove a claimed file that could not be stored (nothing partial stays) and
        return the refusal to answer with: 0xA700 (reason: full_disk_reason)."""
        self.remove(path)
        return RejectedInstance(
            Status.OUT_OF_RESOURCES, full_disk_reason(exc), f"cannot {doing}: {exc}"
        )

    def commit(self, path: Path) -> None:
        """Make a claimed file's content durable (its name already is)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def data_files(self) -> list[Path]:
        """The spool files holding data, oldest first (by modification time)."""
        found = []
        for dirpath, _dirs, files in os.walk(self.files):
            for name in files:
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    if st.st_size:
                        found.append((st.st_mtime_ns, str(path), path))
        return [path for _mtime, _name, path in sorted(found)]

    def remove(self, path: Path) -> None:
        """Remove a spool file, and its series folder once empty."""
        try:
            path.unlink()
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def remove_orphans(self, known: set[str]) -> tuple[int, list[Path]]:
        """At start: delete the files the journal does not know that hold data (instances
        never acknowledged; counted), and return the folders holding empty files it does
        not know: free files made ahead by the last run, for the receivers to take over
        (``FreeFiles.start`` takes every empty file in them). A folder where the journal
        knows an empty file (a damaged instance: never written into) is not offered; its
        free files are deleted."""
        removed = 0
        free = []
        for folder in self.files.iterdir():
            spare, offer = [], True
            for path in folder.iterdir():
                size = path.stat().st_size
                if str(path) in known:
                    offer = offer and size > 0
                elif size:
                    removed += 1
                    self.remove(path)
                else:
                    spare.append(path)
            if spare and offer:
                free.append(folder)
                continue
            for path in spare:
                self.remove(path)
            with contextlib.suppress(OSError):
                folder.rmdir()
        return removed, free


class IncomingFile:
    """Where a received data set is written as it arrives (a C-STORE's, behind its File
    Meta Information). A write that fails (the disk is
    full) is remembered and the rest of the data set is read and dropped, so the request
    can still be answered (0xA700) instead of the association being aborted."""

    def __init__(self, path: Path) -> None:
        self._fh = open(os.open(path, os.O_WRONLY), "wb", buffering=WRITE_BUFFER)  # noqa: SIM115
        self.error: OSError | None = None
        self._written = 0  # bytes handed to write()
        self._out = 0  # of which the kernel was told to start writing out

    def write(self, piece: bytes | memoryview) -> None:
        """Write ``piece``; every WRITE_BUFFER bytes, flush and start their writeback, so
        that the disk writes a large data set while the rest of it is still arriving."""
        if self.error is None:
            try:
                self._fh.write(piece)
                self._written += len(piece)
                if self._written - self._out >= WRITE_BUFFER:
                    self._fh.flush()
                    start_writeback(self._fh.fileno(), self._out, self._written - self._out)
                    self._out = self._written
            except OSError as exc:
                self.error = exc

    def close(self, durable: bool = False) -> None:
        """Flush and close (``durable``: fdatasync first, through the same descriptor, as
        ``Spool.commit`` would); a failing flush or sync is remembered like a failing write."""
        try:
            if durable and self.error is None:
                self._fh.flush()
                os.fdatasync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:
            self.error = self.error or exc
            self.discard()

    def discard(self) -> None:
        """Close without caring what is left in the buffer (the file is removed anyway)."""
        with contextlib.suppress(OSError):
            self._fh.close()
