"""What the C-STORE SCP accepts: any storage SOP class, private ones included."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from conftest import VALID, needs_corpus, wait_for
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

pytestmark = pytest.mark.e2e

PRIVATE_SOP_CLASS = "1.3.6.1.4.1.9590.100.1.2.1"  # not in the standard: a vendor's own


@needs_corpus
def test_private_sop_class_is_accepted_stored_and_forwarded_unchanged(
    tmp_path: Path, start_station
) -> None:
    ds = pydicom.dcmread(VALID / "CT_small.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    source = tmp_path / "private.dcm"
    ds.save_as(source)
    out = tmp_path / "out"
    station = start_station({"destinations": {"out": {"type": "folder", "path": str(out)}}})

    ae = AE("MODALITY")
    ae.add_requested_context(PRIVATE_SOP_CLASS, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", station.port, ae_title="STATION")
    assert assoc.is_established
    status = assoc.send_c_store(source)
    assoc.release()
    assert status.Status == 0x0000

    delivered = wait_for(lambda: list(out.rglob("*.dcm")), message="the private instance")
    received = pydicom.dcmread(delivered[0])
    assert received.SOPClassUID == PRIVATE_SOP_CLASS
    assert received.PixelData == ds.PixelData


@needs_corpus
def test_associations_beyond_the_cap_are_rejected_while_others_are_served(
    tmp_path: Path, start_station
) -> None:
    out = tmp_path / "out"
    station = start_station(
        {
            "listen": {"host": "127.0.0.1", "port": 0, "max_associations": 1},
            "destinations": {"out": {"type": "folder", "path": str(out)}},
        }
    )
    ae = AE("MODALITY")
    ae.add_requested_context(
        pydicom.dcmread(VALID / "CT_small.dcm").SOPClassUID, ExplicitVRLittleEndian
    )
    first = ae.associate("127.0.0.1", station.port, ae_title="STATION")
    assert first.is_established
    second = ae.associate("127.0.0.1", station.port, ae_title="STATION")
    assert second.is_rejected  # A-ASSOCIATE-RJ (local limit exceeded): the sender retries
    assert first.send_c_store(VALID / "CT_small.dcm").Status == 0x0000
    first.release()

    def associated() -> object:
        # pynetdicom frees the slot a moment after the release: poll until it has.
        assoc = ae.associate("127.0.0.1", station.port, ae_title="STATION")
        return assoc if assoc.is_established else None

    third = wait_for(associated, message="a new association once the first is released")
    third.release()
    wait_for(lambda: list(out.rglob("*.dcm")), message="the instance sent on the first")
