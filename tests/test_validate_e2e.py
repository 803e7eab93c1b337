"""Validate before acknowledging, end to end: `station run` refuses a truncated data set and a
deflated one that does not inflate cleanly, over the network (pynetdicom sending the file's
bytes as they are: DCMTK's storescu will not read such files) and from a drop folder alike,
and keeps nothing of them."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from conftest import MALFORMED, VALID, c_store, wait_for
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian

from station.dicom.files import dataset_start

pytestmark = pytest.mark.e2e

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC210


def bad_files(folder: Path) -> dict[str, Path]:
    """A truncated file and two deflated ones whose stream does not inflate cleanly: one
    cut to an odd length, one with bytes after the end of its stream."""
    folder.mkdir()
    ds = dcmread(VALID / "MR_small.dcm")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    whole = folder / "whole.dcm"
    ds.save_as(whole, enforce_file_format=True)
    data = whole.read_bytes()
    with whole.open("rb") as fh:
        start = dataset_start(fh)
    zlib.decompress(data[start:], -zlib.MAX_WBITS)  # the original inflates cleanly
    whole.unlink()
    odd = len(data) - 1 if (len(data) - start) % 2 == 0 else len(data) - 2
    files = {
        "truncated": MALFORMED / "MR_truncated.dcm",
        "odd_cut": folder / "odd_cut.dcm",
        "trailing": folder / "trailing.dcm",
    }
    files["odd_cut"].write_bytes(data[:odd])
    files["trailing"].write_bytes(data + b"\x01\x02\x03")
    return files


def test_refused_over_the_network_and_nothing_spooled(tmp_path, start_station):
    files = bad_files(tmp_path / "bad")
    station = start_station({"destinations": {"out": {"type": "folder", "path": "out"}}})
    for name, path in files.items():
        assert c_store(station.port, path) == CANNOT_UNDERSTAND, name
    assert c_store(station.port, VALID / "image_dfl.dcm") == SUCCESS  # deflated, clean
    rejected = "station_instances_rejected_total"
    assert station.metric(rejected, reason="truncated") == 1
    assert station.metric(rejected, reason="bad_deflate") == 2
    spooled = station.spooled()
    assert [dcmread(p).file_meta.TransferSyntaxUID for p in spooled] == [
        DeflatedExplicitVRLittleEndian
    ]
    log = station.log()
    assert "the data ends inside element (7FE0,0010) (8192 bytes)" in log
    assert "the deflate stream has no end" in log
    assert "3 bytes after the end of its deflate stream" in log


def test_refused_from_a_drop_folder(tmp_path, start_station):
    """The same checks on dropped files. A cut one may still be being written, so it waits
    for its writer (incomplete_seconds) before it goes to quarantine; a stream with bytes
    after its end goes at once."""
    files = bad_files(tmp_path / "bad")
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    watch = {"path": str(dropbox), "settle_seconds": 0.2, "incomplete_seconds": 1}
    station = start_station(
        {"watch": [watch], "destinations": {"out": {"type": "folder", "path": "out"}}}
    )
    for name, path in files.items():
        (dropbox / f"{name}.dcm").write_bytes(path.read_bytes())

    def held() -> list[dict[str, str]] | None:
        listed = station.cli("quarantine", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        items: list[dict[str, str]] = json.loads(listed.stdout)
        return items if len(items) == 3 else None

    items = wait_for(held, 20, message="the three files in quarantine")
    found = {Path(item["source"]).name: item for item in items}
    assert found["truncated.dcm"]["reason"] == "incomplete"
    assert "the data ends inside element (7FE0,0010)" in found["truncated.dcm"]["detail"]
    assert found["odd_cut.dcm"]["reason"] == "incomplete"
    assert "the deflate stream has no end" in found["odd_cut.dcm"]["detail"]
    assert found["trailing.dcm"]["reason"] == "bad_deflate"
    assert "bytes after the end of its deflate stream" in found["trailing.dcm"]["detail"]
    assert station.spooled() == []
    quarantined = "station_quarantined_inputs_total"
    assert station.metric(quarantined, reason="incomplete") == 2
    assert station.metric(quarantined, reason="bad_deflate") == 1
