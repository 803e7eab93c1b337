"""The bundled ``uid-remap`` transform on every valid file (every transfer syntax)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import VALID, needs_corpus
from plugin_files import FILES, QUIET, read, series_of, walk, written
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from station.errors import ConfigError
from station.routing.plugins import Plugins
from station_plugins import uid_remap as plugin

pytestmark = pytest.mark.filterwarnings(*QUIET)
ROOT = "1.3.6.1.4.1.45037"
OPTIONS = {"org_root": ROOT, "salt": "luad"}
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def remapped(path: Path, options: dict[str, str] = OPTIONS) -> Dataset:
    dataset = read(path)
    plugin.uid_remap(dataset, series_of(path), dict(options))
    return written(dataset)


def uids(dataset: Dataset) -> dict[str, list[str]]:
    """keyword -> every UI value of that keyword, sequences included, in order."""
    found: dict[str, list[str]] = {}
    for ds, tag, vr in walk(dataset):
        element = ds[tag] if vr == "UI" else None
        if element is not None and element.value:
            values = element.value if element.VM > 1 else [element.value]
            found.setdefault(element.keyword, []).extend(str(v) for v in values)
    return found


@needs_corpus
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_gets_new_uids_under_the_root_and_keeps_the_rest(path: Path) -> None:
    original, result = read(path), remapped(path)
    assert result.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert result.get("PixelData") == original.get("PixelData")
    tags = plugin.uid_tags()
    before, after = uids(original), uids(result)
    assert before.keys() == after.keys()
    for keyword, values in before.items():
        if Tag(keyword) not in tags:  # class, syntax and coding scheme UIDs
            assert after[keyword] == values, keyword
            continue
        assert after[keyword] == [plugin.new_uid(v, ROOT, "luad") for v in values], keyword
        for uid in after[keyword]:
            assert uid.startswith(ROOT + ".") and len(uid) <= 64 and UID.fullmatch(uid)
    if "SOPInstanceUID" in original:
        assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    assert uids(remapped(path)) == after  # the same again: no state, no randomness


@needs_corpus
def test_references_between_instances_stay_intact() -> None:
    # SC_rgb_jpeg_dcmtk.dcm references SC_rgb_jpeg_gdcm.dcm (JPEG Lossless) as its source
    source, derived = (
        remapped(VALID / "SC_rgb_jpeg_gdcm.dcm"),
        remapped(VALID / "SC_rgb_jpeg_dcmtk.dcm"),
    )
    assert source.StudyInstanceUID == derived.StudyInstanceUID
    assert source.SOPInstanceUID in uids(derived)["ReferencedSOPInstanceUID"]
    # the structure set's nested references follow its own study UID
    rtss = remapped(VALID / "rtss.dcm")
    assert rtss.StudyInstanceUID in uids(rtss)["ReferencedSOPInstanceUID"]
    # frames of reference: same original, same new UID, in any series
    mr = [remapped(VALID / name) for name in ("MR_small.dcm", "MR_small_jp2klossless.dcm")]
    assert mr[0].FrameOfReferenceUID == mr[1].FrameOfReferenceUID
    assert mr[0].FrameOfReferenceUID.startswith(ROOT)


@needs_corpus
def test_a_salt_gives_unrelated_uids_and_a_2_25_root_gives_uuid_uids() -> None:
    ct = VALID / "CT_small.dcm"
    salted = remapped(ct, OPTIONS).StudyInstanceUID
    other = remapped(ct, {"org_root": ROOT, "salt": "another project"}).StudyInstanceUID
    unsalted = remapped(ct, {"org_root": ROOT}).StudyInstanceUID
    assert len({salted, other, unsalted}) == 3
    uuid_form = plugin.new_uid("1.2.3", "2.25")
    assert int(uuid_form.removeprefix("2.25.")) < 2**128
    longest = plugin.new_uid("1.2.3", "1." + "2" * 30)
    assert len(longest) == 64


@needs_corpus
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "org_root is required"),
        ({"org_root": "1.2.03"}, "expected a UID root"),
        ({"org_root": "1.2."}, "expected a UID root"),
        ({"org_root": "1." + "2" * 40}, "longer than 32 characters"),
        ({"org_root": ROOT, "salt": 7}, "salt: expected a string"),
        ({"org_root": ROOT, "prefix": "x"}, r"unknown options \['prefix'\]"),
    ],
)
def test_wrong_options_fail_the_copy_with_a_reason(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plugin.uid_remap(read(VALID / "CT_small.dcm"), series_of(VALID / "CT_small.dcm"), options)


@needs_corpus
def test_org_root_from_plugin_options() -> None:
    ct = VALID / "CT_small.dcm"
    plugins = Plugins(options={"uid-remap": {"org_root": "1.2.3"}})
    try:
        dataset = read(ct)
        plugins.transforms["uid-remap"](dataset, series_of(ct), {"salt": "s"})
        assert dataset.SeriesInstanceUID == plugin.new_uid(read(ct).SeriesInstanceUID, "1.2.3", "s")
    finally:
        Plugins()  # every bundled plugin configured again without options
    with pytest.raises(ConfigError, match=r"plugin_options\.uid-remap: org_root: expected"):
        Plugins(options={"uid-remap": {"org_root": "x"}})
