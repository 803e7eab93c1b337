"""The send side's reading of its peer, end to end: a permanent association rejection by a
real DCMTK peer dead-letters at once with PS3.8's reason, and a warning status with its
Error Comment from a pynetdicom SCP is delivered, visibly so, in `station status` and
`station trace`."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DCMTK_ENV, VALID, StationProcess, storescu, storescu_successes
from conftest import wait_for as wait_until
from peers import fixed_ports, listening_ports
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from station.dispatch.dicom import Peer, echo
from station.errors import TransientSendError

pytestmark = pytest.mark.e2e

DCMQRSCP = "/usr/bin/dcmqrscp"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[int]:
    """DCMTK's dcmqrscp knowing one AE title, ARCHIVE; it rejects any other called AE title
    (rejected-permanent, service-user, called-AE-title-not-recognized). Its port."""
    (tmp_path / "db").mkdir()
    config = tmp_path / "dcmqrscp.cfg"
    for port in fixed_ports():  # it cannot bind port 0: ports are tried until /proc shows it
        config.write_text(
            f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\nARCHIVE {tmp_path / 'db'} RW (10, 1024mb) ANY\nAETable END\n"
        )
        proc = subprocess.Popen(
            [DCMQRSCP, "-c", str(config), str(port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: proc.poll() is not None or port in listening_ports(proc.pid),  # noqa: B023
            10,
            message="dcmqrscp to listen",
        )
        if proc.poll() is None:
            break
    else:
        pytest.fail("dcmqrscp found no free port")
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def dead_letter_reason(station: StationProcess) -> str | None:
    shown = station.cli("status").stdout
    lines = [line for line in shown.splitlines() if line.startswith("  pacs: series")]
    return lines[0] if lines else None


def test_permanent_rejection_dead_letters_after_one_attempt(archive, start_station):
    retry = {"max_attempts": 5, "initial_seconds": 0.2, "max_seconds": 0.2}
    destination = {
        "type": "dicom",
        "host": "127.0.0.1",
        "port": archive,
        "ae_title": "WRONGAE",
        "retry": retry,
    }
    station = start_station({"destinations": {"pacs": destination}})
    sent = storescu(station.port, [VALID / "CT_small.dcm"], extra=("-v",))
    assert storescu_successes(sent) == 1, sent.stderr
    line = wait_until(lambda: dead_letter_reason(station), 20, message="the dead letter")
    assert "(1 instances, 1 attempts" in line, line
    assert (
        f"WRONGAE@127.0.0.1:{archive} rejected the association: rejected-permanent by the "
        "service-user: called-AE-title-not-recognized (result 1, source 1, reason 7)"
    ) in line, line
    assert "permanent: not retried" in line, line
    attempts = "station_dispatch_attempts_total"
    assert station.metric(attempts, destination="pacs", outcome="dead_letter") == 1
    assert station.metric(attempts, destination="pacs", outcome="retry") == 0


class WarningSCP:
    """A pynetdicom Storage SCP answering every C-STORE with 0xB000 and an Error Comment."""

    def __init__(self) -> None:
        self.ae = AE(ae_title="WARNER")
        self.ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.received: list[str] = []
        self.lock = threading.Lock()

    def handle(self, event: Any) -> Any:
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        answer = Dataset()
        answer.Status = 0xB000
        answer.ErrorComment = "PatientName coerced"
        return answer

    def start(self) -> int:
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.handle)]
        )
        return int(self.server.socket.getsockname()[1])

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def warner() -> Iterator[tuple[WarningSCP, int]]:
    scp = WarningSCP()
    port = scp.start()
    try:
        yield scp, port
    finally:
        scp.stop()


def test_a_warning_status_is_delivered_visibly(warner, start_station):
    scp, port = warner
    destination = {"type": "dicom", "host": "127.0.0.1", "port": port, "ae_title": "WARNER"}
    station = start_station({"destinations": {"pacs": destination}})
    sent = storescu(station.port, [VALID / "CT_small.dcm"], extra=("-v",))
    assert storescu_successes(sent) == 1, sent.stderr
    header = dcmread(VALID / "CT_small.dcm", stop_before_pixels=True)
    sop_uid, series_uid = str(header.SOPInstanceUID), str(header.SeriesInstanceUID)
    wanted = "0xB000 (coercion of data elements): PatientName coerced"

    def shown() -> str | None:
        text = station.cli("status").stdout
        return text if f"instance {sop_uid}: {wanted}" in text else None

    status = wait_until(shown, 20, message="the warning in station status")
    assert "recent warnings" in status and f"series {series_uid}" in status, status
    assert scp.received == [sop_uid]
    sent_metric = station.metric(
        "station_dispatch_instances_total", destination="pacs", outcome="sent"
    )
    assert sent_metric == 1
    traced = station.cli("trace", sop_uid)
    assert traced.returncode == 0, traced.stderr
    assert "pacs: delivered after 1 attempt" in traced.stdout, traced.stdout
    assert f"warning for instance {sop_uid}: {wanted}" in traced.stdout, traced.stdout


def test_transient_rejection_is_retried_not_dead_lettered(start_station):
    """A station busy at listen.max_associations answers rejected-transient: the send side
    says so and treats it as worth retrying."""
    busy = start_station({"listen": {"host": "127.0.0.1", "port": 0, "max_associations": 1}})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", busy.port, ae_title="STATION")
    assert held.is_established
    try:
        with pytest.raises(TransientSendError) as caught:
            echo(Peer("127.0.0.1", busy.port, "STATION", timeout_seconds=10))
    finally:
        held.release()
    assert (
        "rejected the association: rejected-transient by the service-provider (presentation): "
        "local-limit-exceeded (result 2, source 3, reason 2)"
    ) in str(caught.value)
