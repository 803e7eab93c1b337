"""The byte scan (station.dicom.scan) against pydicom (identify_with_pydicom), on the shared corpus,
on cut copies and on edited copies. The scan may decline any file; a Header it returns must be
the one pydicom gives, so the scan never lets in a file that pydicom refuses.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from conftest import DATA, VALID, needs_corpus
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import ENCODED_VR
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from station.dicom.files import Header
from station.dicom.identify import identify, identify_with_pydicom
from station.dicom.scan import CHARACTER_SETS, LONG_VRS, PIXEL_DATA, SHORT_VRS, scan_header
from station.errors import RejectedInstance

CORPUS = sorted(path for path in DATA.rglob("*") if path.is_file())

# Cut at many offsets: implicit VR, explicit VR, encapsulated JPEG with undefined-length
# sequences, an SR of nested undefined-length sequences, implicit VR sequences.
CUT = ["MR_small_implicit.dcm", "CT_small.dcm", "JPGExtended.dcm", "reportsi.dcm", "rtplan.dcm"]


def by_pydicom(path: Path) -> Header | None:
    """identify's answer by pydicom alone: the Header, or None for a refusal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # real-world values that break VR rules
        try:
            return identify_with_pydicom(path)
        except RejectedInstance:
            return None


def outcome(read: Callable[[Path], Header], path: Path) -> Header | tuple[int, str, str]:
    """The Header, or the refusal's status, reason and message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read(path)
        except RejectedInstance as exc:
            return exc.status, exc.reason, str(exc)


def assert_agrees(path: Path) -> Header | None:
    """The scan's answer for ``path``, after checking pydicom gives the same Header."""
    header = scan_header(path)
    if header is not None:
        assert by_pydicom(path) == header, f"{path.name}: the scan accepts what pydicom does not"
    return header


@needs_corpus
@pytest.mark.parametrize("path", CORPUS, ids=lambda path: str(path.relative_to(DATA)))
def test_scan_agrees_with_pydicom_on_the_corpus(path: Path) -> None:
    assert_agrees(path)
    # and identify, fast path first, answers exactly as pydicom alone: Header or refusal
    assert outcome(identify, path) == outcome(identify_with_pydicom, path)


@needs_corpus
def test_scan_reads_the_little_endian_files() -> None:
    """Fails when the fast path silently degrades into declining (almost) everything."""
    eligible = [
        path
        for path in sorted(VALID.glob("*.dcm"))
        if (header := by_pydicom(path))
        and header.transfer_syntax not in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
    ]
    declined = [path.name for path in eligible if scan_header(path) is None]
    assert len(eligible) >= 20
    assert len(declined) <= len(eligible) // 10, f"declined: {declined}"


