"""The DICOM upper layer's association PDUs (PS3.8 section 9.3): encode and decode.

Only what a storage router needs: A-ASSOCIATE-RQ/AC/RJ with presentation contexts and the
user information items of PS3.7 annex D (maximum length, implementation class and version,
asynchronous operations window, SCP/SCU role selection); A-RELEASE-RQ/RP; A-ABORT.
Extended negotiation and user identity items are parsed past and not answered, which
PS3.7 allows (the requestor then proceeds without them). P-DATA-TF lives in dimse.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from station.errors import StationError

ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "2.25.2694100019044424333598667657520948815"
IMPLEMENTATION_VERSION = "STATION_01"

# Presentation context results (PS3.8 table 9-18).
ACCEPTED = 0
USER_REJECTED = 1
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ result, source and reason (PS3.8 table 9-21) as the station uses them.
REJECTED_PERMANENT = 1
REJECTED_TRANSIENT = 2
SOURCE_USER = 1
SOURCE_PROVIDER_ACSE = 2
SOURCE_PROVIDER_PRESENTATION = 3
REASON_APPLICATION_CONTEXT_NOT_SUPPORTED = 2  # source: service user
REASON_CALLING_AE_NOT_RECOGNIZED = 3
REASON_CALLED_AE_NOT_RECOGNIZED = 7
REASON_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # source: service provider (ACSE)
REASON_LOCAL_LIMIT_EXCEEDED = 2  # source: service provider (presentation)

PDU_HEADER = struct.Struct(">BxI")
# Size caps, checked on the header before a body is read (PS3.8 9.3): an association
# request or answer of 128 presentation contexts, each with every standard transfer syntax,
# is some 360 KiB; the reject, release and abort PDUs have a 4-byte body. A P-DATA-TF may be
# as long as the maximum length this side announced (its user information item 0x51).
MAX_ASSOCIATE_BYTES = 1 << 20
FIXED_BODY_BYTES = 4
PDU_NAMES = {
    ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    ASSOCIATE_AC: "A-ASSOCIATE-AC",
    ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    RELEASE_RQ: "A-RELEASE-RQ",
    RELEASE_RP: "A-RELEASE-RP",
    ABORT: "A-ABORT",
}
ITEM_HEADER = struct.Struct(">BxH")

# PS3.8 table 9-21: the source of an A-ASSOCIATE-RJ and, per source, its reasons.
_REJECT_SOURCES = {
    1: "the service-user",
    2: "the service-provider (ACSE)",
    3: "the service-provider (presentation)",
}
_REJECT_REASONS = {
    (SOURCE_USER, 1): "no-reason-given",
    (SOURCE_USER, 2): "application-context-name-not-supported",
    (SOURCE_USER, 3): "calling-AE-title-not-recognized",
    (SOURCE_USER, 7): "called-AE-title-not-recognized",
    (2, 1): "no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (SOURCE_PROVIDER_PRESENTATION, 1): "temporary-congestion",
    (SOURCE_PROVIDER_PRESENTATION, 2): "local-limit-exceeded",
}
# PS3.8 table 9-26: A-ABORT source and, from the service-provider, reason.
_ABORT_SOURCES = {0: "the service-user", 2: "the service-provider"}
_ABORT_REASONS = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU-parameter",
    5: "unexpected-PDU-parameter",
    6: "invalid-PDU-parameter-value",
}


def describe_abort(body: bytes) -> str:
    """An A-ABORT's source and reason in PS3.8's words (table 9-26)."""
    if len(body) < 4:
        return f"A-ABORT of {len(body)} bytes, without source and reason"
    source, reason = body[2], body[3]
    who = _ABORT_SOURCES.get(source, f"source {source}")
    if source != 2:
        return f"A-ABORT by {who}"
    return f"A-ABORT by {who}: {_ABORT_REASONS.get(reason, f'reason {reason}')}"


class ProtocolError(StationError):
    """The peer sent something that is not a valid PDU here; the association is aborted."""


def check_length(kind: int, length: int, max_data: int = 0) -> None:
    """Refuse a PDU by its header, before its body is read: an unknown type, or a body longer
    than its type's cap (``max_data``: the P-DATA-TF limit this side announced, 0 = none)."""
    name = PDU_NAMES.get(kind)
    if name is None:
        raise ProtocolError(f"unknown PDU type 0x{kind:02X} ({length} bytes)")
    if kind in (ASSOCIATE_RQ, ASSOCIATE_AC):
        cap = MAX_ASSOCIATE_BYTES
    elif kind == P_DATA_TF:
        cap = max_data
    else:
        cap = FIXED_BODY_BYTES
    if cap and length > cap:
        raise ProtocolError(f"{name} of {length} bytes, more than the {cap} accepted")


