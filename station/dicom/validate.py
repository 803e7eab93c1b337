"""Validate before acknowledging: a received file's element structure walked to its end.

Every transfer syntax: implicit and explicit VR little endian, explicit VR big endian,
encapsulated pixel data (fragments to their sequence delimiter), sequences and items of
defined or undefined length, and deflated data sets, inflated as a stream in windows
(memory stays bounded whatever the size). Values are skipped by their lengths, never read:
no pixel data is decoded, and a file on disk is read only where an element header lies.

A data set passes when its last top-level element ends exactly where the data ends, every
item and sequence ends where its length or delimiter says, and a deflated stream inflates
to its end with nothing after it but one byte of padding. Anything else is refused with
0xC210 (cannot understand) and one of the reasons below, with a message that names the
element and the byte where it goes wrong.

Files without the "DICM" prefix or without a Transfer Syntax UID are left to identify(),
which words those refusals.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from station.dicom.files import (
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    ITEM,
    ITEM_DELIMITER,
    LONG_VRS,
    PIXEL_DATA,
    SEQUENCE_DELIMITER,
    SEQUENCES,
    UNDEFINED_LENGTH,
)
from station.dicom.sources import (
    BAD_DEFLATE,
    MALFORMED,
    TRUNCATED,
    BadStream,
    FileBytes,
    InflatedBytes,
    Short,
    Source,
    refuse,
)
from station.errors import RejectedInstance

DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})  # PS3.5 A.5, JPIP

MAX_DEPTH = 64  # sequences nested deeper than this are refused, not recursed into
MAX_META_VALUE = 1024  # the Transfer Syntax UID is the only meta value read

DELIMITERS = {ITEM: "an item", ITEM_DELIMITER: "an item delimiter"}
DELIMITERS[SEQUENCE_DELIMITER] = "a sequence delimiter"

_LE = struct.Struct("<HHI")  # tag and 4-byte length
_BE = struct.Struct(">HHI")
_LE_SHORT = struct.Struct("<H")
_BE_SHORT = struct.Struct(">H")
_LE_LONG = struct.Struct("<I")
_BE_LONG = struct.Struct(">I")


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """One forward pass over a data set; ``element`` is the last element header read, for
    the message when the data ends inside it."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.element: tuple[int, int, int] | None = None  # tag, offset, value length

    def refuse(self, pos: int, message: str) -> RejectedInstance:
        return refuse(MALFORMED, f"{message} at {self.src.where(pos)}")

    def truncated(self) -> RejectedInstance:
        src = self.src
        if isinstance(src, InflatedBytes) and not src.inflater.eof:
            return src.cut()  # the data set is cut because the stream is
        if self.element is None:
            return refuse(
                TRUNCATED,
                f"data set is truncated: the data ends inside the header of the element at "
                f"{src.where(src.pos)}",
            )
        tag, at, length = self.element
        size = "undefined length" if length == UNDEFINED_LENGTH else f"{length} bytes"
        return refuse(
            TRUNCATED,
            f"data set is truncated: the data ends inside element {_tag(tag)} "
            f"({size}) at {src.where(at)}",
        )

    def walk(self, big: bool, implicit: bool) -> None:
        src = self.src
        try:
            if src.at_end():
                raise refuse(TRUNCATED, "no data set after the File Meta Information")
            if not big and not implicit:
                implicit = self.looks_implicit()  # pydicom and DCMTK read such a file too
            self.data_set(None, big, implicit, 0)
        except Short:
            raise self.truncated() from None
        except BadStream as exc:
            raise refuse(
                BAD_DEFLATE,
                f"deflated data set does not inflate near {src.where(src.pos)}: {exc}",
            ) from None

    def looks_implicit(self) -> bool:
        """pydicom's test of a data set's first element: no VR of two capitals after the tag."""
        head = self.src.peek(6)
        return not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)

    def data_set(self, end: int | None, big: bool, implicit: bool, depth: int) -> None:
        """Elements to ``end``; with ``end`` None to an item delimiter or, at depth 0, to the
        end of the data."""
        src = self.src
        tags = _BE if big else _LE
        while True:
            pos = src.pos
            if end is not None:
                if pos == end:
                    return
                if pos > end:
                    raise self.refuse(end, "an element runs past the end of its item")
            elif depth == 0 and src.at_end():
                return
            self.element = None
            head = src.read(8)
            group, number, length = tags.unpack(head)
            tag = group << 16 | number
            vr = None
            if group == 0xFFFE:
                if tag == ITEM_DELIMITER and end is None and depth:
                    return
                what = DELIMITERS.get(tag, f"tag {_tag(tag)}")
                raise self.refuse(pos, f"{what} where a data set element belongs")
            if not implicit:
                vr = head[4:6]
                if vr in LONG_VRS:
                    length = (_BE_LONG if big else _LE_LONG).unpack(src.read(4))[0]
                elif 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B:
                    length = (_BE_SHORT if big else _LE_SHORT).unpack(head[6:8])[0]
                else:
                    raise self.refuse(pos, f"element {_tag(tag)} has no valid VR ({vr!r})")
            self.element = (tag, pos, length)
            if length == UNDEFINED_LENGTH:
                self.undefined(tag, vr, big, implicit, depth, pos)
                continue
            if end is not None and src.pos + length > end:
                raise self.refuse(
                    pos, f"element {_tag(tag)} of {length} bytes runs past the end of its item"
                )
            if vr == b"SQ" or (implicit and tag in SEQUENCES):
                self.sequence(src.pos + length, big, implicit, depth + 1, tag)
            else:
                src.skip(length)

    def undefined(
        self, tag: int, vr: bytes | None, big: bool, implicit: bool, depth: int, pos: int
    ) -> None:
        """A value of undefined length: a sequence's items or pixel data's fragments."""
        if vr == b"UN" and big:  # PS3.5 6.2.2: its items are in implicit VR little endian
            self.sequence(None, False, True, depth + 1, tag)
        elif vr in (b"SQ", b"UN") or (implicit and tag not in PIXEL_DATA):
            # in little endian, an item that looks implicit is read so (as pydicom does)
            self.sequence(None, big, implicit, depth + 1, tag)
        elif vr in (None, b"OB", b"OW"):
            self.fragments(big, tag)
        else:
            raise self.refuse(
                pos, f"element {_tag(tag)} of VR {vr.decode('latin-1')} has an undefined length"
            )

    def sequence(self, end: int | None, big: bool, implicit: bool, depth: int, tag: int) -> None:
        """Items to ``end`` or, with ``end`` None, to the sequence delimiter."""
        src = self.src
        if depth > MAX_DEPTH:
            raise self.refuse(src.pos, f"sequences nested more than {MAX_DEPTH} deep")
        tags = _BE if big else _LE
        while True:
            pos = src.pos
            if end is not None:
                if pos == end:
                    return
                if pos > end:
                    raise self.refuse(end, f"an item runs past the end of sequence {_tag(tag)}")
            item, length = self.item(tags)
            if item == SEQUENCE_DELIMITER and end is None:
                return
            if item != ITEM:
                what = DELIMITERS.get(item, f"element {_tag(item)}")
                raise self.refuse(pos, f"{what} inside sequence {_tag(tag)}, where an item belongs")
            item_implicit = implicit
            if not implicit and not big and length:
                item_implicit = self.looks_implicit()  # as pydicom reads it
            if length == UNDEFINED_LENGTH:
                self.data_set(None, big, item_implicit, depth)
            elif end is not None and src.pos + length > end:
                raise self.refuse(
                    pos, f"an item of {length} bytes runs past the end of sequence {_tag(tag)}"
                )
            else:
                self.data_set(src.pos + length, big, item_implicit, depth)

    def item(self, tags: struct.Struct) -> tuple[int, int]:
        group, number, length = tags.unpack(self.src.read(8))
        return group << 16 | number, length

    def fragments(self, big: bool, tag: int) -> None:
        """Encapsulated pixel data (PS3.5 A.4): items of defined length, then the sequence
        delimiter; the fragments themselves are skipped."""
        src = self.src
        tags = _BE if big else _LE
        while True:
            pos = src.pos
            item, length = self.item(tags)
            if item == SEQUENCE_DELIMITER:
                return
            if item != ITEM or length == UNDEFINED_LENGTH:
                what = "an item of undefined length" if item == ITEM else f"tag {_tag(item)}"
                raise self.refuse(pos, f"{what} among the fragments of {_tag(tag)}")
            src.skip(length)


