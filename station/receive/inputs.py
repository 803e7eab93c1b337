"""What the station reads from outside, by one set of rules whichever command reads it:
drop-folder files (``station run``) and the paths named to ``station send`` and ``station
preview``.

- A symbolic link found in a folder is never followed (a path named on the command line
  is the user's own choice, like ``find -H``). Only regular files are read: a FIFO, a
  socket or a device is refused, and so is a file that cannot be opened.
- A zip archive is checked whole before anything in it is taken: a member pointing outside
  the archive (``../``, absolute, a drive letter), an encrypted one, a symbolic link, more
  members or more bytes than the limits, or a compression ratio past ``max_ratio`` (for
  one member or the whole archive) refuses the archive. The central directory can lie,
  so the same limits hold while extracting, counting the bytes actually inflated.
- A member's name is never used as a path: members are extracted under our own names.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from station.config import ZipLimits

COPY_CHUNK = 1 << 20
RATIO_FLOOR_BYTES = 1 << 20  # below this much inflated data a ratio proves nothing


class RejectedInput(Exception):
    """A file or a whole archive is refused; ``reason`` is a short code from
    station.ops.metrics.INPUT_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class InputFile:
    path: Path  # a readable file on disk
    name: str  # how to name it to the user: its path, or "archive.zip:member/name"


def open_input(path: Path, follow: bool = False) -> BinaryIO:
    """Open a regular file for reading, refusing (RejectedInput) a symbolic link (unless
    ``follow``), anything but a regular file, and what cannot be read. Never blocks on a
    FIFO, never reads a link's target."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise RejectedInput(
                "symlink", f"{path}: a symbolic link (to {os.readlink(path)!r}), not followed"
            ) from None
        if exc.errno == errno.ENXIO:  # a socket
            raise RejectedInput("not_regular", f"{path}: not a regular file") from None
        if exc.errno == errno.ENOENT:
            raise  # gone: nothing to refuse
        raise RejectedInput("unreadable", f"{path}: cannot open: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "special"
        raise RejectedInput("not_regular", f"{path}: not a regular file ({kind})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def is_zip_archive(fh: BinaryIO) -> bool:
    """Whether an open file is a zip archive, a damaged one too. ``zipfile.is_zipfile``
    alone only looks for an end record signature near the end, which pixel data may
    contain: a DICOM file (``DICM`` after its 128-byte preamble) is never taken for one."""
    fh.seek(0)
    head = fh.read(132)
    found = head[128:] != b"DICM" and (head.startswith(b"PK\x03\x04") or zipfile.is_zipfile(fh))
    fh.seek(0)
    return found


def checked_members(archive: zipfile.ZipFile, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The file members of an archive, refusing (RejectedInput) the whole archive when any
    is unsafe or the archive is past a limit, as its central directory states them."""
    members = [info for info in archive.infolist() if not info.is_dir()]
    for info in members:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or ":" in info.filename:
            raise RejectedInput(
                "unsafe_zip", f"zip member {info.filename!r} points outside the archive"
            )
        if info.flag_bits & 0x1:
            raise RejectedInput("unsafe_zip", f"zip member {info.filename!r} is encrypted")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise RejectedInput("unsafe_zip", f"zip member {info.filename!r} is a symbolic link")
        _check_ratio(f"zip member {info.filename!r}", info.file_size, info.compress_size, limits)
    if len(members) > limits.max_files:
        raise RejectedInput(
            "zip_limits",
            f"zip archive has {len(members)} files; the limit (zip_max_files) is "
            f"{limits.max_files}",
        )
    total = sum(info.file_size for info in members)
    if total > limits.max_bytes:
        raise RejectedInput(
            "zip_limits",
            f"zip archive expands to {total} bytes; the limit (zip_max_bytes) is "
            f"{limits.max_bytes}",
        )
    _check_ratio("the zip archive", total, sum(info.compress_size for info in members), limits)
    return members


def _check_ratio(what: str, inflated: int, compressed: int, limits: ZipLimits) -> None:
    """Refuse ``what`` (a member, or the archive) inflating past ``max_ratio``."""
    if inflated > RATIO_FLOOR_BYTES and inflated > limits.max_ratio * max(compressed, 1):
        raise RejectedInput(
            "zip_limits",
            f"{what} expands {compressed} bytes to {inflated}; the limit (zip_max_ratio) "
            f"is {limits.max_ratio:g}:1",
        )


