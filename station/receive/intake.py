"""The one way an instance enters the station, whichever door it came through: moved into
the spool durably, journaled into its series' open batch, counted."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from station.dicom.files import Header
from station.ops.metrics import Metrics
from station.store.journal import Journal
from station.store.records import Dropped, Received
from station.store.spool import Spool


@dataclass(frozen=True)
class Origin:
    """Who sent an instance: recorded with it, matched by routes."""

    calling_ae: str
    called_ae: str
    peer: str  # the sender's address, or the drop folder's path
    source: str  # scp or folder


class Intake:
    def __init__(self, spool: Spool, journal: Journal, metrics: Metrics) -> None:
        self.spool = spool
        self.journal = journal
        self.metrics = metrics

    def take(
        self,
        incoming: Path,
        header: Header,
        origin: Origin,
        dropped: Dropped | None = None,
        durable: bool = False,
    ) -> Path:
        """Make ``incoming`` (a file claimed from the spool, written whole) durable (unless
        its writer did: ``durable``) and journal it; when this returns, the instance may be
        acknowledged. ``dropped`` names the drop-folder file it came from, remembered in the
        same transaction. When the disk is full (or fails) at either step, the file is
        removed and RejectedInstance (0xA700) raised."""
        size = incoming.stat().st_size
        try:
            if not durable:
                self.spool.commit(incoming)
        except OSError as exc:
            raise self.spool.refuse(incoming, exc, "make the spool file durable") from exc
        stored = incoming
        received = Received(
            sop_uid=header.sop_uid,
            study_uid=header.study_uid,
            series_uid=header.series_uid,
            sop_class=header.sop_class,
            transfer_syntax=header.transfer_syntax,
            path=stored,
            size=size,
            calling_ae=origin.calling_ae,
            called_ae=origin.called_ae,
            peer=origin.peer,
            source=origin.source,
        )
        try:
            _batch, stale = self.journal.record_instance(received, dropped=dropped)
        except sqlite3.OperationalError as exc:  # disk full or an I/O error at the commit
            raise self.spool.refuse(incoming, exc, "journal the instance") from exc
        if stale is not None:
            self.spool.remove(stale)
        calling = self.metrics.calling_ae_label(origin.calling_ae)
        self.metrics.instances_received.labels(origin.source, calling).inc()
        self.metrics.received_bytes.labels(origin.source).inc(size)
        return stored
