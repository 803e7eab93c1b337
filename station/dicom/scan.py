"""The identity of a received file read straight from its bytes: the fast path of identify().

pydicom builds an element for every top-level element of a data set; at 1 to 2.6 ms a file that
is a main cost of the receive path, which runs it once per instance. Here the file's structure
is walked with ``struct`` instead: the preamble and "DICM", the File Meta Information group,
then the data set's elements, skipping values by their lengths. Only the first
``HEAD_BYTES`` are read at once; a header that lies past them is read in small windows, and a
value past them (pixel data above all) is never read.

It answers for a file only when it is sure pydicom 3 (its reader, ``filereader.py``, decides
what identify accepts) would read the same structure without complaint: a clean little-endian
data set whose last top-level element ends exactly at the end of the file, with every UID
identify needs present at top level and valid. For anything else (big endian, deflated, a
private or unknown syntax, an unknown VR, a cut or odd structure, a DICOMDIR, a missing or
invalid UID) it answers None, and identify asks pydicom, which also words every refusal.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from station.dicom.files import (
    EXPLICIT,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    ITEM,
    ITEM_DELIMITER,
    LENGTH,
    LONG_VRS,
    MEDIA_STORAGE_DIRECTORY,
    PIXEL_DATA,
    ROWS,
    SEQUENCE_DELIMITER,
    SEQUENCES,
    UNDEFINED_LENGTH,
    Header,
    is_uid,
)

HEAD_BYTES = 16 * 1024  # the whole header of most files, in one read
WINDOW_BYTES = 4096  # read when an element header lies past what is in memory

STANDARD_SYNTAXES = "1.2.840.10008.1.2."  # all explicit VR little endian, but for these two:
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

# Explicit VR (PS3.5 7.1.2): VRs whose length takes 2 bytes (LONG_VRS take 4).
# pydicom guesses at any other VR, so a file with one is left to it.
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())

GROUP_LENGTH = 0x00020000
MEDIA_STORAGE_SOP_CLASS = 0x00020002
TRANSFER_SYNTAX = 0x00020010
SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS = 0x00080016
SOP_INSTANCE = 0x00080018
STUDY_INSTANCE = 0x0020000D
SERIES_INSTANCE = 0x0020000E
IDENTITY = frozenset({SOP_CLASS, SOP_INSTANCE, STUDY_INSTANCE, SERIES_INSTANCE})
NOTED = PIXEL_DATA | {ROWS}  # present or not: an image whose pixel data is still missing
# The Defined Terms of Specific Character Set (PS3.3 C.12.1.1.2); empty means the default.
CHARACTER_SETS = frozenset(
    ["", "GB18030", "GBK", "ISO_IR 192"]
    + [f"ISO_IR {n}" for n in (6, 13, 100, 101, 109, 110, 126, 127, 138, 144, 148, 166)]
    + [
        f"ISO 2022 IR {n}"
        for n in (6, 13, 58, 87, 100, 101, 109, 110, 126, 127, 138, 144, 148, 149, 159, 166)
    ]
)
MAX_UID_BYTES = 64  # a UID of 64 characters, or 63 and its padding

_IMPLICIT = struct.Struct("<HHI")  # tag and 4-byte length: implicit VR, items, delimiters
ZERO = bytes(4)


class _Unsure(Exception):
    """The bytes are not clean enough to answer for: pydicom decides."""


def scan_header(path: Path) -> Header | None:
    """The Header of a clean little-endian DICOM file, read from its bytes; None whenever
    pydicom might read the file differently, refuse it, or word a refusal (see the module)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        walk = _Walk(fd, os.fstat(fd).st_size, os.pread(fd, HEAD_BYTES, 0))
        return walk.header()
    except (_Unsure, OSError):
        return None
    finally:
        os.close(fd)


