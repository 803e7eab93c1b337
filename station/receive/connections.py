"""The SCP's connections, counted per source address, so that no peer can crowd out another.

A connection is *pending* from accept until its association is accepted (TLS handshake and
A-ASSOCIATE-RQ, both within ``listen.request_timeout_seconds``), then *established*. Pending
connections are capped per source address and in all; associations per source address and
in all. A peer holding hundreds of idle sockets uses up its own share only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass

from station.config import ListenConfig
from station.dicom.dimse import Channel


@dataclass(eq=False)
class Connection:
    host: str  # the peer's IP address
    peer: str  # host:port, for the log
    sock: socket.socket
    channel: Channel | None = None
    established: bool = False

    def interrupt(self) -> None:
        """Unblock the thread reading this connection (it closes it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class Connections:
    def __init__(self, listen: ListenConfig) -> None:
        self.listen = listen
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def _count(self, established: bool, host: str | None = None) -> int:
        return sum(
            1
            for c in self._all
            if c.established == established and (host is None or c.host == host)
        )

    def admit(self, connection: Connection) -> str | None:
        """Take a new connection; or the reason it is refused (too many pending)."""
        with self._lock:
            if self._count(False, connection.host) >= self.listen.max_pending_per_host:
                return "too_many_pending_host"
            if self._count(False) >= self.listen.max_pending:
                return "too_many_pending"
            self._all.append(connection)
        return None

    def establish(self, connection: Connection) -> str | None:
        """Count an accepted association; or the reason it must be rejected (busy)."""
        with self._lock:
            if self._count(True, connection.host) >= self.listen.max_associations_per_host:
                return "busy_host"
            if self._count(True) >= self.listen.max_associations:
                return "busy"
            connection.established = True
        return None

    def remove(self, connection: Connection) -> bool:
        """Forget a closed connection; whether it was an association."""
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)
        return connection.established

    def active(self) -> int:
        with self._lock:
            return self._count(True)

    def snapshot(self) -> list[Connection]:
        with self._lock:
            return list(self._all)
