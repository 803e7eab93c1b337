"""The SCP's connections, counted per source address, so that no peer can crowd out another.

A connection is *pending* from accept until its association is accepted (TLS handshake and
A-ASSOCIATE-RQ, both within ``listen.request_timeout_seconds``), then *established*. Pending
connections are capped per source address and in all; associations per source address and
in all. A peer holding hundreds of idle sockets uses up its own share only. The counts are
kept on a board (station/receive/board.py) that every receiver process shares, so the limits
hold for the station as a whole; each process keeps its own connections to drain and abort.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass

from station.config import ListenConfig
from station.dicom.dimse import Channel
from station.receive.board import Board, slots_for


@dataclass(eq=False)
class Connection:
    host: str  # the peer's IP address
    peer: str  # host:port, for the log
    sock: socket.socket
    channel: Channel | None = None
    established: bool = False
    slot: int = -1  # on the board, from admit to remove

    def interrupt(self) -> None:
        """Unblock the thread reading this connection (it closes it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class Connections:
    def __init__(self, listen: ListenConfig, board: Board | None = None) -> None:
        self.listen = listen
        self.board = board or Board(slots_for(listen))
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def admit(self, connection: Connection) -> str | None:
        """Take a new connection; or the reason it is refused (too many pending)."""
        listen = self.listen
        slot = self.board.admit(connection.host, listen.max_pending_per_host, listen.max_pending)
        if isinstance(slot, str):
            return slot
        connection.slot = slot
        with self._lock:
            self._all.append(connection)
        return None

    def establish(self, connection: Connection) -> str | None:
        """Count an accepted association; or the reason it must be rejected (busy)."""
        listen = self.listen
        busy = self.board.establish(
            connection.slot, listen.max_associations_per_host, listen.max_associations
        )
        if busy is None:
            connection.established = True
        return busy

    def remove(self, connection: Connection) -> bool:
        """Forget a closed connection; whether it was an association."""
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)
                self.board.remove(connection.slot)
        return connection.established

    def active(self) -> int:
        """Associations in progress in this process."""
        with self._lock:
            return sum(c.established for c in self._all)

    def snapshot(self) -> list[Connection]:
        with self._lock:
            return list(self._all)
