"""station/net against pynetdicom's PDU classes (the reference implementation): every PDU
and item type encoded by one side and decoded by the other, both ways, and DIMSE command
sets likewise; plus the size cap of every PDU type, checked before a body is read."""

from __future__ import annotations

import io
import socket
import struct

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RQ as PynetdicomStoreRQ
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_items import (
    AbstractSyntaxSubItem,
    ApplicationContextItem,
    AsynchronousOperationsWindowSubItem,
    ImplementationClassUIDSubItem,
    ImplementationVersionNameSubItem,
    MaximumLengthSubItem,
    PresentationContextItemAC,
    PresentationContextItemRQ,
    SCP_SCU_RoleSelectionSubItem,
    TransferSyntaxSubItem,
    UserIdentitySubItemRQ,
    UserInformationItem,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext as PynetdicomContext

from station.dicom.dimse import (
    COMMAND_BIT,
    LAST_BIT,
    Channel,
    PeerAborted,
    decode_command,
    encode_command,
)
from station.dicom.pdu import (
    ABORT,
    ABORT_PDU,
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    MAX_ASSOCIATE_BYTES,
    PDU_HEADER,
    RELEASE_REPLY,
    RELEASE_REQUEST,
    RELEASE_RP,
    RELEASE_RQ,
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
from station.dicom.pdu import (
    P_DATA_TF as P_DATA_TF_TYPE,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG = "1.2.840.10008.1.2.4.50"


def body(pdu: bytes) -> bytes:
    _kind, length = PDU_HEADER.unpack_from(pdu)
    assert len(pdu) == PDU_HEADER.size + length
    return pdu[PDU_HEADER.size :]


def ours(kind: int = ASSOCIATE_RQ) -> Association:
    contexts = [
        PresentationContext(1, CT, [EXPLICIT, IMPLICIT]),
        PresentationContext(3, MR, [JPEG]),
    ]
    if kind == ASSOCIATE_AC:
        contexts = [
            PresentationContext(1, "", [EXPLICIT], 0),
            PresentationContext(3, "", [JPEG], 3),
        ]
    return Association(
        called_ae="PACS",
        calling_ae="STATION",
        contexts=contexts,
        max_pdu=16384,
        roles={CT: (1, 0), MR: (0, 1)},
        async_window=(3, 5),
    )


def theirs(accept: bool = False) -> A_ASSOCIATE:
    """pynetdicom's A-ASSOCIATE primitive with every user information item it knows."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.called_ae_title = "PACS"
    primitive.calling_ae_title = "STATION"
    contexts = []
    for cid, abstract, syntaxes, result in ((1, CT, [EXPLICIT, IMPLICIT], 0), (3, MR, [JPEG], 4)):
        cx = PynetdicomContext()
        cx.context_id = cid
        cx.abstract_syntax = abstract
        for syntax in syntaxes[: 1 if accept else None]:
            cx.add_transfer_syntax(syntax)
        if accept:
            cx.result = result
        contexts.append(cx)
    if accept:
        primitive.presentation_context_definition_results_list = contexts
        primitive.result = 0
    else:
        primitive.presentation_context_definition_list = contexts
    items: list[object] = []
    length = MaximumLengthNotification()
    length.maximum_length_received = 32768
    items.append(length)
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    items.append(uid)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM_304"
    items.append(version)
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 2
    window.maximum_number_operations_performed = 7
    items.append(window)
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT
    role.scu_role, role.scp_role = True, False
    items.append(role)
    if not accept:
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = b"user"
        identity.secondary_field = b"secret"
        items.append(identity)
    primitive.user_information = items
    return primitive


def test_our_request_decoded_by_pynetdicom() -> None:
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(encode_request(ours()))
    assert pdu.protocol_version == 1
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("PACS", "STATION")
    kinds = [type(item) for item in pdu.variable_items]
    assert kinds == [
        ApplicationContextItem,
        PresentationContextItemRQ,
        PresentationContextItemRQ,
        UserInformationItem,
    ]
    assert pdu.application_context_name == APPLICATION_CONTEXT
    contexts = [
        (cx.context_id, cx.abstract_syntax, cx.transfer_syntax) for cx in pdu.presentation_context
    ]
    assert contexts == [(1, CT, [EXPLICIT, IMPLICIT]), (3, MR, [JPEG])]
    for item in pdu.variable_items[1:3]:
        assert {type(sub) for sub in item.abstract_transfer_syntax_sub_items} == {
            AbstractSyntaxSubItem,
            TransferSyntaxSubItem,
        }
    user = pdu.user_information
    subs = {type(sub): sub for sub in user.user_data}
    assert subs[MaximumLengthSubItem].maximum_length_received == 16384
    assert subs[ImplementationClassUIDSubItem].implementation_class_uid == ours().implementation_uid
    version = subs[ImplementationVersionNameSubItem].implementation_version_name
    assert version == ours().implementation_version
    window = subs[AsynchronousOperationsWindowSubItem]
    assert (
        window.maximum_number_operations_invoked,
        window.maximum_number_operations_performed,
    ) == (
        3,
        5,
    )
    roles = {
        sub.sop_class_uid: (sub.scu_role, sub.scp_role)
        for sub in user.user_data
        if isinstance(sub, SCP_SCU_RoleSelectionSubItem)
    }
    assert roles == {CT: (1, 0), MR: (0, 1)}
    assert pdu.encode() == encode_request(ours())  # and pynetdicom encodes it back the same


def test_pynetdicom_request_decoded_by_us() -> None:
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(theirs())
    data = pdu.encode()
    assert data[0] == ASSOCIATE_RQ
    check_length(data[0], len(body(data)))
    assoc = decode_association(body(data), ASSOCIATE_RQ)
    assert (assoc.called_ae, assoc.calling_ae) == ("PACS", "STATION")
    got = [(cx.id, cx.abstract_syntax, cx.transfer_syntaxes, cx.result) for cx in assoc.contexts]
    assert got == [(1, CT, [EXPLICIT, IMPLICIT], None), (3, MR, [JPEG], None)]
    assert assoc.max_pdu == 32768
    assert assoc.implementation_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert assoc.implementation_version == "PYNETDICOM_304"
    assert assoc.async_window == (2, 7)
    assert assoc.roles == {CT: (1, 0)}
    # The user identity item (0x58) is parsed past, not answered (PS3.7 D.3.3.7 allows it).
    user = pdu.user_information
    assert any(isinstance(sub, UserIdentitySubItemRQ) for sub in user.user_data)


def test_our_accept_decoded_by_pynetdicom() -> None:
    pdu = A_ASSOCIATE_AC()
    pdu.decode(encode_accept(ours(ASSOCIATE_AC)))
    assert (pdu.called_ae_title, pdu.calling_ae_title) == ("PACS", "STATION")
    assert pdu.application_context_name == APPLICATION_CONTEXT
    items = [item for item in pdu.variable_items if isinstance(item, PresentationContextItemAC)]
    got = [(item.context_id, item.result, item.transfer_syntax) for item in items]
    assert got == [(1, 0, EXPLICIT), (3, 3, JPEG)]
    user = {type(sub): sub for sub in pdu.user_information.user_data}
    assert user[MaximumLengthSubItem].maximum_length_received == 16384
    assert pdu.encode() == encode_accept(ours(ASSOCIATE_AC))


def test_pynetdicom_accept_decoded_by_us() -> None:
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(theirs(accept=True))
    assoc = decode_association(body(pdu.encode()), ASSOCIATE_AC)
    got = [(cx.id, cx.result, cx.transfer_syntaxes) for cx in assoc.contexts]
    assert got == [(1, 0, [EXPLICIT]), (3, 4, [JPEG])]
    assert (assoc.max_pdu, assoc.async_window, assoc.roles) == (32768, (2, 7), {CT: (1, 0)})
    assert assoc.implementation_version == "PYNETDICOM_304"


@pytest.mark.parametrize(
    ("result", "source", "reason", "words"),
    [
        (1, 1, 7, "rejected-permanent by the service-user: called-AE-title-not-recognized"),
        (1, 1, 3, "rejected-permanent by the service-user: calling-AE-title-not-recognized"),
        (1, 1, 2, "application-context-name-not-supported"),
        (1, 2, 2, "by the service-provider (ACSE): protocol-version-not-supported"),
        (2, 3, 1, "rejected-transient by the service-provider (presentation): temporary-"),
        (2, 3, 2, "local-limit-exceeded (result 2, source 3, reason 2)"),
    ],
)
def test_reject_both_ways(result: int, source: int, reason: int, words: str) -> None:
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(encode_reject(Rejection(result, source, reason)))
    assert (pdu.result, pdu.source, pdu.reason_diagnostic) == (result, source, reason)
    rejection = decode_reject(body(pdu.encode()))
    assert rejection == Rejection(result, source, reason)
    assert words in str(rejection)
    assert rejection.permanent == (result == 1)


def test_release_and_abort_both_ways() -> None:
    assert A_RELEASE_RQ().encode() == RELEASE_REQUEST
    assert A_RELEASE_RP().encode() == RELEASE_REPLY
    for data, cls in ((RELEASE_REQUEST, A_RELEASE_RQ), (RELEASE_REPLY, A_RELEASE_RP)):
        pdu = cls()
        pdu.decode(data)
        assert pdu.encode() == data
    abort = A_ABORT_RQ()
    abort.decode(ABORT_PDU)
    assert (abort.source, abort.reason_diagnostic) == (0, 0)
    for source, reason, words in (
        (0, 0, "A-ABORT by the service-user"),
        (2, 1, "A-ABORT by the service-provider: unrecognized-PDU"),
        (2, 2, "unexpected-PDU"),
        (2, 4, "unrecognized-PDU-parameter"),
        (2, 5, "unexpected-PDU-parameter"),
        (2, 6, "invalid-PDU-parameter-value"),
    ):
        theirs_abort = A_ABORT_RQ()
        theirs_abort.source, theirs_abort.reason_diagnostic = source, reason
        data = theirs_abort.encode()
        assert data[0] == ABORT
        check_length(ABORT, len(body(data)))
        assert words in describe_abort(body(data))


def channel_pair() -> tuple[Channel, socket.socket]:
    ours_end, peer = socket.socketpair()
    ours_end.settimeout(5)
    return Channel(ours_end), peer


def test_p_data_and_commands_both_ways() -> None:
    """A C-STORE request: command and data set fragments, each way."""
    command = {
        "CommandField": 0x0001,
        "MessageID": 7,
        "AffectedSOPClassUID": CT,
        "AffectedSOPInstanceUID": "1.2.3.4.5",
        "Priority": 0,
        "CommandDataSetType": 0x0000,
    }
    channel, peer = channel_pair()
    try:
        # ours -> pynetdicom: the P-DATA-TF and the command set in it
        sent = channel.command_bytes(1, command)
        pdu = P_DATA_TF()
        pdu.decode(sent)
        (pdv,) = pdu.presentation_data_value_items
        assert pdv.presentation_context_id == 1
        assert pdv.presentation_data_value[0] == COMMAND_BIT | LAST_BIT
        decoded = decode_dataset(io.BytesIO(pdv.presentation_data_value[1:]), True, True)
        assert decoded.CommandField == 1 and decoded.MessageID == 7
        assert decoded.AffectedSOPInstanceUID == "1.2.3.4.5"
        assert decoded.CommandGroupLength == len(pdv.presentation_data_value[1:]) - 12

        # pynetdicom -> ours: its C-STORE-RQ message, fragmented its way
        message = PynetdicomStoreRQ()
        ds = Dataset()
        ds.CommandField = 1
        ds.MessageID = 9
        ds.AffectedSOPClassUID = MR
        ds.AffectedSOPInstanceUID = "1.2.3.4.6"
        ds.Priority = 2
        ds.CommandDataSetType = 0x0000
        message.command_set = ds
        message.data_set = io.BytesIO(b"\x08\x00\x18\x00" + b"x" * 1000)
        for primitive in message.encode_msg(context_id=3, max_pdu_length=256):
            their_pdu = P_DATA_TF()
            their_pdu.from_primitive(primitive)
            peer.sendall(their_pdu.encode())
        context, received = channel.receive_command()
        assert context == 3
        assert received == {
            "CommandField": 1,
            "MessageID": 9,
            "AffectedSOPClassUID": MR,
            "AffectedSOPInstanceUID": "1.2.3.4.6",
            "Priority": 2,
            "CommandDataSetType": 0,
        }
        pieces: list[bytes] = []
        assert channel.receive_dataset(3, lambda piece: pieces.append(bytes(piece))) == 1004
        assert b"".join(pieces) == b"\x08\x00\x18\x00" + b"x" * 1000

        # and a primitive P-DATA built by hand: one PDV per PDU
        primitive = P_DATA()
        primitive.presentation_data_value_list = [
            [5, bytes([COMMAND_BIT | LAST_BIT]) + encode_command(command)]
        ]
        their_pdu = P_DATA_TF()
        their_pdu.from_primitive(primitive)
        assert their_pdu.encode() == channel.command_bytes(5, command)
        assert decode_command(encode_command(command)) == command

        peer.sendall(ABORT_PDU)
        with pytest.raises(PeerAborted, match="A-ABORT by the service-user"):
            channel.receive_command()
    finally:
        channel.close()
        peer.close()


@pytest.mark.parametrize(
    ("kind", "length", "cap"),
    [
        (ASSOCIATE_RQ, MAX_ASSOCIATE_BYTES + 1, MAX_ASSOCIATE_BYTES),
        (ASSOCIATE_AC, MAX_ASSOCIATE_BYTES + 1, MAX_ASSOCIATE_BYTES),
        (ASSOCIATE_RJ, 5, 4),
        (RELEASE_RQ, 5, 4),
        (RELEASE_RP, 0xFFFFFFFF, 4),
        (ABORT, 5, 4),
        (P_DATA_TF_TYPE, 16385, 16384),
    ],
)
def test_every_pdu_type_has_a_cap_checked_before_its_body(kind: int, length: int, cap: int) -> None:
    check_length(kind, cap, 16384)  # at the cap: fine
    channel, peer = channel_pair()
    channel.max_receive = 16384
    try:
        peer.sendall(PDU_HEADER.pack(kind, length))  # a header only: no body follows
        with pytest.raises(ProtocolError, match=f"of {length} bytes, more than the {cap} accepted"):
            channel.read_pdu_header()  # refused at once, not waiting for the body
    finally:
        channel.close()
        peer.close()


def test_an_unknown_pdu_type_is_refused_by_its_header() -> None:
    with pytest.raises(ProtocolError, match="unknown PDU type 0x08"):
        check_length(0x08, 10)
    assert struct.calcsize(">BxI") == PDU_HEADER.size
