"""The pynetdicom adjustments in station/tuning.py, on real sockets."""

from __future__ import annotations

import socket
import time

import pynetdicom
from pynetdicom import AE, association, evt
from pynetdicom.sop_class import Verification

from station import tuning


def test_pynetdicom_is_the_measured_version() -> None:
    # tuning.py reaches into pynetdicom internals measured with this version only.
    assert pynetdicom.__version__ == tuning.MEASURED_WITH


def test_reactor_sleep_is_shortened_and_other_sleeps_are_kept() -> None:
    tuning.configure()
    assert isinstance(association.time, tuning._ReactorClock)
    started = time.perf_counter()
    for _ in range(100):
        association.time.sleep(0.001)
    assert time.perf_counter() - started < 0.1  # 100 x 1 ms would take at least 0.1 s
    assert association.time.monotonic() > 0  # everything else is the real time module


def test_accepted_and_requested_sockets_get_tcp_nodelay() -> None:
    seen: dict[str, int] = {}

    def record(side: str):
        def handler(event: evt.Event) -> None:
            sock = event.assoc.dul.socket.socket
            seen[side] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            seen[f"{side}_delay"] = event.assoc.dul._run_loop_delay

        return handler

    scp = AE("SCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[*tuning.HANDLERS, (evt.EVT_CONN_OPEN, record("accepted"))],
    )
    try:
        scu = AE("SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate(
            "127.0.0.1",
            server.server_address[1],
            evt_handlers=[*tuning.HANDLERS, (evt.EVT_CONN_OPEN, record("requested"))],
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        server.shutdown()
    assert seen["accepted"] and seen["requested"]
    assert seen["accepted_delay"] == seen["requested_delay"] == tuning.DUL_LOOP_DELAY
