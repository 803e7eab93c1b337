"""The C-STORE SCP: makes each received instance durable, then answers, and nothing more.

One thread per association, blocking reads on its socket. The data set of a C-STORE is
written to a file under the spool's ``tmp`` folder as its fragments arrive, behind a File
Meta Information header built from the request (never decoded, memory stays flat). The
file is then checked (UIDs, completeness), moved into the spool, fsynced and journaled, and
only then answered 0x0000. Failures get their own status and an error comment: 0xA700 when
the disk is short, 0xC210 when the data set cannot be understood (not DICOM, a missing or
invalid UID, truncated), 0xA900 when the data set's SOP Instance UID differs from the
command's. Series logic, hooks and sending happen elsewhere, so the sending modality is
never held up by them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from pathlib import Path

from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from station.config import ListenConfig
from station.dicomfile import file_meta
from station.errors import RejectedInstance
from station.logs import series_fields
from station.net.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    NO_DATASET,
    SUCCESS,
    UNRECOGNIZED_OPERATION,
    Channel,
    Command,
    ConnectionClosed,
    PeerAborted,
    PeerReleased,
    response_to,
)
from station.net.pdu import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTED,
    ASSOCIATE_RQ,
    PDU_HEADER,
    REASON_CALLING_AE_NOT_RECOGNIZED,
    REASON_LOCAL_LIMIT_EXCEEDED,
    REJECTED_PERMANENT,
    REJECTED_TRANSIENT,
    RELEASE_REPLY,
    SOURCE_PROVIDER_PRESENTATION,
    SOURCE_USER,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
    Association,
    ProtocolError,
    Rejection,
    decode_association,
    encode_accept,
    encode_reject,
)
from station.net.scu import VERIFICATION, tcp_nodelay
from station.receive.intake import Intake, Origin
from station.spool import DATASET_MISMATCH, DISK_FULL, OUT_OF_RESOURCES, identify, is_uid

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # for a new connection to send its A-ASSOCIATE-RQ
NETWORK_TIMEOUT = 60.0  # an idle association is aborted after this
MAX_REQUEST_BYTES = 1 << 20
WRITE_BUFFER = 256 * 1024


def _accepts(abstract_syntax: str) -> bool:
    """Verification, and every storage SOP class: known, private or not yet known (a router
    must take what the modality sends). Other known services (query, worklist...) are not
    offered here."""
    service = uid_to_service_class(abstract_syntax)
    return abstract_syntax == VERIFICATION or service in (StorageServiceClass, ServiceClass)


class StoreSCP:
    def __init__(self, ae_title: str, listen: ListenConfig, intake: Intake) -> None:
        self.ae_title = ae_title
        self.listen = listen
        self.intake = intake
        self.metrics = intake.metrics
        self.server: socket.socket | None = None
        self.port = listen.port
        self._channels: dict[Channel, bool] = {}  # connection -> association established
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.create_server((self.listen.host, self.listen.port), backlog=64)
        self.server = server
        self.port = server.getsockname()[1]
        threading.Thread(
            target=self._accept_loop, args=(server,), name="scp-accept", daemon=True
        ).start()

    def stop(self, drain_seconds: float = 20) -> None:
        """Take no new associations; let those in progress finish, then abort the rest."""
        if self.server is None:
            return
        server, self.server = self.server, None
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()
        with self._lock:
            for channel, established in list(self._channels.items()):
                if not established:
                    channel.close()  # a connection that never became an association
        deadline = time.monotonic() + drain_seconds
        while self._established() and time.monotonic() < deadline:
            time.sleep(0.05)
        for channel in self._established():
            log.warning("aborting association at shutdown")
            channel.abort()

    def _established(self) -> list[Channel]:
        with self._lock:
            return [channel for channel, established in self._channels.items() if established]

    def _accept_loop(self, server: socket.socket) -> None:
        while True:
            try:
                sock, address = server.accept()
            except OSError:
                return  # closed by stop()
            tcp_nodelay(sock)
            channel = Channel(sock)
            with self._lock:
                crowded = len(self._channels) >= 4 * self.listen.max_associations + 16
                if not crowded:
                    self._channels[channel] = False
            if crowded:
                log.warning("closing connection from %s:%s: too many connections", *address[:2])
                channel.close()
                continue
            peer = f"{address[0]}:{address[1]}"
            threading.Thread(
                target=self._serve, args=(channel, peer), name=f"assoc-{peer}", daemon=True
            ).start()

    # --- association -----------------------------------------------------------------

    def _serve(self, channel: Channel, peer: str) -> None:
        assoc = None
        try:
            assoc = self._negotiate(channel, peer)
            if assoc is not None:
                self._messages(channel, assoc, peer)
        except Exception:
            log.exception("association from %s failed", peer)
            channel.abort()
        finally:
            # Counted once established, even when negotiation failed after that point.
            with self._lock:
                established = self._channels.pop(channel, False)
                active = sum(self._channels.values())
            if established:
                self.metrics.associations_active.set(active)
            channel.close()

    def _negotiate(self, channel: Channel, peer: str) -> Association | None:
        """Answer the A-ASSOCIATE-RQ; the accepted association, or None (rejected, aborted)."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        try:
            kind, length = PDU_HEADER.unpack(channel.read_by(PDU_HEADER.size, deadline))
            if kind != ASSOCIATE_RQ:
                raise ProtocolError(
                    f"PDU type 0x{kind:02X} where an A-ASSOCIATE-RQ (0x01) was expected "
                    "(not a DICOM peer?)"
                )
            if length > MAX_REQUEST_BYTES:
                raise ProtocolError(
                    f"A-ASSOCIATE-RQ of {length} bytes, more than the {MAX_REQUEST_BYTES} accepted"
                )
            request = decode_association(channel.read_by(length, deadline), kind)
        except (OSError, ConnectionClosed, ProtocolError) as exc:
            log.info("connection from %s closed before an association: %s", peer, exc)
            channel.abort()
            return None
        calling = request.calling_ae
        allowed = self.listen.allowed_calling_aes
        rejection = None
        if allowed and calling not in allowed:
            rejection = Rejection(REJECTED_PERMANENT, SOURCE_USER, REASON_CALLING_AE_NOT_RECOGNIZED)
        else:
            with self._lock:
                if sum(self._channels.values()) >= self.listen.max_associations:
                    rejection = Rejection(
                        REJECTED_TRANSIENT,
                        SOURCE_PROVIDER_PRESENTATION,
                        REASON_LOCAL_LIMIT_EXCEEDED,
                    )
                else:
                    self._channels[channel] = True
                    active = sum(self._channels.values())
        if rejection is not None:
            log.warning(
                "rejected association from %r at %s (not in listen.allowed_calling_aes or "
                "too many associations)",
                calling,
                peer,
            )
            with contextlib.suppress(OSError):  # the peer may be gone already
                channel.send_raw(encode_reject(rejection))
            return None
        self.metrics.associations_active.set(active)
        for cx in request.contexts:
            # Stored as it comes: the sender's preferred syntax is the one to keep. It goes
            # into the spool file's meta and back into the A-ASSOCIATE-AC, so it must be a UID.
            cx.transfer_syntaxes = [ts for ts in cx.transfer_syntaxes if is_uid(ts)][:1]
            if not _accepts(cx.abstract_syntax):
                cx.result = ABSTRACT_SYNTAX_NOT_SUPPORTED
            elif not cx.transfer_syntaxes:
                cx.result = TRANSFER_SYNTAXES_NOT_SUPPORTED
            else:
                cx.result = ACCEPTED
        channel.max_send = request.max_pdu
        accept = Association(
            called_ae=request.called_ae,
            calling_ae=calling,
            contexts=request.contexts,
            max_pdu=self.listen.max_pdu_bytes,
            roles={uid: (scu, 0) for uid, (scu, _scp) in request.roles.items()},
        )
        try:
            channel.send_raw(encode_accept(accept))
        except OSError as exc:
            log.info("connection from %s closed before the association was accepted: %s", peer, exc)
            return None
        channel.sock.settimeout(NETWORK_TIMEOUT)
        return accept

    def _messages(self, channel: Channel, assoc: Association, peer: str) -> None:
        contexts = {cx.id: cx for cx in assoc.contexts if cx.accepted}
        while True:
            try:
                context_id, command = channel.receive_command()
                context = contexts.get(context_id)
                if context is None:
                    raise ProtocolError(
                        f"message on presentation context {context_id}, not accepted"
                    )
                operation = command.get("CommandField")
                if operation == C_STORE_RQ:
                    self._store(
                        channel, context_id, context.transfer_syntaxes[0], command, assoc, peer
                    )
                    continue
                if command.get("CommandDataSetType", NO_DATASET) != NO_DATASET:
                    channel.receive_dataset(context_id, lambda _piece: None)
                status = SUCCESS if operation == C_ECHO_RQ else UNRECOGNIZED_OPERATION
                channel.send_command(context_id, response_to(command, status))
            except PeerReleased:
                channel.send_raw(RELEASE_REPLY)
                return
            except PeerAborted:
                log.info("association from %s aborted by the peer", peer)
                return
            except (OSError, ConnectionClosed, ProtocolError) as exc:
                log.warning("aborting association from %s: %s", peer, exc)
                channel.abort()
                return

    # --- C-STORE ---------------------------------------------------------------------

    def _store(
        self,
        channel: Channel,
        context_id: int,
        syntax: str,
        command: Command,
        assoc: Association,
        peer: str,
    ) -> None:
        calling, called = assoc.calling_ae, assoc.called_ae
        sop_class = str(command.get("AffectedSOPClassUID", ""))
        commanded = str(command.get("AffectedSOPInstanceUID", ""))
        origin = Origin(calling, called, peer, "scp")
        try:
            incoming = self.intake.spool.claim()
        except RejectedInstance as exc:  # the disk is short: read the data set, refuse it
            channel.receive_dataset(context_id, lambda _piece: None)
            status, comment = self._refused(exc, origin, {"calling_ae": calling})
            channel.send_command(context_id, response_to(command, status, comment))
            return
        sink = _SpoolFile(incoming)
        try:
            sink.write(file_meta(sop_class, commanded, syntax, calling))
            channel.receive_dataset(context_id, sink.write)
            sink.close()
        except BaseException as exc:
            sink.discard()
            self.intake.spool.remove(incoming)
            if isinstance(exc, (OSError, ConnectionClosed, PeerAborted, ProtocolError)):
                log.warning(
                    "C-STORE of %s from %s (%s) cut off inside its data set: not "
                    "acknowledged, nothing kept",
                    commanded or "an instance",
                    calling,
                    peer,
                )
            raise
        if sink.error is not None:  # the disk filled up under the data set: refuse it
            refused = self.intake.spool.refuse(incoming, sink.error, "write the spool file")
            status, comment = self._refused(refused, origin, {"calling_ae": calling})
            channel.send_command(context_id, response_to(command, status, comment))
            return
        status, comment = self._take(incoming, commanded, origin)
        if status != SUCCESS:
            self.intake.spool.remove(incoming)
        channel.send_command(context_id, response_to(command, status, comment))

    def _refused(
        self, exc: RejectedInstance, origin: Origin, fields: dict[str, str]
    ) -> tuple[int, str]:
        self.metrics.instances_rejected.labels(exc.reason).inc()
        log.warning(
            "refused instance from %s (%s) with 0x%04X: %s",
            origin.calling_ae,
            origin.peer,
            exc.status,
            exc,
            extra=fields,
        )
        return exc.status, str(exc)

    def _take(self, incoming: Path, commanded: str, origin: Origin) -> tuple[int, str]:
        """Check and spool a received file; the status to answer and, on failure, why."""
        calling, peer = origin.calling_ae, origin.peer
        fields = {"calling_ae": calling}  # with the UIDs once they are read, for the log
        try:
            header = identify(incoming)
            fields = series_fields(header.study_uid, header.series_uid, calling)
            if commanded and commanded != header.sop_uid:
                raise RejectedInstance(
                    DATASET_MISMATCH,
                    "uid_mismatch",
                    f"data set SOP Instance UID {header.sop_uid} differs from the C-STORE "
                    f"request's {commanded}",
                )
            self.intake.take(incoming, header, origin)
        except RejectedInstance as exc:
            return self._refused(exc, origin, fields)
        except OSError as exc:
            reason = "disk_full" if exc.errno in DISK_FULL else "internal"
            self.metrics.instances_rejected.labels(reason).inc()
            log.error("cannot store instance from %s (%s): %s", calling, peer, exc, extra=fields)
            return OUT_OF_RESOURCES, f"cannot store: {os.strerror(exc.errno or errno.EIO)}"
        except Exception:
            self.metrics.instances_rejected.labels("internal").inc()
            log.exception("failed to store an instance from %s (%s)", calling, peer, extra=fields)
            return OUT_OF_RESOURCES, "internal error while storing"
        return SUCCESS, ""


class _SpoolFile:
    """Where a C-STORE's data set is written as it arrives. A write that fails (the disk is
    full) is remembered and the rest of the data set is read and dropped, so the request
    can still be answered (0xA700) instead of the association being aborted."""

    def __init__(self, path: Path) -> None:
        self._fh = open(os.open(path, os.O_WRONLY), "wb", buffering=WRITE_BUFFER)  # noqa: SIM115
        self.error: OSError | None = None

    def write(self, piece: bytes | memoryview) -> None:
        if self.error is None:
            try:
                self._fh.write(piece)
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        """Flush and close; a failing flush is remembered like a failing write."""
        try:
            self._fh.close()
        except OSError as exc:
            self.error = self.error or exc
            self.discard()

    def discard(self) -> None:
        """Close without caring what is left in the buffer (the file is removed anyway)."""
        with contextlib.suppress(OSError):
            self._fh.close()
