"""``station trace UID``: the history of a study, a series or an instance, from the journal.

Per series batch: who sent it (calling AE, peer, source) and when, when it was complete,
what each plugin hook decided, which routes matched which destinations, every dispatch
attempt with its outcome and error, and where it is now.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from station.dicom.status import describe_status
from station.store.journal import Journal
from station.store.records import Batch, Delivery, Event, batch_from_row, delivery_from_row


@dataclass(frozen=True)
class History:
    batch: Batch
    senders: list[dict[str, Any]]
    events: list[Event]
    deliveries: list[Delivery]
    refused: dict[str, dict[str, str]]  # destination -> SOP Instance UID -> reason
    # destination -> SOP Instance UID -> (warning status, Error Comment): sent, visibly so
    warned: dict[str, dict[str, tuple[int, str]]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": asdict(self.batch),
            "senders": self.senders,
            "events": [asdict(e) for e in self.events],
            "deliveries": [asdict(d) for d in self.deliveries],
            "refused": self.refused,
            "warned": self.warned,
        }


def trace(journal: Journal, uid: str) -> list[History]:
    """Every batch of ``uid`` (Study, Series or SOP Instance UID), oldest first: the batches
    of a study or series, or the batch holding an instance (while it is kept:
    storage.retention_hours)."""
    histories = []
    batches = journal.query(
        "SELECT * FROM batches WHERE study_uid=? OR series_uid=?"
        " OR id IN (SELECT batch_id FROM instances WHERE sop_uid=?) ORDER BY id",
        (uid, uid, uid),
    )
    for batch in map(batch_from_row, batches):
        deliveries = [
            delivery_from_row(r)
            for r in journal.query(
                "SELECT * FROM deliveries WHERE batch_id=? ORDER BY id", (batch.id,)
            )
        ]
        refused = {d.destination: journal.failed_instances(d.id) for d in deliveries}
        warned = {d.destination: journal.warned_instances(d.id) for d in deliveries}
        histories.append(
            History(
                batch=batch,
                senders=_senders(journal, batch.id),
                events=[
                    Event(r["ts"], r["kind"], r["detail"] or "")
                    for r in journal.query(
                        "SELECT ts, kind, detail FROM events WHERE batch_id=? ORDER BY ts, id",
                        (batch.id,),
                    )
                ],
                deliveries=deliveries,
                refused={name: failed for name, failed in refused.items() if failed},
                warned={name: found for name, found in warned.items() if found},
            )
        )
    return histories


def _senders(journal: Journal, batch_id: int) -> list[dict[str, Any]]:
    """Who sent a batch's instances (still journaled): per calling AE, peer and source, how
    many, how many bytes, first and last received."""
    rows = journal.query(
        "SELECT calling_ae, called_ae, peer, source, count(*) AS n, sum(size) AS bytes,"
        " min(received_at) AS first, max(received_at) AS last FROM instances"
        " WHERE batch_id=? GROUP BY calling_ae, called_ae, peer, source ORDER BY first",
        (batch_id,),
    )
    return [dict(r) for r in rows]


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def render(uid: str, histories: list[History]) -> str:
    lines = []
    for h in histories:
        b = h.batch
        holding = f", holding instance {uid}" if uid not in (b.study_uid, b.series_uid) else ""
        lines.append(f"series {b.series_uid} of study {b.study_uid} (batch {b.id}){holding}")
        for s in h.senders:
            lines.append(
                f"  received {s['n']} instances ({s['bytes']} bytes) {when(s['first'])}"
                f" to {when(s['last'])[11:]} from {s['calling_ae'] or '-'} ({s['peer']})"
                f" to {s['called_ae']} via {s['source']}"
            )
        for e in h.events:
            lines.append(f"  {when(e.ts)}  {e.kind:<11} {e.detail}")
        lines.append(f"  now: {_now(b)}")
        for d in h.deliveries:
            lines.append(f"    {d.destination}: {_delivery_now(d)} (routes: {', '.join(d.routes)})")
            for sop_uid, reason in sorted(h.refused.get(d.destination, {}).items()):
                lines.append(f"      refused instance {sop_uid}: {reason}")
            for sop_uid, (code, comment) in sorted(h.warned.get(d.destination, {}).items()):
                lines.append(
                    f"      warning for instance {sop_uid}: {describe_status(code, comment)}"
                )
        lines.append("")
    return "\n".join(lines).rstrip()


def _now(batch: Batch) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(batch.labels.items()))
    where = {
        "open": "receiving (waiting for the series' quiet period)",
        "complete": "complete, waiting for the router",
        "routed": "routed",
        "filtered": f"filtered: {batch.reason}",
        "unrouted": "unrouted: no route matched",
        "quarantined": f"quarantined: {batch.reason} (station retry re-routes it)",
        "expired": "done, removed from the spool after storage.retention_hours",
    }.get(batch.state, batch.state)
    return where + (f"; labels {labels}" if labels else "")


def _delivery_now(d: Delivery) -> str:
    attempts = f"{d.attempts} attempt{'s' if d.attempts != 1 else ''}"
    if d.state == "delivered":
        return f"delivered after {attempts}"
    if d.state == "dead_letter":
        return f"dead letter after {attempts}: {d.last_error} (station retry re-queues it)"
    if d.attempts:
        return f"pending, next attempt {when(d.next_attempt)} after {attempts}: {d.last_error}"
    return "pending, not attempted yet"