def _file_meta(src: FileBytes) -> str | None:
    """Walk group 0002 (explicit VR little endian, PS3.10 7.1), leaving ``src`` at the data
    set; its Transfer Syntax UID, or None when the file is not one this module answers for
    (no "DICM" prefix, no Transfer Syntax UID)."""
    if src.size < 132 or os.pread(src.fd, 4, 128) != b"DICM":
        return None
    src.pos = 132
    syntax = None
    try:
        while not src.at_end():
            head = src.peek(8)
            group, number = struct.unpack_from("<HH", head)
            if group != 0x0002:
                break
            src.skip(8)
            length = _LE_SHORT.unpack(head[6:8])[0]
            if head[4:6] in LONG_VRS:
                length = _LE_LONG.unpack(src.read(4))[0]
            if number == 0x0010 and length <= MAX_META_VALUE:
                syntax = src.read(length).decode("latin-1").rstrip("\0 ")
            else:
                src.skip(length)
    except Short:
        raise refuse(
            TRUNCATED, f"File Meta Information is truncated: the data ends at byte {src.size}"
        ) from None
    return syntax or None


def check_structure(path: Path) -> None:
    """Walk the data set of the DICOM file at ``path`` to its end; raise RejectedInstance
    (0xC210, reason truncated, malformed or bad_deflate) naming what is wrong and where."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        meta = FileBytes(fd, 0, size)
        syntax = _file_meta(meta)
        if syntax is None:
            return
        if syntax in DEFLATED:
            inflated = InflatedBytes(fd, meta.pos, size)
            _Walker(inflated).walk(big=False, implicit=False)
            inflated.check_end()
        else:
            _Walker(FileBytes(fd, meta.pos, size)).walk(
                big=syntax == EXPLICIT_VR_BIG_ENDIAN,
                implicit=syntax == IMPLICIT_VR_LITTLE_ENDIAN,
            )
    finally:
        os.close(fd)
