"""What the journal records, as frozen values: instances, series batches, deliveries and
audit events, and the rows they are read from."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Instance:
    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class: str
    transfer_syntax: str
    path: Path
    size: int


@dataclass(frozen=True)
class Batch:
    id: int
    study_uid: str
    series_uid: str
    state: str
    first_received: float
    last_received: float
    calling_ae: str
    called_ae: str
    peer: str
    source: str
    labels: dict[str, str]
    reason: str | None


@dataclass(frozen=True)
class Delivery:
    id: int
    batch_id: int
    destination: str
    routes: tuple[str, ...]
    transforms: tuple[dict[str, Any], ...]
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    only_failed: bool


@dataclass(frozen=True)
class Event:
    """One entry of a batch's audit trail."""

    ts: float
    kind: str  # opened, completed, hook, routed/filtered/unrouted/quarantined, attempt, requeued
    detail: str


@dataclass(frozen=True)
class Received(Instance):
    """An instance already in the spool, with who sent it, as the receive path journals it."""

    calling_ae: str
    called_ae: str
    peer: str
    source: str


@dataclass(frozen=True)
class Dropped:
    """A file taken from a drop folder, as it was when taken."""

    path: Path
    size: int
    mtime_ns: int


def batch_from_row(row: sqlite3.Row) -> Batch:
    return Batch(
        id=row["id"],
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        state=row["state"],
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
        state=row["state"],
        attempts=row["attempts"],
        next_attempt=row["next_attempt"],
        last_error=row["last_error"],
        only_failed=bool(row["only_failed"]),
    )
