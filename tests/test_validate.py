"""The structure check before acknowledging (station.dicom.validate), on the shared corpus and on
copies cut or damaged on purpose, in every transfer syntax the corpus has."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from conftest import MALFORMED, VALID
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

from station.dicom.files import dataset_start
from station.dicom.identify import identify
from station.dicom.status import Status
from station.dicom.validate import check_structure
from station.errors import RejectedInstance

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

# What each malformed file of the corpus is (its README) and the answer identify gives.
# Three are accepted on purpose: their structure is whole, and what is wrong with them is
# a value or a redundant meta element, which a router must pass on (like the valid files
# whose values break VR rules). badVR.dcm is refused over the network all the same: its File
# Meta names another SOP Instance than its data set (0xA900, tests/test_failures.py).
MALFORMED_ANSWERS = {
    "MR_truncated.dcm": ("truncated", "ends inside element (7FE0,0010) (8192 bytes)"),
    "rtplan_truncated.dcm": ("truncated", "ends inside element (300A,012C) (50 bytes)"),
    "derived_CT_small_truncated_in_dataset.dcm": ("truncated", "inside the header"),
    "derived_CT_small_truncated_in_meta.dcm": ("truncated", "File Meta Information"),
    "derived_CT_small_preamble_only.dcm": ("missing_uid", "SOP Instance UID is missing"),
    "meta_missing_tsyntax.dcm": ("missing_uid", "SOP Instance UID is missing"),
    "no_meta_group_length.dcm": ("missing_uid", "SOP Instance UID is missing"),
    "bad_sequence.dcm": ("invalid_uid", "is not a valid UID"),
    "no_meta.dcm": ("not_dicom", "no 'DICM' prefix"),
    "ExplVR_LitEndNoMeta.dcm": ("not_dicom", "no 'DICM' prefix"),
    "ExplVR_BigEndNoMeta.dcm": ("not_dicom", "no 'DICM' prefix"),
    "rtstruct.dcm": ("not_dicom", "no 'DICM' prefix"),
    "zipMR.gz": ("not_dicom", "no 'DICM' prefix"),
    "derived_empty_file.dcm": ("not_dicom", "no 'DICM' prefix"),
    "derived_not_dicom_text.dcm": ("not_dicom", "no 'DICM' prefix"),
    "badVR.dcm": None,  # IS "1A", an over-long UI: values, not structure
    "CTImageStorage_bad_meta.dcm": None,  # no (0002,0002); the data set has its SOP Class
    "JPEG2000-embedded-sequence-delimiter.dcm": None,  # inside a fragment, skipped by length
}


def refusal(path: Path) -> tuple[int, str, str]:
    with pytest.raises(RejectedInstance) as caught:
        check_structure(path)
    return caught.value.status, caught.value.reason, str(caught.value)


@pytest.mark.parametrize("path", sorted(VALID.iterdir()), ids=lambda p: p.name)
def test_every_valid_file_passes(path: Path) -> None:
    check_structure(path)


def test_malformed_files_get_their_answer() -> None:
    assert {p.name for p in MALFORMED.iterdir()} == set(MALFORMED_ANSWERS)
    for name, answer in MALFORMED_ANSWERS.items():
        if answer is None:
            identify(MALFORMED / name)
            continue
        reason, words = answer
        with pytest.raises(RejectedInstance) as caught:
            identify(MALFORMED / name)
        assert caught.value.status == Status.CANNOT_UNDERSTAND, name
        assert (caught.value.reason, words in str(caught.value)) == (reason, True), (
            name,
            str(caught.value),
        )


# Cut at every offset of the data set: big endian, deflated, implicit VR sequences,
# encapsulated fragments, nested undefined-length sequences.
CUT = ["MR_small_bigendian.dcm", "image_dfl.dcm", "rtplan.dcm", "JPGExtended.dcm", "test-SR.dcm"]


@pytest.mark.parametrize("name", CUT)
def test_every_cut_is_refused(name: str, tmp_path: Path) -> None:
    data = (VALID / name).read_bytes()
    with (VALID / name).open("rb") as fh:
        start = dataset_start(fh)
    cut = tmp_path / name
    step = max(1, (len(data) - start) // 400)
    whole = 0
    for end in range(start + 1, len(data), step):
        if name == "image_dfl.dcm" and end >= len(data) - 8:
            break  # inside its gzip trailer, after the deflate stream: covered below
        cut.write_bytes(data[:end])
        try:
            check_structure(cut)
        except RejectedInstance as exc:
            assert exc.status == Status.CANNOT_UNDERSTAND
            assert exc.reason in ("truncated", "malformed", "bad_deflate"), (end, str(exc))
            with pytest.raises(RejectedInstance):
                identify(cut)  # the receive path refuses it too, fast path or not
        else:  # a cut between two top-level elements leaves a whole, shorter data set
            assert name != "image_dfl.dcm", end
            assert whole_elements(cut) < whole_elements(VALID / name), end
            whole += 1
    assert whole < 10  # most cuts land inside an element


def whole_elements(path: Path) -> int:
    return len(dcmread(path, force=True))


def deflated(tmp_path: Path, edit: bytes | None = None, cut: int = 0, tail: bytes = b"") -> Path:
    """MR_small written deflated by pydicom, its deflate stream then edited: replaced by
    ``edit``, ``cut`` bytes taken off its end, ``tail`` appended."""
    ds = dcmread(VALID / "MR_small.dcm")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / f"deflated-{len(list(tmp_path.iterdir()))}.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    with path.open("rb") as fh:
        start = dataset_start(fh)
    stream = data[start:] if edit is None else edit
    path.write_bytes(data[:start] + stream[: len(stream) - cut] + tail)
    return path


def test_a_deflated_stream_must_inflate_cleanly(tmp_path: Path) -> None:
    check_structure(deflated(tmp_path))  # as pydicom writes it
    raw = inflated(deflated(tmp_path))
    stream = next(s for s in map(lambda level: raw_deflate(raw, level), range(10)) if len(s) % 2)
    check_structure(deflated(tmp_path, edit=stream))  # odd length, ends cleanly
    check_structure(deflated(tmp_path, edit=stream, tail=b"\0"))  # with its pad
    check_structure(deflated(tmp_path, edit=stream, tail=gzip_trailer(raw)))
    cases = {
        "cut short": (deflated(tmp_path, edit=stream, cut=1), "has no end"),
        "garbage after": (deflated(tmp_path, edit=stream, tail=b"\1\2\3"), "3 bytes after"),
        "wrong trailer": (
            deflated(tmp_path, edit=stream, tail=gzip_trailer(raw + b"x")),
            "8 bytes after",
        ),
        "not deflate": (deflated(tmp_path, edit=b"\xff" * 301), "does not inflate"),
    }
    for case, (path, words) in cases.items():
        status, reason, message = refusal(path)
        assert (status, reason) == (Status.CANNOT_UNDERSTAND, "bad_deflate"), case
        assert words in message, (case, message)


def inflated(path: Path) -> bytes:
    with path.open("rb") as fh:
        return zlib.decompress(fh.read()[dataset_start(fh) :], -zlib.MAX_WBITS)


def raw_deflate(raw: bytes, level: int = 6) -> bytes:
    packer = zlib.compressobj(level, wbits=-zlib.MAX_WBITS)
    return packer.compress(raw) + packer.flush()


def gzip_trailer(raw: bytes) -> bytes:
    return struct.pack("<II", zlib.crc32(raw), len(raw))


def test_a_deflated_structure_is_walked_too(tmp_path: Path) -> None:
    raw = inflated(deflated(tmp_path))
    cut = raw[: len(raw) - 100]  # a whole stream, the data set inside it cut
    status, reason, message = refusal(deflated(tmp_path, edit=raw_deflate(cut)))
    assert (status, reason) == (Status.CANNOT_UNDERSTAND, "truncated")
    assert "ends inside element (FFFC,FFFC)" in message, message  # MR_small ends in padding
    assert message.endswith("of the inflated data set"), message


def nested(tmp_path: Path, implicit: bool) -> tuple[Path, bytes, int]:
    """A valid file with a sequence of two items of defined length added at its end
    (Digital Signatures Sequence, (FFFA,FFFA)); the file, its bytes and the offset of the
    sequence's first item."""
    base = VALID / ("MR_small_implicit.dcm" if implicit else "CT_small.dcm")
    if implicit:
        inner = struct.pack("<HHI", 0x0008, 0x0100, 8) + b"T-12345 "
    else:
        inner = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 8) + b"T-12345 "
    items = 2 * (struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner)
    if implicit:
        head = struct.pack("<HHI", 0xFFFA, 0xFFFA, len(items))
    else:
        head = struct.pack("<HH2s2xI", 0xFFFA, 0xFFFA, b"SQ", len(items))
    data = base.read_bytes() + head + items
    path = tmp_path / "nested.dcm"
    path.write_bytes(data)
    return path, data, len(data) - len(items)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_inconsistent_lengths_are_malformed(tmp_path: Path, implicit: bool) -> None:
    path, data, item = nested(tmp_path, implicit)
    check_structure(path)
    identify(path)
    width = 4 if implicit else 2  # of an element's length
    edits = {  # offset, width and new value of a length field
        "element longer than its item": (item + 12 if implicit else item + 14, width, 0x7FF),
        "item longer than its sequence": (item + 4, 4, 0x7FFF),
    }
    for case, (offset, size, value) in edits.items():
        damaged = bytearray(data)
        damaged[offset : offset + size] = value.to_bytes(size, "little")
        path.write_bytes(bytes(damaged))
        status, reason, message = refusal(path)
        assert (status, reason) == (Status.CANNOT_UNDERSTAND, "malformed"), (case, message)
        assert "runs past the end of" in message, (case, message)
        with pytest.raises(RejectedInstance, match="runs past the end of"):
            identify(path)  # the byte scan's fast path does not let it through
    damaged = bytearray(data)
    damaged[item : item + 4] = struct.pack("<HH", 0xFFFE, 0xE0DD)
    path.write_bytes(bytes(damaged))
    assert "a sequence delimiter inside sequence (FFFA,FFFA)" in refusal(path)[2]


def test_runaway_nesting_is_refused_without_recursing(tmp_path: Path) -> None:
    ds = dcmread(VALID / "CT_small.dcm")
    deepest = Dataset()
    for _ in range(200):
        outer = Dataset()
        outer.AnatomicRegionSequence = Sequence([deepest])
        deepest = outer
    ds.AnatomicRegionSequence = deepest.AnatomicRegionSequence
    path = tmp_path / "deep.dcm"
    ds.save_as(path)
    status, reason, message = refusal(path)
    assert (status, reason) == (Status.CANNOT_UNDERSTAND, "malformed")
    assert "nested more than 64 deep" in message
