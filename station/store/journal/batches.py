"""The journal's series batches: instances journaled as they arrive (group commit), batches
completed after their quiet period, the router's decision, and expiry after retention."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from station.store.journal.database import Database, batch_from_row
from station.store.records import Batch, Dropped, Instance, Received
from station.store.states import BatchState, DeliveryState


@dataclass
class _Pending:
    """An instance waiting to be journaled by whichever thread commits next."""

    item: Received
    now: float
    dropped: Dropped | None
    done: bool = False
    result: tuple[int, Path | None] | None = None
    error: BaseException | None = None


class Batches(Database):
    """Receiving, series assembly, routing and expiry."""

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        super().__init__(path, migrate=migrate)
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self.group_commits = 0  # transactions record_instance committed (tests read it)

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
                    with self._transaction() as db:
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
            "SELECT id FROM batches WHERE series_uid=? AND state=?",
            (item.series_uid, BatchState.OPEN),
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
                    BatchState.OPEN,
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
        with self._transaction() as db:
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
        rows = self._rows(
            "SELECT 1 FROM dropped_files WHERE path=? AND size=? AND mtime_ns=?",
            (str(dropped.path), dropped.size, dropped.mtime_ns),
        )
        return bool(rows)

    def prune_dropped(self) -> int:
        """Forget taken files that are no longer where they were taken from."""
        gone = [
            r["path"]
            for r in self._rows("SELECT path FROM dropped_files")
            if not Path(r["path"]).exists()
        ]
        with self._transaction() as db:
            db.executemany("DELETE FROM dropped_files WHERE path=?", [(p,) for p in gone])
        return len(gone)

    def known_paths(self) -> set[str]:
        return {row["path"] for row in self._rows("SELECT path FROM instances")}

    # --- series assembly ----------------------------------------------------------------

    def close_quiet_batches(self, quiet_before: float, opened_before: float) -> list[int]:
        """Mark open batches complete whose quiet period or maximum wait is over. The
        assembler asks often: only when a read finds one due is the write lock taken, which
        the receivers share."""
        due = "SELECT id FROM batches WHERE state=? AND (last_received<=? OR first_received<=?)"
        args = (BatchState.OPEN, quiet_before, opened_before)
        if not self._rows(due, args):
            return []
        now = time.time()
        with self._transaction() as db:
            ids = [r["id"] for r in db.execute(due, args)]
            for batch_id in ids:
                db.execute(
                    "UPDATE batches SET state=?, completed_at=? WHERE id=?",
                    (BatchState.COMPLETE, now, batch_id),
                )
                db.execute(
                    "INSERT INTO events (ts, batch_id, kind, detail) VALUES (?,?,?,"
                    " (SELECT count(*) || ' instances' FROM instances WHERE batch_id=?))",
                    (now, batch_id, "completed", batch_id),
                )
        return ids

    def next_open_deadline(self, quiet: float, max_wait: float) -> float | None:
        row = self._rows(
            "SELECT min(min(last_received + ?, first_received + ?)) AS t FROM batches"
            " WHERE state=?",
            (quiet, max_wait, BatchState.OPEN),
        )[0]
        return cast("float | None", row["t"])

    def batches_in_state(self, state: BatchState) -> list[int]:
        rows = self._rows("SELECT id FROM batches WHERE state=?", (state,))
        return [r["id"] for r in rows]

    def batch(self, batch_id: int) -> Batch:
        return batch_from_row(self._rows("SELECT * FROM batches WHERE id=?", (batch_id,))[0])

    def instances(self, batch_id: int) -> list[Instance]:
        rows = self._rows(
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
        state: BatchState,
        reason: str | None,
        labels: dict[str, str],
        deliveries: Sequence[tuple[str, tuple[str, ...], tuple[dict[str, Any], ...]]] = (),
        hooks: Sequence[str] = (),
    ) -> None:
        """Record the router's decision, what each plugin hook decided (``hooks``, for the
        audit trail) and the deliveries it created, atomically."""
        now = time.time()
        with self._transaction() as db:
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
                    " next_attempt, created, updated) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        batch_id,
                        destination,
                        json.dumps(routes),
                        json.dumps(transforms),
                        DeliveryState.PENDING,
                        now,
                        now,
                        now,
                    ),
                )

    # --- housekeeping -------------------------------------------------------------------

    def spool_bytes(self) -> int:
        return int(self._rows("SELECT coalesce(sum(size), 0) AS n FROM instances")[0]["n"])

    def expired_batches(self, delivered_before: float) -> list[int]:
        """Batches whose work is finished and older than the retention period."""
        rows = self._rows(
            "SELECT b.id FROM batches b WHERE b.completed_at<=? AND ("
            " b.state IN (?, ?) OR (b.state=? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.batch_id=b.id AND d.state!=?)))",
            (
                delivered_before,
                BatchState.FILTERED,
                BatchState.UNROUTED,
                BatchState.ROUTED,
                DeliveryState.DELIVERED,
            ),
        )
        return [r["id"] for r in rows]

    def forget_instances(self, batch_id: int) -> list[Path]:
        """Drop a finished batch's instances from the journal; return their spool files."""
        with self._transaction() as db:
            paths = [
                Path(r["path"])
                for r in db.execute("SELECT path FROM instances WHERE batch_id=?", (batch_id,))
            ]
            db.execute("DELETE FROM instances WHERE batch_id=?", (batch_id,))
            db.execute("UPDATE batches SET state=? WHERE id=?", (BatchState.EXPIRED, batch_id))
        return paths

    def instance_count(self) -> int:
        """Instances journaled (and so in the spool)."""
        return int(self._rows("SELECT count(*) AS n FROM instances")[0]["n"])
