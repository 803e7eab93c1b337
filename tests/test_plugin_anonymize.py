"""The bundled ``anonymize`` transform on every valid file (every transfer syntax).

Each file is read whole, anonymized, written in its own transfer syntax and read back, as
the dispatcher does for a transformed copy; then the PS3.15 Table E.1-1 actions are checked
element by element, sequences included.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import VALID, needs_corpus
from plugin_files import FILES, QUIET, read, series_of, walk, written
from pydicom.dataset import Dataset

from station.errors import ConfigError
from station.routing.plugins import Plugins
from station_plugins import anonymize as plugin
from station_plugins.uid_remap import new_uid

pytestmark = pytest.mark.filterwarnings(*QUIET)
SALT = "project secret"
CT = VALID / "CT_small.dcm"  # PatientID 1CT1, StudyDate 20040119
SR = VALID / "test-SR.dcm"  # dates, times, names and text nested in the content tree


def anonymized(path: Path, **options: Any) -> tuple[Dataset, Dataset]:
    """(original, anonymized as written and read back) for one file."""
    dataset = read(path)
    plugin.anonymize(dataset, series_of(path), {"salt": SALT, **options})
    return read(path), written(dataset)


def elements(dataset: Dataset) -> list[Any]:
    """Every element of a data set, those in sequence items included."""
    return list(dataset.iterall())


@needs_corpus
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_follows_the_basic_profile(path: Path) -> None:
    original, result = anonymized(path)
    table = plugin.profile()
    syntax = original.file_meta.TransferSyntaxUID
    assert result.file_meta.TransferSyntaxUID == syntax
    assert result.get("PixelData") == original.get("PixelData")  # never decoded nor changed
    old_uids = {str(ds[tag].value) for ds, tag, vr in walk(original) if vr == "UI"}
    names = {str(original.get(k) or "") for k in ("PatientName", "PatientID")}
    for dataset, tag, vr in walk(result):
        assert not tag.is_private, tag
        action = table.action(tag)
        assert action != "X", tag
        value = dataset[tag].value if action or vr in ("PN", "LO", "SH") else None
        if action == "Z" and tag not in (plugin.PATIENT_NAME, plugin.PATIENT_ID):
            assert value in ("", None) or (vr == "SQ" and not value), tag
        if action == "U" and vr == "UI" and value:
            assert str(value).startswith("2.25.") and str(value) not in old_uids, tag
        if vr in ("PN", "LO", "SH"):
            assert not any(n in str(value) for n in names if len(n) > 4), tag
    if "SOPInstanceUID" in original:
        assert result.SOPInstanceUID == new_uid(original.SOPInstanceUID, "2.25", SALT)
        assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    if "SOPClassUID" in original:
        assert result.SOPClassUID == original.SOPClassUID
    if "PatientID" in original:
        assert re.fullmatch("[0-9A-F]{16}", result.PatientID)  # a pseudonym
    if "PatientName" in original:
        assert re.fullmatch("[0-9A-F]{16}", str(result.PatientName))
        assert result.PatientName == result.get("PatientID", result.PatientName)
    assert result.PatientIdentityRemoved == "YES"
    assert result.DeidentificationMethod == "Basic Application Confidentiality Profile"
    assert [c.CodeValue for c in result.DeidentificationMethodCodeSequence] == ["113100"]
    assert result.LongitudinalTemporalInformationModified == "REMOVED"


@needs_corpus
def test_known_elements_of_a_ct() -> None:
    original, result = anonymized(CT)
    assert original.PatientName == "CompressedSamples^CT1"
    assert original.StudyDescription and original.PatientAge and original.OtherPatientIDsSequence
    for removed in ("StudyDescription", "PatientAge", "OtherPatientIDsSequence"):
        assert removed not in result  # X
    assert result.StudyDate == "" and result.PatientBirthDate == ""  # Z
    assert result.InstitutionName == "ANONYMIZED" and result.ContentDate == "19000101"  # D
    assert result.AccessionNumber == ""
    assert result.Modality == "CT" and result.ImageType == original.ImageType  # not listed
    assert result.Rows == original.Rows and result.BitsStored == original.BitsStored
    assert (result.StudyInstanceUID, result.FrameOfReferenceUID) == (
        new_uid(original.StudyInstanceUID, "2.25", SALT),
        new_uid(original.FrameOfReferenceUID, "2.25", SALT),
    )
    assert any(e.tag.is_private for e in original)
    assert not any(e.tag.is_private for e in result)


@needs_corpus
def test_sequences_are_cleaned_at_any_depth() -> None:
    original, result = anonymized(SR)

    def values(dataset: Dataset, keyword: str) -> list[str]:
        return [str(e.value) for e in elements(dataset) if e.keyword == keyword]

    assert "A mass of" in values(original, "TextValue") and values(original, "Date")
    assert set(values(result, "TextValue")) == {"ANONYMIZED"}  # free text in the D tree
    assert set(values(result, "Date")) == {"19000101"}  # D, nested
    assert set(values(result, "VerifyingObserverName")) == {"ANONYMIZED"}  # D, nested
    assert values(result, "ValueType") == values(original, "ValueType")  # structure kept
    assert [values(item, "CodeValue") for item in result.ContentSequence] == [
        values(item, "CodeValue") for item in original.ContentSequence
    ]
    assert values(result, "ReferencedSOPClassUID") == values(original, "ReferencedSOPClassUID")
    assert values(result, "ReferencedSOPInstanceUID") == [
        new_uid(uid, "2.25", SALT) for uid in values(original, "ReferencedSOPInstanceUID")
    ]
    assert values(result, "UID") == [new_uid("1.2.3.4.5", "2.25", SALT)]  # a UIDREF item


@needs_corpus
def test_dates_shifted_by_fixed_days_at_any_depth_times_kept() -> None:
    original, result = anonymized(SR, date_shift_days=-10)
    assert original.ContentDate == "20010213" and result.ContentDate == "20010203"
    assert original.ContentTime == result.ContentTime
    dates = sorted(str(e.value) for e in elements(result) if e.keyword == "Date")
    assert dates and "20001126" in dates  # nested 20001206, ten days earlier
    times = [str(e.value) for e in elements(result) if e.keyword == "VerificationDateTime"]
    assert times and set(times) == {"20010203184746"}
    assert result.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in result.DeidentificationMethodCodeSequence] == [
        "113100",
        "113107",
    ]
    _, ct = anonymized(CT, date_shift_days=7)
    assert ct.StudyDate == "20040126" and ct.PatientBirthDate == ""  # birth date still Z
    _, old_style = anonymized(VALID / "ExplVR_BigEnd.dcm", date_shift_days=7)
    assert old_style.StudyDate == ""  # "1997.04.24" is no DICOM date: emptied, not kept


@needs_corpus
def test_per_patient_date_shift_is_one_shift_per_patient() -> None:
    _, mr = anonymized(VALID / "MR_small.dcm", date_shift_days="per-patient")
    _, mr_again = anonymized(VALID / "MR_small_implicit.dcm", date_shift_days="per-patient")
    _, ct = anonymized(CT, date_shift_days="per-patient")
    assert mr.StudyDate == mr_again.StudyDate != "20040826"
    mr_days = (pydicom.valuerep.DA(mr.StudyDate) - pydicom.valuerep.DA("20040826")).days
    ct_days = (pydicom.valuerep.DA(ct.StudyDate) - pydicom.valuerep.DA("20040119")).days
    assert -365 <= mr_days <= -1 and -365 <= ct_days <= -1
    assert mr_days != ct_days  # with this salt; another salt gives other shifts


@needs_corpus
def test_keep_descriptions() -> None:
    path = VALID / "chrJapMulti.dcm"  # StudyDescription and SeriesDescription "Chest PA"
    original, removed = anonymized(path)
    assert original.SeriesDescription and original.StudyDescription
    assert "SeriesDescription" not in removed and "StudyDescription" not in removed
    _, kept = anonymized(path, keep_descriptions=True)
    assert kept.SeriesDescription == original.SeriesDescription
    assert kept.StudyDescription == original.StudyDescription
    assert "Descriptions retained" in kept.DeidentificationMethod


@needs_corpus
def test_patient_ids_from_a_mapping_a_csv_file_or_a_pseudonym(tmp_path: Path) -> None:
    _, mapped = anonymized(CT, patient_ids={"1CT1": "LUAD-0001"})
    assert (mapped.PatientID, mapped.PatientName) == ("LUAD-0001", "LUAD-0001")
    table = tmp_path / "ids.csv"
    table.write_text("original,new\n\n1CT1, LUAD-0002\n4MR1,LUAD-0003\n")
    _, from_csv = anonymized(CT, patient_ids=str(table))
    assert from_csv.PatientID == "LUAD-0002"
    table.write_text("1CT1,LUAD-0009\n")  # an edited file is read again
    _, edited = anonymized(CT, patient_ids=str(table))
    assert edited.PatientID == "LUAD-0009"

    _, pseudonym = anonymized(VALID / "MR_small.dcm", patient_ids=str(table))
    _, again = anonymized(VALID / "MR_small_RLE.dcm")
    _, other_salt = anonymized(VALID / "MR_small.dcm", salt="another project")
    assert pseudonym.PatientID == again.PatientID  # deterministic
    assert len(pseudonym.PatientID) == 16 and pseudonym.PatientID != "4MR1"
    assert other_salt.PatientID != pseudonym.PatientID
    with pytest.raises(ValueError, match="not in the project's patient_ids"):
        anonymized(VALID / "MR_small.dcm", patient_ids=str(table), unmapped_ids="refuse")
    table.write_text("1CT1\n")
    with pytest.raises(ValueError, match=r"ids.csv:1: expected ORIGINAL,NEW"):
        anonymized(CT, patient_ids=str(table))


@needs_corpus
def test_uid_root_option() -> None:
    original, result = anonymized(CT, uid_root="1.3.6.1.4.1.45037")
    expected = new_uid(original.SeriesInstanceUID, "1.3.6.1.4.1.45037", SALT)
    assert result.SeriesInstanceUID == expected and len(expected) <= 64


@needs_corpus
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "salt is required"),
        ({"salt": SALT, "keep_dates": True}, r"unknown options \['keep_dates'\]"),
        ({"salt": SALT, "profile": "full"}, "only 'basic'"),
        ({"salt": SALT, "date_shift_days": "2 weeks"}, "date_shift_days: expected"),
        ({"salt": SALT, "unmapped_ids": "drop"}, "unmapped_ids: expected"),
        ({"salt": SALT, "patient_ids": ["1CT1"]}, "patient_ids: expected"),
        ({"salt": SALT, "uid_root": "1.2.abc"}, "uid_root: expected a UID root"),
    ],
)
def test_wrong_route_options_fail_the_copy_with_a_reason(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plugin.anonymize(read(CT), series_of(CT), options)


@needs_corpus
def test_defaults_from_plugin_options_and_their_checks() -> None:
    plugins = Plugins(options={"anonymize": {"salt": SALT, "uid_root": "1.2.3"}})
    try:
        dataset = read(CT)
        plugins.transforms["anonymize"](dataset, series_of(CT), {"date_shift_days": 1})
        assert dataset.StudyInstanceUID.startswith("1.2.3.")
        assert dataset.StudyDate == "20040120"
    finally:
        Plugins()  # configure every bundled plugin again with no options
    with pytest.raises(ConfigError, match=r"plugin_options\.anonymize: salt: expected a string"):
        Plugins(options={"anonymize": {"salt": 42}})
    with pytest.raises(ValueError, match="salt is required"):
        plugin.anonymize(read(CT), series_of(CT), {})
