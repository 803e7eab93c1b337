"""The C-STORE SCP: makes each received instance durable, then answers, and nothing more.

It runs in each receiver process (station/receive/worker.py) on listening sockets the
parent bound. One thread per connection, blocking reads on its socket; the accept loop only
accepts and counts (station/receive/connections.py), so neither a TLS handshake nor a slow request
holds it up. Negotiation follows station/receive/negotiation.py. The data set of a C-STORE
is written into a spool file created ahead as its fragments arrive, behind a File Meta
Information header built from the request (never decoded, memory stays flat), and
fdatasynced as it is closed. The file is then checked (UIDs, completeness) and journaled,
and only then answered 0x0000. Failures get their own status and an error comment: 0xA700
when the disk is short, 0xC210 when the data set cannot be understood (not DICOM, a missing
or invalid UID, truncated), 0xA900 when the data set's SOP Instance UID differs from the
command's, 0x0122 when the command's SOP class is not its presentation context's. Series
logic, hooks and sending happen elsewhere, so the sending modality is never held up by them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import threading
import time
from pathlib import Path

from station.config import ListenConfig
from station.dicom.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    NO_DATASET,
    Channel,
    Command,
    ConnectionClosed,
    PeerAborted,
    PeerReleased,
    response_to,
    tcp_nodelay,
)
from station.dicom.files import file_meta
from station.dicom.identify import identify
from station.dicom.pdu import (
    ASSOCIATE_RQ,
    PDU_HEADER,
    REASON_LOCAL_LIMIT_EXCEEDED,
    REJECTED_TRANSIENT,
    RELEASE_REPLY,
    SOURCE_PROVIDER_PRESENTATION,
    Association,
    ProtocolError,
    Rejection,
    check_length,
    decode_association,
    encode_accept,
    encode_reject,
)
from station.dicom.status import Status
from station.dicom.tls import server_context
from station.errors import RejectedInstance
from station.ops.logs import series_fields
from station.ops.metrics import Metrics
from station.receive.board import Board
from station.receive.connections import Connection, Connections
from station.receive.intake import Intake, Origin
from station.receive.negotiation import Policy, Refusal, sop_class_mismatch
from station.store.spool import IncomingFile, full_disk_reason

log = logging.getLogger(__name__)


class StoreSCP:
    def __init__(
        self, ae_title: str, listen: ListenConfig, intake: Intake, board: Board | None = None
    ) -> None:
        self.ae_title = ae_title
        self.listen = listen
        self.intake = intake
        self.metrics: Metrics = intake.metrics
        self.policy = Policy(ae_title, listen)
        self.connections = Connections(listen, board)
        self.tls = (
            server_context(
                listen.tls.certificate,
                listen.tls.key,
                listen.tls.ca,
                listen.tls.require_client_certificate,
            )
            if listen.tls is not None
            else None
        )
        self.server: socket.socket | None = None
        self.tls_server: socket.socket | None = None

    def serve(self, server: socket.socket, tls_server: socket.socket | None = None) -> None:
        """Accept associations on listening sockets (bound by the parent process, shared
        with the other receivers), each on its own thread; ``tls_server`` speaks TLS."""
        self.server, self.tls_server = server, tls_server
        for listener, tls in ((server, None), (tls_server, self.tls)):
            if listener is not None:
                name = "scp-accept-tls" if tls else "scp-accept"
                threading.Thread(
                    target=self._accept_loop, args=(listener, tls), name=name, daemon=True
                ).start()

    def stop(self, drain_seconds: float = 20) -> None:
        """Take no new associations; let those in progress finish, then abort the rest."""
        if self.server is None:
            return
        for server in (self.server, self.tls_server):
            if server is not None:
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_RDWR)
                server.close()
        self.server = self.tls_server = None
        for connection in self.connections.snapshot():
            if not connection.established:
                connection.interrupt()  # a connection that never became an association
        deadline = time.monotonic() + drain_seconds
        while self.connections.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        for connection in self.connections.snapshot():
            if connection.established and connection.channel is not None:
                log.warning("aborting association from %s at shutdown", connection.peer)
                connection.channel.abort()

    def _accept_loop(self, server: socket.socket, tls: ssl.SSLContext | None) -> None:
        while True:
            try:
                sock, address = server.accept()
            except OSError:
                return  # closed by stop()
            tcp_nodelay(sock)
            peer = f"{address[0]}:{address[1]}"
            connection = Connection(address[0], peer, sock)
            refused = self.connections.admit(connection)
            if refused is not None:
                self.metrics.connections_closed.labels(refused).inc()
                log.warning("closing connection from %s: %s", peer, refused.replace("_", " "))
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            threading.Thread(
                target=self._serve, args=(connection, tls), name=f"assoc-{peer}", daemon=True
            ).start()

    # --- association -----------------------------------------------------------------

    def _serve(self, connection: Connection, tls: ssl.SSLContext | None) -> None:
        peer = connection.peer
        try:
            deadline = time.monotonic() + self.listen.request_timeout_seconds
            channel = self._open(connection, tls, deadline)
            if channel is None:
                return
            assoc = self._negotiate(connection, channel, deadline)
            if assoc is not None:
                self._messages(channel, assoc, peer)
        except Exception:
            log.exception("association from %s failed", peer)
            if connection.channel is not None:
                connection.channel.abort()
        finally:
            if self.connections.remove(connection):
                self.metrics.associations_active.set(self.connections.active())
            if connection.channel is not None:
                connection.channel.close()
            else:
                connection.sock.close()

    def _open(
        self, connection: Connection, tls: ssl.SSLContext | None, deadline: float
    ) -> Channel | None:
        """The connection's channel, after the TLS handshake (within the request timeout)
        if this listener speaks TLS; None when the handshake failed."""
        if tls is not None:
            try:
                connection.sock.settimeout(max(0.0, deadline - time.monotonic()))
                connection.sock = tls.wrap_socket(connection.sock, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                self.metrics.connections_closed.labels("tls_handshake").inc()
                log.warning("TLS handshake with %s failed: %s", connection.peer, exc)
                return None
        connection.channel = Channel(connection.sock)
        return connection.channel

    def _negotiate(
        self, connection: Connection, channel: Channel, deadline: float
    ) -> Association | None:
        """Answer the A-ASSOCIATE-RQ; the accepted association, or None (rejected, aborted)."""
        peer = connection.peer
        try:
            kind, length = PDU_HEADER.unpack(channel.read_by(PDU_HEADER.size, deadline))
            if kind != ASSOCIATE_RQ:
                raise ProtocolError(
                    f"PDU type 0x{kind:02X} where an A-ASSOCIATE-RQ (0x01) was expected "
                    "(not a DICOM peer?)"
                )
            check_length(kind, length)
            request = decode_association(channel.read_by(length, deadline), kind)
        except (OSError, ConnectionClosed, ProtocolError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            self.metrics.connections_closed.labels(
                "request_timeout" if timed_out else "bad_request"
            ).inc()
            log.info("connection from %s closed before an association: %s", peer, exc)
            channel.abort()
            return None
        refusal = self.policy.refuse(request, connection.host)
        if refusal is None:
            busy = self.connections.establish(connection)
            if busy is not None:
                limit = "max_associations_per_host" if busy == "busy_host" else "max_associations"
                refusal = Refusal(
                    Rejection(
                        REJECTED_TRANSIENT,
                        SOURCE_PROVIDER_PRESENTATION,
                        REASON_LOCAL_LIMIT_EXCEEDED,
                    ),
                    busy,
                    f"too many associations (listen.{limit})",
                )
        if refusal is not None:
            self.metrics.associations_rejected.labels(refusal.reason).inc()
            log.warning(
                "rejected association from %r to %r at %s: %s",
                request.calling_ae,
                request.called_ae,
                peer,
                refusal.message,
            )
            with contextlib.suppress(OSError):  # the peer may be gone already
                channel.send_raw(encode_reject(refusal.rejection))
            return None
        self.metrics.associations_active.set(self.connections.active())
        accept = self.policy.answer(request, self.listen.max_pdu_bytes)
        channel.max_send = request.max_pdu
        channel.max_receive = self.listen.max_pdu_bytes
        try:
            channel.send_raw(encode_accept(accept))
        except OSError as exc:
            log.info("connection from %s closed before the association was accepted: %s", peer, exc)
            return None
        channel.sock.settimeout(self.listen.idle_timeout_seconds)
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
                known = operation in (C_STORE_RQ, C_ECHO_RQ)
                mismatch = sop_class_mismatch(command, context) if known else ""
                if operation == C_STORE_RQ and not mismatch:
                    self._store(
                        channel, context_id, context.transfer_syntaxes[0], command, assoc, peer
                    )
                    continue
                if command.get("CommandDataSetType", NO_DATASET) != NO_DATASET:
                    channel.receive_dataset(context_id, lambda _piece: None)
                status = Status.SUCCESS if known else Status.UNRECOGNIZED_OPERATION
                if mismatch:
                    status = Status.SOP_CLASS_NOT_SUPPORTED
                    self.metrics.instances_rejected.labels("sop_class_mismatch").inc()
                    log.warning(
                        "refused a request from %s (%s): %s", assoc.calling_ae, peer, mismatch
                    )
                channel.send_command(context_id, response_to(command, status, mismatch))
            except PeerReleased:
                channel.send_raw(RELEASE_REPLY)
                return
            except PeerAborted:
                log.info("association from %s aborted by the peer", peer)
                return
            except TimeoutError:
                self.metrics.connections_closed.labels("idle_timeout").inc()
                log.warning(
                    "aborting association from %s: nothing received for %g s "
                    "(listen.idle_timeout_seconds)",
                    peer,
                    self.listen.idle_timeout_seconds,
                )
                channel.abort()
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
        sink = IncomingFile(incoming)
        try:
            sink.write(file_meta(sop_class, commanded, syntax, calling))
            channel.receive_dataset(context_id, sink.write)
            sink.close(durable=True)  # synced through its own descriptor: no second open
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
        if status != Status.SUCCESS:
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
                    Status.DATASET_MISMATCH,
                    "uid_mismatch",
                    f"data set SOP Instance UID {header.sop_uid} differs from the C-STORE "
                    f"request's {commanded}",
                )
            self.intake.take(incoming, header, origin, durable=True)
        except RejectedInstance as exc:
            return self._refused(exc, origin, fields)
        except OSError as exc:
            self.metrics.instances_rejected.labels(full_disk_reason(exc)).inc()
            log.error("cannot store instance from %s (%s): %s", calling, peer, exc, extra=fields)
            return Status.OUT_OF_RESOURCES, f"cannot store: {os.strerror(exc.errno or errno.EIO)}"
        except Exception:
            self.metrics.instances_rejected.labels("internal").inc()
            log.exception("failed to store an instance from %s (%s)", calling, peer, extra=fields)
            return Status.OUT_OF_RESOURCES, "internal error while storing"
        return Status.SUCCESS, ""
