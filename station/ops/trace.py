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
from station.store.records import Batch, Delivery, Event, Sender
from station.store.states import BatchState, DeliveryState


@dataclass(frozen=True)
class History:
    batch: Batch
    senders: list[Sender]
    events: list[Event]
    deliveries: list[Delivery]
    refused: dict[str, dict[str, str]]  # destination -> SOP Instance UID -> reason
    # destination -> SOP Instance UID -> (warning status, Error Comment): sent, visibly so
    warned: dict[str, dict[str, tuple[int, str]]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": asdict(self.batch),
            "senders": [asdict(s) for s in self.senders],
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
    for batch in journal.batches_of(uid):
        deliveries = journal.deliveries_of(batch.id)
        refused = {d.destination: journal.failed_instances(d.id) for d in deliveries}
        warned = {d.destination: journal.warned_instances(d.id) for d in deliveries}
        histories.append(
            History(
                batch=batch,
                senders=journal.senders_of(batch.id),
                events=journal.events_of(batch.id),
                deliveries=deliveries,
                refused={name: failed for name, failed in refused.items() if failed},
                warned={name: found for name, found in warned.items() if found},
            )
        )
    return histories


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
                f"  received {s.n} instances ({s.bytes} bytes) {when(s.first)}"
                f" to {when(s.last)[11:]} from {s.calling_ae or '-'} ({s.peer})"
                f" to {s.called_ae} via {s.source}"
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
        BatchState.OPEN: "receiving (waiting for the series' quiet period)",
        BatchState.COMPLETE: "complete, waiting for the router",
        BatchState.ROUTED: "routed",
        BatchState.FILTERED: f"filtered: {batch.reason}",
        BatchState.UNROUTED: "unrouted: no route matched",
        BatchState.QUARANTINED: f"quarantined: {batch.reason} (station retry re-routes it)",
        BatchState.EXPIRED: "done, removed from the spool after storage.retention_hours",
    }[batch.state]
    return where + (f"; labels {labels}" if labels else "")


def _delivery_now(d: Delivery) -> str:
    attempts = f"{d.attempts} attempt{'s' if d.attempts != 1 else ''}"
    if d.state == DeliveryState.DELIVERED:
        return f"delivered after {attempts}"
    if d.state == DeliveryState.DEAD_LETTER:
        return f"dead letter after {attempts}: {d.last_error} (station retry re-queues it)"
    if d.attempts:
        return f"pending, next attempt {when(d.next_attempt)} after {attempts}: {d.last_error}"
    return "pending, not attempted yet"