def element_starts(path: Path) -> set[int]:
    """The offsets at which a top-level element of ``path`` starts, and its size: cut there,
    the file is a complete (shorter) data set; cut anywhere else, it is not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=1024)
    implicit = ds.original_encoding[0]
    starts = {path.stat().st_size}
    for elem in ds.elements():
        value = getattr(elem, "value_tell", None) or elem.file_tell
        long_header = not implicit and elem.VR.encode() in LONG_VRS
        starts.add(value - (12 if long_header else 8))
    return starts


@needs_corpus
@pytest.mark.parametrize("name", CUT)
def test_cut_copies_are_never_accepted(name: str, tmp_path: Path) -> None:
    data = (VALID / name).read_bytes()
    assert scan_header(VALID / name) is not None  # or this test proves nothing
    starts = element_starts(VALID / name)
    assert min(starts) > 132  # the data set's first element starts after the meta
    cut = tmp_path / name
    accepted = []
    for size in range(len(data)):
        if 4096 <= size < len(data) - 512 and size % 61:
            continue  # every offset in the headers and the end, a sample of the pixel data
        cut.write_bytes(data[:size])
        if assert_agrees(cut) is not None:
            assert size in starts, f"{name} cut to {size} bytes is accepted"
            accepted.append(size)
    assert accepted  # a cut after the identity UIDs but at an element's start is complete


def edited(name: str, change: Callable[[Dataset], None]) -> Callable[[Path], Path]:
    """A copy of a corpus file, changed by ``change`` and written by pydicom in its syntax."""

    def make(folder: Path) -> Path:
        ds = pydicom.dcmread(VALID / name)
        change(ds)
        implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        ds.save_as(folder / name, implicit_vr=implicit, enforce_file_format=True)
        return folder / name

    return make


def patched(name: str, old: bytes, new: bytes) -> Callable[[Path], Path]:
    """A copy of a corpus file with bytes replaced (exactly one occurrence)."""

    def make(folder: Path) -> Path:
        data = (VALID / name).read_bytes()
        assert data.count(old) == 1
        (folder / name).write_bytes(data.replace(old, new))
        return folder / name

    return make


def appended(name: str, tail: bytes) -> Callable[[Path], Path]:
    """A copy of a corpus file with bytes after its end."""

    def make(folder: Path) -> Path:
        (folder / name).write_bytes((VALID / name).read_bytes() + tail)
        return folder / name

    return make


def spliced(meta_from: str, dataset_from: str) -> Callable[[Path], Path]:
    """The File Meta Information of one corpus file before the data set of another."""

    def make(folder: Path) -> Path:
        meta, dataset = (VALID / meta_from).read_bytes(), (VALID / dataset_from).read_bytes()
        meta_end = 144 + struct.unpack_from("<I", meta, 140)[0]
        dataset_start = 144 + struct.unpack_from("<I", dataset, 140)[0]
        (folder / "spliced.dcm").write_bytes(meta[:meta_end] + dataset[dataset_start:])
        return folder / "spliced.dcm"

    return make


def without_study_and_series(ds: Dataset) -> None:
    del ds.StudyInstanceUID
    del ds.SeriesInstanceUID


def without_sop_uid(ds: Dataset) -> None:
    del ds.SOPInstanceUID


def empty_series(ds: Dataset) -> None:
    ds.SeriesInstanceUID = ""


def undefined_lengths(items: bool) -> Callable[[Dataset], None]:
    """Give every sequence (and, with ``items``, every item) an undefined length."""

    def change(ds: Dataset) -> None:
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = items

    return change


def private_sequence(ds: Dataset) -> None:
    """A private sequence and item, both of undefined length."""
    item = Dataset()
    item.CodeValue = "1"
    item.is_undefined_length_sequence_item = True
    block = ds.private_block(0x0009, "STATION TEST", create=True)
    block.add_new(0x01, "SQ", [item])
    block[0x01].is_undefined_length = True


def implicit_un_sequence(folder: Path) -> Path:
    """An explicit VR file with an undefined-length UN element holding an implicit VR item, as
    PS3.5 6.2.2 has it (how a sequence unknown to a sender travels on)."""
    ds = pydicom.dcmread(VALID / "MR_small.dcm")
    ds.private_block(0x0009, "STATION TEST", create=True).add_new(0x01, "UN", b"")
    path = folder / "un.dcm"
    ds.save_as(path, enforce_file_format=True)
    placeholder = struct.pack("<HH2s2xI", 0x0009, 0x1001, b"UN", 0)
    sequence = (
        struct.pack("<HH2s2xI", 0x0009, 0x1001, b"UN", 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + struct.pack("<HHI", 0x0008, 0x0100, 2)  # Code Value, implicit VR
        + b"1 "
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    data = path.read_bytes()
    assert data.count(placeholder) == 1
    path.write_bytes(data.replace(placeholder, sequence))
    return path


MR_SOP = b"\x08\x00\x18\x00UI.\x001.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"
RUSS_CHARSET = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 144"

# case -> (how to make the file, whether the scan reads it); pydicom reads all but a few
EDITS: dict[str, tuple[Callable[[Path], Path], bool]] = {
    "no study and series UID": (edited("MR_small.dcm", without_study_and_series), True),
    "empty series UID, implicit VR": (edited("rtplan.dcm", empty_series), True),
    "UID padded with a space": (patched("MR_small.dcm", MR_SOP, MR_SOP[:-1] + b" "), True),
    "UID padded with NUL and space": (patched("MR_small.dcm", MR_SOP, MR_SOP[:-2] + b"\0 "), True),
    "UID with a leading space": (
        patched("MR_small.dcm", MR_SOP, MR_SOP[:8] + b" " + MR_SOP[8:-1]),
        False,
    ),
    "invalid SOP Instance UID": (patched("MR_small.dcm", MR_SOP, MR_SOP[:-2] + b"x7"), False),
    "two SOP Instance UIDs": (patched("MR_small.dcm", MR_SOP, MR_SOP[:-2] + b"\\7"), False),
    "SOP Instance UID as LO": (
        patched("MR_small.dcm", MR_SOP, MR_SOP[:4] + b"LO" + MR_SOP[6:]),
        False,
    ),
    "no SOP Instance UID": (edited("CT_small.dcm", without_sop_uid), False),
    "a NUL inside Specific Character Set": (
        patched("chrRuss.dcm", RUSS_CHARSET, RUSS_CHARSET.replace(b" 144", b"\0144")),
        False,
    ),
    "an unknown Specific Character Set": (
        patched("chrRuss.dcm", RUSS_CHARSET, RUSS_CHARSET.replace(b"144", b"999")),
        False,
    ),
    "code extensions in Specific Character Set": (
        patched("chrRuss.dcm", RUSS_CHARSET, RUSS_CHARSET[:6] + b"\x10\x00\\ISO 2022 IR 87 "),
        True,
    ),
    "a byte after the end": (appended("MR_small.dcm", b"\0"), False),
    "eight bytes after the end, implicit VR": (
        appended("MR_small_implicit.dcm", bytes(8)),
        False,
    ),
    "bytes after encapsulated pixel data": (appended("JPGExtended.dcm", bytes(4)), False),
    "a wrong File Meta group length": (
        patched("CT_small.dcm", b"UL\x04\x00\xc0\x00\x00\x00", b"UL\x04\x00\xc2\x00\x00\x00"),
        False,
    ),
    "an unknown transfer syntax": (
        patched("MR_small.dcm", b"1.2.840.10008.1.2.1\0", b"1.2.840.99999.1.2.1\0"),
        False,
    ),
    "implicit VR data under an explicit VR syntax": (
        spliced("MR_small.dcm", "MR_small_implicit.dcm"),
        False,
    ),
    "explicit VR data under the implicit VR syntax": (
        spliced("MR_small_implicit.dcm", "MR_small.dcm"),
        False,
    ),
    "implicit VR, sequences of undefined length": (
        edited("rtplan.dcm", undefined_lengths(items=False)),
        True,
    ),
    # pydicom reads these as sequences only because its dictionary says so: left to it
    "implicit VR, sequences and items of undefined length": (
        edited("rtplan.dcm", undefined_lengths(items=True)),
        False,
    ),
    "explicit VR, sequences of undefined length": (
        edited("liver.dcm", undefined_lengths(items=False)),
        True,
    ),
    "implicit VR, a private sequence of undefined length": (
        edited("MR_small_implicit.dcm", private_sequence),
        True,
    ),
    "explicit VR, a private sequence of undefined length": (
        edited("MR_small.dcm", private_sequence),
        True,
    ),
    "explicit VR, an undefined-length UN holding implicit VR": (implicit_un_sequence, True),
}


@needs_corpus  # each edit starts from a corpus file
@pytest.mark.parametrize("case", EDITS)
def test_edited_copies(case: str, tmp_path: Path) -> None:
    make, readable = EDITS[case]
    path = make(tmp_path)
    assert (assert_agrees(path) is not None) == readable


def test_tables_match_pydicom() -> None:
    """The scan's tables agree with the pydicom installed: VRs, character sets, and the tags
    it reads as fragments, never as a sequence, in implicit VR."""
    assert {vr for vr in ENCODED_VR if len(vr) == 2} == LONG_VRS | SHORT_VRS
    assert {vr.encode() for vr in EXPLICIT_VR_LENGTH_32} == LONG_VRS
    assert set(python_encoding) >= CHARACTER_SETS
    assert all(dictionary_VR(tag) != "SQ" for tag in PIXEL_DATA)
