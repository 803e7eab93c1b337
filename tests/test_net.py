"""The DICOM upper layer on the wire (station/net, station/receive/scp.py), against a real
`station run` on 127.0.0.1.

Raw sockets play the peers that misbehave: garbage on the port, a C-STORE cut off inside its
data set, a data set in many small PDUs, a DIMSE command the station does not offer. DCMTK
and pynetdicom play the well-behaved ones. Raw requests are built with station.dicom where it
has a helper; the P-DATA-TF PDUs, the A-ASSOCIATE-RQ and the DIMSE exchange of the unknown
command test are made and read by hand (struct), so the tests are not circular.
"""

from __future__ import annotations

import io
import random
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    DCMTK_ENV,
    ECHOSCU,
    VALID,
    StationProcess,
    StoreSCP,
    dicom_destination,
    needs_corpus,
    storescu,
    storescu_successes,
    wait_for,
)
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from station.dicom.dimse import C_STORE_RQ, HAS_DATASET, Channel, Command
from station.dicom.pdu import (
    ASSOCIATE_AC,
    Association,
    PresentationContext,
    decode_association,
    encode_request,
)

pytestmark = pytest.mark.e2e

CT = VALID / "CT_small.dcm"  # CT Image Storage, Explicit VR Little Endian, 39 KB
EMRI = VALID / "emri_small.dcm"  # Enhanced MR Image Storage, Explicit VR Little Endian, 82 KB
TIMEOUT = 10.0  # every socket read, every wait
SUCCESS = 0x0000
UNRECOGNIZED_OPERATION = 0x0211
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

COMMAND, LAST = 0x01, 0x02  # message control header bits of a PDV (PS3.8 annex E)
ABORT = struct.pack(">BxI", 0x07, 4) + bytes(4)  # A-ABORT, service user, no reason
RELEASE_RQ = struct.pack(">BxI", 0x05, 4) + bytes(4)
RELEASE_RP = struct.pack(">BxI", 0x06, 4) + bytes(4)


# --- by hand: PDUs, command sets, files (PS3.8 section 9.3, PS3.7 section 6.3, PS3.10) -----