class Extraction:
    """Extracts the members of one checked archive, holding the limits on the bytes
    actually inflated (per member: its stated size and the ratio; in all: max_bytes)."""

    def __init__(self, archive: zipfile.ZipFile, limits: ZipLimits) -> None:
        self.archive = archive
        self.limits = limits
        self.total = 0

    def extract(self, info: zipfile.ZipInfo, target: Path) -> None:
        """Extract one member to ``target``; RejectedInput when it breaks a limit or is
        corrupt. When that fails, nothing is left at ``target``."""
        written = 0
        try:
            with self.archive.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(COPY_CHUNK):
                    written += len(chunk)
                    self.total += len(chunk)
                    if written > info.file_size:
                        raise RejectedInput(
                            "zip_limits",
                            f"zip member {info.filename!r} expands beyond its stated size",
                        )
                    if self.total > self.limits.max_bytes:
                        raise RejectedInput(
                            "zip_limits",
                            f"zip archive expands past {self.limits.max_bytes} bytes "
                            "(zip_max_bytes)",
                        )
                    _check_ratio(
                        f"zip member {info.filename!r}", written, info.compress_size, self.limits
                    )
                    dst.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            target.unlink(missing_ok=True)
            raise RejectedInput("corrupt_zip", f"corrupt zip archive: {exc}") from None
        except NotImplementedError as exc:
            target.unlink(missing_ok=True)
            raise RejectedInput(
                "corrupt_zip", f"zip archive uses an unsupported feature: {exc}"
            ) from None
        except BaseException:
            target.unlink(missing_ok=True)
            raise


def open_zip(fh: BinaryIO) -> zipfile.ZipFile:
    """A zip archive over an open file, RejectedInput when it cannot be read as one."""
    try:
        return zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, ValueError) as exc:
        raise RejectedInput("corrupt_zip", f"corrupt zip archive: {exc}") from None
    except NotImplementedError as exc:
        raise RejectedInput(
            "corrupt_zip", f"zip archive uses an unsupported feature: {exc}"
        ) from None


def input_files(
    paths: list[Path], scratch: Path, problems: list[str], limits: ZipLimits | None = None
) -> Iterator[InputFile]:
    """Every file under ``paths`` (folders walked without following links); zip members
    are extracted into ``scratch``. What is refused is described in ``problems``."""
    numbers = itertools.count()
    limits = limits or ZipLimits()
    for path in paths:
        if path.is_dir():
            for child in _walk(path, problems):
                yield from _one(child, scratch, numbers, problems, limits, follow=False)
        elif path.exists():
            yield from _one(path, scratch, numbers, problems, limits, follow=True)
        else:
            problems.append(f"{path}: no such file or folder")


def _walk(folder: Path, problems: list[str]) -> Iterator[Path]:
    """The entries of a folder tree in name order; links to folders are not entered (they
    are refused as entries, by open_input)."""
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_note(problems)):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(Path(dirpath, d))]):
            yield Path(dirpath) / name


def _note(problems: list[str]) -> Callable[[OSError], None]:
    def onerror(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot read the folder: {exc.strerror}")

    return onerror


def _one(
    path: Path,
    scratch: Path,
    numbers: Iterator[int],
    problems: list[str],
    limits: ZipLimits,
    follow: bool,
) -> Iterator[InputFile]:
    try:
        with open_input(path, follow=follow) as fh:
            if not is_zip_archive(fh):
                yield InputFile(path, str(path))
                return
            with open_zip(fh) as archive:
                extraction = Extraction(archive, limits)
                extracted = []
                for member in checked_members(archive, limits):
                    # Never use the member's name as a path: it may point outside scratch.
                    target = scratch / f"{next(numbers)}.dcm"
                    extraction.extract(member, target)
                    extracted.append(InputFile(target, f"{path}:{member.filename}"))
            yield from extracted
    except RejectedInput as exc:
        problems.append(f"{path}: {exc}" if not str(exc).startswith(str(path)) else str(exc))
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