@dataclass
class PresentationContext:
    """One proposed presentation context and, once answered, its result and syntax."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]
    result: int | None = None

    @property
    def accepted(self) -> bool:
        return self.result == ACCEPTED


@dataclass
class Association:
    """The negotiated (or proposed) parameters of an association, for either side."""

    called_ae: str
    calling_ae: str
    contexts: list[PresentationContext]
    max_pdu: int = 0  # the largest P-DATA-TF the sender of this PDU takes; 0 = no limit
    implementation_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version: str = IMPLEMENTATION_VERSION
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)  # SOP class: (SCU, SCP)
    async_window: tuple[int, int] | None = None
    protocol_version: int = 1  # a bit field: bit 0 is version 1, the only one defined
    application_context: str = APPLICATION_CONTEXT


@dataclass(frozen=True)
class Rejection:
    result: int
    source: int
    reason: int

    @property
    def permanent(self) -> bool:
        """rejected-permanent: asking again will not help until someone changes a setting.
        Any other result value is taken as transient."""
        return self.result == REJECTED_PERMANENT

    def __str__(self) -> str:
        kind = "rejected-permanent" if self.permanent else "rejected-transient"
        who = _REJECT_SOURCES.get(self.source, f"source {self.source}")
        text = _REJECT_REASONS.get((self.source, self.reason), f"reason {self.reason}")
        return (
            f"{kind} by {who}: {text} "
            f"(result {self.result}, source {self.source}, reason {self.reason})"
        )


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def _item(kind: int, value: bytes) -> bytes:
    return ITEM_HEADER.pack(kind, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(kind, len(body)) + body


def _ae(title: str) -> bytes:
    """A title decoded from a peer's request holds U+FFFD for each byte outside ASCII; it
    goes back as "?" (the A-ASSOCIATE-AC's AE fields are not tested, PS3.8 9.3.3)."""
    return title.encode("ascii", "replace").ljust(16)[:16]


def _header(assoc: Association) -> bytes:
    return struct.pack(">H2x", 1) + _ae(assoc.called_ae) + _ae(assoc.calling_ae) + bytes(32)


def _user_information(assoc: Association, roles: dict[str, tuple[int, int]]) -> bytes:
    items = [
        _item(0x51, struct.pack(">I", assoc.max_pdu)),
        _item(0x52, _uid(assoc.implementation_uid)),
    ]
    if assoc.async_window is not None:
        items.append(_item(0x53, struct.pack(">HH", *assoc.async_window)))
    for uid, (scu, scp) in roles.items():
        raw = _uid(uid)
        items.append(_item(0x54, struct.pack(">H", len(raw)) + raw + bytes((scu, scp))))
    items.append(_item(0x55, assoc.implementation_version.encode("ascii")))
    return _item(0x50, b"".join(items))


def encode_request(assoc: Association) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``assoc.contexts``."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for cx in assoc.contexts:
        sub = _item(0x30, _uid(cx.abstract_syntax)) + b"".join(
            _item(0x40, _uid(ts)) for ts in cx.transfer_syntaxes
        )
        items.append(_item(0x20, bytes((cx.id, 0, 0, 0)) + sub))
    items.append(_user_information(assoc, assoc.roles))
    return _pdu(ASSOCIATE_RQ, _header(assoc) + b"".join(items))


def encode_accept(assoc: Association) -> bytes:
    """An A-ASSOCIATE-AC answering every context of ``assoc`` with its result; an accepted
    context carries its one transfer syntax, a rejected one the first proposed."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for cx in assoc.contexts:
        syntax = cx.transfer_syntaxes[0] if cx.transfer_syntaxes else ""
        body = bytes((cx.id, 0, cx.result or 0, 0)) + _item(0x40, _uid(syntax))
        items.append(_item(0x21, body))
    items.append(_user_information(assoc, assoc.roles))
    return _pdu(ASSOCIATE_AC, _header(assoc) + b"".join(items))


def encode_reject(rejection: Rejection) -> bytes:
    return _pdu(ASSOCIATE_RJ, bytes((0, rejection.result, rejection.source, rejection.reason)))


RELEASE_REQUEST = _pdu(RELEASE_RQ, bytes(4))
RELEASE_REPLY = _pdu(RELEASE_RP, bytes(4))
ABORT_PDU = _pdu(ABORT, bytes(4))


def decode_reject(body: bytes) -> Rejection:
    if len(body) < 4:
        raise ProtocolError(f"A-ASSOCIATE-RJ of {len(body)} bytes, expected 4")
    return Rejection(body[1], body[2], body[3])


def _items(data: bytes, where: str) -> list[tuple[int, bytes]]:
    """Split a run of items (type, reserved, 16-bit length, value)."""
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ProtocolError(f"{where}: item header cut short at byte {offset}")
        kind, length = ITEM_HEADER.unpack_from(data, offset)
        end = offset + 4 + length
        if end > len(data):
            raise ProtocolError(
                f"{where}: item 0x{kind:02X} of {length} bytes runs past the end at byte {offset}"
            )
        items.append((kind, data[offset + 4 : end]))
        offset = end
    return items


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip("\0 ")


def decode_association(body: bytes, kind: int) -> Association:
    """Decode an A-ASSOCIATE-RQ (``kind`` ASSOCIATE_RQ) or -AC body."""
    name = "A-ASSOCIATE-RQ" if kind == ASSOCIATE_RQ else "A-ASSOCIATE-AC"
    if len(body) < 68:
        raise ProtocolError(f"{name} of {len(body)} bytes is shorter than its fixed part")
    assoc = Association(called_ae=_text(body[4:20]), calling_ae=_text(body[20:36]), contexts=[])
    assoc.implementation_uid = assoc.implementation_version = assoc.application_context = ""
    assoc.protocol_version = struct.unpack_from(">H", body)[0]
    for item, value in _items(body[68:], name):
        if item == 0x10:
            assoc.application_context = _text(value)
        elif item in (0x20, 0x21):
            if len(value) < 4:
                raise ProtocolError(f"{name}: presentation context item of {len(value)} bytes")
            cx = PresentationContext(value[0], "", [], None if item == 0x20 else value[2])
            for sub, raw in _items(value[4:], f"{name} presentation context {value[0]}"):
                if sub == 0x30:
                    cx.abstract_syntax = _text(raw)
                elif sub == 0x40:
                    cx.transfer_syntaxes.append(_text(raw))
            assoc.contexts.append(cx)
        elif item == 0x50:
            _decode_user_information(assoc, value, name)
    return assoc


def _decode_user_information(assoc: Association, value: bytes, name: str) -> None:
    for sub, raw in _items(value, f"{name} user information"):
        if sub == 0x51 and len(raw) == 4:
            assoc.max_pdu = struct.unpack(">I", raw)[0]
        elif sub == 0x52:
            assoc.implementation_uid = _text(raw)
        elif sub == 0x55:
            assoc.implementation_version = _text(raw)
        elif sub == 0x53 and len(raw) == 4:
            assoc.async_window = struct.unpack(">HH", raw)
        elif sub == 0x54 and len(raw) >= 2:
            length = struct.unpack_from(">H", raw)[0]
            if len(raw) == 2 + length + 2:
                uid = _text(raw[2 : 2 + length])
                assoc.roles[uid] = (raw[2 + length], raw[3 + length])
