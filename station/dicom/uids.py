"""UIDs in words, for status, trace, logs and error messages: pydicom's UID dictionary; and
transfer syntaxes as a destination's config names them."""

from __future__ import annotations

from pydicom.uid import UID, AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian

STORED = "stored"  # in a preference list: the syntax the instance was received in
DEFAULT_PREFERENCES = (STORED, ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def uid_name(uid: str) -> str:
    """``"JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"``; a UID the
    dictionary does not know (a private SOP class) is given as it is."""
    name = UID(uid).name
    return uid if name == uid else f"{name} ({uid})"


def transfer_syntax_uid(value: str) -> str:
    """A transfer syntax given by UID (``1.2.840.10008.1.2.4.80``) or by its keyword in
    pydicom's dictionary (``JPEGLSLossless``), as its UID; ValueError if it is neither."""
    if value in _TRANSFER_SYNTAXES.values():
        return value
    if value in _TRANSFER_SYNTAXES:
        return _TRANSFER_SYNTAXES[value]
    raise ValueError(
        f"{value!r} is not a transfer syntax: give its UID (1.2.840.10008.1.2.1) or its "
        "keyword (ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless, ...)"
    )


_TRANSFER_SYNTAXES = {ts.keyword: str(ts) for ts in AllTransferSyntaxes}
