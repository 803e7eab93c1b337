"""A conformant, secure node (issue 13) on the wire: strict negotiation, access control, no
starvation by idle sockets, DICOM TLS. Against `station run` on 127.0.0.1, with DCMTK and
pynetdicom as peers and raw sockets for what they would never send."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DCMTK_ENV, ECHOSCU, VALID, StationProcess, storescu, storescu_successes
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role
from pynetdicom.pdu import A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.sop_class import CTImageStorage, Verification
from test_net import (
    COMMAND,
    LAST,
    RELEASE_RP,
    RELEASE_RQ,
    TIMEOUT,
    connect,
    context_results,
    dataset_bytes,
    hand_request,
    p_data,
    read_command,
    read_pdu,
    read_until_closed,
    store_command,
)

pytestmark = pytest.mark.e2e

CT = VALID / "CT_small.dcm"
PATIENT = "CompressedSamples^CT1"  # CT_small's patient name: never in the log
SOP_CLASS_NOT_SUPPORTED = 0x0122


@pytest.fixture
def folder_station(
    tmp_path: Path, start_station: Callable[..., StationProcess]
) -> Callable[..., StationProcess]:
    started: list[StationProcess] = []

    def start(**listen: object) -> StationProcess:
        station = start_station(
            {
                "listen": {"host": "127.0.0.1", "port": 0, **listen},
                "destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}},
            },
            f"station{len(started)}",  # a storage of its own: one station per storage
        )
        started.append(station)
        return station

    return start


def pynetdicom_request(**changes: object) -> bytes:
    """An A-ASSOCIATE-RQ encoded by pynetdicom (CT Image Storage, Explicit VR Little Endian,
    STATION called by MODALITY), with ``changes`` made to its PDU."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "STATION"
    context = build_context(CTImageStorage, ExplicitVRLittleEndian)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9"
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    for name, value in changes.items():
        setattr(pdu, name, value)
    return bytes(pdu.encode())


def rejection_of(station: StationProcess, request: bytes) -> tuple[int, int, int]:
    """Send ``request``; the A-ASSOCIATE-RJ's result, source and reason (pynetdicom decodes)."""
    with connect(station.port) as sock:
        sock.sendall(request)
        kind, body = read_pdu(sock)
    assert kind == 0x03, f"PDU type 0x{kind:02X}, expected A-ASSOCIATE-RJ"
    rj = A_ASSOCIATE_RJ()
    rj.decode(struct.pack(">BxI", kind, len(body)) + body)
    return rj.result, rj.source, rj.reason_diagnostic


def rejected(station: StationProcess, reason: str) -> float:
    return station.metric("station_associations_rejected_total", reason=reason)


# --- 1. strict negotiation ---------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2])
def test_protocol_version_other_than_1_is_rejected(folder_station, version: int) -> None:
    station = folder_station()
    request = pynetdicom_request(protocol_version=version)
    assert rejection_of(station, request) == (1, 2, 2)  # permanent, ACSE, version not supported
    assert rejected(station, "protocol_version") == 1
    storescu_stores_ct(station)


def test_another_application_context_is_rejected(folder_station) -> None:
    station = folder_station()
    request = pynetdicom_request().replace(b"1.2.840.10008.3.1.1.1", b"1.2.840.10008.3.1.1.9")
    assert rejection_of(station, request) == (1, 1, 2)  # permanent, user, context not supported
    assert rejected(station, "application_context") == 1


def test_unknown_transfer_syntax_is_refused_for_its_context(folder_station) -> None:
    station = folder_station()
    ct, explicit = CTImageStorage.encode(), ExplicitVRLittleEndian.encode()
    request = hand_request(b"STATION", b"RAWSCU", [(1, ct, [b"1.2.3.999"]), (3, ct, [explicit])])
    with connect(station.port) as sock:
        sock.sendall(request)
        kind, body = read_pdu(sock)
        assert kind == 0x02
        assert context_results(body) == {1: 4, 3: 0}  # 4: transfer syntaxes not supported
        sock.sendall(RELEASE_RQ)
        assert read_until_closed(sock) == RELEASE_RP


