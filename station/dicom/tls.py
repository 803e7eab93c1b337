"""DICOM over TLS (PS3.15 annex B, the BCP 195 non-downgrading profile of B.9) with ``ssl``.

TLS 1.2 or later; for TLS 1.2 only the profile's AEAD suites with forward secrecy (OpenSSL
names below), TLS 1.3 with OpenSSL's defaults (all AEAD). The same contexts serve the SCP's
TLS listener and the ``dicom`` destinations that set ``tls``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from station.errors import ConfigError

BCP195_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
)
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _profile(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(":".join(BCP195_CIPHERS))
    return context


def _load(what: str, load: Callable[..., object], *paths: Path) -> None:
    try:
        load(*map(str, paths))
    except (OSError, ssl.SSLError) as exc:
        names = ", ".join(map(str, paths))
        raise ConfigError(f"TLS {what} {names}: cannot load: {exc}") from exc


def server_context(
    certificate: Path, key: Path, ca: Path | None, require_client_certificate: bool
) -> ssl.SSLContext:
    """For the SCP's TLS listener; client certificates are verified against ``ca`` when one
    is given (required when ``require_client_certificate``: mutual authentication)."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load("certificate and key", context.load_cert_chain, certificate, key)
    if ca is not None:
        _load("CA", context.load_verify_locations, ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca: Path | None, certificate: Path | None, key: Path | None, check_hostname: bool
) -> ssl.SSLContext:
    """For a destination: the peer's certificate is always verified (against ``ca``, else the
    system's roots); ours is shown when the peer asks for one."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = check_hostname
    if ca is not None:
        _load("CA", context.load_verify_locations, ca)
    else:
        context.load_default_certs()
    if certificate is not None:
        _load("certificate and key", context.load_cert_chain, certificate, key or certificate)
    return context
