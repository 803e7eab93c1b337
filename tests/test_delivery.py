"""The whole valid corpus, DCMTK storescu -> station -> DCMTK storescp, arrives unchanged.

storescu does not put a file on the wire as it is stored: it parses and re-encodes the data
set (explicit sequence lengths, group lengths recomputed, trailing padding dropped, odd
values padded). So the bytes the station must preserve are those storescu sends, and those
are known by sending the same files straight to a second storescp (the reference). The
station passes when what it delivers is byte for byte what the reference received, and
when every element still has its original value (DCMTK's re-encoding aside).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import (
    VALID,
    StoreSCP,
    dicom_destination,
    needs_corpus,
    storescu,
    storescu_successes,
    wait_for,
)
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.tag import BaseTag

# Real-world values that break VR rules (over-long LO, UI with a leading zero) are expected.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:(Invalid value for VR|The value length):UserWarning"),
]

DEFLATED = "1.2.840.10008.1.2.1.99"
TRAILING_PADDING = 0xFFFCFFFC

# DICOMDIR-empty.dcm is a media index (Media Storage Directory), not a storage object: it
# has no SOP Class/Instance UID in its data set, so there is nothing to C-STORE. storescu
# itself skips it ("missing SOP class (or instance) in file ..., ignoring file").
NOT_STORABLE = {"DICOMDIR-empty.dcm"}


def dataset_bytes(path: Path) -> bytes | None:
    """The encoded data set after the File Meta group (inflated when deflated); None while
    the file is incomplete or not a DICOM file."""
    try:
        raw = path.read_bytes()
        if raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
            return None
        (meta_length,) = struct.unpack("<I", raw[140:144])
        body = raw[144 + meta_length :]
        if read_file_meta_info(path).TransferSyntaxUID == DEFLATED:
            return zlib.decompress(body, -zlib.MAX_WBITS)
        return body
    except Exception:
        return None


def is_sequence(ds: Dataset, tag: BaseTag) -> bool:
    vr = ds.get_item(tag).VR  # None while an implicit VR element is still raw
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:  # a private tag: let pydicom work its VR out
            vr = ds[tag].VR
    return vr == "SQ"


def same_value(original: Dataset, arrived: Dataset, tag: BaseTag) -> bool:
    """Compare the values as encoded, without their padding (NUL or space) when both are
    still raw: decoding every value is slow (rtss.dcm: seconds) and bytes are stricter."""
    a, b = original.get_item(tag), arrived.get_item(tag)
    both_raw = isinstance(a, RawDataElement) and isinstance(b, RawDataElement)
    if both_raw and isinstance(a.value, bytes) and isinstance(b.value, bytes):
        return a.value.rstrip(b"\0 ") == b.value.rstrip(b"\0 ")
    return original[tag].value == arrived[tag].value  # decoded on reading (e.g. for VR)


def content_differences(original: Dataset, arrived: Dataset, where: str = "") -> list[str]:
    """Elements whose values differ, ignoring what storescu rewrites on every send: group
    lengths, the (FFFC,FFFC) trailing padding and how values are padded to even length."""
    differences = []
    for tag in sorted(set(original.keys()) | set(arrived.keys())):
        if tag.element == 0 or tag == TRAILING_PADDING:
            continue
        if tag not in original or tag not in arrived:
            differences.append(f"{where}{tag} only in {'arrived' if tag in arrived else 'sent'}")
        elif is_sequence(original, tag):
            items, arrived_items = original[tag].value, arrived[tag].value
            if len(items) != len(arrived_items):
                differences.append(
                    f"{where}{tag}: {len(items)} items, {len(arrived_items)} arrived"
                )
            for index, (x, y) in enumerate(zip(items, arrived_items, strict=False)):
                differences += content_differences(x, y, f"{where}{tag}[{index}].")
        elif not same_value(original, arrived, tag):
            differences.append(f"{where}{tag} {original[tag].name} differs")
    return differences


def series_key(path: Path) -> str:
    """What the station groups an instance by: its series, or (JPEGLSNearLossless_16.dcm
    has neither Study nor Series Instance UID) a series of its own."""
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.get("SeriesInstanceUID") or ds.SOPInstanceUID)


def send_rounds(files: list[Path]) -> list[list[Path]]:
    """Split files so no round holds two with the same SOP Instance UID: round k has the
    k-th file of each UID. The station keeps one copy per UID (the later wins), so sending
    the MR_small re-encodings together would deliver only the last of them."""
    by_uid: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        by_uid[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)].append(path)
    rounds: list[list[Path]] = []
    for copies in by_uid.values():
        for number, path in enumerate(copies):
            if number == len(rounds):
                rounds.append([])
            rounds[number].append(path)
    return rounds


@needs_corpus
def test_every_valid_file_arrives_unchanged(tmp_path, pacs, start_station):
    files = sorted(p for p in VALID.glob("*.dcm") if p.name not in NOT_STORABLE)
    syntaxes = {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in files}
    assert len(syntaxes) == 12  # implicit, explicit, deflated, big endian, JPEG x4, JPEG-LS x2,
    # J2K x2, RLE: every one must go through with the syntax it is stored in
    station = start_station({"destinations": {"pacs": dicom_destination(pacs)}})
    rounds = send_rounds(files)
    assert len(rounds) == 6  # MR_small comes in six encodings of one SOP Instance UID
    batches = 0
    for number, batch in enumerate(rounds):
        reference = StoreSCP(tmp_path / f"reference-{number}").start()
        try:
            direct = storescu(reference.port, batch, aec=reference.ae_title, extra=("-v",))
        finally:
            reference.stop()
        assert storescu_successes(direct) == len(batch), direct.stderr
        expected = {ref.name: dataset_bytes(ref) for ref in reference.files()}
        assert len(expected) == len(batch), direct.stderr

        result = storescu(station.port, batch, extra=("-v",))
        assert storescu_successes(result) == len(batch), result.stderr

        def delivered(expected: dict[str, bytes | None] = expected) -> bool:
            return all(dataset_bytes(pacs.folder / name) == body for name, body in expected.items())

        wait_for(delivered, 30, message=f"round {number} ({len(batch)} files) at storescp")
        for original in batch:
            uid = dcmread(original, stop_before_pixels=True).SOPInstanceUID
            (arrived,) = (p for p in pacs.files() if p.name.endswith(f".{uid}"))
            assert content_differences(dcmread(original), dcmread(arrived)) == [], original.name
        batches += len({series_key(p) for p in batch})

    sent = len(files)
    assert sent == station.metric(
        "station_instances_received_total", source="scp", calling_ae="STORESCU"
    )
    wait_for(
        lambda: (
            station.metric("station_dispatch_instances_total", destination="pacs", outcome="sent")
            == sent
        ),
        10,
        message=f"{sent} instances counted as sent",
    )
    assert (
        station.metric("station_dispatch_instances_total", destination="pacs", outcome="failed")
        == 0
    )
    assert (
        station.metric("station_dispatch_attempts_total", destination="pacs", outcome="retry") == 0
    )

    # The journal records a delivery just after the metrics count it: poll.
    row = re.compile(rf"^pacs\s+0\s+{batches}\s+0$", re.M)
    status = wait_for(
        lambda: (out := station.cli("status")).returncode == 0 and row.search(out.stdout) and out,
        10,
        message=f"station status to show {batches} deliveries",
    )
    assert "dead letters" not in status.stdout and "recent failures" not in status.stdout
