"""PHI on disk (issue 14, item 6): what the station writes is owner-only whatever the umask
(folders 0700, files 0600), and a folder destination takes the modes it is configured with."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from conftest import VALID, StationProcess, storescu, storescu_successes, wait_for

from station.config import FolderDestinationConfig, load_config
from station.dicom.identify import identify
from station.dispatch.folder import FolderDestination
from station.errors import ConfigError
from station.store.records import Instance


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_under(root: Path) -> dict[Path, int]:
    return {path: mode(path) for path in [root, *root.rglob("*")]}


@pytest.mark.e2e
@pytest.mark.usefixtures("umask_022")
def test_storage_and_default_destination_are_owner_only(tmp_path: Path) -> None:
    station = StationProcess(tmp_path / "station", {}).start()  # default folder destination
    storage = station.storage
    try:
        sent = storescu(
            station.port, [VALID / "CT_small.dcm", VALID / "MR_small.dcm"], extra=("-v",)
        )
        assert storescu_successes(sent) == 2, sent.stderr
        outgoing = storage / "outgoing"
        wait_for(lambda: len(list(outgoing.rglob("*.dcm"))) == 2, 30, message="delivery")
        assert (storage / "journal.sqlite-wal").exists() and (
            storage / "journal.sqlite-shm"
        ).exists()
        found = modes_under(storage)
        loose = {
            str(path): oct(got)
            for path, got in found.items()
            if got != (0o700 if path.is_dir() else 0o600)
        }
        assert not loose, loose
        kinds = {path.relative_to(storage).parts[0] for path in found if path != storage}
        assert {"spool", "quarantine", "outgoing", "journal.sqlite", "station.lock"} <= kinds
    finally:
        station.stop()


@pytest.mark.usefixtures("umask_022")
def test_folder_destination_takes_its_configured_modes(tmp_path: Path) -> None:
    config = FolderDestinationConfig.model_validate(
        {"type": "folder", "path": tmp_path / "shared", "file_mode": "0640", "folder_mode": 0o750}
    )
    header = identify(VALID / "CT_small.dcm")
    source = tmp_path / "spooled.dcm"
    source.write_bytes((VALID / "CT_small.dcm").read_bytes())
    instance = Instance(
        header.sop_uid,
        header.study_uid,
        header.series_uid,
        header.sop_class,
        header.transfer_syntax,
        source,
        source.stat().st_size,
    )
    result = FolderDestination("shared", config).send([instance], None)
    assert result.sent == 1
    written = tmp_path / "shared" / header.study_uid / header.series_uid / f"{header.sop_uid}.dcm"
    assert mode(written) == 0o640
    assert mode(written.parent) == mode(written.parent.parent) == mode(tmp_path / "shared") == 0o750


@pytest.mark.parametrize("value", ["0649", "rw-r-----", "01777", 0o4755, True])
def test_a_mode_that_is_not_one_is_refused(tmp_path: Path, value: object) -> None:
    path = tmp_path / "station.yaml"
    path.write_text(
        "destinations:\n  shared:\n    type: folder\n    path: out\n"
        f"    file_mode: {value if not isinstance(value, str) else repr(value)}\n"
    )
    with pytest.raises(ConfigError, match=r"destinations\.shared.*file_mode"):
        load_config(path)