def test_an_scp_only_role_selection_gets_its_context_refused(folder_station) -> None:
    station = folder_station()
    ae = AE("MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    role = build_role(CTImageStorage, scu_role=False, scp_role=True)
    assoc = ae.associate("127.0.0.1", station.port, ae_title="STATION", ext_neg=[role])
    assert assoc.is_established
    try:
        assert [(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts] == [
            (CTImageStorage, 1)  # user rejection: neither side would have a role
        ]
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_a_c_store_on_another_sop_class_context_is_refused_with_0122(folder_station) -> None:
    """A CT sent on the Verification context: refused, nothing kept, association usable."""
    station = folder_station()
    verification, implicit = Verification.encode(), ImplicitVRLittleEndian.encode()
    ct, explicit = CTImageStorage.encode(), ExplicitVRLittleEndian.encode()
    request = hand_request(
        b"STATION", b"RAWSCU", [(1, verification, [implicit]), (3, ct, [explicit])]
    )
    with connect(station.port) as sock:
        sock.sendall(request)
        kind, body = read_pdu(sock)
        assert (kind, context_results(body)) == (0x02, {1: 0, 3: 0})
        data = dataset_bytes(CT)
        sock.sendall(p_data((1, COMMAND | LAST, store_command(CT, 1))) + p_data((1, LAST, data)))
        response = read_command(sock)
        assert response[0x0900] == struct.pack("<H", SOP_CLASS_NOT_SUPPORTED)
        assert b"presentation context 1" in response[0x0902]  # Error Comment
        sock.sendall(p_data((3, COMMAND | LAST, store_command(CT, 2))) + p_data((3, LAST, data)))
        assert read_command(sock)[0x0900] == struct.pack("<H", 0)
        sock.sendall(RELEASE_RQ)
        assert read_until_closed(sock) == RELEASE_RP
    assert len(station.spooled()) == 1
    assert station.metric("station_instances_rejected_total", reason="sop_class_mismatch") == 1


def test_echoscu_calling_another_ae_title_is_rejected(folder_station) -> None:
    station = folder_station()
    result = echo(station, "-aec", "NOTSTATION")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr, result.stderr
    assert rejected(station, "called_ae") == 1
    assert echo(station, "-aec", "STATION").returncode == 0
    other = folder_station(check_called_ae=False)
    assert echo(other, "-aec", "NOTSTATION").returncode == 0


def echo(station: StationProcess, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, *options, "127.0.0.1", str(station.port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )


def storescu_stores_ct(station: StationProcess, aet: str = "STORESCU") -> None:
    result = storescu(station.port, [CT], aet=aet, extra=("-v",), timeout=60)
    assert storescu_successes(result) == 1, result.stderr


# --- 2. access control -------------------------------------------------------------------


def test_unknown_peers_are_rejected_known_ones_only_from_their_hosts(folder_station) -> None:
    station = folder_station(
        allowed_calling_aes=["LEGACY"],
        peers={"SCANNER1": {"hosts": ["127.0.0.1/32"]}, "ROAMING": None},
    )
    for aet in ("SCANNER1", "ROAMING", "LEGACY"):
        storescu_stores_ct(station, aet)

    stranger = storescu(station.port, [CT], aet="STRANGER", extra=("-v",), timeout=60)
    assert storescu_successes(stranger) == 0
    assert "Calling AE Title Not Recognized" in stranger.stderr, stranger.stderr

    ae = AE("SCANNER1")  # the right AE title from the wrong address
    ae.acse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1", station.port, ae_title="STATION", bind_address=("127.0.0.2", 0)
    )
    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result_source, assoc.acceptor.primitive.diagnostic) == (1, 3)

    assert rejected(station, "calling_ae") == 1
    assert rejected(station, "peer_host") == 1
    log = station.run_log()
    assert "'STRANGER'" in log and "not allowed from 127.0.0.2" in log
    assert PATIENT not in log


# --- 4. no starvation by idle sockets ------------------------------------------------------


class Crowd:
    """``size`` sockets from 127.0.0.2 held open on the station's port: idle ones, and
    slowloris ones that send the first bytes of an A-ASSOCIATE-RQ and nothing more. A
    thread reopens whatever the station closes until ``stop``, like a determined attacker."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self.sockets: list[socket.socket] = []
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _open(self, slow: bool) -> None:
        try:
            sock = socket.create_connection(
                ("127.0.0.1", self.port), timeout=TIMEOUT, source_address=("127.0.0.2", 0)
            )
            if slow:
                sock.sendall(hand_request(b"STATION", b"SLOWLORIS", [])[:10])
        except OSError:
            return  # refused or reset at once: tried again on the next round
        self.sockets.append(sock)
        self.opened += 1

    def start(self) -> Crowd:
        for i in range(self.size):
            self._open(slow=bool(i % 2))
        self._thread.start()
        return self

    def _hold(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.wait(0.2) and time.monotonic() < deadline:
            alive = []
            for sock in self.sockets:
                try:
                    sock.setblocking(False)
                    closed = sock.recv(1) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    sock.close()
                else:
                    alive.append(sock)
            self.sockets = alive
            for i in range(self.size - len(alive)):
                self._open(slow=bool(i % 2))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def crowd() -> Iterator[Callable[[int], Crowd]]:
    crowds: list[Crowd] = []

    def start(port: int) -> Crowd:
        crowds.append(Crowd(port, 300).start())
        return crowds[-1]

    yield start
    for c in crowds:
        c.stop()


def test_storescu_gets_in_while_300_idle_and_slowloris_sockets_are_held(
    folder_station, crowd
) -> None:
    station = folder_station()
    attack = crowd(station.port)
    assert attack.opened >= 300  # the kernel accepted every connection; the station closed most
    storescu_stores_ct(station)
    echo_result = echo(station, "-aec", "STATION")
    assert echo_result.returncode == 0, echo_result.stderr
    closed = station.metric("station_connections_closed_total", reason="too_many_pending_host")
    assert closed >= 300 - 8


def test_idle_associations_from_one_host_leave_room_for_others(folder_station) -> None:
    station = folder_station(max_associations=4, max_associations_per_host=2)
    ae = AE("IDLER")
    ae.acse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(Verification)
    idle = [
        ae.associate("127.0.0.1", station.port, ae_title="STATION", bind_address=("127.0.0.2", 0))
        for _ in range(3)
    ]
    try:
        assert [a.is_established for a in idle] == [True, True, False]
        assert idle[2].is_rejected  # transient, local limit exceeded: try again later
        assert rejected(station, "busy_host") == 1
        storescu_stores_ct(station)
    finally:
        for assoc in idle:
            if assoc.is_established:
                assoc.release()


def test_a_silent_association_is_aborted_after_the_idle_timeout(folder_station) -> None:
    station = folder_station(idle_timeout_seconds=1)
    ct, explicit = CTImageStorage.encode(), ExplicitVRLittleEndian.encode()
    with connect(station.port) as sock:
        sock.sendall(hand_request(b"STATION", b"RAWSCU", [(1, ct, [explicit])]))
        assert read_pdu(sock)[0] == 0x02
        started = time.monotonic()
        assert read_pdu(sock)[0] == 0x07  # A-ABORT, then the close
        assert read_until_closed(sock) == b""
        assert 0.9 < time.monotonic() - started < TIMEOUT
    assert station.metric("station_connections_closed_total", reason="idle_timeout") == 1
    assert "nothing received for 1 s" in station.run_log()


def test_a_connection_that_sends_no_request_is_closed_after_the_request_timeout(
    folder_station,
) -> None:
    station = folder_station(request_timeout_seconds=1)
    with connect(station.port) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) in (b"", struct.pack(">BxI", 7, 4) + bytes(4))
        assert 0.9 < time.monotonic() - started < TIMEOUT
    assert station.metric("station_connections_closed_total", reason="request_timeout") == 1
