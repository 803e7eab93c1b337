"""Transcoding per destination: every compressed or big endian file of the shared corpus
reaches DCMTK storescp peers that accept only uncompressed syntaxes, or only Implicit VR
Little Endian, with the same decoded pixels; what has no lossless path is dead-lettered
with its syntaxes named. The in-process tests check the conversions and the policy."""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import VALID, StationProcess, StoreSCP, needs_corpus, wait_for
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from station.config import load_config
from station.dicom.transcode import SyntaxPolicy, TranscodeError, convert, describe_plan
from station.dicom.uids import uid_name
from station.errors import ConfigError

UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}


def _syntax(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _pixels(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on odd but readable values
        return ds.pixel_array


def converted_files() -> list[Path]:
    """Every valid file of the corpus stored compressed, deflated or big endian."""
    if not VALID.is_dir():
        return []
    return [p for p in sorted(VALID.glob("*.dcm")) if _syntax(p) not in UNCOMPRESSED]


def smallest_per_syntax() -> list[Path]:
    chosen: dict[str, Path] = {}
    for path in sorted(converted_files(), key=lambda p: p.stat().st_size):
        chosen.setdefault(_syntax(path), path)
    return list(chosen.values())


def test_uid_names() -> None:
    assert uid_name(JPEGLSLossless) == (
        "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"
    )
    assert uid_name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage (1.2.840.10008.5.1.4.1.1.2)"
    assert uid_name("1.2.3.4") == "1.2.3.4"


@needs_corpus
@pytest.mark.parametrize("path", smallest_per_syntax(), ids=lambda p: p.name)
@pytest.mark.parametrize(
    "target", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless]
)
def test_conversion_keeps_pixels(path: Path, target: str) -> None:
    """Decoded pixels are identical after conversion, per stored syntax of the corpus;
    where the encoder cannot take an image the error names both syntaxes."""
    original = dcmread(path)
    ds = dcmread(path)
    policy = SyntaxPolicy((target,))
    try:
        convert(ds, _syntax(path), target, policy)
    except TranscodeError as exc:
        assert UID(target).is_compressed, exc
        assert uid_name(target) in str(exc)
        return
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(_pixels(ds), _pixels(original))


def test_lossy_needs_permission() -> None:
    strict, lossy = SyntaxPolicy((JPEG2000,)), SyntaxPolicy((JPEG2000,), allow_lossy=True)
    assert strict.syntaxes(ExplicitVRLittleEndian) == []
    assert strict.syntaxes(JPEG2000) == [JPEG2000]  # as stored: nothing more is lost
    assert "allow_lossy: true" in strict.excluded(ExplicitVRLittleEndian)[0]
    assert lossy.syntaxes(ExplicitVRLittleEndian) == [JPEG2000]
    # big endian is read, never written
    assert SyntaxPolicy((ExplicitVRBigEndian,)).syntaxes(ImplicitVRLittleEndian) == []


def test_preview_wording() -> None:
    default = SyntaxPolicy()
    assert describe_plan(JPEGLSLossless, default) == (
        f"stored {uid_name(JPEGLSLossless)}: sent as stored; would convert to "
        f"{uid_name(ExplicitVRLittleEndian)} or {uid_name(ImplicitVRLittleEndian)} "
        "if the peer refuses it"
    )
    wan = SyntaxPolicy((JPEG2000Lossless, "stored"))
    assert describe_plan(ExplicitVRLittleEndian, wan).startswith(
        f"stored {uid_name(ExplicitVRLittleEndian)}: sent in the first of these the peer "
        f"accepts: {uid_name(JPEG2000Lossless)} (converted)"
    )


def test_config_names_bad_syntax(tmp_path: Path) -> None:
    config = tmp_path / "station.yaml"
    config.write_text(
        "destinations:\n  pacs:\n    type: dicom\n    host: 127.0.0.1\n    port: 104\n"
        "    ae_title: PACS\n    transfer_syntaxes: [JPEGLSLossless, stored, JPEG-LS]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(config, environ={})
    assert "destinations.pacs.transfer_syntaxes.2" in str(err.value)
    assert "'JPEG-LS' is not a transfer syntax" in str(err.value)
    config.write_text(config.read_text().replace(", JPEG-LS", ""))
    loaded = load_config(config, environ={}).destinations["pacs"]
    assert loaded.transfer_syntaxes == (JPEGLSLossless, "stored")  # type: ignore[union-attr]


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[dict[str, StoreSCP]]:
    scps = {
        "uncompressed": StoreSCP(tmp_path / "uncompressed", "OLDPACS", accept="+x="),
        "implicit": StoreSCP(tmp_path / "implicit", "IMPLICIT", accept="+xi"),
        "lossy-only": StoreSCP(tmp_path / "lossy-only", "ARCHIVE"),
    }
    try:
        yield {name: scp.start() for name, scp in scps.items()}
    finally:
        for scp in scps.values():
            scp.stop()


def _rounds(files: list[Path]) -> list[list[Path]]:
    """Files sharing a SOP Instance UID (the same image in several syntaxes) go in
    different rounds: the station keeps one copy per UID and batch."""
    rounds: list[list[Path]] = []
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        free = next((r for r in rounds if all(_uid(p) != uid for p in r)), None)
        if free is None:
            rounds.append(free := [])
        free.append(path)
    return rounds


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _received(scp: StoreSCP) -> dict[str, Path]:
    """The files storescp has begun to write, by SOP Instance UID (one it has only begun to
    write may not parse yet: left for a later look)."""
    found = {}
    for path in scp.files():
        if not path.name.startswith("."):
            with contextlib.suppress(Exception):
                found[_uid(path)] = path
    return found


def _settled(station: StationProcess, destination: str) -> dict[str, Any] | None:
    """``station status --json`` once nothing is pending for ``destination`` (every batch
    routed to it delivered or dead-lettered: storescp has answered, so its files are whole)."""
    state: dict[str, Any] = json.loads(station.cli("status", "--json").stdout)
    done = set(state["destinations"].get(destination, {})) <= {"delivered", "dead_letter"}
    return state if done else None


@pytest.mark.e2e
@needs_corpus
def test_every_syntax_reaches_uncompressed_and_implicit_peers(
    tmp_path: Path, peers: dict[str, StoreSCP]
) -> None:
    files = converted_files()
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    destinations = {
        name: {"type": "dicom", "host": "127.0.0.1", "port": scp.port, "ae_title": scp.ae_title}
        for name, scp in peers.items()
    }
    destinations["lossy-only"]["transfer_syntaxes"] = ["JPEG2000"]
    station = StationProcess(
        tmp_path / "station",
        {
            "watch": [{"path": str(dropbox), "settle_seconds": 0}],
            "destinations": destinations,
        },
    )
    station.start()
    try:
        for batch in _rounds(files):
            expected = {_uid(p): p for p in batch}
            for path in batch:
                shutil.copy(path, dropbox / path.name)
            for name in ("uncompressed", "implicit"):
                scp = peers[name]
                want = set(expected)
                got = wait_for(
                    lambda scp=scp, want=want, name=name: (
                        (r := _received(scp)).keys() >= want and _settled(station, name) and r
                    ),
                    60,
                    message=f"{sorted(p.name for p in batch)} at {name}",
                )
                for uid, original_path in expected.items():
                    received = dcmread(got[uid])
                    syntax = str(received.file_meta.TransferSyntaxUID)
                    # storescp's default accepts big endian too: that goes as stored
                    allowed = UNCOMPRESSED | {ExplicitVRBigEndian}
                    assert syntax in allowed, (name, original_path.name, syntax)
                    if name == "implicit":
                        assert syntax == ImplicitVRLittleEndian
                    original = dcmread(original_path)
                    if "PixelData" in original:
                        assert np.array_equal(_pixels(received), _pixels(original)), (
                            name,
                            original_path.name,
                        )
                    got[uid].unlink()  # the next round may bring the same UID again
        lossy_sources = {p.name for p in files if _syntax(p) == JPEG2000}
        wait_for(
            lambda: len(_received(peers["lossy-only"])) == len(lossy_sources),
            30,
            message="JPEG 2000 files at the lossy-only archive",
        )
        state = wait_for(
            lambda: _settled(station, "lossy-only"),
            60,
            message="every delivery to lossy-only to end",
        )
        letters = [d for d in state["dead_letters"] if d["destination"] == "lossy-only"]
        assert letters
        for letter in letters:
            assert f"{uid_name(JPEG2000)} is lossy" in str(letter["last_error"]), letter
            assert "allow_lossy: true" in str(letter["last_error"]), letter
    finally:
        station.stop()
