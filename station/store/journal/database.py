"""The SQLite journal's connection: opened in WAL with synchronous=FULL, checked and brought
up to the current schema, owner-only on disk; one lock around it for every thread, and one
way to write (``_transaction``). The journal's other modules build on this class."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from station.errors import JournalError
from station.store.journal import schema
from station.store.records import Batch, Delivery
from station.store.spool import FILE_MODE, make_folder
from station.store.states import BatchState, DeliveryState


class Database:
    """Thread-safe access to the journal database. One instance per process.

    Opening checks the schema version and brings an older journal up to date (``migrate``;
    read-only commands pass False and refuse an outdated one instead of writing to it). A
    file that is not a readable SQLite database, or of a version newer than this code
    knows, raises JournalError naming it. The file is created owner-only (0600)."""

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.fresh = False  # whether opening found no tables (a new or emptied journal)
        _create_private(path)
        # Writers of every process (the station's receivers) take turns on this file lock.
        self._writer = os.open(
            path.with_name(path.name + "-writer"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
        )
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            with self._lock:
                self.fresh = schema.upgrade(self._db, path, migrate)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise JournalError(f"journal {path} cannot be read: {exc}") from exc
        except JournalError:
            self.close()
            raise

    def version(self) -> int:
        with self._lock:
            return schema.version(self._db)

    def check_integrity(self) -> None:
        """``PRAGMA quick_check``; raise JournalError naming what is damaged."""
        try:
            rows = [r[0] for r in self._rows("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"journal {self.path} is damaged: {exc}") from exc
        if rows != ["ok"]:
            raise JournalError(f"journal {self.path} is damaged: {'; '.join(rows[:5])}")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._writer)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                schema.rollback(self._db)
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                schema.rollback(self._db)  # disk full at commit: leave no transaction open
                raise

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Writers of every process take turns on a file lock: a blocked ``flock`` wakes as
        soon as it is free, where SQLite's busy handler sleeps 1, 2, 5, 10 ms... between
        tries."""
        fcntl.flock(self._writer, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writer, fcntl.LOCK_UN)

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read rows, for the journal's own read methods."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()


def batch_from_row(row: sqlite3.Row) -> Batch:
    return Batch(
        id=row["id"],
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        state=BatchState(row["state"]),
        first_received=row["first_received"],
        last_received=row["last_received"],
        calling_ae=row["calling_ae"] or "",
        called_ae=row["called_ae"] or "",
        peer=row["peer"] or "",
        source=row["source"] or "",
        labels=json.loads(row["labels"] or "{}"),
        reason=row["reason"],
    )


def delivery_from_row(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        batch_id=row["batch_id"],
        destination=row["destination"],
        routes=tuple(json.loads(row["routes"])),
        transforms=tuple(json.loads(row["transforms"])),
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        next_attempt=row["next_attempt"],
        last_error=row["last_error"],
        only_failed=bool(row["only_failed"]),
    )


def _create_private(path: Path) -> None:
    """Create the journal's file and folder owner-only whatever the umask (SQLite then gives
    its -wal and -shm files the same mode); an existing journal is made owner-only too."""
    make_folder(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, FILE_MODE)
