"""The journal's deliveries: one per (series batch, destination), with its attempts, the
instances a destination refused or warned about, dead letters and their retry."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any, cast

from station.store.journal.database import Database, delivery_from_row
from station.store.records import Delivery
from station.store.states import BatchState, DeliveryState


class Deliveries(Database):
    """Dispatch: what is due, each attempt's outcome, dead letters re-queued."""

    def due_deliveries(
        self, destination: str, now: float, limit: int, exclude: Collection[int] = ()
    ) -> list[Delivery]:
        rows = self._rows(
            "SELECT * FROM deliveries WHERE state=? AND destination=? AND next_attempt<=?"
            + _not_in(exclude)
            + " ORDER BY next_attempt, id LIMIT ?",
            (DeliveryState.PENDING, destination, now, *exclude, limit),
        )
        return [delivery_from_row(r) for r in rows]

    def next_due(self, destination: str, exclude: Collection[int] = ()) -> float | None:
        row = self._rows(
            "SELECT min(next_attempt) AS t FROM deliveries WHERE state=? AND destination=?"
            + _not_in(exclude),
            (DeliveryState.PENDING, destination, *exclude),
        )[0]
        return cast("float | None", row["t"])

    def failed_instances(self, delivery_id: int) -> dict[str, str]:
        rows = self._rows(
            "SELECT sop_uid, reason FROM instance_failures WHERE delivery_id=?", (delivery_id,)
        )
        return {r["sop_uid"]: r["reason"] for r in rows}

    def warned_instances(self, delivery_id: int) -> dict[str, tuple[int, str]]:
        """Instances the peer took with a warning status: SOP UID -> (status, comment)."""
        rows = self._rows(
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
        state = {
            "success": DeliveryState.DELIVERED,
            "retry": DeliveryState.PENDING,
            "dead_letter": DeliveryState.DEAD_LETTER,
        }[outcome]
        with self._transaction() as db:
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
        where = ["d.state=?"]
        args: list[str] = [DeliveryState.DEAD_LETTER]
        if destination:
            where.append("d.destination=?")
            args.append(destination)
        if series_uid:
            where.append("b.series_uid=?")
            args.append(series_uid)
        with self._transaction() as db:
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
                    "UPDATE deliveries SET state=?, attempts=0, next_attempt=?, updated=?,"
                    " only_failed=(SELECT count(*)>0 FROM instance_failures WHERE delivery_id=?)"
                    " WHERE id=?",
                    (DeliveryState.PENDING, now, now, delivery_id, delivery_id),
                )
                db.execute(
                    "INSERT INTO events (ts, batch_id, kind, detail) SELECT ?, batch_id,"
                    " 'requeued', destination FROM deliveries WHERE id=?",
                    (now, delivery_id),
                )
            batches = 0
            if not destination:
                sql = "SELECT id FROM batches WHERE state=?"
                qargs: tuple[Any, ...] = (BatchState.QUARANTINED,)
                if series_uid:
                    sql += " AND series_uid=?"
                    qargs += (series_uid,)
                quarantined = [r["id"] for r in db.execute(sql, qargs)]
                for batch_id in quarantined:
                    db.execute(
                        "UPDATE batches SET state=?, reason=NULL WHERE id=?",
                        (BatchState.COMPLETE, batch_id),
                    )
                    db.execute(
                        "INSERT INTO events (ts, batch_id, kind, detail) VALUES (?,?,?,?)",
                        (now, batch_id, "requeued", "quarantine released"),
                    )
                batches = len(quarantined)
        return len(ids) + batches

    def queue_counts(self) -> dict[tuple[str, DeliveryState], int]:
        """Pending and dead-lettered deliveries per (destination, state)."""
        rows = self._rows(
            "SELECT destination, state, count(*) AS n FROM deliveries"
            " WHERE state IN (?, ?) GROUP BY destination, state",
            (DeliveryState.PENDING, DeliveryState.DEAD_LETTER),
        )
        return {(r["destination"], DeliveryState(r["state"])): r["n"] for r in rows}


def _not_in(ids: Collection[int]) -> str:
    """The SQL condition leaving out the deliveries ``ids`` (their values bound after)."""
    return f" AND id NOT IN ({','.join('?' * len(ids))})" if ids else ""
