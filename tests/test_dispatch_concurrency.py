"""A destination takes ``max_associations`` series batches at once, each over its own
association, and never more; a delivery is claimed by one worker only.

End to end: ``station run`` sends to a pynetdicom Storage SCP in the test process that
counts the associations open at once and holds every C-STORE until the test lets go, so
the station's associations pile up to its limit while the rest of the queue waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import VALID, storescu, storescu_successes, wait_for
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from station.dispatch.dispatcher import Dispatcher
from station.ops.metrics import Metrics
from station.store.journal.sqlite import SQLiteJournal
from station.store.records import Received
from station.store.states import BatchState

SERIES = 3
HOLD_SECONDS = 60  # the longest a C-STORE is held: only if the test fails to let go


class HoldingSCP:
    """A pynetdicom Storage SCP recording how many associations are open at once (and the
    most ever), answering each C-STORE only once ``release`` is set."""

    def __init__(self) -> None:
        self.ae = AE(ae_title="HOLDER")
        self.ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.open = 0
        self.most = 0
        self.received: set[str] = set()

    def opened(self, event: Any) -> None:
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)

    def closed(self, event: Any) -> None:
        with self.lock:
            self.open -= 1

    def store(self, event: Any) -> int:
        self.release.wait(HOLD_SECONDS)
        with self.lock:
            self.received.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def start(self) -> int:
        handlers = [
            (evt.EVT_ESTABLISHED, self.opened),
            (evt.EVT_RELEASED, self.closed),
            (evt.EVT_ABORTED, self.closed),
            (evt.EVT_C_STORE, self.store),
        ]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        return int(self.server.socket.getsockname()[1])

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def holder() -> Iterator[tuple[HoldingSCP, int]]:
    scp = HoldingSCP()
    port = scp.start()
    try:
        yield scp, port
    finally:
        scp.stop()


def series_files(folder: Path, count: int) -> list[Path]:
    """``count`` series of two CT instances each, new UIDs, in one study."""
    folder.mkdir()
    study = generate_uid()
    files = []
    for s in range(count):
        series = generate_uid()
        for i in range(2):
            ds = dcmread(VALID / "CT_small.dcm")
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            path = folder / f"{s}-{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


@pytest.mark.e2e
@pytest.mark.parametrize("limit", [2, 1])
def test_a_destination_takes_its_max_associations_at_once(limit, holder, start_station, tmp_path):
    scp, port = holder
    destination = {
        "type": "dicom",
        "host": "127.0.0.1",
        "port": port,
        "ae_title": "HOLDER",
        "max_associations": limit,
    }
    station = start_station({"destinations": {"pacs": destination}})
    files = series_files(tmp_path / "in", SERIES)
    sent = storescu(station.port, files, extra=("-v",))
    assert storescu_successes(sent) == len(files), sent.stderr
    wait_for(lambda: scp.open == limit, 30, message=f"{limit} associations open")
    wait_for(
        lambda: station.metric("station_queue_series", destination="pacs") == SERIES,
        30,
        message="every series queued while the peer holds the first",
    )
    assert scp.most == limit
    scp.release.set()
    wait_for(lambda: len(scp.received) == len(files), 60, message="every instance to arrive")
    wait_for(
        lambda: station.metric("station_queue_series", destination="pacs") == 0,
        30,
        message="the queue to empty",
    )
    assert scp.most == limit
    attempts = station.metric(
        "station_dispatch_attempts_total", destination="pacs", outcome="success"
    )
    assert attempts == SERIES


def queued(journal: SQLiteJournal, tmp_path: Path, count: int) -> list[int]:
    """``count`` routed series batches of one instance each, due to ``pacs``; their
    delivery ids, oldest first."""
    ids = []
    for n in range(count):
        series = generate_uid()
        received = Received(
            generate_uid(),
            "1.2.3",
            series,
            CTImageStorage,
            "1.2.840.10008.1.2.1",
            tmp_path / f"{n}.dcm",
            1,
            "MODALITY",
            "STATION",
            "127.0.0.1:1",
            "scp",
        )
        batch_id, _ = journal.record_instance(received, now=float(n))
        journal.finish_batch(batch_id, BatchState.ROUTED, None, {}, [("pacs", ("r",), ())])
        ids.append(journal.deliveries_of(batch_id)[0].id)
    return ids


def test_a_claimed_delivery_is_offered_to_no_other_worker(tmp_path):
    """Each claim takes the earliest due delivery nobody holds; with all held, none is
    offered and no due time either (a worker waits instead of spinning); a released one
    is offered again."""
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    try:
        ids = queued(journal, tmp_path, 3)
        dispatcher = Dispatcher(journal, {"pacs": None}, {}, None, Metrics(), {"pacs": 3})
        taken = [dispatcher.claim("pacs") for _ in range(3)]
        assert [delivery.id for delivery, _ in taken] == ids
        assert dispatcher.claim("pacs") == (None, None)
        dispatcher.release(taken[1][0])
        again, _ = dispatcher.claim("pacs")
        assert again is not None and again.id == ids[1]
    finally:
        journal.close()
