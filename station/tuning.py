"""Adjustments to pynetdicom, kept in this one module and measured with the version pinned
in pyproject.toml (3.0.4), on loopback with DCMTK's storescu sending 500 files of 9 KiB:

- pynetdicom never sets ``TCP_NODELAY``: each C-STORE then waits ~44 ms for a delayed ACK.
- Its DUL thread sleeps ``_run_loop_delay`` (1 ms) whenever idle, and the association
  reactor sleeps 1 ms on every pass; there is no public knob for either. A no-op SCP took
  6.1 s; with 0.1 ms DUL delay 4.3 s; with the 0.1 ms reactor sleep as well 2.4 s.
- Without chunked transfers it decodes a received data set into memory, and decodes and
  re-encodes a file it is asked to send.

``TCP_NODELAY`` and the DUL delay are set per connection from an ``EVT_CONN_OPEN`` handler
(for associations accepted and requested); the rest is process-wide, set by ``configure``.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pynetdicom
from pynetdicom import _config, association, evt
from pynetdicom.events import Event

MEASURED_WITH = "3.0.4"
DUL_LOOP_DELAY = 1e-4
REACTOR_SLEEP = 1e-4
_PYNETDICOM_REACTOR_SLEEP = 0.001


def tune_connection(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler: no Nagle delay, and a shorter idle sleep of the DUL."""
    assoc = event.assoc
    transport = getattr(assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assoc.dul._run_loop_delay = DUL_LOOP_DELAY


HANDLERS = [(evt.EVT_CONN_OPEN, tune_connection)]


class _ReactorClock:
    """What ``pynetdicom.association`` sees as its ``time`` module: the same, except that
    its 1 ms reactor sleep lasts REACTOR_SLEEP."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(REACTOR_SLEEP if seconds == _PYNETDICOM_REACTOR_SLEEP else seconds)


def pause_reactor(assoc: association.Association, timeout: float = 5.0) -> None:
    """Hold the requestor's reactor before a send_c_*() call, so it cannot take the reply.

    pynetdicom 3.0.4 pauses its reactor in send_c_store() by clearing a checkpoint event and
    waiting for ``_is_paused``, a flag the reactor set before its previous wait and has not
    yet reset after waking (upstream #875): the reactor then takes the C-STORE response off
    the queue ("Received unexpected C-STORE service message") and the sender waits for the
    DIMSE timeout. Seen in 3 of 4 series batches of 250 instances. Clearing the checkpoint
    and waiting until the reactor thread is really blocked on it closes that window.
    """
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    deadline = time.monotonic() + timeout
    while not checkpoint._cond._waiters and assoc.is_alive() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(REACTOR_SLEEP / 10)


def configure() -> None:
    """Process-wide settings: stream data sets to and from files (receive: the handler gets
    ``event.dataset_path``; send: files go out as they are, chunk by chunk), and, on the
    measured pynetdicom version only, the shorter reactor sleep."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    if pynetdicom.__version__ == MEASURED_WITH:
        association.time = _ReactorClock()  # type: ignore[assignment]
