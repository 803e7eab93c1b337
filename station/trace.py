"""``station trace UID``: the history of a study, a series or an instance, from the journal.

Per series batch: who sent it (calling AE, peer, source) and when, when it was complete,
what each plugin hook decided, which routes matched which destinations, every dispatch
attempt with its outcome and error, and where it is now.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from station.journal import Batch, Delivery, Event, Journal


@dataclass(frozen=True)
class History:
    batch: Batch
    senders: list[dict[str, Any]]
    events: list[Event]
    deliveries: list[Delivery]
    refused: dict[str, dict[str, str]]  # destination -> SOP Instance UID -> reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": asdict(self.batch),
            "senders": self.senders,
            "events": [asdict(e) for e in self.events],
            "deliveries": [asdict(d) for d in self.deliveries],
            "refused": self.refused,
        }


def trace(journal: Journal, uid: str) -> list[History]:
    """Every batch of ``uid`` (Study, Series or SOP Instance UID), oldest first."""
    histories = []
    for batch in journal.batches_for(uid):
        deliveries = journal.deliveries(batch.id)
        refused = {d.destination: journal.failed_instances(d.id) for d in deliveries}
        histories.append(
            History(
                batch=batch,
                senders=journal.senders(batch.id),
                events=journal.events(batch.id),
                deliveries=deliveries,
                refused={name: failed for name, failed in refused.items() if failed},
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
