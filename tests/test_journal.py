"""Spool, journal and series assembly against real files and a real SQLite journal."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from conftest import VALID, needs_corpus, spool_and_journal, storescu, wait_for
from pydicom.uid import generate_uid

from station.dicom.files import is_uid
from station.dicom.identify import identify
from station.dicom.status import Status
from station.errors import RejectedInstance
from station.series import Assembler
from station.store.journal.sqlite import SQLiteJournal
from station.store.records import Received
from station.store.spool import Spool
from station.store.states import BatchState


def copy_with(tmp: Path, name: str, **tags: str) -> Path:
    ds = pydicom.dcmread(VALID / "MR_small.dcm")
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp / name
    ds.save_as(path)
    return path


def test_concurrent_instances_share_commits_and_all_land(tmp_path: Path) -> None:
    """Group commit: eight threads (eight associations) journaling at once need fewer
    transactions than instances, and every instance is in its series' one open batch."""
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    threads, per_thread = 8, 40
    series = [generate_uid() for _ in range(threads)]
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def sender(series_uid: str) -> None:
        try:
            for _ in range(per_thread):
                sop_uid = generate_uid()
                received = Received(
                    sop_uid, "1.2.3", series_uid, "1.2.840.10008.5.1.4.1.1.4",
                    "1.2.840.10008.1.2.1", tmp_path / f"{sop_uid}.dcm", 1, "M", "S", "p", "scp",
                )  # fmt: skip
                results[sop_uid] = journal.record_instance(received)[0]
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=sender, args=(uid,)) for uid in series]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors and len(results) == threads * per_thread
    assert journal.group_commits < threads * per_thread
    for uid in series:
        (batch,) = journal.batches_of(uid)
        assert len(journal.instances(batch.id)) == per_thread


@pytest.mark.parametrize("value", ["1.2.840.10008", "1", "0.0.1"])
def test_valid_uids(value: str) -> None:
    assert is_uid(value)


@pytest.mark.parametrize(
    "value", ["../../etc/passwd", "1.2.abc", "", "1..2", "1." * 40 + "1", "1.2/3", None]
)
def test_invalid_uids_are_never_paths(value: object) -> None:
    assert not is_uid(value)


@needs_corpus
def test_instance_with_path_traversal_uid_is_refused(tmp_path: Path) -> None:
    path = copy_with(tmp_path, "bad.dcm", SeriesInstanceUID="../../../tmp/evil")
    with pytest.raises(RejectedInstance) as caught:
        identify(path)
    assert caught.value.status == Status.CANNOT_UNDERSTAND
    assert "Series Instance UID" in str(caught.value)


@needs_corpus
def test_same_sop_instance_twice_is_stored_once_later_copy_wins(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store", 0)
    journal = SQLiteJournal(tmp_path / "store" / "journal.sqlite")
    series, sop = generate_uid(), generate_uid()
    first = copy_with(
        tmp_path, "a.dcm", SeriesInstanceUID=series, SOPInstanceUID=sop, InstitutionName="FIRST"
    )
    second = copy_with(
        tmp_path, "b.dcm", SeriesInstanceUID=series, SOPInstanceUID=sop, InstitutionName="SECOND"
    )
    now = time.time()
    batch = spool_and_journal(spool, journal, first, now)
    assert spool_and_journal(spool, journal, second, now + 1) == batch
    instances = journal.instances(batch)
    assert len(instances) == 1
    assert pydicom.dcmread(instances[0].path).InstitutionName == "SECOND"


@needs_corpus
def test_quiet_period_completes_a_batch_and_late_instances_open_a_new_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store", 0)
    journal = SQLiteJournal(tmp_path / "store" / "journal.sqlite")
    completed: list[int] = []
    assembler = Assembler(
        journal, quiet_seconds=10, max_wait_seconds=100, on_complete=completed.append
    )
    series = generate_uid()
    t0 = time.time() - 1000
    first = spool_and_journal(
        spool, journal, copy_with(tmp_path, "1.dcm", SeriesInstanceUID=series), t0
    )
    spool_and_journal(
        spool,
        journal,
        copy_with(tmp_path, "2.dcm", SeriesInstanceUID=series, SOPInstanceUID=generate_uid()),
        t0 + 5,
    )
    assert assembler.close_due(now=t0 + 14) == []  # 9 s after the last one: still quiet
    assert assembler.close_due(now=t0 + 15) == [first]
    journal.finish_batch(first, BatchState.UNROUTED, "test", {})
    late = spool_and_journal(
        spool,
        journal,
        copy_with(tmp_path, "3.dcm", SeriesInstanceUID=series, SOPInstanceUID=generate_uid()),
        t0 + 20,
    )
    assert late != first
    assert len(journal.instances(first)) == 2 and len(journal.instances(late)) == 1


@needs_corpus
def test_max_wait_completes_a_batch_that_never_goes_quiet(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store", 0)
    journal = SQLiteJournal(tmp_path / "store" / "journal.sqlite")
    assembler = Assembler(journal, quiet_seconds=10, max_wait_seconds=30, on_complete=print)
    series = generate_uid()
    t0 = time.time() - 1000
    batch = 0
    for i in range(7):  # one instance every 5 s: never 10 s quiet
        batch = spool_and_journal(
            spool,
            journal,
            copy_with(
                tmp_path, f"{i}.dcm", SeriesInstanceUID=series, SOPInstanceUID=generate_uid()
            ),
            t0 + 5 * i,
        )
    assert assembler.close_due(now=t0 + 29) == []
    assert assembler.close_due(now=t0 + 30) == [batch]


@pytest.mark.e2e
@needs_corpus
def test_full_disk_is_refused_with_a700_before_acknowledging(pacs, start_station) -> None:
    station = start_station(
        {
            "storage": {"path": "data", "min_free_bytes": 10**18},
            "destinations": {
                "pacs": {
                    "type": "dicom",
                    "host": "127.0.0.1",
                    "port": pacs.port,
                    "ae_title": "PACS",
                }
            },
        }
    )
    result = storescu(station.port, [VALID / "CT_small.dcm"], extra=("-v",))
    # DCMTK names the 0xA7xx statuses "Refused: OutOfResources".
    assert "Refused: OutOfResources" in result.stderr, result.stderr
    wait_for(
        lambda: station.metric("station_instances_rejected_total", reason="disk_full") == 1,
        message="the disk_full rejection to be counted",
    )
    assert (
        station.metric("station_instances_received_total", source="scp", calling_ae="STORESCU") == 0
    )
    assert not station.spooled()  # only the free files made ahead, empty
