"""What every destination type provides, built-in or from a plugin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset

from station.store.records import Instance

# Turns a spooled instance into the data set to send, for routes with transforms; None
# means send the spool file as it is.
Prepare = Callable[[Instance], Dataset] | None


@dataclass
class SendResult:
    """Outcome of sending one batch: how many were confirmed, and which were refused."""

    sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> reason
    # Sent, but the peer answered with a warning status: SOP Instance UID -> (status, its
    # Error Comment). Counted in ``sent`` too.
    warnings: dict[str, tuple[int, str]] = field(default_factory=dict)


class Destination(Protocol):
    """A place series batches are sent to.

    ``send`` either returns a SendResult (per-instance permanent failures in ``failed``)
    or raises ``TransientSendError`` when the whole batch should be tried again later.
    """

    name: str

    def send(self, instances: list[Instance], prepare: Prepare) -> SendResult: ...

