"""The states the journal records, as enums whose values are the text stored (and shown by
``station status --json`` and ``station trace --json``)."""

from __future__ import annotations

from enum import StrEnum


class BatchState(StrEnum):
    """Where a series batch is: ``open`` -> ``complete`` -> ``routed``, ``filtered``,
    ``unrouted`` or ``quarantined``; a finished batch whose files left the spool after
    ``storage.retention_hours`` is ``expired``."""

    OPEN = "open"  # collecting instances until the series' quiet period is over
    COMPLETE = "complete"  # waiting for the router
    ROUTED = "routed"  # deliveries created
    FILTERED = "filtered"  # a plugin dropped it
    UNROUTED = "unrouted"  # no route matched
    QUARANTINED = "quarantined"  # a plugin or the router failed; station retry re-routes it
    EXPIRED = "expired"  # done, its instances removed from the spool


class DeliveryState(StrEnum):
    """Where the delivery of a batch to one destination is: ``pending`` -> ``delivered`` or
    ``dead_letter`` (``station retry`` makes it ``pending`` again)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"


class QuarantineState(StrEnum):
    """Where a rejected input is: ``held`` until released, discarded, or gone (a file held
    in place that was removed or changed)."""

    HELD = "held"
    RELEASED = "released"
    DISCARDED = "discarded"
    GONE = "gone"
