"""The spool: received instances on disk, as they came, named only by validated UIDs.

Layout under the storage path::

    spool/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   content, fsynced before acknowledgement
    tmp/                                             incoming data sets being received
    journal.sqlite                                   the state (see journal.py)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from station.errors import RejectedInstance

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
UNDEFINED_LENGTH = 0xFFFFFFFF
DEFER_BYTES = 1024  # values longer than this (pixel data above all) stay on disk unread

# DIMSE statuses the receive path answers with.
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210


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


def read_header(path: Path) -> Dataset:
    """Read a DICOM file's meta and data set up to (not including) the pixel data."""
    return dcmread(path, stop_before_pixels=True)


def check_complete(ds: Dataset, path: Path) -> None:
    """Refuse a data set that was cut short. pydicom reads a value shorter than its element's
    length says (or stops at a partial tag) without a word, so the last top-level element
    must end where the file ends. Undefined lengths prove themselves: pydicom returns no
    elements when one runs into the end of the file."""
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # offsets count in the inflated stream; zlib refuses a cut one itself
    if not len(ds):
        raise RejectedInstance(CANNOT_UNDERSTAND, "malformed", "data set is empty or truncated")
    last = ds.get_item(max(ds.keys()), keep_deferred=True)
    if isinstance(last, RawDataElement) and last.length != UNDEFINED_LENGTH:
        end, size = last.value_tell + last.length, path.stat().st_size
        if end != size:
            raise RejectedInstance(
                CANNOT_UNDERSTAND,
                "malformed",
                f"data set is truncated: element {last.tag} ends at byte {end}, "
                f"the data ends at byte {size}",
            )


def identify(path: Path) -> Header:
    """Read and check the UIDs that decide where an instance goes, and that the data set is
    complete; raise RejectedInstance. Every top-level element is read, but no long value."""
    try:
        ds = dcmread(path, defer_size=DEFER_BYTES)
    except InvalidDicomError as exc:
        raise RejectedInstance(
            CANNOT_UNDERSTAND,
            "not_dicom",
            "not a DICOM file: no 'DICM' prefix and File Meta Information after the preamble",
        ) from exc
    except EOFError as exc:
        raise RejectedInstance(
            CANNOT_UNDERSTAND, "malformed", f"data set is truncated: {exc}"
        ) from exc
    except Exception as exc:
        raise RejectedInstance(
            CANNOT_UNDERSTAND, "malformed", f"cannot parse data set: {type(exc).__name__}: {exc}"
        ) from exc
    check_complete(ds, path)
    meta = ds.file_meta
    if meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        raise RejectedInstance(
            CANNOT_UNDERSTAND, "dicomdir", "a DICOMDIR (media index), not an image"
        )
    values: dict[str, str] = {}
    for label, keyword, source in (
        ("SOP Instance UID", "SOPInstanceUID", ds),
        ("SOP Class UID", "SOPClassUID", ds),
        ("Transfer Syntax UID", "TransferSyntaxUID", meta),
        ("Study Instance UID", "StudyInstanceUID", ds),
        ("Series Instance UID", "SeriesInstanceUID", ds),
    ):
        try:
            value = source.get(keyword)
        except Exception as exc:
            raise RejectedInstance(
                CANNOT_UNDERSTAND, "malformed", f"{label} cannot be read: {exc}"
            ) from exc
        value = str(value).rstrip("\0 ") if value is not None else None
        if not value and keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            # Real-world objects (secondary captures, some exports) lack them; such an
            # instance forms a series of its own, keyed by its SOP Instance UID. The data
            # set itself is left as it is.
            value = values["SOPInstanceUID"]
        if not value:
            raise RejectedInstance(CANNOT_UNDERSTAND, "missing_uid", f"{label} is missing")
        if not is_uid(value):
            raise RejectedInstance(
                CANNOT_UNDERSTAND, "invalid_uid", f"{label} {value[:80]!r} is not a valid UID"
            )
        values[keyword] = value
    return Header(
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_uid=values["SOPInstanceUID"],
        sop_class=values["SOPClassUID"],
        transfer_syntax=values["TransferSyntaxUID"],
    )


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Where instances live between receipt and delivery."""

    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root
        self.files = root / "spool"
        self.tmp = root / "tmp"
        self.min_free_bytes = min_free_bytes
        for folder in (self.files, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, header: Header) -> Path:
        return self.files / header.series_uid / f"{header.sop_uid}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, incoming: int = 0) -> None:
        """Refuse new data (0xA700) before the disk falls below the configured reserve."""
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise RejectedInstance(
                OUT_OF_RESOURCES,
                "disk_full",
                f"only {free} bytes free under {self.root}; storage.min_free_bytes is "
                f"{self.min_free_bytes}",
            )

    def store(self, incoming: Path, header: Header) -> Path:
        """Move a fully received file into place, durably (fsync file, then directory)."""
        self.check_space(0)
        target = self.path_for(header)
        new_dir = not target.parent.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(incoming, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(incoming, target)
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: temp dir on another file system
                raise
            shutil.copyfile(incoming, target)
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
            os.unlink(incoming)
        fsync_dir(target.parent)
        if new_dir:
            fsync_dir(self.files)
        return target

    def used_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.files):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
        return total

    def remove(self, path: Path) -> None:
        """Remove a spool file, and its series folder once empty."""
        try:
            path.unlink()
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def remove_orphans(self, known: set[str]) -> int:
        """After a crash: delete files that were never journaled (so never acknowledged)."""
        removed = 0
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        for series_dir in self.files.iterdir():
            for path in series_dir.iterdir():
                if str(path) not in known:
                    self.remove(path)
                    removed += 1
        return removed
