"""DICOM over TLS (PS3.15 annex B, BCP 195): the SCP's TLS listener against DCMTK storescu
+tls and pynetdicom with ssl contexts, and a dicom destination against DCMTK storescp +tls.
Certificates are made per test module with the openssl command line: a CA, the station's
and the peers' certificates signed by it, and a rogue CA with a client certificate of its
own."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    VALID,
    StationProcess,
    StoreSCP,
    dicom_destination,
    storescu,
    storescu_successes,
    wait_for,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

pytestmark = pytest.mark.e2e

CT = VALID / "CT_small.dcm"
TIMEOUT = 10.0


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for ca in ("ca", "rogue-ca"):
            openssl(
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", folder / f"{ca}.key", "-out", folder / f"{ca}.crt",
                "-subj", f"/CN=station test {ca}",
            )  # fmt: skip
        self.issue("station", "ca")
        self.issue("modality", "ca")
        self.issue("pacs", "ca")
        self.issue("intruder", "rogue-ca")

    def issue(self, name: str, ca: str) -> None:
        """``name``.key and ``name``.crt, for 127.0.0.1, signed by ``ca``."""
        f = self.folder
        extensions = f / f"{name}.ext"
        extensions.write_text("subjectAltName=IP:127.0.0.1\n")
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f / f"{name}.key",
            "-out", f / f"{name}.csr", "-subj", f"/CN={name}",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f / f"{name}.csr", "-CA", f / f"{ca}.crt",
            "-CAkey", f / f"{ca}.key", "-CAcreateserial", "-days", "2",
            "-out", f / f"{name}.crt", "-extfile", extensions,
        )  # fmt: skip

    def __call__(self, name: str) -> str:
        return str(self.folder / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_station(
    tmp_path: Path, pki: Pki, start_station: Callable[..., StationProcess]
) -> tuple[StationProcess, int]:
    station = start_station(
        {
            "listen": {
                "host": "127.0.0.1",
                "port": 0,
                "tls": {
                    "port": 0,
                    "certificate": pki("station.crt"),
                    "key": pki("station.key"),
                    "ca": pki("ca.crt"),
                    "require_client_certificate": True,
                },
            },
            "destinations": {"out": {"type": "folder", "path": str(tmp_path / "out")}},
        }
    )
    found = re.search(r"DICOM over TLS \(BCP 195\) on [\d.]+:(\d+)", station.run_log())
    assert found, station.run_log()
    return station, int(found.group(1))


def test_storescu_with_the_right_certificate_gets_in_others_are_refused(
    tls_station: tuple[StationProcess, int], pki: Pki
) -> None:
    station, port = tls_station

    def send(*tls: str) -> int:
        result = storescu(port, [CT], extra=("-v", *tls), timeout=60)
        return storescu_successes(result)

    trust = ("+cf", pki("ca.crt"))
    assert send("+tls", pki("modality.key"), pki("modality.crt"), *trust) == 1
    assert send("+tls", pki("intruder.key"), pki("intruder.crt"), *trust) == 0  # rogue CA
    assert send("+tla", *trust) == 0  # no client certificate
    assert send() == 0  # no TLS at all
    assert len(station.spooled()) == 1
    handshakes = station.metric("station_connections_closed_total", reason="tls_handshake")
    assert handshakes == 3
    assert storescu_successes(storescu(station.port, [CT], extra=("-v",))) == 1  # plain port


def client_context(pki: Pki, name: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki("ca.crt"))
    if name is not None:
        context.load_cert_chain(pki(f"{name}.crt"), pki(f"{name}.key"))
    return context


def test_pynetdicom_over_tls_while_idle_sockets_sit_on_the_tls_port(
    tls_station: tuple[StationProcess, int], pki: Pki
) -> None:
    """Idle TCP connections that never start a handshake hold up nobody: the handshake runs
    on each connection's own thread, within listen.request_timeout_seconds."""
    _station, port = tls_station
    idle = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(4)]
    try:
        ae = AE("MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        ae.add_requested_context(Verification)
        started = time.monotonic()
        tls_args = (client_context(pki, "modality"), "127.0.0.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="STATION", tls_args=tls_args)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert time.monotonic() - started < 3  # not after the idle sockets' timeout (5 s)

        for name in ("intruder", None):
            tls_args = (client_context(pki, name), "127.0.0.1")
            refused = ae.associate("127.0.0.1", port, ae_title="STATION", tls_args=tls_args)
            assert not refused.is_established
    finally:
        for sock in idle:
            sock.close()


def test_a_tls_destination_delivers_to_storescp_tls_and_distrusts_another_ca(
    tmp_path: Path, pki: Pki, start_station: Callable[..., StationProcess]
) -> None:
    pacs = StoreSCP(
        tmp_path / "pacs",
        extra=("+tls", pki("pacs.key"), pki("pacs.crt"), "+cf", pki("ca.crt")),  # -rc: mutual
    ).start()
    try:
        ours = {"ca": pki("ca.crt"), "certificate": pki("station.crt"), "key": pki("station.key")}
        station = start_station(
            {
                "destinations": {
                    "pacs": dicom_destination(pacs, tls=ours),
                    "distrusted": dicom_destination(pacs, tls={**ours, "ca": pki("rogue-ca.crt")}),
                    "anonymous": dicom_destination(pacs, tls={"ca": pki("ca.crt")}),
                },
            }
        )
        echo = station.cli("echo", "pacs")
        assert echo.returncode == 0, echo.stdout + echo.stderr
        distrusted = station.cli("echo", "distrusted")
        assert distrusted.returncode == 1
        assert "certificate verify failed" in distrusted.stdout + distrusted.stderr
        assert station.cli("echo", "anonymous").returncode == 1  # storescp wants our certificate

        assert storescu_successes(storescu(station.port, [CT], extra=("-v",))) == 1
        wait_for(pacs.files, 30, message="the instance at storescp over TLS")
    finally:
        pacs.stop()
