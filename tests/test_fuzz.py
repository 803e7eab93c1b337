"""Fuzzing (hypothesis) of what reads bytes from the outside: the PDU decoders and the PDU
stream, the DIMSE command parser, and the data set scanner and validator. Inputs are
valid encodings mutated (bytes replaced, inserted, deleted, cut) or plain random bytes.

Each test runs STATION_FUZZ_EXAMPLES cases (10,000 by default, a few seconds each; set it
higher for a longer run): hypothesis draws a seed per example and each example runs BATCH
cases from a random generator so seeded (hypothesis costs about a millisecond per example
of its own, and per draw); a failure prints the seed that reproduces it.

Only the station's own documented errors may come out: ProtocolError (and the
end-of-association signals) from the network layer, RejectedInstance from the validator;
the byte scan answers a Header or None. Reads stay bounded: every PDU is refused by its
header when over its cap, before its body is read.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import VALID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from station.dicom.dimse import (
    Channel,
    ConnectionClosed,
    PeerAborted,
    PeerReleased,
    decode_command,
    encode_command,
)
from station.dicom.files import dataset_start
from station.dicom.pdu import (
    ABORT_PDU,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    PDU_HEADER,
    RELEASE_REPLY,
    RELEASE_REQUEST,
    Association,
    PresentationContext,
    ProtocolError,
    Rejection,
    check_length,
    decode_association,
    decode_reject,
    describe_abort,
    encode_accept,
    encode_reject,
    encode_request,
)
from station.dicom.scan import scan_header
from station.dicom.validate import check_structure
from station.errors import RejectedInstance

CASES = int(os.environ.get("STATION_FUZZ_EXAMPLES", "10000"))
BATCH = 50
settings.register_profile(
    "fuzz",
    max_examples=max(1, CASES // BATCH),
    deadline=None,
    database=None,  # every run explores afresh; a failure prints its reproducing input
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz")
MAX_PDU = 16384

CT = "1.2.840.10008.5.1.4.1.1.2"
REQUEST = Association(
    "PACS",
    "STATION",
    [PresentationContext(1, CT, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])],
    max_pdu=MAX_PDU,
    roles={CT: (1, 0)},
    async_window=(1, 1),
)
ACCEPT = Association(
    "PACS", "STATION", [PresentationContext(1, CT, ["1.2.840.10008.1.2.1"], 0)], max_pdu=MAX_PDU
)
COMMAND = {
    "CommandField": 1,
    "MessageID": 3,
    "AffectedSOPClassUID": CT,
    "AffectedSOPInstanceUID": "1.2.3.4",
    "Priority": 0,
    "CommandDataSetType": 0,
}


def p_data(context: int, control: int, value: bytes) -> bytes:
    pdv = (len(value) + 2).to_bytes(4, "big") + bytes((context, control)) + value
    return PDU_HEADER.pack(0x04, len(pdv)) + pdv


PDU_SEEDS = [
    encode_request(REQUEST),
    encode_accept(ACCEPT),
    encode_reject(Rejection(1, 1, 7)),
    RELEASE_REQUEST,
    RELEASE_REPLY,
    ABORT_PDU,
    p_data(1, 3, encode_command(COMMAND)) + p_data(1, 2, b"\x08\x00\x18\x00" * 8),
]

Change = tuple[str, int, bytes]


def random_changes(rnd: random.Random) -> list[Change]:
    """One to four byte edits: replace, insert, delete, or cut the rest."""
    return [
        (
            rnd.choice(("replace", "replace", "insert", "delete", "cut")),
            rnd.randrange(1 << 16),
            rnd.randbytes(rnd.randint(1, 8)),
        )
        for _ in range(rnd.randint(1, 4))
    ]


def mutate(data: bytes, changes: list[Change], start: int = 0) -> bytes:
    """``data`` with each change applied at an offset (taken modulo the length) at or
    after ``start``."""
    out = bytearray(data)
    for kind, offset, value in changes:
        span = max(1, len(out) - start)
        at = start + offset % span
        if kind == "replace":
            out[at : at + len(value)] = value
        elif kind == "insert":
            out[at:at] = value
        elif kind == "delete":
            del out[at : at + len(value)]
        else:
            del out[at:]
    return bytes(out)


def cases(rnd: random.Random, seeds: list[bytes], noise: int) -> Iterator[bytes]:
    """BATCH inputs: mostly a seed mutated, sometimes up to ``noise`` random bytes."""
    for _ in range(BATCH):
        if rnd.random() < 0.2:
            yield rnd.randbytes(rnd.randint(0, noise))
        else:
            yield mutate(rnd.choice(seeds), random_changes(rnd))


seeds = st.integers(min_value=0, max_value=2**64 - 1)  # a failure prints the seed


@FUZZ
@given(seed=seeds)
def test_pdu_decoders(seed: int) -> None:
    """Whole PDUs as they come off the wire, through the header check and the decoders."""
    rnd = random.Random(seed)
    for data in cases(rnd, PDU_SEEDS, 512):
        if len(data) < PDU_HEADER.size:
            continue
        kind, length = PDU_HEADER.unpack_from(data)
        payload = data[PDU_HEADER.size : PDU_HEADER.size + length]
        try:
            check_length(kind, length, MAX_PDU)
            if kind in (ASSOCIATE_RQ, ASSOCIATE_AC):
                decode_association(payload, kind)
            elif kind == ASSOCIATE_RJ:
                decode_reject(payload)
            elif kind == 0x07:
                assert describe_abort(payload).startswith("A-ABORT")
        except ProtocolError:
            pass


@FUZZ
@given(seed=seeds)
def test_pdu_stream(seed: int) -> None:
    """The same bytes as a peer's stream: read as the SCP reads messages, then its end."""
    rnd = random.Random(seed)
    for data in cases(rnd, PDU_SEEDS, 512):
        ours, peer = socket.socketpair()
        channel = Channel(ours)
        channel.max_receive = MAX_PDU
        try:
            peer.sendall(data)
            peer.shutdown(socket.SHUT_WR)
            ours.settimeout(5)
            for _ in range(4):  # every message of a seed, then the end of the stream
                channel.receive_command()
                channel.receive_dataset(1, lambda _piece: None)
        except (ProtocolError, ConnectionClosed, PeerAborted, PeerReleased):
            pass
        finally:
            channel.close()
            peer.close()


