"""The drop folder at its edges, end to end (`station run` as a subprocess): links, FIFOs,
zip bombs and floods, names of 255 bytes, and quarantine as journal items that `station
quarantine` lists, releases and discards.

The tests run as root here, where `chmod 000` does not stop a read: a file the station
cannot open or move is made instead by a FIFO in the drop folder while the storage is on
another file system (/dev/shm): a rename fails there, and a FIFO cannot be copied.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MALFORMED, VALID, wait_for
from test_dropfolder import files_in, quarantined, sent, watching

pytestmark = pytest.mark.e2e


def test_links_are_quarantined_without_being_followed(tmp_path, pacs, start_station):
    dropbox, elsewhere = tmp_path / "dropbox", tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = elsewhere / "secret.dcm"
    shutil.copyfile(VALID / "CT_small.dcm", secret)
    (elsewhere / "folder").mkdir()
    shutil.copyfile(VALID / "MR_small.dcm", elsewhere / "folder" / "MR.dcm")
    station = watching(start_station, pacs, dropbox)
    links = {
        "to-dicom.dcm": secret,
        "to-passwd": Path("/etc/passwd"),
        "dangling.dcm": elsewhere / "missing.dcm",
        "loop.dcm": dropbox / "loop.dcm",
        "to-folder": elsewhere / "folder",
    }
    for name, target in links.items():
        (dropbox / name).symlink_to(target)
    items = wait_for(
        lambda: len(held := quarantined(station)) >= len(links) and held,
        20,
        message="every link in quarantine",
    )
    by_name = {Path(str(item["source"])).name: item for item in items}
    assert sorted(by_name) == sorted(links)
    for name, item in by_name.items():
        assert (item["kind"], item["reason"]) == ("link", "symlink"), item
        assert "not followed" in str(item["detail"])
        held = Path(str(item["path"]))
        assert held.is_symlink() and os.readlink(held) == str(links[name])  # the link itself
    assert not any(os.path.lexists(dropbox / name) for name in links)
    assert secret.read_bytes() == (VALID / "CT_small.dcm").read_bytes()
    assert (elsewhere / "folder" / "MR.dcm").exists()
    assert not station.spooled() and not pacs.files() and sent(station) == 0
    assert station.metric("station_quarantined_inputs_total", reason="symlink") == len(links)


@pytest.fixture
def other_file_system() -> Iterator[Path]:
    """A folder on another file system than tmp_path (tmpfs), removed afterwards."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(Path.cwd()).st_dev:
        pytest.skip("no /dev/shm on a file system of its own")
    folder = shm / f"station-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


