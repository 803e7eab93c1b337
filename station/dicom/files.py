"""The DICOM file format's envelope (PS3.10): a 128-byte preamble, "DICM", the File Meta
Information group (0002), then the data set as it travels on the network. The receive
path writes the envelope in front of the bytes it is sent; the send path skips it."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import IO

from pydicom.datadict import dictionary_VR, keyword_dict

from station.dicom.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

PREAMBLE = bytes(128) + b"DICM"
# Explicit VR (PS3.5 7.1.2): VRs whose length takes 4 bytes after 2 reserved ones.
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
EXPLICIT = struct.Struct("<HH2sH")  # tag, VR and 2-byte length
LENGTH = struct.Struct("<I")

# The data set's structure (PS3.5 7.5, A.4), for the byte-level readers (station.dicom.scan,
# station.dicom.validate) and the drop folder.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# Float, double float and (encapsulated) pixel data: never a sequence in pydicom's dictionary.
PIXEL_DATA = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
ROWS = 0x00280010  # an image has it, and then pixel data too
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
# In implicit VR only the dictionary tells a sequence of defined length from a value.
SEQUENCES = frozenset(tag for tag in keyword_dict.values() if dictionary_VR(tag) == "SQ")


UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
UNDEFINED_LENGTH = 0xFFFFFFFF


def is_uid(value: object) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (safe to use as a file name)."""
    return isinstance(value, str) and len(value) <= 64 and bool(UID_PATTERN.match(value))


@dataclass(frozen=True)
class Header:
    """The routing-relevant identity of an instance, read without its pixel data."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    transfer_syntax: str
    # An image (it has Rows) whose data set ends before its pixel data: written in part.
    pixels_missing: bool = False


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return EXPLICIT.pack(0x0002, element, vr, len(value)) + value


def file_meta(sop_class: str, sop_uid: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, prefix and File Meta Information for a data set received over the network."""
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\0\1"),
            _element(0x0002, b"UI", sop_class.encode("ascii", "replace")),
            _element(0x0003, b"UI", sop_uid.encode("ascii", "replace")),
            _element(0x0010, b"UI", transfer_syntax.encode("ascii", "replace")),
            _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii")),
            _element(0x0016, b"AE", source_ae.encode("ascii", "replace")),
        )
    )
    return PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def dataset_start(fh: IO[bytes]) -> int:
    """The offset of the data set in a DICOM file with a File Meta Information group:
    the end of the last group 0002 element (whether or not a group length is present).
    Leaves ``fh`` there. Raises ValueError for a file without the "DICM" prefix."""
    fh.seek(0)
    if fh.read(132)[128:] != b"DICM":
        raise ValueError("no 'DICM' prefix after the preamble")
    offset = 132
    while True:
        head = fh.read(8)
        if len(head) < 8:
            break
        group, _element_no, vr, length = EXPLICIT.unpack(head)
        if group != 0x0002:
            break
        offset += 8
        if vr in LONG_VRS:
            length = LENGTH.unpack(fh.read(4))[0]
            offset += 4
        offset += length
        fh.seek(offset)
    fh.seek(offset)
    return offset