@FUZZ
@given(seed=seeds)
def test_dimse_command_parser(seed: int) -> None:
    rnd = random.Random(seed)
    for data in cases(rnd, [encode_command(COMMAND)], 256):
        try:
            command = decode_command(data)
        except ProtocolError:
            continue
        assert all(isinstance(value, (int, str)) for value in command.values())


# Small files of every encoding: explicit and implicit VR, big endian, deflated,
# encapsulated JPEG and RLE, nested sequences of defined and undefined length.
DATASET_SEEDS = [
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "JPGExtended.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtplan.dcm",
    "reportsi.dcm",
    "test-SR.dcm",
]


def _seed(name: str) -> tuple[bytes, int]:
    with (VALID / name).open("rb") as fh:
        return fh.read(), dataset_start(fh)


SEED_BYTES = {name: _seed(name) for name in DATASET_SEEDS}


class Rewritten:
    """One file rewritten in place for every case (cheaper than creating it each time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def write(self, data: bytes) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rewritten]:
    rewritten = Rewritten(tmp_path_factory.mktemp("fuzz") / "instance.dcm")
    yield rewritten
    os.close(rewritten.fd)


@FUZZ
@given(seed=seeds)
def test_dataset_scanner_and_validator(fuzz_file: Rewritten, seed: int) -> None:
    """Damage anywhere (the File Meta too, now and then): the validator refuses with its
    own error or passes, the scan answers or declines, and never lets through a file the
    validator refuses."""
    rnd = random.Random(seed)
    for _ in range(BATCH):
        data, start = SEED_BYTES[rnd.choice(DATASET_SEEDS)]
        in_meta = rnd.random() < 0.1
        fuzz_file.write(mutate(data, random_changes(rnd), 0 if in_meta else start))
        header = scan_header(fuzz_file.path)
        try:
            check_structure(fuzz_file.path)
        except RejectedInstance as exc:
            assert exc.status == 0xC210
            assert exc.reason in ("truncated", "malformed", "bad_deflate"), exc
            assert header is None, f"the scan accepted a file the validator refuses: {exc}"
