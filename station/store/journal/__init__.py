"""The journal: the single owner of the station's state.

Files in the spool are content only; what has been received, which batch of which series it
belongs to, where it must go and how each attempt went lives here. A row is committed
before anything is acknowledged, so after a crash the journal says what is left to do.

Batch states (BatchState): ``open`` (collecting) -> ``complete`` (quiet period over, waiting
for the router) -> ``routed`` (deliveries created) or ``filtered`` / ``unrouted`` /
``quarantined``; ``expired`` once its files left the spool. Delivery states
(DeliveryState): ``pending`` -> ``delivered`` or ``dead_letter``.

``Journal`` is the interface the rest of the station uses; ``sqlite.SQLiteJournal`` is the
embedded backend, ``schema`` its tables and migrations. A backend for several machines
(PostgreSQL) implements the same methods. No caller writes SQL.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

from station.store.records import (
    Batch,
    DeadLetter,
    Delivery,
    Dropped,
    Event,
    Failure,
    Instance,
    InstanceWarning,
    NotSent,
    QuarantinedSeries,
    QuarantineItem,
    Received,
    Sender,
)
from station.store.states import BatchState, DeliveryState, QuarantineState


class Journal(Protocol):
    """What the station asks of its journal, per stage. Writes are atomic; reads return
    frozen records (station/store/records.py)."""

    def close(self) -> None: ...

    # --- receiving ----------------------------------------------------------------------

    def record_instance(
        self, item: Received, now: float | None = None, dropped: Dropped | None = None
    ) -> tuple[int, Path | None]:
        """Journal a spooled instance into the open batch of its series (opening one), and
        the drop-folder file it came from, if any, at once. Return the batch id and the
        path the same SOP Instance UID was stored under before, if another."""

    def mark_dropped(self, dropped: Dropped, outcome: str) -> None:
        """Remember a drop-folder file as taken (a restart does not take it again)."""

    def was_dropped(self, dropped: Dropped) -> bool: ...

    def prune_dropped(self) -> int:
        """Forget taken files no longer where they were taken from; return how many."""

    def known_paths(self) -> set[str]:
        """The spool files of every journaled instance."""

    # --- series assembly and routing ----------------------------------------------------

    def close_quiet_batches(self, quiet_before: float, opened_before: float) -> list[int]:
        """Complete the open batches whose quiet period or maximum wait is over."""

    def next_open_deadline(self, quiet: float, max_wait: float) -> float | None: ...

    def batches_in_state(self, state: BatchState) -> list[int]:
        """Ids of the batches in ``state``."""

    def batch(self, batch_id: int) -> Batch: ...

    def instances(self, batch_id: int) -> list[Instance]: ...

    def finish_batch(
        self,
        batch_id: int,
        state: BatchState,
        reason: str | None,
        labels: dict[str, str],
        deliveries: Sequence[tuple[str, tuple[str, ...], tuple[dict[str, Any], ...]]] = (),
        hooks: Sequence[str] = (),
    ) -> None:
        """Record the router's decision, what each plugin hook
        decided, and the deliveries (destination, routes, transforms) it created."""

    # --- dispatch -----------------------------------------------------------------------

    def due_deliveries(
        self, destination: str, now: float, limit: int, exclude: Collection[int] = ()
    ) -> list[Delivery]:
        """Pending deliveries to ``destination`` due by ``now``, earliest first, except the
        ids in ``exclude`` (those the dispatcher's workers hold)."""

    def next_due(self, destination: str, exclude: Collection[int] = ()) -> float | None:
        """When the earliest pending delivery to ``destination`` outside ``exclude`` is due."""

    def failed_instances(self, delivery_id: int) -> dict[str, str]:
        """Instances the destination refused: SOP Instance UID -> reason."""

    def warned_instances(self, delivery_id: int) -> dict[str, tuple[int, str]]:
        """Instances the destination took with a warning: SOP UID -> (status, comment)."""

    def record_attempt(
        self,
        delivery: Delivery,
        outcome: str,
        error: str | None,
        next_attempt: float | None = None,
        failures: dict[str, str] | None = None,
        warnings: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        """Record one dispatch attempt; ``outcome``: success, retry or dead_letter."""

    def retry_dead_letters(
        self, destination: str | None = None, series_uid: str | None = None
    ) -> int:
        """Re-queue dead letters (and, without ``destination``, quarantined batches)."""

    # --- housekeeping -------------------------------------------------------------------

    def queue_counts(self) -> dict[tuple[str, DeliveryState], int]:
        """Pending and dead-lettered deliveries per (destination, state)."""

    def spool_bytes(self) -> int: ...

    def instance_count(self) -> int: ...

    def expired_batches(self, delivered_before: float) -> list[int]:
        """Batches whose work is finished and older than ``delivered_before``."""

    def forget_instances(self, batch_id: int) -> list[Path]:
        """Drop an expired batch's instances; return their spool files."""

    # --- status -------------------------------------------------------------------------

    def batch_counts(self) -> dict[BatchState, int]: ...

    def delivery_counts(self) -> dict[str, dict[DeliveryState, int]]:
        """Deliveries per destination and state."""

    def dead_letters(self) -> list[DeadLetter]:
        """Latest first."""

    def quarantined_series(self) -> list[QuarantinedSeries]:
        """Latest first."""

    def recent_failures(self, limit: int) -> list[Failure]: ...

    def recent_warnings(self, limit: int) -> list[InstanceWarning]: ...

    def recent_not_sent(self, limit: int) -> list[NotSent]:
        """Filtered and unrouted batches, latest first."""

    # --- trace --------------------------------------------------------------------------

    def batches_of(self, uid: str) -> list[Batch]:
        """Batches of a Study or Series UID, or holding a (kept) instance; oldest first."""

    def deliveries_of(self, batch_id: int) -> list[Delivery]: ...

    def events_of(self, batch_id: int) -> list[Event]: ...

    def senders_of(self, batch_id: int) -> list[Sender]: ...

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
        """Journal a rejected input as held (``path`` None: left in place); return its id."""

    def quarantine_item(self, item_id: int) -> QuarantineItem | None: ...

    def quarantine_items(self, state: QuarantineState | None) -> list[QuarantineItem]:
        """Items in ``state`` (None: all), oldest first."""

    def quarantine_paths(self) -> set[str]: ...

    def held_in_place(self, source: str, size: int, mtime_ns: int) -> bool: ...

    def quarantine_counts(self) -> dict[str, int]:
        """Held items per kind, and quarantined series batches as ``series``."""

    def resolve_quarantine_items(
        self, ids: list[int], state: QuarantineState, at: float
    ) -> None: ...
