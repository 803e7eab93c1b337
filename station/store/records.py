"""What the journal records, as frozen values: instances, series batches, deliveries, audit
events, quarantined inputs, and the summaries ``station status`` and ``station trace`` show.

Field names of the summaries are the keys of their ``--json`` output."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from station.store.states import BatchState, DeliveryState, QuarantineState


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
    state: BatchState
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
    state: DeliveryState
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


@dataclass(frozen=True)
class QuarantineItem:
    """A rejected input (station/store/quarantine.py)."""

    id: int
    kind: str  # file, zip, member (of an accepted zip), link
    reason: str  # a short code, e.g. not_dicom, symlink, zip_limits
    detail: str  # what is wrong, in words
    source: str  # where it was found: a path, or "archive.zip:member"
    watch: str | None  # the drop folder it came from
    path: str | None  # where it is held, None when it could not be moved
    size: int | None
    mtime_ns: int | None
    at: float
    state: QuarantineState
    resolved_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sender:
    """Who sent a batch's instances (those still journaled), per calling AE, peer and
    source: how many, how many bytes, first and last received."""

    calling_ae: str | None
    called_ae: str | None
    peer: str | None
    source: str | None
    n: int
    bytes: int
    first: float
    last: float


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered delivery, with its series and instance counts."""

    id: int
    destination: str
    attempts: int
    last_error: str | None
    updated: float
    series_uid: str
    study_uid: str
    n: int  # instances in the batch
    failed: int  # instances the destination refused


@dataclass(frozen=True)
class QuarantinedSeries:
    """A series batch a plugin or the router failed on."""

    id: int
    series_uid: str
    study_uid: str
    reason: str | None
    completed_at: float | None
    n: int  # instances


@dataclass(frozen=True)
class Failure:
    """A delivery whose last attempt failed (pending a retry, or dead-lettered)."""

    destination: str
    attempts: int
    last_error: str
    updated: float
    state: DeliveryState
    next_attempt: float
    series_uid: str


@dataclass(frozen=True)
class InstanceWarning:
    """An instance a destination took with a warning status."""

    destination: str
    sop_uid: str
    status: int
    comment: str
    at: float
    series_uid: str


@dataclass(frozen=True)
class NotSent:
    """A series batch not sent on purpose: filtered or unrouted."""

    series_uid: str
    study_uid: str
    state: BatchState
    reason: str | None
    completed_at: float | None
    n: int  # instances
