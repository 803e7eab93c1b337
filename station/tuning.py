"""Socket and polling adjustments to pynetdicom, kept in this one module.

Also the process-wide switches that make pynetdicom stream data sets to and from files.

Measured with pynetdicom 3.0.4 (pinned in pyproject.toml): pynetdicom never sets
``TCP_NODELAY`` (each C-STORE then waits ~44 ms for a delayed ACK) and its DUL thread sleeps
1 ms whenever it is idle. Both are fixed per connection from an ``EVT_CONN_OPEN`` handler,
for associations the station accepts and those it requests.
"""

from __future__ import annotations

import socket

from pynetdicom import _config, evt
from pynetdicom.events import Event

DUL_LOOP_DELAY = 1e-4


def tune_connection(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler: no Nagle delay, and a shorter idle sleep of the DUL."""
    assoc = event.assoc
    transport = getattr(assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assoc.dul._run_loop_delay = DUL_LOOP_DELAY


HANDLERS = [(evt.EVT_CONN_OPEN, tune_connection)]


def stream_data_sets() -> None:
    """Never hold or re-encode whole data sets: receive them into a file (the handler gets
    ``event.dataset_path``) and send files from disk as they are, chunk by chunk. Without
    this, pynetdicom decodes a file given by path and encodes it again before sending."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
