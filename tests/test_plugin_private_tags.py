"""The bundled ``private-tags`` transform on every valid file (every transfer syntax)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import VALID, needs_corpus
from plugin_files import FILES, QUIET, read, series_of, written

from station.errors import ConfigError
from station.routing.plugins import Plugins
from station_plugins import private_tags as plugin

pytestmark = pytest.mark.filterwarnings(*QUIET)


def text(value: str | bytes) -> str:
    """A private LO value as read back: implicit VR files give it as undecoded bytes."""
    return value.decode().rstrip(" \0") if isinstance(value, bytes) else value


CTP = {"project": "TCGA-LUAD", "trial": "LUAD-2024", "site_name": "North", "site": 77779002}


@needs_corpus
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_file_gets_the_ctp_block(path: Path) -> None:
    original = read(path)
    dataset = read(path)
    plugin.private_tags(dataset, series_of(path), dict(CTP))
    result = written(dataset)
    assert result.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert result.get("PixelData") == original.get("PixelData")
    block = result.private_block(0x0013, "CTP")
    values = {offset: text(block[offset].value) for offset in (0x10, 0x11, 0x12, 0x13)}
    assert values == {0x10: "TCGA-LUAD", 0x11: "LUAD-2024", 0x12: "North", 0x13: "77779002"}
    if 0x00130010 not in original:
        assert result[0x00130010].value == "CTP"  # the layout CTP writes: (0013,1010)...
        assert text(result[0x00131010].value) == "TCGA-LUAD"
        assert text(result[0x00131013].value) == "77779002"
    kept = {e.tag for e in original if e.tag.element != 0}  # group lengths are not written
    assert kept <= {e.tag for e in result}


@needs_corpus
def test_existing_blocks_are_reused_or_kept() -> None:
    ct = VALID / "CT_small.dcm"
    dataset = read(ct)
    dataset.private_block(0x0013, "OTHER VENDOR", create=True).add_new(0x10, "LO", "theirs")
    plugin.private_tags(dataset, series_of(ct), {"project": "A"})
    plugin.private_tags(dataset, series_of(ct), {"project": "B", "site": "9"})
    result = written(dataset)
    assert result[0x00130010].value == "OTHER VENDOR" and result[0x00131010].value == "theirs"
    assert result[0x00130011].value == "CTP"  # the next free block, used once
    assert (result[0x00131110].value, result[0x00131113].value) == ("B", "9")
    assert 0x00130012 not in result


@needs_corpus
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"site": "1"}, "project is required"),
        ({"project": "x" * 65}, "1 to 64 characters"),
        ({"project": "a\\b"}, "without a backslash"),
        ({"project": ["a"]}, "project: expected text"),
        ({"project": "a", "sponsor": "b"}, r"unknown options \['sponsor'\]"),
    ],
)
def test_wrong_options_fail_the_copy_with_a_reason(options: dict, message: str) -> None:
    ct = VALID / "CT_small.dcm"
    with pytest.raises(ValueError, match=message):
        plugin.private_tags(read(ct), series_of(ct), options)


@needs_corpus
def test_site_from_plugin_options() -> None:
    ct = VALID / "CT_small.dcm"
    plugins = Plugins(options={"private-tags": {"site": "77779002", "site_name": "North"}})
    try:
        dataset = read(ct)
        plugins.transforms["private-tags"](dataset, series_of(ct), {"project": "LUAD"})
        assert [dataset[0x00131000 + o].value for o in (0x10, 0x12, 0x13)] == [
            "LUAD",
            "North",
            "77779002",
        ]
    finally:
        Plugins()  # every bundled plugin configured again without options
    with pytest.raises(ConfigError, match=r"plugin_options\.private-tags: site: expected text"):
        Plugins(options={"private-tags": {"site": True}})
