"""Failures end to end: destinations down or refusing, unknown callers, bad input, crashes.

Real processes on 127.0.0.1 only: `station run`, DCMTK storescp/storescu, and pynetdicom
where DCMTK will not send something (files it cannot read, UIDs that are not UIDs).
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    MALFORMED,
    VALID,
    FollowedStorescu,
    StationProcess,
    StoreSCP,
    c_store,
    dicom_destination,
    needs_corpus,
    storescu,
    storescu_successes,
    wait_for,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
]

FAST_RETRY = {"max_attempts": 10, "initial_seconds": 0.5, "max_seconds": 1}
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC210
DATASET_MISMATCH = 0xA900


def status(station: StationProcess) -> str:
    result = station.cli("status")
    assert result.returncode == 0, result.stderr
    return result.stdout


def showing(station: StationProcess, pending: int, delivered: int, dead: int) -> str | None:
    """`station status` when its row for destination pacs has these counts, else None."""
    shown = status(station)
    row = re.search(rf"^pacs\s+{pending}\s+{delivered}\s+{dead}$", shown, re.M)
    return shown if row else None


def attempts(station: StationProcess, outcome: str) -> float:
    """station_dispatch_attempts_total of destination pacs (success, retry, dead_letter)."""
    return station.metric("station_dispatch_attempts_total", destination="pacs", outcome=outcome)


def arrived_uids(scp: StoreSCP, cache: dict[Path, str]) -> set[str]:
    """SOP Instance UIDs of the files storescp wrote (each file read once, when readable)."""
    for path in scp.files():
        if path not in cache:
            try:
                cache[path] = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            except Exception:
                continue  # still being written
    return set(cache.values())


def with_uids(**uids: str) -> Dataset:
    """CT_small with some UIDs replaced (meta kept consistent), as pynetdicom sends it."""
    ds = dcmread(VALID / "CT_small.dcm")
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def make_instances(folder: Path, count: int) -> dict[Path, str]:
    """``count`` copies of CT_small with new SOP Instance UIDs, alternating between two
    series of one study; returns path -> SOP Instance UID."""
    folder.mkdir(parents=True)
    ds = dcmread(VALID / "CT_small.dcm")
    ds.StudyInstanceUID = generate_uid()
    series = [generate_uid(), generate_uid()]
    made = {}
    for number in range(count):
        ds.SeriesInstanceUID = series[number % 2]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number + 1
        path = folder / f"{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        made[path] = str(ds.SOPInstanceUID)
    return made


@needs_corpus
def test_destination_down_at_first_then_up(tmp_path, start_station):
    pacs = StoreSCP(tmp_path / "pacs").reserve()  # down: its port refuses connections
    config: dict[str, Any] = {"destinations": {"pacs": dicom_destination(pacs, retry=FAST_RETRY)}}
    station = start_station(config)
    try:
        sent = storescu(
            station.port, [VALID / "CT_small.dcm", VALID / "MR_small.dcm"], extra=("-v",)
        )
        assert storescu_successes(sent) == 2, sent.stderr  # accepted while the peer is down
        wait_for(
            lambda: attempts(station, "retry") >= 1,
            15,
            message="a failed attempt to be scheduled for retry",
        )
        shown = wait_for(lambda: showing(station, 2, 0, 0), 5, message="both series pending")
        assert f"cannot connect to PACS@127.0.0.1:{pacs.port}" in shown, shown

        pacs.start()
        wait_for(lambda: len(pacs.files()) == 2, 15, message="both instances at storescp")
        wait_for(
            lambda: showing(station, 0, 2, 0),
            10,
            message="status to show both series delivered",
        )
        sent_total = "station_dispatch_instances_total"
        assert station.metric(sent_total, destination="pacs", outcome="sent") == 2
        assert attempts(station, "success") == 2 and attempts(station, "dead_letter") == 0
    finally:
        pacs.stop()


@needs_corpus
def test_refused_association_dead_letters_and_retry_delivers(tmp_path, start_station):
    # DCMTK's storescp answers any called AE title, so an AE title mismatch is no refusal;
    # --refuse rejects every association (Rejected Permanent, by the service user).
    refusing = StoreSCP(tmp_path / "refusing", extra=("--refuse",)).start()
    pacs = StoreSCP(tmp_path / "pacs", port=refusing.port)
    retry = {"max_attempts": 2, "initial_seconds": 0.2, "max_seconds": 0.2}
    station = start_station({"destinations": {"pacs": dicom_destination(refusing, retry=retry)}})
    try:
        sent = storescu(station.port, [VALID / "CT_small.dcm"], extra=("-v",))
        assert storescu_successes(sent) == 1, sent.stderr
        shown = wait_for(lambda: showing(station, 0, 0, 1), 15, message="the dead letter")
        series = dcmread(VALID / "CT_small.dcm", stop_before_pixels=True).SeriesInstanceUID
        # A permanent rejection is dead-lettered after one attempt. storescp --refuse
        # answers A-ASSOCIATE-RJ and closes at once; when the close resets the connection
        # before the answer is read, the requestor sees an abort instead (transient: one
        # more attempt), so either reason names the peer and what it did.
        dead = re.search(
            rf"^  pacs: series {series} \(1 instances, [12] attempts, .*$", shown, re.M
        )
        assert dead, shown
        reason = re.search(
            rf"PACS@127\.0\.0\.1:{refusing.port} "
            r"(rejected the association: rejected-permanent by the service-user: "
            r"no-reason-given|aborted the association request)",
            dead.group(0),
        )
        assert reason, dead.group(0)
        assert attempts(station, "dead_letter") == 1
        wait_for(
            lambda: station.metric("station_dead_letter_series", destination="pacs") == 1,
            5,
            message="the dead letter gauge",
        )
        assert not pacs.files() and not refusing.files()

        refusing.stop()
        pacs.start()  # the same port, now accepting
        requeued = station.cli("retry")
        assert requeued.returncode == 0 and "re-queued 1" in requeued.stdout, requeued.stderr
        wait_for(lambda: len(pacs.files()) == 1, 15, message="the instance at storescp")
        wait_for(
            lambda: showing(station, 0, 1, 0),
            10,
            message="status to show the delivery",
        )
    finally:
        refusing.stop()
        pacs.stop()


@needs_corpus
def test_an_instance_the_peer_aborts_on_does_not_hold_back_its_series(
    tmp_path, pacs, start_station
):
    """storescp (+B) aborts the association on ctbrain1.dcm ("odd fragment length"), a real
    peer that cannot take one real file. The rest of its series is delivered in the same
    attempt; that instance alone is dead-lettered, with the reason, and not retried."""
    study, series = generate_uid(), generate_uid()
    dropbox, staging = tmp_path / "dropbox", tmp_path / "staging"
    staging.mkdir()
    dropbox.mkdir()
    good = []
    for n, name in enumerate(["CT_small.dcm", "ctbrain1.dcm", "CT_small.dcm", "MR_small.dcm"]):
        ds = dcmread(VALID / name)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(staging / f"{n}.dcm")
        if name != "ctbrain1.dcm":
            good.append(ds.SOPInstanceUID)
    watch = {"path": str(dropbox), "settle_seconds": 0.2}
    station = start_station({"watch": [watch], "destinations": {"pacs": dicom_destination(pacs)}})
    for path in sorted(staging.iterdir()):
        path.rename(dropbox / path.name)
    cache: dict[Path, str] = {}
    wait_for(lambda: set(good) <= arrived_uids(pacs, cache), 30, message="the other three")
    shown = wait_for(lambda: showing(station, 0, 0, 1), 15, message="the dead letter")
    assert "aborted the association each time this instance was sent (2 times)" in shown, shown
    assert attempts(station, "retry") == 0 and attempts(station, "dead_letter") == 1
    assert arrived_uids(pacs, cache) == set(good)


@needs_corpus
def test_unknown_calling_ae_is_rejected(pacs, start_station):
    listen = {"host": "127.0.0.1", "port": 0, "allowed_calling_aes": ["SCANNER1"]}
    station = start_station({"listen": listen, "destinations": {"pacs": dicom_destination(pacs)}})

    refused = storescu(station.port, [VALID / "CT_small.dcm"], aet="INTRUDER", extra=("-v",))
    assert refused.returncode != 0 and "Association Rejected" in refused.stderr, refused.stderr
    assert storescu_successes(refused) == 0

    allowed = storescu(station.port, [VALID / "MR_small.dcm"], aet="SCANNER1", extra=("-v",))
    assert storescu_successes(allowed) == 1, allowed.stderr
    wait_for(lambda: len(pacs.files()) == 1, 15, message="the allowed caller's instance")
    (arrived,) = pacs.files()
    expected = dcmread(VALID / "MR_small.dcm", stop_before_pixels=True).SOPInstanceUID
    assert dcmread(arrived, stop_before_pixels=True).SOPInstanceUID == expected
    received = "station_instances_received_total"
    assert station.metric(received, source="scp", calling_ae="SCANNER1") == 1
    assert station.metric(received, source="scp", calling_ae="INTRUDER") == 0
    assert "rejected association from 'INTRUDER'" in station.log()


@needs_corpus
def test_bad_input_is_refused_and_the_service_keeps_serving(tmp_path, pacs, start_station):
    station = start_station({"destinations": {"pacs": dicom_destination(pacs)}})
    storage = station.workdir / "data"
    invalid_uids = [
        with_uids(SOPInstanceUID="1.2.abc"),
        with_uids(SOPInstanceUID="../../etc/passwd"),
        with_uids(SeriesInstanceUID="../../../outside"),
        with_uids(StudyInstanceUID="1.2..3"),
    ]
    for dataset in invalid_uids:
        assert c_store(station.port, dataset) == CANNOT_UNDERSTAND

    # The command names another instance than the data set: refused, whoever is right.
    # badVR.dcm is like that as it is: its File Meta names SOP Instance 1.2.999...,
    # its data set 1.9.999... (besides its values that break VR rules, such as IS "1A").
    mismatch = dcmread(VALID / "CT_small.dcm")
    mismatch.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mismatch.save_as(tmp_path / "mismatch.dcm")  # enforce_file_format would re-sync the meta
    for path in (tmp_path / "mismatch.dcm", MALFORMED / "badVR.dcm"):
        assert c_store(station.port, path) == DATASET_MISMATCH, path.name

    # Good File Meta, data set cut short. pydicom reads all three without complaint (it does
    # not check that a value is as long as its element says), so the station must check.
    truncated = {
        "derived_CT_small_truncated_in_dataset.dcm": "cut before Study/Series Instance UID",
        "MR_truncated.dcm": "cut inside native Pixel Data (8130 of 8192 bytes)",
        "rtplan_truncated.dcm": "cut inside a nested sequence",
    }
    for name, why in truncated.items():
        assert c_store(station.port, MALFORMED / name) == CANNOT_UNDERSTAND, f"{name}: {why}"
    # Its Study, Series and SOP Instance "UIDs" are hex digests.
    assert c_store(station.port, MALFORMED / "bad_sequence.dcm") == CANNOT_UNDERSTAND

    assert c_store(station.port, VALID / "CT_small.dcm") == SUCCESS

    expected = {str(dcmread(VALID / "CT_small.dcm", stop_before_pixels=True).SOPInstanceUID)}
    cache: dict[Path, str] = {}
    wait_for(lambda: arrived_uids(pacs, cache) == expected, 15, message="the good instance")
    rejected = "station_instances_rejected_total"
    assert station.metric(rejected, reason="invalid_uid") == len(invalid_uids) + 1
    assert station.metric(rejected, reason="uid_mismatch") == 2
    assert station.metric(rejected, reason="truncated") == len(truncated)
    received = "station_instances_received_total"
    assert station.metric(received, source="scp", calling_ae="PYNETDICOM") == 1

    # Nothing was written outside the spool: only the journal, the storage's lock, the
    # receivers' own files under run/ (metrics, connection board), the accepted instance in
    # a spool file (spool/<folder>/<n>.dcm) and the empty spool files created ahead.
    written = {p.relative_to(storage) for p in storage.rglob("*") if p.is_file()}
    spooled = {p for p in written if p.parts[0] == "spool"}
    assert {str(dcmread(p).SOPInstanceUID) for p in station.spooled()} == expected
    assert all(len(p.parts) == 3 for p in spooled)
    others = {p for p in written - spooled if not p.name.startswith("journal.sqlite")}
    assert {p for p in others if p.parts[0] != "run"} == {Path("station.lock")}
    assert {p.parent for p in others if p.parts[0] == "run"} == {Path("run"), Path("run/metrics")}
    assert not (tmp_path / "outside").exists() and not (station.workdir / "etc").exists()


@needs_corpus
def test_kill_9_mid_transfer_loses_no_acknowledged_instance(tmp_path, pacs, start_station):
    made = make_instances(tmp_path / "outgoing", 200)
    station = start_station({"destinations": {"pacs": dicom_destination(pacs)}})
    sender = FollowedStorescu(station.port, made, tmp_path / "storescu.cfg", 80)
    acknowledged = sender.acknowledged
    try:
        assert sender.enough.wait(60) and len(acknowledged) >= 80, f"{len(acknowledged)} acked"
        station.stop(signal.SIGKILL)
        sender.finish()
    finally:
        sender.stop()
    assert 80 <= len(acknowledged) < 200, "the kill must land in the middle of the transfer"

    station.restart()
    cache: dict[Path, str] = {}
    wait_for(
        lambda: set(acknowledged) <= arrived_uids(pacs, cache),
        60,
        message=f"all {len(acknowledged)} acknowledged instances at storescp",
    )
    # What was being received at the kill, never journaled, was removed at the restart:
    # every spool file holding data is an instance that was delivered.
    wait_for(
        lambda: len(station.spooled()) == len(arrived_uids(pacs, cache)),
        30,
        message="one spool file per delivered instance",
    )


@needs_corpus
def test_sigterm_stops_cleanly_and_pending_work_resumes(tmp_path, start_station):
    pacs = StoreSCP(tmp_path / "pacs").reserve()  # down while the station runs the first time
    station = start_station({"destinations": {"pacs": dicom_destination(pacs, retry=FAST_RETRY)}})
    try:
        sent = storescu(station.port, [VALID / "CT_small.dcm"], extra=("-v",))
        assert storescu_successes(sent) == 1, sent.stderr
        wait_for(
            lambda: attempts(station, "retry") >= 1,
            15,
            message="a failed attempt",
        )
        assert station.stop(signal.SIGTERM) == 0, station.run_log()
        assert station.run_log().rstrip().endswith("stopped"), station.run_log()
        assert showing(station, 1, 0, 0)  # kept in the journal

        pacs.start()
        station.restart()
        wait_for(lambda: len(pacs.files()) == 1, 15, message="the pending instance delivered")
        wait_for(lambda: showing(station, 0, 1, 0), 10, message="status")
    finally:
        pacs.stop()
