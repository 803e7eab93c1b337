"""Series assembly and the read-only view of a series that plugins and routes see.

Instances are journaled into the open batch of their series as they arrive. A batch is
complete after ``quiet_seconds`` without a new instance, or ``max_wait_seconds`` after its
first one; instances arriving later open a new batch of the same series.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.dataset import Dataset

from station.dicom.identify import read_header
from station.store.journal import Journal
from station.store.records import Batch
from station.store.states import BatchState

log = logging.getLogger(__name__)
RETRY_SECONDS = 1.0  # after a failed pass: a full disk or broken journal is not hammered


@dataclass(frozen=True)
class SeriesView:
    """A completed series batch, as plugins and routes see it. Read-only."""

    study_uid: str
    series_uid: str
    batch_id: int
    calling_ae: str
    called_ae: str
    peer: str
    source: str
    instance_count: int
    header: Dataset = field(repr=False)
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    paths: tuple[Path, ...] = field(default=(), repr=False)

    def get(self, keyword: str, default: Any = None) -> Any:
        """A tag of the first instance's header by keyword (``"Modality"``), or ``default``."""
        return self.header.get(keyword, default)

    def files(self) -> tuple[Path, ...]:
        """The spool files of this batch (read them; never modify them)."""
        return self.paths

    def datasets(self, stop_before_pixels: bool = True) -> Iterator[Dataset]:
        """Each instance read from the spool, lazily; headers only unless asked for pixels."""
        from pydicom import dcmread

        for path in self.paths:
            yield dcmread(path, stop_before_pixels=stop_before_pixels)

    def with_labels(self, labels: Mapping[str, str]) -> SeriesView:
        return replace(self, labels=MappingProxyType(dict(labels)))

    @classmethod
    def from_batch(cls, batch: Batch, paths: list[Path]) -> SeriesView:
        header = read_header(paths[0]) if paths else Dataset()
        return cls(
            study_uid=batch.study_uid,
            series_uid=batch.series_uid,
            batch_id=batch.id,
            calling_ae=batch.calling_ae,
            called_ae=batch.called_ae,
            peer=batch.peer,
            source=batch.source,
            instance_count=len(paths),
            header=header,
            labels=MappingProxyType(dict(batch.labels)),
            paths=tuple(paths),
        )


class Assembler:
    """Closes batches whose quiet period (or maximum wait) is over and hands them on
    (``on_complete``, to the routing workers), never deciding one itself."""

    def __init__(
        self,
        journal: Journal,
        quiet_seconds: float,
        max_wait_seconds: float,
        on_complete: Callable[[int], None],
        poll_seconds: float = 0.05,
        on_closed: Callable[[int], None] | None = None,
    ) -> None:
        self.journal = journal
        self.quiet = quiet_seconds
        self.max_wait = max_wait_seconds
        self.on_complete = on_complete
        self.on_closed = on_closed
        self.poll = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="assembler", daemon=True)
        self._turned = time.monotonic()

    def start(self) -> None:
        self._turned = time.monotonic()
        self._thread.start()

    def idle_for(self) -> float:
        """Seconds since the loop last began a pass (for the watchdog: a journal write that
        hangs stops it turning; hooks run on the routing workers, not here)."""
        return time.monotonic() - self._turned

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def close_due(self, now: float | None = None) -> list[int]:
        """Complete the batches that are due, then hand on every complete batch (those just
        closed, those left complete by a crash, and quarantined ones re-queued by retry)."""
        now = time.time() if now is None else now
        closed = self.journal.close_quiet_batches(now - self.quiet, now - self.max_wait)
        if self.on_closed:
            self.on_closed(len(closed))
        ids = self.journal.batches_in_state(BatchState.COMPLETE)
        for batch_id in ids:
            self.on_complete(batch_id)
        return ids

    def _run(self) -> None:
        while not self._stop.is_set():
            self._turned = time.monotonic()
            try:
                self.close_due()
            except sqlite3.OperationalError as exc:  # disk full, journal locked too long
                log.error("series assembly cannot write the journal: %s; retrying", exc)
                self._stop.wait(RETRY_SECONDS)
                continue
            except Exception:
                log.exception("series assembly failed; retrying")
                self._stop.wait(RETRY_SECONDS)
                continue
            deadline = self.journal.next_open_deadline(self.quiet, self.max_wait)
            wait = self.poll if deadline is None else min(1.0, max(0.0, deadline - time.time()))
            self._stop.wait(max(wait, 0.01))
