"""The journal: the single owner of the station's state, in SQLite (WAL, synchronous=FULL).

Files in the spool are content only; what has been received, which batch of which series it
belongs to, where it must go and how each attempt went lives here. A row is committed
before anything is acknowledged, so after a crash the journal says what is left to do.

Batch states: ``open`` (collecting) -> ``complete`` (quiet period over, waiting for the
router) -> ``routed`` (deliveries created) or ``filtered`` / ``unrouted`` / ``quarantined``.
Delivery states: ``pending`` -> ``delivered`` or ``dead_letter``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from station.errors import JournalError
from station.store.records import (
    Batch,
    Delivery,
    Dropped,
    Instance,
    Received,
    batch_from_row,
    delivery_from_row,
)
from station.store.spool import FILE_MODE, make_folder

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    completed_at REAL,
    calling_ae TEXT, called_ae TEXT, peer TEXT, source TEXT,
    labels TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS batches_state ON batches(state, series_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    batch_id INTEGER NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class TEXT, transfer_syntax TEXT,
    path TEXT NOT NULL, size INTEGER NOT NULL,
    calling_ae TEXT, called_ae TEXT, peer TEXT, source TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_batch ON instances(batch_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    batch_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    routes TEXT NOT NULL,
    transforms TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    only_failed INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries(state, destination, next_attempt);
CREATE TABLE IF NOT EXISTS instance_failures (
    delivery_id INTEGER NOT NULL,
    sop_uid TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (delivery_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    batch_id INTEGER,
    kind TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_batch ON events(batch_id);
CREATE TABLE IF NOT EXISTS dropped_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    at REAL NOT NULL
);
"""

