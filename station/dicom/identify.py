"""What identify() reads from a received file: the UIDs that decide where an instance goes,
checked, and whether the data set is complete. The byte scan (station.dicom.scan) answers
for clean little-endian files; pydicom reads and words everything else."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from station.dicom.files import MEDIA_STORAGE_DIRECTORY, PIXEL_DATA, ROWS, Header, is_uid
from station.dicom.scan import scan_header
from station.dicom.status import Status
from station.dicom.validate import check_structure
from station.errors import RejectedInstance

DEFER_BYTES = 1024  # values longer than this (pixel data above all) stay on disk unread


def read_header(path: Path) -> Dataset:
    """Read a DICOM file's meta and data set up to (not including) the pixel data."""
    return dcmread(path, stop_before_pixels=True)


def identify(path: Path) -> Header:
    """Read and check the UIDs that decide where an instance goes, and that the data set is
    complete; raise RejectedInstance. A clean little-endian file is read straight from its
    bytes (station.dicom.scan, many times faster); pydicom reads and words everything else."""
    return scan_header(path) or identify_with_pydicom(path)


def identify_with_pydicom(path: Path) -> Header:
    """identify() by pydicom: the structure is walked to its end first (station.dicom.validate),
    then every top-level element is read, but no long value."""
    check_structure(path)
    try:
        ds = dcmread(path, defer_size=DEFER_BYTES)
    except InvalidDicomError as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND,
            "not_dicom",
            "not a DICOM file: no 'DICM' prefix and File Meta Information after the preamble",
        ) from exc
    except EOFError as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, "malformed", f"data set is truncated: {exc}", incomplete=True
        ) from exc
    except Exception as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND,
            "malformed",
            f"cannot parse data set: {type(exc).__name__}: {exc}",
        ) from exc
    meta = ds.file_meta
    if meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, "dicomdir", "a DICOMDIR (media index), not an image"
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
                Status.CANNOT_UNDERSTAND, "malformed", f"{label} cannot be read: {exc}"
            ) from exc
        value = str(value).rstrip("\0 ") if value is not None else None
        if not value and keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            # Real-world objects (secondary captures, some exports) lack them; such an
            # instance forms a series of its own, keyed by its SOP Instance UID. The data
            # set itself is left as it is.
            value = values["SOPInstanceUID"]
        if not value:
            raise RejectedInstance(Status.CANNOT_UNDERSTAND, "missing_uid", f"{label} is missing")
        if not is_uid(value):
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND,
                "invalid_uid",
                f"{label} {value[:80]!r} is not a valid UID",
            )
        values[keyword] = value
    return Header(
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_uid=values["SOPInstanceUID"],
        sop_class=values["SOPClassUID"],
        transfer_syntax=values["TransferSyntaxUID"],
        pixels_missing=ROWS in ds and not any(tag in ds for tag in PIXEL_DATA),
    )
