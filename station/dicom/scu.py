"""The requesting side of an association: connect, negotiate, C-ECHO, C-STORE, release.

Blocking calls on one socket with a timeout, one message at a time; every response is
matched to its request by message ID.
"""

from __future__ import annotations

import itertools
import socket
import ssl
from typing import IO

from station.dicom.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    HAS_DATASET,
    NO_DATASET,
    VERIFICATION,
    Channel,
    Command,
    ConnectionClosed,
    PeerAborted,
    PeerReleased,
    tcp_nodelay,
)
from station.dicom.pdu import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    RELEASE_REPLY,
    RELEASE_REQUEST,
    RELEASE_RP,
    RELEASE_RQ,
    Association,
    PresentationContext,
    ProtocolError,
    Rejection,
    decode_association,
    decode_reject,
    describe_abort,
    encode_request,
)
from station.errors import StationError


class AssociationError(StationError):
    """The association could not be set up or broke down; worth retrying later."""


class ConnectFailed(AssociationError):
    pass


class AssociationRejected(AssociationError):
    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"rejected the association: {rejection}")
        self.rejection = rejection


class Requestor:
    """An established association this side asked for."""

    def __init__(self, channel: Channel, negotiated: Association) -> None:
        self.channel = channel
        self.negotiated = negotiated
        self._message_ids = itertools.count(1)
        self._contexts = {
            (cx.abstract_syntax, cx.transfer_syntaxes[0]): cx.id
            for cx in negotiated.contexts
            if cx.accepted and cx.transfer_syntaxes
        }

    @classmethod
    def connect(
        cls,
        address: tuple[str, int],
        called_ae: str,
        calling_ae: str,
        contexts: list[tuple[str, list[str]]],
        max_pdu: int,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> Requestor:
        """Connect (over TLS with ``tls``) and negotiate; raise ConnectFailed,
        AssociationRejected or AssociationError (aborted, or no valid answer within
        ``timeout``)."""
        try:
            sock = socket.create_connection(address, timeout=timeout)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect: {exc.strerror or exc}") from exc
        tcp_nodelay(sock)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=address[0])
            except OSError as exc:  # ssl.SSLError included; the handshake has ``timeout``
                sock.close()
                raise ConnectFailed(f"TLS handshake failed: {exc}") from exc
        channel = Channel(sock)
        channel.max_receive = max_pdu
        proposed = [
            PresentationContext(2 * i + 1, abstract, list(syntaxes))
            for i, (abstract, syntaxes) in enumerate(contexts)
        ]
        request = Association(called_ae, calling_ae, proposed, max_pdu=max_pdu)
        try:
            channel.send_raw(encode_request(request))
            kind, length = channel.read_pdu_header()
            body = channel.read(length)
        except (OSError, ConnectionClosed, ProtocolError) as exc:
            channel.close()
            raise AssociationError(
                f"aborted the association request (or did not answer it): {exc}"
            ) from exc
        if kind == ASSOCIATE_RJ:
            channel.close()
            raise AssociationRejected(decode_reject(body))
        if kind != ASSOCIATE_AC:
            channel.close()
            if kind == ABORT:
                raise AssociationError(f"aborted the association request ({describe_abort(body)})")
            raise AssociationError(
                f"answered with PDU type 0x{kind:02X} to the association request"
            )
        answer = decode_association(body, kind)
        results = {cx.id: cx for cx in answer.contexts}
        for cx in proposed:
            got = results.get(cx.id)
            if got is not None and got.result is not None:
                cx.result = got.result
                if got.accepted and got.transfer_syntaxes:
                    cx.transfer_syntaxes = got.transfer_syntaxes[:1]
        channel.max_send = answer.max_pdu
        request.max_pdu = answer.max_pdu
        return cls(channel, request)

    def accepted(self) -> dict[str, set[str]]:
        """SOP class -> the transfer syntaxes the peer accepted for it."""
        result: dict[str, set[str]] = {}
        for sop_class, syntax in self._contexts:
            result.setdefault(sop_class, set()).add(syntax)
        return result

    def _exchange(
        self, context: int, command: Command, dataset: IO[bytes] | None, size: int
    ) -> Command:
        message_id = next(self._message_ids) & 0xFFFF
        command["MessageID"] = message_id
        try:
            if dataset is None:
                self.channel.send_command(context, command)
            else:
                self.channel.send_message(context, command, dataset, size)
            _context, response = self.channel.receive_command()
        except (OSError, ConnectionClosed, PeerAborted, PeerReleased, ProtocolError) as exc:
            self.channel.abort()
            if isinstance(exc, PeerAborted):
                detail = f"the peer aborted the association ({exc})"
            elif isinstance(exc, PeerReleased):
                detail = "the peer asked to release instead of answering"
            elif isinstance(exc, TimeoutError):
                detail = f"no answer within {self.channel.sock.gettimeout() or 0:g} s"
            else:
                detail = f"{type(exc).__name__}: {exc}"
            raise AssociationError(f"no response: {detail}") from exc
        if response.get("MessageIDBeingRespondedTo") != message_id:
            self.channel.abort()
            raise AssociationError(
                f"response to message {response.get('MessageIDBeingRespondedTo')}, "
                f"expected {message_id}"
            )
        return response

    def echo(self) -> int:
        context = self._contexts.get((VERIFICATION, "1.2.840.10008.1.2"))
        if context is None:
            context = next(
                (
                    cid
                    for (abstract, _ts), cid in self._contexts.items()
                    if abstract == VERIFICATION
                ),
                None,
            )
        if context is None:
            raise AssociationError("the peer accepted no Verification context")
        command: Command = {
            "CommandField": C_ECHO_RQ,
            "AffectedSOPClassUID": VERIFICATION,
            "CommandDataSetType": NO_DATASET,
        }
        return int(self._exchange(context, command, None, 0).get("Status", -1))

    def store(
        self, sop_class: str, sop_uid: str, syntax: str, dataset: IO[bytes], size: int
    ) -> Command:
        """C-STORE ``size`` bytes of an encoded data set from ``dataset``'s position, in
        ``syntax`` (which the peer must have accepted for ``sop_class``); the response."""
        context = self._contexts[(sop_class, syntax)]
        command: Command = {
            "CommandField": C_STORE_RQ,
            "AffectedSOPClassUID": sop_class,
            "AffectedSOPInstanceUID": sop_uid,
            "Priority": 0,
            "CommandDataSetType": HAS_DATASET,
        }
        return self._exchange(context, command, dataset, size)

    def release(self) -> None:
        """Ask to release, wait for the reply (briefly), close."""
        try:
            self.channel.send_raw(RELEASE_REQUEST)
            for _ in range(16):  # skip stray P-DATA; answer a release collision
                kind, length = self.channel.read_pdu_header()
                self.channel.read(length)
                if kind == RELEASE_RQ:
                    self.channel.send_raw(RELEASE_REPLY)
                if kind in (RELEASE_RP, ABORT):
                    break
        except (OSError, ConnectionClosed, ProtocolError):
            pass
        self.channel.close()

    def abort(self) -> None:
        self.channel.abort()
