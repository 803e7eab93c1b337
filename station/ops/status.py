"""``station status``: what is queued, dead-lettered, quarantined or set aside, and why."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from station.dicom.status import describe_status
from station.store.journal import Journal
from station.store.states import DeliveryState, QuarantineState


def status_report(journal: Journal, recent: int = 10) -> dict[str, Any]:
    """Everything ``station status`` shows, as plain data."""
    return {
        "series": journal.batch_counts(),
        "destinations": journal.delivery_counts(),
        "dead_letters": [asdict(d) for d in journal.dead_letters()],
        "quarantined": [asdict(q) for q in journal.quarantined_series()],
        "quarantined_inputs": [
            item.as_dict() for item in journal.quarantine_items(QuarantineState.HELD)
        ],
        "recent_failures": [asdict(f) for f in journal.recent_failures(recent)],
        "recent_warnings": [asdict(w) for w in journal.recent_warnings(recent)],
        "recent_not_sent": [asdict(b) for b in journal.recent_not_sent(recent)],
    }


def render_status(state: dict[str, Any]) -> str:
    """The human-readable form of status_report()."""
    out: list[str] = []
    series = state["series"]
    out.append("series: " + (", ".join(f"{n} {s}" for s, n in sorted(series.items())) or "none"))
    out.append(f"{'destination':<20} {'pending':>8} {'delivered':>10} {'dead letter':>12}")
    for name, counts in sorted(state["destinations"].items()):
        out.append(
            f"{name:<20} {counts.get(DeliveryState.PENDING, 0):>8}"
            f" {counts.get(DeliveryState.DELIVERED, 0):>10}"
            f" {counts.get(DeliveryState.DEAD_LETTER, 0):>12}"
        )
    _section(
        out,
        "dead letters (station retry re-queues them)",
        state["dead_letters"],
        lambda d: (
            f"{d['destination']}: series {d['series_uid']} ({d['n']} instances, "
            f"{d['attempts']} attempts, {_ago(d['updated'])}): {d['last_error']}"
        ),
    )
    _section(
        out,
        "quarantined series (station retry re-routes them)",
        state["quarantined"],
        lambda q: (
            f"series {q['series_uid']} ({q['n']} instances, "
            f"{_ago(q['completed_at'])}): {q['reason']}"
        ),
    )
    if state["quarantined_inputs"]:
        out.append(
            "\nquarantined inputs (station quarantine release ID re-ingests, discard ID deletes):"
        )
        out.append(render_quarantine(state["quarantined_inputs"]))
    _section(
        out,
        "recent failures",
        state["recent_failures"],
        lambda f: (
            f"{_ago(f['updated'])} {f['destination']} series {f['series_uid']} "
            f"[{f['state']}, attempt {f['attempts']}{_next_try(f)}]: {f['last_error']}"
        ),
    )
    _section(
        out,
        "recent warnings (delivered, but the peer answered with a warning status)",
        state["recent_warnings"],
        lambda w: (
            f"{_ago(w['at'])} {w['destination']} series {w['series_uid']} instance "
            f"{w['sop_uid']}: {describe_status(w['status'], w['comment'])}"
        ),
    )
    _section(
        out,
        "recently not sent on purpose",
        state["recent_not_sent"],
        lambda b: (
            f"{_ago(b['completed_at'])} series {b['series_uid']} ({b['n']} "
            f"instances) {b['state']}: {b['reason']}"
        ),
    )
    return "\n".join(out)


def render_quarantine(items: list[dict[str, Any]]) -> str:
    """Quarantined inputs, one per line: item number, age, kind, reason, source, detail."""
    return "\n".join(
        f"  {i['id']:>5} {_ago(i['at'])} {i['kind']} {i['reason']}: {i['source']}"
        + (f" (held at {i['path']})" if i["path"] else " (left in place)")
        + f"\n        {i['detail']}"
        + (f" [{i['state']}]" if i["state"] != QuarantineState.HELD else "")
        for i in items
    )


def _section(
    out: list[str], title: str, rows: list[dict[str, Any]], line: Callable[[dict[str, Any]], str]
) -> None:
    if rows:
        out.append(f"\n{title}:")
        out.extend(f"  {line(row)}" for row in rows)


def _next_try(failure: dict[str, Any]) -> str:
    if failure["state"] != DeliveryState.PENDING:
        return ""
    return f", next try in {max(0.0, failure['next_attempt'] - time.time()):.0f}s"


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