def item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def hand_request(
    called: bytes, calling: bytes, contexts: list[tuple[int, bytes, list[bytes]]]
) -> bytes:
    """An A-ASSOCIATE-RQ: protocol version 1, AE titles, the DICOM application context, one
    presentation context item per (ID, abstract syntax, transfer syntaxes), max PDU 16384."""
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract, syntaxes in contexts:
        sub = item(0x30, abstract) + b"".join(item(0x40, ts) for ts in syntaxes)
        body += item(0x20, bytes((context_id, 0, 0, 0)) + sub)
    body += item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9"))
    return struct.pack(">BxI", 0x01, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's type and body."""
    kind, length = struct.unpack(">BxI", read_exactly(sock, 6))
    return kind, read_exactly(sock, length)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += piece
    return data


def context_results(accept: bytes) -> dict[int, int]:
    """Presentation context ID -> result, from an A-ASSOCIATE-AC body."""
    results, offset = {}, 68  # protocol version, reserved, AE titles, reserved
    while offset < len(accept):
        kind, length = struct.unpack_from(">BxH", accept, offset)
        if kind == 0x21:
            results[accept[offset + 4]] = accept[offset + 6]
        offset += 4 + length
    return results


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF carrying PDV items (presentation context ID, control header, value)."""
    items = b"".join(struct.pack(">IBB", len(v) + 2, cx, ctl) + v for cx, ctl, v in pdvs)
    return struct.pack(">BxI", 0x04, len(items)) + items


def command_set(elements: dict[int, bytes]) -> bytes:
    """Implicit VR Little Endian group 0000 with its group length first."""
    body = b"".join(
        struct.pack("<HHI", 0x0000, tag, len(value)) + value for tag, value in elements.items()
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def read_command(sock: socket.socket) -> dict[int, bytes]:
    """The next command set (element -> value), read PDV by PDV."""
    data, done = b"", False
    while not done:
        kind, body = read_pdu(sock)
        assert kind == 0x04, f"PDU type 0x{kind:02X} where P-DATA-TF was expected"
        offset = 0
        while offset < len(body):
            length, _context, control = struct.unpack_from(">IBB", body, offset)
            assert control & COMMAND
            data += body[offset + 6 : offset + 4 + length]
            done = bool(control & LAST)
            offset += 4 + length
    elements, offset = {}, 0
    while offset < len(data):
        _group, tag, length = struct.unpack_from("<HHI", data, offset)
        elements[tag] = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return elements


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def ui(value: str) -> bytes:
    """A UID value, padded to even length with NUL."""
    raw = value.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


def store_command(path: Path, message_id: int) -> bytes:
    """The C-STORE-RQ command set for the instance in ``path``, a data set following."""
    ds = dcmread(path, stop_before_pixels=True)
    return command_set(
        {
            0x0002: ui(ds.SOPClassUID),  # Affected SOP Class UID
            0x0100: us(0x0001),  # Command Field: C-STORE-RQ
            0x0110: us(message_id),
            0x0700: us(0),  # Priority: medium
            0x0800: us(0x0000),  # Command Data Set Type: a data set follows
            0x1000: ui(ds.SOPInstanceUID),  # Affected SOP Instance UID
        }
    )


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file: what follows its File Meta Information, whose
    length the group length element (0002,0000) gives."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path} has no DICM prefix"
    group, element, vr = struct.unpack_from("<HH2s", data, 132)
    assert (group, element, vr) == (0x0002, 0x0000, b"UL"), f"{path}: no group length first"
    return data[144 + struct.unpack_from("<I", data, 140)[0] :]


# --- with station.dicom --------------------------------------------------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def associate(port: int) -> Channel:
    """An association proposing CT Image Storage in Explicit VR Little Endian (context 1)."""
    channel = Channel(connect(port))
    proposed = [PresentationContext(1, CTImageStorage, [ExplicitVRLittleEndian])]
    channel.send_raw(encode_request(Association("STATION", "RAWSCU", proposed, max_pdu=16384)))
    kind, length = channel.read_pdu_header()
    assert kind == ASSOCIATE_AC
    answer = decode_association(channel.read(length), kind)
    assert [(cx.id, cx.accepted) for cx in answer.contexts] == [(1, True)]
    channel.max_send = answer.max_pdu
    return channel


def store_request(path: Path, message_id: int = 1) -> Command:
    ds = dcmread(path, stop_before_pixels=True)
    return {
        "CommandField": C_STORE_RQ,
        "MessageID": message_id,
        "AffectedSOPClassUID": str(ds.SOPClassUID),
        "AffectedSOPInstanceUID": str(ds.SOPInstanceUID),
        "Priority": 0,
        "CommandDataSetType": HAS_DATASET,
    }


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection (a reset counts as closed);
    a socket timeout fails the test."""
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def log_line(station: StationProcess, port: int) -> str:
    """The station's log lines about the connection from our local ``port``."""
    peer = re.compile(rf"127\.0\.0\.1:{port}\b")
    return "\n".join(line for line in station.run_log().splitlines() if peer.search(line))


def no_association_left(station: StationProcess) -> bool:
    return station.metric("station_associations_active") == 0


@pytest.fixture
def station(tmp_path: Path, start_station: Callable[..., StationProcess]) -> StationProcess:
    return start_station(
        {"destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}}}
    )


def stored_one_ct(station: StationProcess) -> None:
    """A real C-STORE by DCMTK storescu succeeds and leaves one spool file."""
    result = storescu(station.port, [CT], extra=("-v",), timeout=60)
    assert storescu_successes(result) == 1, result.stderr
    assert len(station.spooled()) == 1


# --- 1. garbage on the port ------------------------------------------------------------

RANDOM_BYTES = random.Random(104).randbytes(4096)  # starts 0xFB: no PDU type
TRUNCATED = encode_request(
    Association(
        "STATION", "RAWSCU", [PresentationContext(1, CTImageStorage, [ExplicitVRLittleEndian])]
    )
)[:40]

GARBAGE = {
    "random-bytes": (RANDOM_BYTES, r"PDU type 0xFB where an A-ASSOCIATE-RQ \(0x01\) was expected"),
    "http-request": (
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        r"PDU type 0x47 where an A-ASSOCIATE-RQ \(0x01\) was expected",
    ),
    "2-GiB-request": (
        struct.pack(">BxI", 0x01, 2**31) + bytes(68),
        r"A-ASSOCIATE-RQ of 2147483648 bytes, more than the \d+ accepted",
    ),
    "truncated-request": (TRUNCATED, r"connection closed by the peer \(34 of \d+ bytes\)"),
}


@needs_corpus
def test_a_request_trickled_byte_by_byte_is_cut_off_after_the_request_timeout(
    station: StationProcess,
) -> None:
    """The A-ASSOCIATE-RQ must arrive whole within 5 s (listen.request_timeout_seconds), not
    within 5 s of each byte: a peer trickling it (here it would take ~60 s) cannot hold a thread."""
    request = encode_request(
        Association(
            "STATION", "SLOWSCU", [PresentationContext(1, CTImageStorage, [ExplicitVRLittleEndian])]
        )
    )
    closed, sent = False, 0
    with connect(station.port) as sock:
        sock_port = sock.getsockname()[1]
        sock.settimeout(0.5)  # each wait for an answer is also the pause between bytes
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
                sent += 1
                if sock.recv(4096) == b"":  # an A-ABORT may come first, then the close
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset by the station
                closed = True
                break
    assert closed, f"still connected after trickling all {len(request)} bytes"
    assert sent < len(request), "cut off only once the request was whole"
    assert re.search(r"closed before an association: .*time allowed", log_line(station, sock_port))
    stored_one_ct(station)


@needs_corpus
@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_is_closed_logged_and_the_station_keeps_serving(
    station: StationProcess, name: str
) -> None:
    payload, logged = GARBAGE[name]
    with connect(station.port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # nothing more comes: the truncated request stays so
        port = sock.getsockname()[1]
        received = read_until_closed(sock)
    assert received in (b"", ABORT), f"answered {received[:16].hex()}"
    line = wait_for(lambda: log_line(station, port), TIMEOUT, message="a log line")
    assert "closed before an association" in line
    assert re.search(logged, line), line
    assert "Traceback" not in station.run_log()
    assert station.spooled() == []
    stored_one_ct(station)


@needs_corpus
def test_mangled_request_is_answered_and_leaves_no_association(station: StationProcess) -> None:
    """A non-ASCII calling AE title (a misconfigured modality) and a transfer syntax that is
    no UID: the association still comes up with a clear answer per context."""
    request = hand_request(
        b"STATION",
        b"RAW\xc9SCU",  # latin-1 E acute
        [
            (1, CTImageStorage.encode(), [b"1.2.840.10008.1.2.1\xff"]),
            (3, CTImageStorage.encode(), [ExplicitVRLittleEndian.encode()]),
        ],
    )
    with connect(station.port) as sock:
        sock.sendall(request)
        kind, body = read_pdu(sock)
        assert kind == 0x02, f"PDU type 0x{kind:02X}, expected A-ASSOCIATE-AC"
        assert context_results(body) == {1: TRANSFER_SYNTAXES_NOT_SUPPORTED, 3: 0}
        sock.sendall(RELEASE_RQ)
        assert read_until_closed(sock) == RELEASE_RP
    wait_for(lambda: no_association_left(station), TIMEOUT, message="no association left")
    assert "Traceback" not in station.run_log()
    stored_one_ct(station)


# --- 2. what is negotiated -------------------------------------------------------------


@needs_corpus
def test_query_context_is_refused_next_to_an_accepted_storage_context(
    station: StationProcess,
) -> None:
    ae = AE("MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", station.port, ae_title="STATION")
    assert assoc.is_established
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage]
        assert [(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts] == [
            (StudyRootQueryRetrieveInformationModelFind, ABSTRACT_SYNTAX_NOT_SUPPORTED)
        ]
        assert assoc.send_c_store(CT).Status == SUCCESS
    finally:
        assoc.release()


# --- 3. a C-STORE cut off inside its data set ------------------------------------------


@needs_corpus
@pytest.mark.parametrize("ending", ["abort", "close"])
def test_store_cut_off_inside_its_data_set_leaves_nothing(
    tmp_path: Path, station: StationProcess, ending: str
) -> None:
    ds = dcmread(CT)
    ds.Rows = ds.Columns = 1024
    ds.PixelData = bytes(2 * 1024 * 1024)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    big = tmp_path / "big.dcm"
    ds.save_as(big)
    data = dataset_bytes(big)
    channel = associate(station.port)
    port = channel.sock.getsockname()[1]
    channel.send_command(1, store_request(big))
    for offset in range(0, 1024 * 1024, 16 * 1024):  # half of it, never the last fragment
        channel.send_raw(p_data((1, 0, data[offset : offset + 16 * 1024])))
    wait_for(station.spooled, TIMEOUT, message="the partial data set in the spool")
    assert station.metric("station_associations_active") == 1
    if ending == "abort":
        channel.send_raw(ABORT)
        assert read_until_closed(channel.sock) == b""
    channel.close()

    wait_for(lambda: not station.spooled(), TIMEOUT, message="the partial spool file to go")
    wait_for(lambda: no_association_left(station), TIMEOUT, message="no association left")
    logged = "aborted by the peer" if ending == "abort" else "connection closed by the peer"
    assert logged in wait_for(lambda: log_line(station, port), TIMEOUT, message="a log line")
    stored_one_ct(station)


# --- 4. a data set in many small PDUs ---------------------------------------------------


@needs_corpus
def test_data_set_in_many_small_pdus_arrives_byte_identical(station: StationProcess) -> None:
    """The command in three fragments over two PDUs; the data set in 509-byte fragments
    (odd, across element boundaries), two to a P-DATA-TF."""
    data = dataset_bytes(CT)
    command = store_command(CT, 1)
    pdus = [
        p_data((1, COMMAND, command[:10]), (1, COMMAND, command[10:50])),
        p_data((1, COMMAND | LAST, command[50:])),
    ]
    pieces = [data[i : i + 509] for i in range(0, len(data), 509)]
    fragments = [(1, 0, piece) for piece in pieces[:-1]] + [(1, LAST, pieces[-1])]
    pdus += [p_data(*fragments[i : i + 2]) for i in range(0, len(fragments), 2)]
    assert len(pdus) > 40

    with connect(station.port) as sock:
        proposed = [PresentationContext(1, CTImageStorage, [ExplicitVRLittleEndian])]
        sock.sendall(encode_request(Association("STATION", "RAWSCU", proposed)))
        kind, body = read_pdu(sock)
        assert (kind, context_results(body)) == (0x02, {1: 0})
        for pdu in pdus:
            sock.sendall(pdu)
        assert read_command(sock)[0x0900] == us(SUCCESS)
        sock.sendall(RELEASE_RQ)
        assert read_until_closed(sock) == RELEASE_RP
    [spooled] = station.spooled()
    assert dataset_bytes(spooled) == data


@needs_corpus
def test_storescu_with_4096_byte_pdus_arrives_byte_identical(station: StationProcess) -> None:
    """Enhanced MR, 82 KB in 21 PDUs. (Not CT_small: storescu drops the Data Set Trailing
    Padding it ends with.)"""
    result = storescu(station.port, [EMRI], extra=("-v", "--max-send-pdu", "4096"), timeout=60)
    assert storescu_successes(result) == 1, result.stderr
    [spooled] = station.spooled()
    assert dataset_bytes(spooled) == dataset_bytes(EMRI)


# --- 5. a destination with a small maximum PDU ------------------------------------------


@needs_corpus
def test_destination_with_4096_byte_pdus_gets_identical_bytes(
    tmp_path: Path, start_station: Callable[..., StationProcess]
) -> None:
    """storescp aborts an association whose PDUs exceed the maximum it announced
    ("DUL Illegal PDU Length"), so the station must fragment to its limit."""
    pacs = StoreSCP(tmp_path / "pacs", extra=("--max-pdu", "4096")).start()
    try:
        station = start_station({"destinations": {"pacs": dicom_destination(pacs)}})
        channel = associate(station.port)  # sends the file's data set bytes as they are
        data = dataset_bytes(CT)
        channel.send_message(1, store_request(CT), io.BytesIO(data), len(data))
        assert channel.receive_command()[1]["Status"] == SUCCESS
        channel.send_raw(RELEASE_RQ)
        assert read_until_closed(channel.sock) == RELEASE_RP
        channel.close()
        wait_for(
            lambda: station.metric(
                "station_dispatch_instances_total", destination="pacs", outcome="sent"
            ),
            30,
            message="the instance sent to storescp",
        )
        [arrived] = pacs.files()
    finally:
        pacs.stop()
    assert dataset_bytes(arrived) == data


# --- 6. C-ECHO both ways ----------------------------------------------------------------


def test_echoscu_is_answered(station: StationProcess) -> None:
    result = subprocess.run(
        [ECHOSCU, "-v", "-aec", "STATION", "-to", "10", "127.0.0.1", str(station.port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_station_echo_reaches_storescp(tmp_path: Path, pacs: StoreSCP) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "station", "echo", f"127.0.0.1:{pacs.port}", "--aet", "PACS"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success" in result.stdout


# --- 7. a DIMSE command the station does not offer ----------------------------------------


@needs_corpus
def test_unknown_command_is_refused_and_the_association_stays_usable(
    station: StationProcess,
) -> None:
    """A C-FIND-RQ with its identifier, sent on the accepted storage context."""
    find = command_set(
        {
            0x0002: ui(StudyRootQueryRetrieveInformationModelFind),
            0x0100: us(0x0020),  # C-FIND-RQ
            0x0110: us(7),
            0x0700: us(0),
            0x0800: us(0x0000),
        }
    )
    identifier = struct.pack("<HH2sH", 0x0008, 0x0052, b"CS", 6) + b"STUDY "
    with connect(station.port) as sock:
        ct, explicit = CTImageStorage.encode(), ExplicitVRLittleEndian.encode()
        sock.sendall(hand_request(b"STATION", b"RAWSCU", [(1, ct, [explicit])]))
        kind, body = read_pdu(sock)
        assert (kind, context_results(body)) == (0x02, {1: 0})

        sock.sendall(p_data((1, COMMAND | LAST, find)) + p_data((1, LAST, identifier)))
        response = read_command(sock)
        assert response[0x0100] == us(0x8020)  # C-FIND-RSP
        assert response[0x0120] == us(7)  # Message ID Being Responded To
        assert response[0x0800] == us(0x0101)  # no data set
        assert response[0x0900] == us(UNRECOGNIZED_OPERATION)

        sock.sendall(p_data((1, COMMAND | LAST, store_command(CT, 8))))
        sock.sendall(p_data((1, LAST, dataset_bytes(CT))))
        response = read_command(sock)
        assert (response[0x0120], response[0x0900]) == (us(8), us(SUCCESS))
        sock.sendall(RELEASE_RQ)
        assert read_until_closed(sock) == RELEASE_RP
    assert len(station.spooled()) == 1


# --- 8. release -------------------------------------------------------------------------


@needs_corpus
def test_release_after_stores_gets_a_release_reply(station: StationProcess) -> None:
    ae = AE("MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", station.port, ae_title="STATION")
    assert assoc.is_established
    assert [assoc.send_c_store(CT).Status for _ in range(3)] == [SUCCESS] * 3
    assoc.release()
    assert assoc.is_released and not assoc.is_aborted
    wait_for(lambda: no_association_left(station), TIMEOUT, message="no association left")


# --- 9. a large instance ---------------------------------------------------------------


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


@needs_corpus
def test_a_200_mib_instance_goes_through_with_flat_memory(
    tmp_path: Path, pacs: StoreSCP, start_station: Callable[..., StationProcess]
) -> None:
    """Received fragment by fragment into its spool file and sent from it in pieces: the
    station's peak RSS grows by far less than the instance (both ways, 4 MiB PDUs)."""
    station = start_station({"destinations": {"pacs": dicom_destination(pacs)}})
    before = peak_rss_mib(station.proc.pid)
    ds = dcmread(CT)
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = random.Random(7).randbytes(200 * 2**20)
    ds.NumberOfFrames = len(ds.PixelData) // (ds.Rows * ds.Columns * 2)
    del ds[0xFFFCFFFC]  # CT_small's trailing padding, which storescu would drop
    big = tmp_path / "big.dcm"
    ds.save_as(big, enforce_file_format=True)
    result = storescu(station.port, [big], extra=("-v",), timeout=120)
    assert storescu_successes(result) == 1, result.stderr
    expected = len(dataset_bytes(big))

    def arrived_whole() -> bool:  # storescp writes the file as it receives it
        files = pacs.files()
        if len(files) != 1 or files[0].stat().st_size < 144:
            return False
        with open(files[0], "rb") as fh:
            head = fh.read(144)
        meta_end = 144 + struct.unpack_from("<I", head, 140)[0]
        return files[0].stat().st_size - meta_end == expected

    wait_for(arrived_whole, 120, message="the whole large instance at storescp")
    assert dataset_bytes(pacs.files()[0]) == dataset_bytes(big)
    grown = peak_rss_mib(station.proc.pid) - before
    assert grown < 40, f"peak RSS grew by {grown:.0f} MiB for a 200 MiB instance"