def test_unmovable_fifo_is_quarantined_once_without_a_retry_storm(
    tmp_path, pacs, start_station, other_file_system
):
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    os.mkfifo(dropbox / "pipe.dcm")
    station = start_station(
        {
            "watch": [{"path": str(dropbox), "settle_seconds": 0.1, "rescan_seconds": 0.3}],
            "storage": str(other_file_system / "data"),
            "destinations": {"pacs": {"type": "folder", "path": str(tmp_path / "out")}},
        }
    )
    items = wait_for(lambda: quarantined(station), 20, message="the FIFO quarantined")
    assert len(items) == 1
    item = items[0]
    assert (item["kind"], item["reason"], item["path"]) == ("file", "not_regular", None)
    assert "FIFO" in str(item["detail"]) and "left in place" in str(item["detail"])
    # Many rescans and ticks later: still one item, one log line, no traceback.
    (dropbox / "after.dcm").write_bytes((VALID / "CT_small.dcm").read_bytes())
    wait_for(lambda: not (dropbox / "after.dcm").exists(), 20, message="a later file taken")
    since = time.monotonic()
    wait_for(lambda: time.monotonic() - since > 2, 5, message="several rescans (0.3 s)")
    assert len(quarantined(station)) == 1
    lines = [line for line in station.run_log().splitlines() if "pipe.dcm" in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in station.run_log()
    assert (dropbox / "pipe.dcm").exists()
    # Once removed, the item is resolved as gone.
    (dropbox / "pipe.dcm").unlink()
    wait_for(lambda: not quarantined(station), 20, message="the item resolved as gone")


def zeros_zip(path: Path, members: dict[str, int]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, size in members.items():
            archive.writestr(name, bytes(size))
    return path


def test_zip_bomb_and_flood_are_each_one_quarantine_item(tmp_path, pacs, start_station):
    dropbox, staging = tmp_path / "dropbox", tmp_path / "staging"
    staging.mkdir()
    ct = (VALID / "CT_small.dcm").read_bytes()
    zeros_zip(staging / "bomb.zip", {"a/CT.dcm": 64 << 20})  # 64 MiB in ~64 kB
    with zipfile.ZipFile(staging / "flood.zip", "w") as archive:
        for n in range(150):
            archive.writestr(f"m/{n:04d}.dcm", ct)
    station = watching(start_station, pacs, dropbox, zip_max_files=100)
    for name in ("bomb.zip", "flood.zip"):
        shutil.move(staging / name, dropbox / name)
    items = wait_for(
        lambda: len(held := quarantined(station)) >= 2 and held, 30, message="both quarantined"
    )
    by_name = {Path(str(item["source"])).name: item for item in items}
    assert sorted(by_name) == ["bomb.zip", "flood.zip"]
    assert by_name["bomb.zip"]["reason"] == by_name["flood.zip"]["reason"] == "zip_limits"
    assert "zip_max_ratio" in str(by_name["bomb.zip"]["detail"])
    assert "150 files" in str(by_name["flood.zip"]["detail"])
    assert not station.spooled() and not files_in(dropbox)
    assert len(files_in(station.workdir / "data" / "quarantine")) == 2


def test_names_of_255_bytes_are_taken_or_quarantined_whole(tmp_path, pacs, start_station):
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    good, bad = "g" * 251 + ".dcm", "b" * 251 + ".dcm"
    shutil.copyfile(VALID / "CT_small.dcm", dropbox / good)
    shutil.copyfile(MALFORMED / "derived_not_dicom_text.dcm", dropbox / bad)
    station = watching(start_station, pacs, dropbox)
    items = wait_for(lambda: quarantined(station), 20, message="the bad one quarantined")
    assert Path(str(items[0]["path"])).name == bad
    wait_for(lambda: sent(station) >= 1, 20, message="the good one delivered")
    assert not files_in(dropbox) and "Traceback" not in station.run_log()


def test_release_reingests_and_discard_deletes(tmp_path, pacs, start_station):
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    bomb = zeros_zip(tmp_path / "big.zip", {"CT.dcm": 4 << 20})
    station = watching(start_station, pacs, dropbox, zip_max_ratio=50)
    shutil.copyfile(MALFORMED / "derived_not_dicom_text.dcm", dropbox / "notes.dcm")
    shutil.move(bomb, dropbox / "big.zip")
    items = wait_for(
        lambda: len(held := quarantined(station)) >= 2 and held, 20, message="quarantined"
    )
    by_name = {Path(str(item["source"])).name: item for item in items}
    status = station.cli("status")
    assert "quarantined inputs" in status.stdout and "notes.dcm" in status.stdout

    released = station.cli("quarantine", "release", str(by_name["notes.dcm"]["id"]))
    assert released.returncode == 0, released.stderr
    # Taken again from the drop folder: still not DICOM, so a new item.
    again = wait_for(
        lambda: [i for i in quarantined(station) if i["id"] not in (it["id"] for it in items)],
        20,
        message="the released file taken again",
    )
    assert Path(str(again[0]["source"])).name == "notes.dcm"

    zip_id = str(by_name["big.zip"]["id"])
    discarded = station.cli("quarantine", "discard", zip_id)
    assert discarded.returncode == 0, discarded.stderr
    assert not Path(str(by_name["big.zip"]["path"])).exists()
    twice = station.cli("quarantine", "discard", zip_id)
    assert twice.returncode == 1 and "already discarded" in twice.stderr
    missing = station.cli("quarantine", "release", "9999")
    assert missing.returncode == 1 and "no quarantine item 9999" in missing.stderr