class _Walk:
    """One forward pass over a file. Every method raises _Unsure at the first thing it cannot
    vouch for; offsets are file offsets, ``buf`` holds the bytes from ``base`` on."""

    def __init__(self, fd: int, size: int, head: bytes) -> None:
        self.fd = fd
        self.size = size
        self.buf = head
        self.base = 0

    def header(self) -> Header:
        start, transfer_syntax = self.file_meta()
        if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
            implicit = True
        elif transfer_syntax.startswith(STANDARD_SYNTAXES) and transfer_syntax not in (
            EXPLICIT_VR_BIG_ENDIAN,
            DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        ):
            implicit = False
        else:
            raise _Unsure
        found = self.top_level(start, implicit)
        sop_uid = found.get(SOP_INSTANCE, "")
        # identify's rule: an instance without them forms a series of its own
        study_uid = found.get(STUDY_INSTANCE) or sop_uid
        series_uid = found.get(SERIES_INSTANCE) or sop_uid
        sop_class = found.get(SOP_CLASS, "")
        if not all(map(is_uid, (study_uid, series_uid, sop_uid, sop_class))):
            raise _Unsure
        return Header(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class=sop_class,
            transfer_syntax=transfer_syntax,
            pixels_missing=ROWS in found and not PIXEL_DATA & found.keys(),
        )

    def at(self, offset: int, count: int) -> int:
        """The index in ``buf`` of ``offset``, with ``count`` bytes from there in memory.
        Bytes past the end of the file mean the file is cut. It may replace ``buf``: call it
        before reading ``self.buf``."""
        index = offset - self.base
        if index >= 0 and index + count <= len(self.buf):
            return index
        if offset + count > self.size:
            raise _Unsure
        self.buf = os.pread(self.fd, max(count, WINDOW_BYTES), offset)
        self.base = offset
        if len(self.buf) < count:
            raise _Unsure  # the file shrank under us
        return 0

    def file_meta(self) -> tuple[int, str]:
        """Check preamble, prefix and group 0002 (explicit VR little endian, PS3.10 7.1);
        return where the data set starts and its transfer syntax. The group length must
        be there and right: pydicom ends the group at the first other tag instead."""
        if self.buf[128:132] != b"DICM":
            raise _Unsure
        tag, vr, value, length = self.element(132, implicit=False)
        if tag != GROUP_LENGTH or vr != b"UL" or length != 4:
            raise _Unsure
        pos = value + length
        index = self.at(value, 4)
        end = pos + LENGTH.unpack_from(self.buf, index)[0]
        found: dict[int, str] = {}
        last = tag
        while pos < end:
            tag, vr, value, length = self.element(pos, implicit=False)
            if tag <= last or tag >> 16 != 0x0002 or length == UNDEFINED_LENGTH:
                raise _Unsure
            if tag in (MEDIA_STORAGE_SOP_CLASS, TRANSFER_SYNTAX):
                found[tag] = self.uid(vr, value, length)
            last, pos = tag, value + length
        if pos != end:
            raise _Unsure
        media = found.get(MEDIA_STORAGE_SOP_CLASS)
        if media is not None and (not is_uid(media) or media == MEDIA_STORAGE_DIRECTORY):
            raise _Unsure
        transfer_syntax = found.get(TRANSFER_SYNTAX, "")
        if not is_uid(transfer_syntax):
            raise _Unsure
        return end, transfer_syntax

    def top_level(self, pos: int, implicit: bool) -> dict[int, str]:
        """Walk the data set to the end of the file; the identity UIDs found on the way.
        pydicom switches encoding when the first element looks like the other one: such a
        file is left to it (in explicit VR, ``data_set`` refuses an element without a VR)."""
        if implicit and not self.looks_implicit(pos):
            raise _Unsure
        found: dict[int, str] = {}
        self.data_set(pos, self.size, implicit, found)
        return found

    def data_set(
        self, pos: int, end: int | None, implicit: bool, found: dict[int, str] | None = None
    ) -> int:
        """Walk a data set's elements from ``pos`` to ``end`` or, with ``end`` None, to its
        item delimiter; the offset after it. ``found`` (top level only) collects the identity
        UIDs, and there tags must ascend: pydicom keeps the last of equal tags, and checks
        completeness on the greatest. This is the hot loop: headers are read inline (not by
        ``element``), values of defined length skipped; the rest is handed to ``value_end``."""
        buf, base = self.buf, self.base
        stop = self.size if end is None else end
        last = 0x0002FFFF  # no group 0000 (pydicom reads it as a command set) or 0002
        while pos < stop:
            index = pos - base
            if index < 0 or index + 12 > len(buf):
                index = self.at(pos, 8)
                buf, base = self.buf, self.base
            if implicit:
                group, number, length = _IMPLICIT.unpack_from(buf, index)
                vr, value = None, pos + 8
            else:
                group, number, vr, length = EXPLICIT.unpack_from(buf, index)
                value = pos + 8
                if vr in LONG_VRS:
                    if index + 12 > len(buf):
                        index = self.at(pos, 12)
                        buf, base = self.buf, self.base
                    length = LENGTH.unpack_from(buf, index + 8)[0]
                    value = pos + 12
                elif vr not in SHORT_VRS and group != 0xFFFE:
                    raise _Unsure  # an unknown VR, or implicit VR where explicit belongs
            tag = group << 16 | number
            if group == 0xFFFE:  # items and delimiters: a tag and a 4-byte length, no VR
                if end is None and tag == ITEM_DELIMITER and buf[index + 4 : index + 8] == ZERO:
                    return pos + 8
                raise _Unsure
            if found is not None:
                if tag <= last:
                    raise _Unsure
                last = tag
                if tag in IDENTITY:
                    found[tag] = self.uid(vr, value, length)
                    buf, base = self.buf, self.base
                elif tag in NOTED:
                    found[tag] = ""
            if length == UNDEFINED_LENGTH or tag == SPECIFIC_CHARACTER_SET:
                pos = self.value_end(tag, vr, value, length, implicit)
                buf, base = self.buf, self.base
            elif vr == b"SQ" or (implicit and tag in SEQUENCES):
                pos = self.items(value, value + length, implicit)
                buf, base = self.buf, self.base
            else:
                pos = value + length
        if end is None or pos != end:
            raise _Unsure  # cut short, or an element runs past the end
        return pos

    def element(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """The tag, VR (None when implicit), value offset and value length at ``pos``."""
        index = self.at(pos, 8)
        if implicit:
            group, number, length = _IMPLICIT.unpack_from(self.buf, index)
            return group << 16 | number, None, pos + 8, length
        group, number, vr, length = EXPLICIT.unpack_from(self.buf, index)
        tag = group << 16 | number
        if group == 0xFFFE:  # items and delimiters have no VR in either encoding
            return tag, None, pos + 8, LENGTH.unpack_from(self.buf, index + 4)[0]
        if vr in SHORT_VRS:
            return tag, vr, pos + 8, length
        if vr in LONG_VRS:
            index = self.at(pos, 12)
            return tag, vr, pos + 12, LENGTH.unpack_from(self.buf, index + 8)[0]
        raise _Unsure

    def value_end(self, tag: int, vr: bytes | None, value: int, length: int, implicit: bool) -> int:
        """The end of what the hot loop hands on: Specific Character Set, once checked, or a
        value of undefined length, walked to its delimiter the way pydicom does."""
        if tag == SPECIFIC_CHARACTER_SET:
            self.character_set(vr, value, length)
            return value + length
        if not implicit:
            if vr in (b"SQ", b"UN"):  # pydicom, like PS3.5 6.2.2, reads UN as a sequence
                return self.sequence(value, implicit)[0]
            if vr not in (b"OB", b"OW"):
                raise _Unsure  # undefined length where PS3.5 allows none: station.dicom.validate
            return self.fragments(value)
        if tag in PIXEL_DATA:
            return self.fragments(value)
        end, undefined_items = self.sequence(value, implicit)
        if undefined_items and not tag >> 16 & 1:
            # pydicom reads a public tag as a sequence only if its dictionary says SQ, and
            # otherwise as fragments, which runs past an item of undefined length. Without
            # the dictionary, only items of defined length end in the same place both ways.
            # (A private tag is read as a sequence when its value starts with an item.)
            raise _Unsure
        return end

    def sequence(self, pos: int, implicit: bool) -> tuple[int, bool]:
        """Walk the items of an undefined-length sequence to its delimiter: the offset after
        it, and whether an item had an undefined length. pydicom reads an item in an explicit
        VR data set as implicit when its first element looks implicit (PS3.5 6.2.2 prescribes
        it for UN), and an item in an implicit one as implicit."""
        undefined_items = False
        while True:
            index = self.at(pos, 8)
            group, number, length = _IMPLICIT.unpack_from(self.buf, index)
            tag = group << 16 | number
            if tag == SEQUENCE_DELIMITER and length == 0:
                return pos + 8, undefined_items
            if tag != ITEM:
                raise _Unsure
            start = pos + 8
            item_implicit = implicit or (length != 0 and self.looks_implicit(start))
            if length == UNDEFINED_LENGTH:
                undefined_items = True
                pos = self.data_set(start, None, item_implicit)
            else:
                pos = self.data_set(start, start + length, item_implicit)

    def items(self, pos: int, end: int, implicit: bool) -> int:
        """Walk the items of a sequence of defined length, which must end at ``end``: its
        length is checked against theirs, as station.dicom.validate does."""
        while pos < end:
            index = self.at(pos, 8)
            group, number, length = _IMPLICIT.unpack_from(self.buf, index)
            if group << 16 | number != ITEM:
                raise _Unsure
            start = pos + 8
            item_implicit = implicit or (length != 0 and self.looks_implicit(start))
            if length == UNDEFINED_LENGTH:
                pos = self.data_set(start, None, item_implicit)
            else:
                pos = self.data_set(start, start + length, item_implicit)
        if pos != end:
            raise _Unsure
        return pos

    def fragments(self, pos: int) -> int:
        """Walk encapsulated fragments (PS3.5 A.4: items of defined length, then the sequence
        delimiter) by their lengths, as pydicom does first, without reading them."""
        while True:
            index = self.at(pos, 8)
            group, number, length = _IMPLICIT.unpack_from(self.buf, index)
            tag = group << 16 | number
            if tag == SEQUENCE_DELIMITER and length == 0:
                return pos + 8
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise _Unsure
            pos += 8 + length

    def character_set(self, vr: bytes | None, value: int, length: int) -> None:
        """pydicom looks Specific Character Set up while it reads, and an odd value can make
        it raise (a NUL inside does): only Defined Terms are let through."""
        if vr not in (None, b"CS") or length == UNDEFINED_LENGTH:
            raise _Unsure
        index = self.at(value, length)
        text = self.buf[index : index + length].decode("latin-1")
        if not CHARACTER_SETS.issuperset(text.rstrip("\0 ").split("\\")):
            raise _Unsure

    def looks_implicit(self, pos: int) -> bool:
        """pydicom's test of a data set's first element: no VR of two capitals after the tag."""
        index = self.at(pos, 6)
        first, second = self.buf[index + 4], self.buf[index + 5]
        return not (0x40 < first < 0x5B and 0x40 < second < 0x5B)

    def uid(self, vr: bytes | None, value: int, length: int) -> str:
        """A UI value, normalised as identify does (trailing NULs and spaces stripped)."""
        if vr not in (None, b"UI") or length > MAX_UID_BYTES:
            raise _Unsure
        index = self.at(value, length)
        return self.buf[index : index + length].decode("latin-1").rstrip("\0 ")
