"""Disk full is always an answer (issue 14, item 7): on a real, tiny file system (tmpfs)
with ``min_free_bytes: 0`` the station runs out of space in the middle of receiving. Every
C-STORE gets an answer (0x0000 or 0xA700), the association is never aborted, nothing
partial stays in the spool, and the acknowledged instances are delivered once space is
back."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest import StationProcess, StoreSCP, dicom_destination, wait_for
from pydicom import dcmread
from pynetdicom import AE
from test_failures import arrived_uids, make_instances

pytestmark = pytest.mark.e2e

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test (root only), unmounted after it."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # even if still busy


def test_full_disk_mid_receive_answers_a700_and_keeps_the_association(
    tmp_path: Path, tiny_fs: Path
) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    storage = tiny_fs / "station"
    config = {
        "storage": {"path": str(storage), "min_free_bytes": 0},
        "series": {"quiet_seconds": 5},
        "destinations": {"pacs": dicom_destination(pacs)},
    }
    station = StationProcess(tmp_path / "station", config).start()
    ballast = tiny_fs / "ballast"
    ballast.write_bytes(bytes(512 * 1024))  # space an operator can free later
    made = make_instances(tmp_path / "made", 60)  # 60 x 39 KiB: more than 2 MiB
    for number, path in enumerate(made):
        if number % 8 == 7:  # some of 1.5 MiB: the disk fills up inside their data sets
            ds = dcmread(path)
            ds.Rows, ds.Columns = 768, 1024
            ds.PixelData = bytes(768 * 1024 * 2)
            ds.save_as(path, enforce_file_format=True)
    try:
        ae = AE(ae_title="FILLER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        first = dcmread(next(iter(made)), stop_before_pixels=True)
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", station.port, ae_title="STATION")
        assert assoc.is_established
        statuses: dict[str, int] = {}
        for path, uid in made.items():
            answer = assoc.send_c_store(path)
            assert answer and "Status" in answer, f"no answer for {path.name}: aborted?"
            statuses[uid] = int(answer.Status)
            assert assoc.is_established, f"association ended after {path.name}"
        assoc.release()

        acknowledged = {uid for uid, status in statuses.items() if status == SUCCESS}
        refused = {uid for uid, status in statuses.items() if status == OUT_OF_RESOURCES}
        assert acknowledged and refused, statuses
        assert acknowledged | refused == set(made.values()), statuses
        # Nothing partial in the spool: every file holding data is a journaled instance.
        held = {str(p) for p in (storage / "spool").rglob("*") if p.is_file() and p.stat().st_size}
        with closing(sqlite3.connect(f"file:{storage / 'journal.sqlite'}?mode=ro", uri=True)) as db:
            journaled = {row[0] for row in db.execute("SELECT path FROM instances")}
            uids = {row[0] for row in db.execute("SELECT sop_uid FROM instances")}
        assert held == journaled
        assert uids == acknowledged
        rejected = station.metric("station_instances_rejected_total", reason="disk_full")
        assert rejected == len(refused)
        assert "cannot write the spool file: [Errno 28]" in station.log()  # inside a data set

        ballast.unlink()  # space is back: what was acknowledged goes out
        seen: dict[Path, str] = {}
        wait_for(lambda: arrived_uids(pacs, seen) >= acknowledged, 60, message="delivery")
        assert "Traceback" not in station.log()
    finally:
        station.stop(signal.SIGKILL)
        pacs.stop()


def test_full_disk_pauses_the_drop_folder_until_space_is_back(
    tmp_path: Path, tiny_fs: Path
) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    storage, dropbox = tiny_fs / "station", tmp_path / "dropbox"
    config = {
        "storage": {"path": str(storage), "min_free_bytes": 0},
        "watch": [{"path": str(dropbox), "settle_seconds": 0.2}],
        "series": {"quiet_seconds": 1},
        "destinations": {"pacs": dicom_destination(pacs)},
    }
    station = StationProcess(tmp_path / "station", config).start()
    ballast = tiny_fs / "ballast"
    ballast.write_bytes(bytes(1200 * 1024))
    made = make_instances(tmp_path / "made", 20)  # 20 x 39 KiB: more than is left
    try:
        dropbox.mkdir(exist_ok=True)
        for path in made:
            path.rename(dropbox / path.name)
        wait_for(lambda: "drop folder paused" in station.log(), 30, message="a pause")
        waiting = {p.name for p in dropbox.iterdir()}
        assert waiting, "every file was taken although the disk is full"
        held = {str(p) for p in (storage / "spool").rglob("*") if p.is_file() and p.stat().st_size}
        with closing(sqlite3.connect(f"file:{storage / 'journal.sqlite'}?mode=ro", uri=True)) as db:
            journaled = {row[0] for row in db.execute("SELECT path FROM instances")}
        assert held <= journaled  # nothing partial in the spool

        ballast.unlink()
        wait_for(lambda: not any(dropbox.iterdir()), 60, message="the rest taken")
        seen: dict[Path, str] = {}
        wait_for(lambda: arrived_uids(pacs, seen) == set(made.values()), 60, message="all 20")
        assert "Traceback" not in station.log()
    finally:
        station.stop(signal.SIGKILL)
        pacs.stop()
