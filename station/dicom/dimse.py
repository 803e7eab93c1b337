"""DIMSE messages over an association: command sets and P-DATA-TF fragments (PS3.7, PS3.8).

A ``Channel`` wraps one connected socket for either side. Command sets (always Implicit VR
Little Endian, group 0000) are small and read whole; a data set is streamed fragment by
fragment to a callback (receive) or from a file (send), so memory stays flat whatever the
size of an instance, and the encoded bytes are never decoded on the way.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import time
from collections.abc import Callable
from typing import IO, cast

from station.dicom.pdu import (
    ABORT,
    ABORT_PDU,
    P_DATA_TF,
    PDU_HEADER,
    RELEASE_RQ,
    ProtocolError,
    check_length,
    describe_abort,
)

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
RESPONSE = 0x8000
NO_DATASET = 0x0101
HAS_DATASET = 0x0000

VERIFICATION = "1.2.840.10008.1.1"  # the SOP class of C-ECHO

COMMAND_BIT = 0x01
LAST_BIT = 0x02
MAX_COMMAND_BYTES = 1 << 20  # command sets are a few hundred bytes; refuse absurd ones
CHUNK = 1 << 20  # largest piece of a data set held in memory at once

_PDV = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")

# The command elements the station reads or writes: keyword -> (element, VR).
FIELDS = {
    "AffectedSOPClassUID": (0x0002, "UI"),
    "CommandField": (0x0100, "US"),
    "MessageID": (0x0110, "US"),
    "MessageIDBeingRespondedTo": (0x0120, "US"),
    "Priority": (0x0700, "US"),
    "CommandDataSetType": (0x0800, "US"),
    "Status": (0x0900, "US"),
    "ErrorComment": (0x0902, "LO"),
    "AffectedSOPInstanceUID": (0x1000, "UI"),
    "MoveOriginatorApplicationEntityTitle": (0x1030, "AE"),
    "MoveOriginatorMessageID": (0x1031, "US"),
}
_BY_ELEMENT = {element: (keyword, vr) for keyword, (element, vr) in FIELDS.items()}

Command = dict[str, "int | str"]


class PeerReleased(Exception):
    """The peer sent A-RELEASE-RQ where a message was expected."""


class PeerAborted(Exception):
    """The peer sent A-ABORT."""


class ConnectionClosed(Exception):
    """The peer closed the connection without releasing or aborting."""


def decode_command(data: bytes) -> Command:
    """The known elements of a command set; others are skipped."""
    command: Command = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        value = data[offset : offset + length]
        offset += length
        if group != 0x0000 or len(value) != length:
            raise ProtocolError(f"command set element ({group:04X},{element:04X}) is malformed")
        known = _BY_ELEMENT.get(element)
        if known is None:
            continue
        keyword, vr = known
        if vr == "US":
            if length != 2:
                raise ProtocolError(f"command element {keyword} has {length} bytes, expected 2")
            command[keyword] = _US.unpack(value)[0]
        else:
            command[keyword] = value.decode("ascii", "replace").strip("\0 ")
    if offset != len(data):
        raise ProtocolError("command set ends inside an element header")
    return command


def encode_command(command: Command) -> bytes:
    """An Implicit VR Little Endian command set with its group length first."""
    body = []
    for keyword, value in sorted(command.items(), key=lambda item: FIELDS[item[0]][0]):
        element, vr = FIELDS[keyword]
        if vr == "US":
            raw = _US.pack(value)
        else:
            raw = str(value).encode("ascii", "replace")
            if len(raw) % 2:
                raw += b"\0" if vr == "UI" else b" "
        body.append(_ELEMENT.pack(0x0000, element, len(raw)) + raw)
    data = b"".join(body)
    return _ELEMENT.pack(0x0000, 0x0000, 4) + _UL.pack(len(data)) + data


def response_to(request: Command, status: int, comment: str = "") -> Command:
    """The response to a request: same operation, same SOP class and instance."""
    rsp: Command = {
        "CommandField": int(request.get("CommandField", 0)) | RESPONSE,
        "MessageIDBeingRespondedTo": request.get("MessageID", 0),
        "CommandDataSetType": NO_DATASET,
        "Status": status,
    }
    for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        if keyword in request:
            rsp[keyword] = request[keyword]
    if comment:
        rsp["ErrorComment"] = comment[:64]
    return rsp


def tcp_nodelay(sock: socket.socket) -> None:
    """No Nagle delay: each C-STORE would otherwise wait ~44 ms for a delayed ACK."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Channel:
    """One connection's PDU stream, after association negotiation as well as during it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = cast(io.BufferedReader, sock.makefile("rb", buffering=256 * 1024))
        self.max_send = 0  # the peer's maximum PDU length; 0 = no limit
        self.max_receive = 0  # the one this side announced: longer P-DATA-TF PDUs are refused
        self._pdu_left = 0  # bytes of the current P-DATA-TF not read yet

    # --- reading ---------------------------------------------------------------------

    def read(self, size: int) -> bytes:
        data = self.reader.read(size)
        if len(data) != size:
            raise ConnectionClosed(f"connection closed by the peer ({len(data)} of {size} bytes)")
        return data

    def read_by(self, size: int, deadline: float) -> bytes:
        """``size`` bytes, all of them before ``deadline`` (time.monotonic()): a peer that
        trickles bytes cannot stretch a timeout that applies to each read."""
        parts: list[bytes] = []
        left = size
        while left:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.sock.settimeout(remaining)
                part = self.reader.read1(left)
            except TimeoutError:
                raise TimeoutError(f"{size - left} of {size} bytes in the time allowed") from None
            if not part:
                got = size - left
                raise ConnectionClosed(f"connection closed by the peer ({got} of {size} bytes)")
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def read_pdu_header(self) -> tuple[int, int]:
        """The next PDU's type and length, refused (ProtocolError) by its size cap."""
        kind, length = PDU_HEADER.unpack(self.read(PDU_HEADER.size))
        check_length(kind, length, self.max_receive)
        return kind, length

    def _next_fragment(self) -> tuple[int, int, int]:
        """The next PDV's presentation context, control bits and value length, reading
        into the next P-DATA-TF when the current one is done."""
        while self._pdu_left == 0:
            kind, length = self.read_pdu_header()
            if kind == P_DATA_TF:
                self._pdu_left = length
                continue
            body = self.read(length)
            if kind == RELEASE_RQ:
                raise PeerReleased
            if kind == ABORT:
                raise PeerAborted(describe_abort(body))
            raise ProtocolError(f"PDU type 0x{kind:02X} where P-DATA-TF was expected")
        length, context, control = _PDV.unpack(self.read(_PDV.size))
        if length < 2 or length + 4 > self._pdu_left:
            raise ProtocolError(
                f"PDV item of {length} bytes does not fit its P-DATA-TF ({self._pdu_left} left)"
            )
        self._pdu_left -= length + 4
        return context, control, length - 2

    def receive_command(self) -> tuple[int, Command]:
        """The next command set and its presentation context. Raises PeerReleased at a
        release request, PeerAborted, ConnectionClosed or ProtocolError."""
        parts: list[bytes] = []
        size = 0
        while True:
            context, control, length = self._next_fragment()
            if not control & COMMAND_BIT:
                raise ProtocolError("data set fragment where a command was expected")
            size += length
            if size > MAX_COMMAND_BYTES:
                raise ProtocolError(f"command set larger than {MAX_COMMAND_BYTES} bytes")
            parts.append(self.read(length))
            if control & LAST_BIT:
                return context, decode_command(b"".join(parts))

    def receive_dataset(self, context: int, write: Callable[[memoryview], object]) -> int:
        """Stream the data set that follows a command to ``write``, in pieces of at most
        CHUNK bytes; return its length."""
        buffer = bytearray(min(CHUNK, 64 * 1024))
        total = 0
        while True:
            frag_context, control, length = self._next_fragment()
            if control & COMMAND_BIT:
                raise ProtocolError("command fragment inside a data set")
            if frag_context != context:
                raise ProtocolError(
                    f"data set fragment on presentation context {frag_context}, "
                    f"its command came on {context}"
                )
            if length > len(buffer):
                buffer = bytearray(min(CHUNK, max(length, 2 * len(buffer))))
            view = memoryview(buffer)
            left = length
            while left:
                piece = view[: min(left, len(buffer))]
                got = self.reader.readinto(piece)
                if not got:
                    raise ConnectionClosed("connection closed by the peer inside a data set")
                write(piece[:got])
                left -= got
            total += length
            if control & LAST_BIT:
                return total

    # --- writing ---------------------------------------------------------------------

    def _max_value(self) -> int:
        """The largest PDV value to put in one P-DATA-TF for this peer: its limit, and never
        more than CHUNK (memory stays flat when a peer announces gigabytes or no limit)."""
        return min(self.max_send - 6, CHUNK) if self.max_send > 6 else CHUNK

    @staticmethod
    def _fragment(context: int, control: int, value: bytes) -> bytes:
        pdv = _PDV.pack(len(value) + 2, context, control) + value
        return PDU_HEADER.pack(P_DATA_TF, len(pdv)) + pdv

    def command_bytes(self, context: int, command: Command) -> bytes:
        """A command set as P-DATA-TF PDUs (usually one)."""
        data = encode_command(command)
        step = self._max_value()
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        return b"".join(
            self._fragment(context, COMMAND_BIT | (LAST_BIT if i == len(pieces) - 1 else 0), p)
            for i, p in enumerate(pieces)
        )

    def send_command(self, context: int, command: Command) -> None:
        self.sock.sendall(self.command_bytes(context, command))

    def send_message(self, context: int, command: Command, dataset: IO[bytes], size: int) -> None:
        """A command and the ``size`` bytes of ``dataset`` from its current position. The
        command travels with the first data set fragment in one write."""
        pending = self.command_bytes(context, command)
        step = self._max_value()
        left = size
        while True:
            piece = dataset.read(min(step, left))
            if len(piece) != min(step, left):
                raise OSError(f"data set ended {left - len(piece)} bytes early")
            left -= len(piece)
            pending += self._fragment(context, LAST_BIT if not left else 0, piece)
            self.sock.sendall(pending)
            pending = b""
            if not left:
                return

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def abort(self) -> None:
        """Send A-ABORT (best effort) and close."""
        with contextlib.suppress(OSError):
            self.sock.sendall(ABORT_PDU)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.reader.close()
        self.sock.close()
