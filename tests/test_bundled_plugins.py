"""The bundled plugins together, end to end: ``station run`` with tag-filter, classify,
webhook, and a route that anonymizes, remaps UIDs and writes the CTP block, delivering to
DCMTK's storescp; then ``station preview`` and ``station check`` on the same config.

Two series of one study go through: CT_small and a second series made from it here (new
series and instance UIDs, a ReferencedImageSequence pointing at the CT, the same frame of
reference), so references between series can be checked on what the PACS received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from conftest import VALID, StationProcess, StoreSCP, dicom_destination, needs_corpus, wait_for
from plugin_files import Receiver
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from test_routing import send, settled, write_routes

from station_plugins.uid_remap import new_uid

CT = VALID / "CT_small.dcm"  # CompressedSamples^CT1, ID 1CT1, StudyDate 20040119
MR = VALID / "MR_small.dcm"  # ImageType DERIVED\SECONDARY: dropped by tag-filter
SR = VALID / "reportsi.dcm"  # SR: dropped by tag-filter
ROOT = "1.3.6.1.4.1.45037"
SALT = "luad"


def second_series(folder: Path) -> Path:
    """A second series of CT_small's study that references the CT image."""
    ct = pydicom.dcmread(CT)
    derived = pydicom.dcmread(CT)
    derived.SeriesInstanceUID = generate_uid()
    derived.SOPInstanceUID = derived.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    derived.SeriesNumber = 2
    reference = Dataset()
    reference.ReferencedSOPClassUID = ct.SOPClassUID
    reference.ReferencedSOPInstanceUID = ct.SOPInstanceUID
    derived.ReferencedImageSequence = [reference]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "derived.dcm"
    derived.save_as(path, enforce_file_format=True)
    return path


def config(tmp_path: Path, research: dict[str, Any], webhook: str) -> dict[str, Any]:
    routes = write_routes(
        tmp_path / "routes",
        {
            "research.yaml": {
                "name": "ct-research",
                "match": {"labels": {"kind": "ct"}},
                "transform": [
                    {"anonymize": {"date_shift_days": -30}},
                    {"uid-remap": {"salt": SALT}},
                    {"private-tags": {"project": "TCGA-LUAD"}},
                ],
                "destinations": ["research"],
            }
        },
    )
    return {
        "routes": str(routes),
        "destinations": {"research": research},
        "plugin_options": {
            "anonymize": {"salt": "project secret"},
            "uid-remap": {"org_root": ROOT},
            "private-tags": {"site": "77779002"},
            "tag-filter": {"drop": [{"Modality": ["SR", "PR", "KO"]}, {"ImageType": "SECONDARY"}]},
            "classify": {"labels": {"kind": {"ct": {"Modality": "^CT$"}}}},
            "webhook": {"url": webhook},
        },
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.mark.e2e
@needs_corpus
def test_anonymized_remapped_tagged_copies_reach_the_pacs(
    tmp_path: Path, pacs: StoreSCP, start_station: Any, receiver: Receiver
) -> None:
    derived = second_series(tmp_path / "input")
    station: StationProcess = start_station(config(tmp_path, dicom_destination(pacs), receiver.url))
    send(station, CT, derived, MR, SR)
    state = wait_for(lambda: settled(station, 4), message="four series decided")
    assert state["series"] == {"routed": 2, "filtered": 2}
    assert station.metric("station_series_filtered_total", plugin="tag-filter") == 2

    files = wait_for(lambda: len(pacs.files()) == 2 and pacs.files(), message="two files")
    for path in files:
        data = path.read_bytes()
        assert b"CompressedSamples" not in data and b"1CT1" not in data
    by_series = {int(ds.SeriesNumber): ds for ds in map(pydicom.dcmread, files)}
    ct, copy = by_series[1], by_series[2]
    original = pydicom.dcmread(CT)
    for ds in (ct, copy):
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyDate == "20031220"  # 30 days earlier
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith(ROOT + ".") and len(uid) <= 64
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds[0x00130010].value == "CTP" and ds[0x00131010].value == "TCGA-LUAD"
        assert ds[0x00131013].value == "77779002"
        assert ds.PixelData == original.PixelData  # not decoded, not changed
    assert ct.StudyInstanceUID == copy.StudyInstanceUID != original.StudyInstanceUID
    assert ct.FrameOfReferenceUID == copy.FrameOfReferenceUID
    assert ct.SeriesInstanceUID != copy.SeriesInstanceUID
    assert copy.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID
    # stable: computed from the original UID alone, as after any restart
    anonymized = new_uid(original.StudyInstanceUID, "2.25", "project secret")
    assert ct.StudyInstanceUID == new_uid(anonymized, ROOT, SALT)

    notices = wait_for(lambda: len(receiver.notices) == 2 and receiver.notices, 10)
    assert {(n["outcome"], n["destination"], n["instances"]) for n in notices} == {
        ("delivered", "research", 1)
    }
    assert "CompressedSamples" not in json.dumps(notices)


@needs_corpus
def test_preview_shows_each_transform_and_check_names_a_bad_option(tmp_path: Path) -> None:
    folder = tmp_path / "input"
    second_series(folder)
    for path in (CT, MR):
        (folder / path.name).write_bytes(path.read_bytes())
    station = StationProcess(
        tmp_path / "station",
        config(tmp_path, {"type": "folder", "path": str(tmp_path / "out")}, "http://h/"),
    )
    station.workdir.mkdir(parents=True)
    station.config_path.write_text(yaml.safe_dump(station.config))
    result = station.cli("preview", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    series = {(s["modality"], s["series_number"]): s for s in json.loads(result.stdout)["series"]}
    assert series["CT", "2"]["outcome"] == "routed"
    assert series["CT", "2"]["labels"] == {"kind": "ct"}
    assert series["CT", "1"]["outcome"] == "routed"
    (mr,) = (s for (modality, _), s in series.items() if modality == "MR")
    assert mr["outcome"] == "filtered: filtered by plugin tag-filter"
    (delivery,) = series["CT", "1"]["deliveries"]
    assert delivery["transforms"] == ["anonymize", "uid-remap", "private-tags"]
    changes = {c["tag"]: c for c in delivery["changes"]}
    assert changes["(0010,0010)"]["before"] == "CompressedSamples^CT1"
    assert changes["(0010,0020)"]["before"] == "1CT1"
    assert changes["(0008,0020)"]["after"] == "20031220"
    assert changes["(0020,000D)"]["after"].startswith(ROOT)
    assert changes["(0012,0062)"]["after"] == "YES"
    assert (changes["(0013,1010)"]["keyword"], changes["(0013,1010)"]["after"]) == (
        "private",
        "TCGA-LUAD",
    )
    assert changes["(0008,0080)"]["after"] == "ANONYMIZED"  # InstitutionName
    assert changes["(0008,1030)"]["after"] == "(absent)"  # StudyDescription

    broken = {**station.config}
    broken["plugin_options"] = {"classify": {"labels": {"kind": {"ct": {"Modality": "(CT"}}}}}
    station.config_path.write_text(yaml.safe_dump(broken))
    check = station.cli("check")
    assert check.returncode == 1
    assert "plugin_options.classify: labels.kind.ct.Modality: invalid regular expression" in (
        check.stdout + check.stderr
    )
    assert "Traceback" not in check.stderr
