"""The bytes a structure walk (station.dicom.validate) reads: a file's, from an offset,
in windows where element headers lie, or a deflated data set's, inflated as a stream; and
how a refusal is worded."""

from __future__ import annotations

import os
import struct
import zlib

from station.dicom.status import Status
from station.errors import RejectedInstance

TRUNCATED = "truncated"  # the data ends inside an element, item or sequence
MALFORMED = "malformed"  # lengths, items or delimiters that contradict each other
BAD_DEFLATE = "bad_deflate"  # a deflated data set that does not inflate cleanly

WINDOW = 64 * 1024  # bytes read (or inflated) at a time


class Short(Exception):
    """The data ended before ``need`` more bytes."""


class BadStream(Exception):
    """zlib refused the deflated stream."""


def refuse(reason: str, message: str, incomplete: bool = False) -> RejectedInstance:
    """A refusal; a truncated data set is ``incomplete``: its writer may still be adding to
    it (the drop folder waits for it instead of quarantining it at once)."""
    incomplete = incomplete or reason == TRUNCATED
    return RejectedInstance(Status.CANNOT_UNDERSTAND, reason, message, incomplete=incomplete)


class FileBytes:
    """A file's bytes from ``pos`` to ``size``, read in windows where headers lie."""

    def __init__(self, fd: int, pos: int, size: int) -> None:
        self.fd = fd
        self.pos = pos
        self.size = size
        self.buf = b""
        self.base = pos

    def where(self, pos: int) -> str:
        return f"byte {pos}"

    def peek(self, count: int) -> bytes:
        if self.pos + count > self.size:
            raise Short
        index = self.pos - self.base
        if index < 0 or index + count > len(self.buf):
            self.buf = os.pread(self.fd, max(count, WINDOW), self.pos)
            self.base, index = self.pos, 0
            if len(self.buf) < count:
                raise Short  # the file shrank under us
        return self.buf[index : index + count]

    def read(self, count: int) -> bytes:
        data = self.peek(count)
        self.pos += count
        return data

    def skip(self, count: int) -> None:
        if self.pos + count > self.size:
            raise Short
        self.pos += count

    def at_end(self) -> bool:
        return self.pos >= self.size


class InflatedBytes:
    """A deflated data set (raw deflate, PS3.5 A.5) as the stream of its inflated bytes,
    inflated a window at a time: at most about 2 x WINDOW bytes in memory."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        self.fd = fd
        self.offset = start  # of the next compressed byte to read from the file
        self.size = size
        self.start = start
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buf = b""
        self.index = 0
        self.pos = 0  # in the inflated stream
        self.crc = 0  # CRC-32 and length of what was inflated: a gzip trailer may follow
        self.inflated = 0

    def where(self, pos: int) -> str:
        return f"byte {pos} of the inflated data set"

    def _fill(self, count: int) -> bool:
        """At least ``count`` inflated bytes ahead in ``buf``; False if the stream ends first."""
        while len(self.buf) - self.index < count:
            if self.inflater.eof:
                return False
            data = self.inflater.unconsumed_tail
            if not data:
                data = os.pread(self.fd, WINDOW, self.offset)
                if not data:
                    return False
                self.offset += len(data)
            try:
                out = self.inflater.decompress(data, WINDOW)
            except zlib.error as exc:
                raise BadStream(str(exc)) from exc
            self.crc = zlib.crc32(out, self.crc)
            self.inflated += len(out)
            self.buf = self.buf[self.index :] + out
            self.index = 0
        return True

    def peek(self, count: int) -> bytes:
        if not self._fill(count):
            raise Short
        return self.buf[self.index : self.index + count]

    def read(self, count: int) -> bytes:
        data = self.peek(count)
        self.index += count
        self.pos += count
        return data

    def skip(self, count: int) -> None:
        while count:
            if not self._fill(1):
                raise Short
            step = min(count, len(self.buf) - self.index)
            self.index += step
            self.pos += step
            count -= step

    def at_end(self) -> bool:
        return not self._fill(1)

    def cut(self) -> RejectedInstance:
        return refuse(
            BAD_DEFLATE,
            f"deflated data set ({self.size - self.start} bytes from byte {self.start}) is cut "
            "short: the deflate stream has no end",
            incomplete=True,  # a writer may still be adding to it
        )

    def check_end(self) -> None:
        """The stream must have ended (zlib's end-of-stream marker), followed by nothing
        but one byte of padding (PS3.5 A.5 pads an odd-length stream with a NUL) or a gzip
        trailer that matches what was inflated (CRC-32 and length, as in dclunie's
        image_dfl.dcm: a data set deflated with gzip, its header taken off), and its pad."""
        compressed = self.size - self.start
        if not self.inflater.eof:
            raise self.cut()
        after = len(self.inflater.unused_data) + self.size - self.offset
        tail = self.inflater.unused_data + os.pread(self.fd, 10, self.offset)
        gzip = struct.pack("<II", self.crc, self.inflated & 0xFFFFFFFF)
        if tail not in (b"", b"\0", gzip, gzip + b"\0"):
            raise refuse(
                BAD_DEFLATE,
                f"deflated data set ({compressed} bytes from byte {self.start}) has {after} "
                "bytes after the end of its deflate stream (neither padding nor a gzip trailer)",
            )


Source = FileBytes | InflatedBytes
