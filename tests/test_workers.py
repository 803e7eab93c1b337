"""Several receiver processes on one port (listen.workers): a series sent over associations
served by different processes forms one batch, /metrics adds up what each counted, a
receiver that dies is replaced, and none outlives the station, even killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pydicom
import pytest
from conftest import VALID, StationProcess, c_store, needs_corpus, wait_for
from prometheus_client.mmap_dict import MmapedDict
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

pytestmark = pytest.mark.e2e


def receivers(station: StationProcess) -> list[int]:
    """The PIDs of the station's receiver processes (its children)."""
    assert station.proc is not None
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if fields[0] != "Z" and int(fields[1]) == station.proc.pid:
                found.append(int(entry.name))
    return sorted(found)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def series(count: int) -> list[Dataset]:
    template = pydicom.dcmread(VALID / "CT_small.dcm")
    series_uid = generate_uid()
    datasets = []
    for _ in range(count):
        ds = pydicom.dcmread(VALID / "CT_small.dcm")
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = template.StudyInstanceUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        datasets.append(ds)
    return datasets


def associate(station: StationProcess, sop_class: str) -> Association:
    ae = AE("MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", station.port, ae_title="STATION")
    assert assoc.is_established
    return assoc


def received_by(station: StationProcess, pid: int) -> float:
    """Instances receiver ``pid`` counted, read from its own metrics file."""
    path = station.storage / "run" / "metrics" / f"counter_{pid}.db"
    return sum(
        value
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
        if '"station_instances_received_total"' in key
    )


@needs_corpus
def test_one_series_over_associations_on_two_receivers_is_one_batch(
    tmp_path: Path, start_station
) -> None:
    out = tmp_path / "out"
    station = start_station(
        {
            "listen": {"host": "127.0.0.1", "port": 0, "workers": 2},
            "series": {"quiet_seconds": 5},
            "destinations": {"out": {"type": "folder", "path": str(out)}},
        }
    )
    first, second = receivers(station)
    datasets = series(6)
    sop_class = str(datasets[0].SOPClassUID)
    # A stopped process is not waiting in accept(): the other one takes the connection.
    os.kill(second, signal.SIGSTOP)
    try:
        one = associate(station, sop_class)
    finally:
        os.kill(second, signal.SIGCONT)
    os.kill(first, signal.SIGSTOP)
    try:
        two = associate(station, sop_class)
    finally:
        os.kill(first, signal.SIGCONT)
    # Both associations open at once, the instances of the series alternating between them.
    statuses = [(one, two)[n % 2].send_c_store(ds).Status for n, ds in enumerate(datasets)]
    one.release()
    two.release()
    assert statuses == [0x0000] * 6
    assert (received_by(station, first), received_by(station, second)) == (3, 3)
    received = station.metric(
        "station_instances_received_total", source="scp", calling_ae="MODALITY"
    )
    assert received == 6

    wait_for(lambda: len(list(out.rglob("*.dcm"))) == 6, message="the series delivered")
    journal = sqlite3.connect(station.storage / "journal.sqlite")
    try:
        batches = journal.execute(
            "SELECT b.state, count(i.sop_uid) FROM batches b JOIN instances i ON i.batch_id=b.id"
            " WHERE b.series_uid=? GROUP BY b.id",
            (str(datasets[0].SeriesInstanceUID),),
        ).fetchall()
    finally:
        journal.close()
    assert batches == [("routed", 6)]
    assert station.metric("station_series_completed_total") == 1


@needs_corpus
def test_a_receiver_that_dies_is_replaced(tmp_path: Path, start_station) -> None:
    station = start_station({"listen": {"host": "127.0.0.1", "port": 0, "workers": 2}})
    killed = receivers(station)[0]
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: "starting another" in station.run_log(), message="the restart logged")
    wait_for(
        lambda: len(receivers(station)) == 2 and killed not in receivers(station),
        message="a new receiver process",
    )
    for _ in range(4):  # whichever receiver takes it
        assert c_store(station.port, VALID / "CT_small.dcm") == 0x0000


@needs_corpus
def test_killing_the_station_leaves_no_receiver_and_it_starts_again(
    tmp_path: Path, start_station
) -> None:
    out = tmp_path / "out"
    station = start_station(
        {
            "listen": {"host": "127.0.0.1", "port": 0, "workers": 2},
            "destinations": {"out": {"type": "folder", "path": str(out)}},
        }
    )
    children = receivers(station)
    assert len(children) == 2
    station.stop(signal.SIGKILL)
    wait_for(lambda: not any(running(pid) for pid in children), message="receivers to end")

    station.start()  # same storage: the lock, the journal and the run folder are free
    assert len(receivers(station)) == 2
    assert c_store(station.port, VALID / "CT_small.dcm") == 0x0000
    wait_for(lambda: list(out.rglob("*.dcm")), message="the instance delivered")
