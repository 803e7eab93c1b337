"""What the journal tells about itself: the counts and recent troubles ``station status``
shows, the history ``station trace`` shows, and the quarantine's rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from station.store.journal.database import Database, batch_from_row, delivery_from_row
from station.store.records import (
    Batch,
    DeadLetter,
    Delivery,
    Event,
    Failure,
    InstanceWarning,
    NotSent,
    QuarantinedSeries,
    QuarantineItem,
    Sender,
)
from station.store.states import BatchState, DeliveryState, QuarantineState

# The number of instances a batch (``b``) still has in the journal, as a column.
_INSTANCES = "(SELECT count(*) FROM instances i WHERE i.batch_id=b.id) AS n"


class Reports(Database):
    """Reads for status and trace, and the quarantine's rows."""

    # --- status -------------------------------------------------------------------------

    def batch_counts(self) -> dict[BatchState, int]:
        """Series batches per state."""
        rows = self._rows("SELECT state, count(*) AS n FROM batches GROUP BY state")
        return {BatchState(r["state"]): r["n"] for r in rows}

    def delivery_counts(self) -> dict[str, dict[DeliveryState, int]]:
        """Deliveries per destination and state."""
        counts: dict[str, dict[DeliveryState, int]] = {}
        for r in self._rows(
            "SELECT destination, state, count(*) AS n FROM deliveries GROUP BY destination, state"
        ):
            counts.setdefault(r["destination"], {})[DeliveryState(r["state"])] = r["n"]
        return counts

    def dead_letters(self) -> list[DeadLetter]:
        """Dead-lettered deliveries, latest first."""
        rows = self._rows(
            "SELECT d.id, d.destination, d.attempts, d.last_error, d.updated, b.series_uid,"
            f" b.study_uid, {_INSTANCES},"
            " (SELECT count(*) FROM instance_failures f WHERE f.delivery_id=d.id) AS failed"
            " FROM deliveries d JOIN batches b ON b.id=d.batch_id WHERE d.state=?"
            " ORDER BY d.updated DESC",
            (DeliveryState.DEAD_LETTER,),
        )
        return [DeadLetter(**dict(r)) for r in rows]

    def quarantined_series(self) -> list[QuarantinedSeries]:
        """Series batches in quarantine, latest first."""
        rows = self._rows(
            f"SELECT b.id, b.series_uid, b.study_uid, b.reason, b.completed_at, {_INSTANCES}"
            " FROM batches b WHERE state=? ORDER BY b.completed_at DESC",
            (BatchState.QUARANTINED,),
        )
        return [QuarantinedSeries(**dict(r)) for r in rows]

    def recent_failures(self, limit: int) -> list[Failure]:
        """The ``limit`` deliveries that failed last (pending a retry, or dead-lettered)."""
        rows = self._rows(
            "SELECT d.destination, d.attempts, d.last_error, d.updated, d.state,"
            " d.next_attempt, b.series_uid"
            " FROM deliveries d JOIN batches b ON b.id=d.batch_id"
            " WHERE d.last_error IS NOT NULL ORDER BY d.updated DESC LIMIT ?",
            (limit,),
        )
        return [Failure(**{**dict(r), "state": DeliveryState(r["state"])}) for r in rows]

    def recent_warnings(self, limit: int) -> list[InstanceWarning]:
        """The last ``limit`` instances a destination took with a warning status."""
        rows = self._rows(
            "SELECT d.destination, w.sop_uid, w.status, w.comment, w.at, b.series_uid"
            " FROM instance_warnings w JOIN deliveries d ON d.id=w.delivery_id"
            " JOIN batches b ON b.id=d.batch_id ORDER BY w.at DESC LIMIT ?",
            (limit,),
        )
        return [InstanceWarning(**dict(r)) for r in rows]

    def recent_not_sent(self, limit: int) -> list[NotSent]:
        """The last ``limit`` series batches filtered or unrouted."""
        rows = self._rows(
            f"SELECT b.series_uid, b.study_uid, b.state, b.reason, b.completed_at, {_INSTANCES}"
            " FROM batches b WHERE b.state IN (?, ?) ORDER BY b.completed_at DESC LIMIT ?",
            (BatchState.FILTERED, BatchState.UNROUTED, limit),
        )
        return [NotSent(**{**dict(r), "state": BatchState(r["state"])}) for r in rows]

    # --- trace --------------------------------------------------------------------------

    def batches_of(self, uid: str) -> list[Batch]:
        """The batches of a study or series ``uid``, or the one holding instance ``uid``
        (while it is kept), oldest first."""
        rows = self._rows(
            "SELECT * FROM batches WHERE study_uid=? OR series_uid=?"
            " OR id IN (SELECT batch_id FROM instances WHERE sop_uid=?) ORDER BY id",
            (uid, uid, uid),
        )
        return [batch_from_row(r) for r in rows]

    def deliveries_of(self, batch_id: int) -> list[Delivery]:
        rows = self._rows("SELECT * FROM deliveries WHERE batch_id=? ORDER BY id", (batch_id,))
        return [delivery_from_row(r) for r in rows]

    def events_of(self, batch_id: int) -> list[Event]:
        """A batch's audit trail, oldest first."""
        rows = self._rows(
            "SELECT ts, kind, detail FROM events WHERE batch_id=? ORDER BY ts, id", (batch_id,)
        )
        return [Event(r["ts"], r["kind"], r["detail"] or "") for r in rows]

    def senders_of(self, batch_id: int) -> list[Sender]:
        rows = self._rows(
            "SELECT calling_ae, called_ae, peer, source, count(*) AS n, sum(size) AS bytes,"
            " min(received_at) AS first, max(received_at) AS last FROM instances"
            " WHERE batch_id=? GROUP BY calling_ae, called_ae, peer, source ORDER BY first",
            (batch_id,),
        )
        return [Sender(**dict(r)) for r in rows]

    # --- quarantine ---------------------------------------------------------------------

    def add_quarantine_item(
        self,
        kind: str,
        reason: str,
        detail: str,
        source: str,
        watch: Path | None,
        path: Path | None,
        size: int,
        mtime_ns: int,
        at: float,
    ) -> int:
        """Journal a rejected input, held; return its item number."""
        with self._transaction() as db:
            item_id = db.execute(
                "INSERT INTO quarantine (kind, reason, detail, source, watch, path, size,"
                " mtime_ns, at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    kind,
                    reason,
                    detail,
                    source,
                    None if watch is None else str(watch),
                    None if path is None else str(path),
                    size,
                    mtime_ns,
                    at,
                ),
            ).lastrowid
        assert item_id is not None
        return item_id

    def quarantine_item(self, item_id: int) -> QuarantineItem | None:
        rows = self._rows("SELECT * FROM quarantine WHERE id=?", (item_id,))
        return _item(rows[0]) if rows else None

    def quarantine_items(self, state: QuarantineState | None) -> list[QuarantineItem]:
        """Quarantine items in ``state`` (None: all), oldest first."""
        if state is None:
            return [_item(r) for r in self._rows("SELECT * FROM quarantine ORDER BY id")]
        rows = self._rows("SELECT * FROM quarantine WHERE state=? ORDER BY id", (state,))
        return [_item(r) for r in rows]

    def quarantine_paths(self) -> set[str]:
        """Where quarantine items are held (in any state)."""
        return {r["path"] for r in self._rows("SELECT path FROM quarantine WHERE path IS NOT NULL")}

    def held_in_place(self, source: str, size: int, mtime_ns: int) -> bool:
        """Whether ``source``, of this size and mtime, is held where it was found."""
        rows = self._rows(
            "SELECT 1 FROM quarantine WHERE state=? AND path IS NULL AND source=?"
            " AND size=? AND mtime_ns=?",
            (QuarantineState.HELD, source, size, mtime_ns),
        )
        return bool(rows)

    def quarantine_counts(self) -> dict[str, int]:
        """Held items per kind present, and quarantined series batches as ``series``."""
        rows = self._rows(
            "SELECT kind, count(*) AS n FROM quarantine WHERE state=? GROUP BY kind",
            (QuarantineState.HELD,),
        )
        counts = {r["kind"]: r["n"] for r in rows}
        counts["series"] = self._rows(
            "SELECT count(*) AS n FROM batches WHERE state=?", (BatchState.QUARANTINED,)
        )[0]["n"]
        return counts

    def resolve_quarantine_items(self, ids: list[int], state: QuarantineState, at: float) -> None:
        """Mark items released, discarded or gone."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE quarantine SET state=?, resolved_at=? WHERE id=?",
                [(state, at, item_id) for item_id in ids],
            )


def _item(row: sqlite3.Row) -> QuarantineItem:
    return QuarantineItem(**{**dict(row), "state": QuarantineState(row["state"])})