# Version 2: warning statuses peers answered per instance sent, and rejected inputs held
# in quarantine (station/store/quarantine.py reads and writes these rows).
SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS instance_warnings (
    delivery_id INTEGER NOT NULL,
    sop_uid TEXT NOT NULL,
    status INTEGER NOT NULL,
    comment TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (delivery_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    source TEXT NOT NULL,
    watch TEXT,
    path TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'held',
    resolved_at REAL
);
CREATE INDEX IF NOT EXISTS quarantine_state ON quarantine(state, source);
"""
# The schema's history: step N takes a journal from version N-1 to N (``PRAGMA
# user_version``), each in its own transaction. A step is SQL or a function of the open
# connection; a new table or column is a new step appended here, never an edit of an old one.
# Version 1 is the schema as it was before versions were kept, so an unversioned journal
# that has the tables is adopted by running it (every statement is IF NOT EXISTS).
Migration = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[int, Migration]] = [
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class NewerJournal(JournalError):
    """The journal was written by a newer station: not damaged, and not to be rebuilt."""


@dataclass
class _Pending:
    """An instance waiting to be journaled by whichever thread commits next."""

    item: Received
    now: float
    dropped: Dropped | None
    done: bool = False
    result: tuple[int, Path | None] | None = None
    error: BaseException | None = None


class Journal:
    """Thread-safe access to the journal database. One instance per process.

    Opening checks the schema version and brings an older journal up to date (``migrate``;
    read-only commands pass False and refuse an outdated one instead of writing to it). A
    file that is not a readable SQLite database, or of a version newer than this code
    knows, raises JournalError naming it. The file is created owner-only (0600)."""

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self.group_commits = 0  # transactions record_instance committed (tests read it)
        self.fresh = False  # whether opening found no tables (a new or emptied journal)
        _create_private(path)
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
                self._upgrade(migrate)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            os.close(self._writer)
            raise JournalError(f"journal {path} cannot be read: {exc}") from exc
        except JournalError:
            self._db.close()
            os.close(self._writer)
            raise

    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def has_tables(self) -> bool:
        """Whether the journal holds the station's tables (a new, empty file does not)."""
        row = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='instances'"
        ).fetchone()
        return row is not None

    def _upgrade(self, migrate: bool) -> None:
        version = self.version()
        if version > SCHEMA_VERSION:
            raise NewerJournal(
                f"journal {self.path} has schema version {version}; this station knows "
                f"versions up to {SCHEMA_VERSION}: it was written by a newer station. "
                "Run that version (or a newer one), or restore a journal it wrote"
            )
        self.fresh = version == 0 and not self.has_tables()
        if version == 0 and not self.fresh:
            version = 1  # the version 1 schema, only not stamped yet
        steps = [(v, step) for v, step in MIGRATIONS if v > version]
        if steps and not migrate:
            raise JournalError(
                f"journal {self.path} has schema version {version}, not {SCHEMA_VERSION}: "
                "`station run` brings it up to date"
            )
        for target, step in steps:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if isinstance(step, str):
                    for statement in step.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                else:
                    step(self._db)
                self._db.execute(f"PRAGMA user_version={int(target)}")
            except BaseException:
                self._rollback()
                raise
            self._db.execute("COMMIT")

    def check_integrity(self) -> None:
        """``PRAGMA quick_check``; raise JournalError naming what is damaged."""
        try:
            rows = [r[0] for r in self.query("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"journal {self.path} is damaged: {exc}") from exc
        if rows != ["ok"]:
            raise JournalError(f"journal {self.path} is damaged: {'; '.join(rows[:5])}")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._writer)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._rollback()
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()  # disk full at commit: leave no transaction open behind
                raise

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Writers of every process (the station's receivers) take turns on a file lock:
        a blocked ``flock`` wakes as soon as it is free, where SQLite's busy handler
        sleeps 1, 2, 5, 10 ms... between tries."""
        fcntl.flock(self._writer, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writer, fcntl.LOCK_UN)

    def _rollback(self) -> None:
        """Roll back what is still open. SQLite may have rolled back by itself (disk full,
        I/O error); then there is nothing to do, and the next transaction starts clean."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.OperationalError:
                if self._db.in_transaction:
                    raise

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read rows (for reports such as status and trace; writes go through methods)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- receiving ----------------------------------------------------------------------

    def record_instance(
        self, item: Received, now: float | None = None, dropped: Dropped | None = None
    ) -> tuple[int, Path | None]:
        """Journal a spooled instance into the open batch of its series (opening one), and
        the drop-folder file it came from, if any, in the same transaction.

        Returns the batch id and, when the same SOP Instance UID was stored before under
        another path, that old path (the caller removes the stale file).

        Group commit: instances recorded by concurrent threads (several associations) share
        one transaction and so one WAL fsync. Whichever thread gets the journal first
        commits everything queued by then; the others find their result done. One thread
        alone pays nothing for it.
        """
        pending = _Pending(item, time.time() if now is None else now, dropped)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if not pending.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                try:
                    with self.transaction() as db:
                        results = [self._record(db, p) for p in group]
                except BaseException as exc:
                    for p in group:
                        p.error, p.done = exc, True
                else:
                    for p, result in zip(group, results, strict=True):
                        p.result, p.done = result, True
                self.group_commits += 1
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _record(self, db: sqlite3.Connection, pending: _Pending) -> tuple[int, Path | None]:
        item, now, dropped = pending.item, pending.now, pending.dropped
        if dropped is not None:
            self._remember_dropped(db, dropped, "ingested", now)
        row = db.execute(
            "SELECT id FROM batches WHERE series_uid=? AND state='open'", (item.series_uid,)
        ).fetchone()
        if row:
            batch_id = row["id"]
            db.execute("UPDATE batches SET last_received=? WHERE id=?", (now, batch_id))
        else:
            batch_id = db.execute(
                "INSERT INTO batches (study_uid, series_uid, state, first_received,"
                " last_received, calling_ae, called_ae, peer, source, labels)"
                " VALUES (?,?,?,?,?,?,?,?,?,'{}')",
                (
                    item.study_uid,
                    item.series_uid,
                    "open",
                    now,
                    now,
                    item.calling_ae,
                    item.called_ae,
                    item.peer,
                    item.source,
                ),
            ).lastrowid
            db.execute(
                "INSERT INTO events (ts, batch_id, kind, detail) VALUES (?,?,?,?)",
                (
                    now,
                    batch_id,
                    "opened",
                    f"from {item.calling_ae} ({item.peer}) via {item.source}",
                ),
            )
        old = db.execute("SELECT path FROM instances WHERE sop_uid=?", (item.sop_uid,)).fetchone()
        db.execute(
            "INSERT OR REPLACE INTO instances (sop_uid, batch_id, series_uid, sop_class,"
            " transfer_syntax, path, size, calling_ae, called_ae, peer, source, received_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                item.sop_uid,
                batch_id,
                item.series_uid,
                item.sop_class,
                item.transfer_syntax,
                str(item.path),
                item.size,
                item.calling_ae,
                item.called_ae,
                item.peer,
                item.source,
                now,
            ),
        )
        stale = Path(old["path"]) if old and old["path"] != str(item.path) else None
        return batch_id, stale

    def mark_dropped(self, dropped: Dropped, outcome: str) -> None:
        """Remember that a drop-folder file was taken in (so a restart does not take it again)."""
        with self.transaction() as db:
            self._remember_dropped(db, dropped, outcome, time.time())

    @staticmethod
    def _remember_dropped(
        db: sqlite3.Connection, dropped: Dropped, outcome: str, now: float
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO dropped_files (path, size, mtime_ns, outcome, at)"
            " VALUES (?,?,?,?,?)",
            (str(dropped.path), dropped.size, dropped.mtime_ns, outcome, now),
        )

    def was_dropped(self, dropped: Dropped) -> bool:
        rows = self.query(
            "SELECT 1 FROM dropped_files WHERE path=? AND size=? AND mtime_ns=?",
            (str(dropped.path), dropped.size, dropped.mtime_ns),
        )
        return bool(rows)

    def prune_dropped(self) -> int:
        """Forget taken files that are no longer where they were taken from."""
        gone = [
            r["path"]
            for r in self.query("SELECT path FROM dropped_files")
            if not Path(r["path"]).exists()
        ]
        with self.transaction() as db:
            db.executemany("DELETE FROM dropped_files WHERE path=?", [(p,) for p in gone])
        return len(gone)

    def known_paths(self) -> set[str]:
        return {row["path"] for row in self.query("SELECT path FROM instances")}

    # --- series assembly ----------------------------------------------------------------

    def close_quiet_batches(self, quiet_before: float, opened_before: float) -> list[int]:
        """Mark open batches complete whose quiet period or maximum wait is over."""
        now = time.time()
        with self.transaction() as db:
            ids = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM batches WHERE state='open'"
                    " AND (last_received<=? OR first_received<=?)",
                    (quiet_before, opened_before),
                )
            ]
            for batch_id in ids:
                db.execute(
                    "UPDATE batches SET state='complete', completed_at=? WHERE id=?",
                    (now, batch_id),
                )
                db.execute(
                    "INSERT INTO events (ts, batch_id, kind, detail) VALUES (?,?,?,"
                    " (SELECT count(*) || ' instances' FROM instances WHERE batch_id=?))",
                    (now, batch_id, "completed", batch_id),
                )
        return ids

    def next_open_deadline(self, quiet: float, max_wait: float) -> float | None:
        row = self.query(
            "SELECT min(min(last_received + ?, first_received + ?)) AS t FROM batches"
            " WHERE state='open'",
            (quiet, max_wait),
        )[0]
        return cast("float | None", row["t"])

    def batches_in_state(self, state: str) -> list[int]:
        return [r["id"] for r in self.query("SELECT id FROM batches WHERE state=?", (state,))]

    def batch(self, batch_id: int) -> Batch:
        return batch_from_row(self.query("SELECT * FROM batches WHERE id=?", (batch_id,))[0])

    def instances(self, batch_id: int) -> list[Instance]:
        rows = self.query(
            "SELECT i.sop_uid, b.study_uid, i.series_uid, i.sop_class, i.transfer_syntax,"
            " i.path, i.size FROM instances i JOIN batches b ON b.id=i.batch_id"
            " WHERE i.batch_id=? ORDER BY i.received_at, i.sop_uid",
            (batch_id,),
        )
        return [
            Instance(
                r["sop_uid"],
                r["study_uid"],
                r["series_uid"],
                r["sop_class"] or "",
                r["transfer_syntax"] or "",
                Path(r["path"]),
                r["size"],
            )
            for r in rows
        ]

    # --- routing ------------------------------------------------------------------------

    def finish_batch(
        self,
        batch_id: int,
        state: str,
        reason: str | None,
        labels: dict[str, str],
        deliveries: Sequence[tuple[str, tuple[str, ...], tuple[dict[str, Any], ...]]] = (),
        hooks: Sequence[str] = (),
    ) -> None:
        """Record the router's decision, what each plugin hook decided (``hooks``, for the
        audit trail) and the deliveries it created, atomically."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET state=?, reason=?, labels=? WHERE id=?",
                (state, reason, json.dumps(labels, sort_keys=True), batch_id),
            )
            db.executemany(
                "INSERT INTO events (ts, batch_id, kind, detail) VALUES (?,?,'hook',?)",
                [(now, batch_id, hook) for hook in hooks],
            )
            db.execute(
                "INSERT INTO events (ts, batch_id, kind, detail) VALUES (?,?,?,?)",
                (now, batch_id, state, reason),
            )
            for destination, routes, transforms in deliveries:
                db.execute(
                    "INSERT INTO deliveries (batch_id, destination, routes, transforms, state,"
                    " next_attempt, created, updated) VALUES (?,?,?,?,'pending',?,?,?)",
                    (
                        batch_id,
                        destination,
                        json.dumps(routes),
                        json.dumps(transforms),
                        now,
                        now,
                        now,
                    ),
                )

    # --- dispatch -----------------------------------------------------------------------

    def due_deliveries(self, destination: str, now: float, limit: int) -> list[Delivery]:
        rows = self.query(
            "SELECT * FROM deliveries WHERE state='pending' AND destination=?"
            " AND next_attempt<=? ORDER BY next_attempt, id LIMIT ?",
            (destination, now, limit),
        )
        return [delivery_from_row(r) for r in rows]

    def next_due(self, destination: str) -> float | None:
        row = self.query(
            "SELECT min(next_attempt) AS t FROM deliveries WHERE state='pending' AND destination=?",
            (destination,),
        )[0]
        return cast("float | None", row["t"])

    def failed_instances(self, delivery_id: int) -> dict[str, str]:
        rows = self.query(
            "SELECT sop_uid, reason FROM instance_failures WHERE delivery_id=?", (delivery_id,)
        )
        return {r["sop_uid"]: r["reason"] for r in rows}

    def warned_instances(self, delivery_id: int) -> dict[str, tuple[int, str]]:
        """Instances the peer took with a warning status: SOP UID -> (status, comment)."""
        rows = self.query(
            "SELECT sop_uid, status, comment FROM instance_warnings WHERE delivery_id=?",
            (delivery_id,),
        )
        return {r["sop_uid"]: (r["status"], r["comment"]) for r in rows}

    def record_attempt(
        self,
        delivery: Delivery,
        outcome: str,
        error: str | None,
        next_attempt: float | None = None,
        failures: dict[str, str] | None = None,
        warnings: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        """Record one dispatch attempt. ``outcome``: success, retry or dead_letter;
        ``warnings``: instances sent with a warning status (kept, like failures, with the
        delivery's history)."""
        now = time.time()
        state = {"success": "delivered", "retry": "pending", "dead_letter": "dead_letter"}[outcome]
        with self.transaction() as db:
            if warnings:
                db.executemany(
                    "INSERT OR REPLACE INTO instance_warnings"
                    " (delivery_id, sop_uid, status, comment, at) VALUES (?,?,?,?,?)",
                    [(delivery.id, uid, code, text, now) for uid, (code, text) in warnings.items()],
                )
            if failures is not None:
                db.execute("DELETE FROM instance_failures WHERE delivery_id=?", (delivery.id,))
                db.executemany(
                    "INSERT INTO instance_failures (delivery_id, sop_uid, reason) VALUES (?,?,?)",
                    [(delivery.id, uid, reason) for uid, reason in failures.items()],
                )
            db.execute(
                "UPDATE deliveries SET state=?, attempts=attempts+1, last_error=?,"
                " next_attempt=?, updated=? WHERE id=?",
                (state, error, next_attempt or now, now, delivery.id),
            )
            detail = f"{delivery.destination}: attempt {delivery.attempts + 1}: {outcome}" + (
                f": {error}" if error else ""
            )
            db.execute(
                "INSERT INTO events (ts, batch_id, kind, detail) VALUES (?,?,?,?)",
                (now, delivery.batch_id, "attempt", detail),
            )

    def retry_dead_letters(
        self, destination: str | None = None, series_uid: str | None = None
    ) -> int:
        """Re-queue dead-lettered deliveries (and quarantined batches); return how many."""
        now = time.time()
        where, args = ["d.state='dead_letter'"], []
        if destination:
            where.append("d.destination=?")
            args.append(destination)
        if series_uid:
            where.append("b.series_uid=?")
            args.append(series_uid)
        with self.transaction() as db:
            ids = [
                r["id"]
                for r in db.execute(
                    "SELECT d.id FROM deliveries d JOIN batches b ON b.id=d.batch_id WHERE "
                    + " AND ".join(where),
                    args,
                )
            ]
            for delivery_id in ids:
                db.execute(
                    "UPDATE deliveries SET state='pending', attempts=0, next_attempt=?, updated=?,"
                    " only_failed=(SELECT count(*)>0 FROM instance_failures WHERE delivery_id=?)"
                    " WHERE id=?",
                    (now, now, delivery_id, delivery_id),
                )
                db.execute(
                    "INSERT INTO events (ts, batch_id, kind, detail) SELECT ?, batch_id,"
                    " 'requeued', destination FROM deliveries WHERE id=?",
                    (now, delivery_id),
                )
            batches = 0
            if not destination:
                sql = "SELECT id FROM batches WHERE state='quarantined'"
                qargs: tuple[Any, ...] = ()
                if series_uid:
                    sql += " AND series_uid=?"
                    qargs = (series_uid,)
                quarantined = [r["id"] for r in db.execute(sql, qargs)]
                for batch_id in quarantined:
                    db.execute(
                        "UPDATE batches SET state='complete', reason=NULL WHERE id=?", (batch_id,)
                    )
                    db.execute(
                        "INSERT INTO events (ts, batch_id, kind, detail) VALUES (?,?,?,?)",
                        (now, batch_id, "requeued", "quarantine released"),
                    )
                batches = len(quarantined)
        return len(ids) + batches

    # --- status and housekeeping --------------------------------------------------------

    def queue_counts(self) -> dict[tuple[str, str], int]:
        rows = self.query(
            "SELECT destination, state, count(*) AS n FROM deliveries"
            " WHERE state IN ('pending', 'dead_letter') GROUP BY destination, state"
        )
        return {(r["destination"], r["state"]): r["n"] for r in rows}

    def spool_bytes(self) -> int:
        return int(self.query("SELECT coalesce(sum(size), 0) AS n FROM instances")[0]["n"])

    def expired_batches(self, delivered_before: float) -> list[int]:
        """Batches whose work is finished and older than the retention period."""
        rows = self.query(
            "SELECT b.id FROM batches b WHERE b.completed_at<=? AND ("
            " b.state IN ('filtered', 'unrouted') OR (b.state='routed' AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.batch_id=b.id AND d.state!='delivered')))",
            (delivered_before,),
        )
        return [r["id"] for r in rows]

    def forget_instances(self, batch_id: int) -> list[Path]:
        """Drop a finished batch's instances from the journal; return their spool files."""
        with self.transaction() as db:
            paths = [
                Path(r["path"])
                for r in db.execute("SELECT path FROM instances WHERE batch_id=?", (batch_id,))
            ]
            db.execute("DELETE FROM instances WHERE batch_id=?", (batch_id,))
            db.execute("UPDATE batches SET state='expired' WHERE id=?", (batch_id,))
        return paths


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
