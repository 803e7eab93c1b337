"""SIGHUP reloads routes and plugins without dropping associations in progress."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pydicom
import pytest
from conftest import VALID, needs_corpus, storescu, wait_for
from pydicom.uid import generate_uid

pytestmark = pytest.mark.e2e


def series_files(folder: Path, count: int) -> list[Path]:
    """``count`` copies of CT_small.dcm forming one new series."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(VALID / "CT_small.dcm")
    ds.SeriesInstanceUID = generate_uid()
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(folder / f"{i}.dcm")
        ds.save_as(paths[-1])
    return paths


def delivered(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.dcm")) if folder.exists() else 0


@needs_corpus
def test_sighup_swaps_routes_keeps_transfers_and_refuses_a_broken_file(
    tmp_path: Path, start_station
) -> None:
    routes = tmp_path / "routes"
    routes.mkdir()
    route = routes / "r.yaml"
    route.write_text("name: to-a\ndestinations: [a]\n")
    station = start_station(
        {
            "routes": str(routes),
            "destinations": {
                "a": {"type": "folder", "path": str(tmp_path / "a")},
                "b": {"type": "folder", "path": str(tmp_path / "b")},
            },
        }
    )
    first = series_files(tmp_path / "s1", 2)
    assert storescu(station.port, first).returncode == 0
    wait_for(lambda: delivered(tmp_path / "a") == 2, message="series 1 at destination a")

    # A long transfer is in progress while the routes change.
    long = series_files(tmp_path / "s2", 60)
    sender: dict[str, object] = {}
    thread = threading.Thread(target=lambda: sender.update(r=storescu(station.port, long)))
    thread.start()
    wait_for(
        lambda: station.metric("station_associations_active") == 1,
        message="the transfer to be under way",
    )
    route.write_text("name: to-b\ndestinations: [b]\n")
    station.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in station.run_log(), message="the reload")
    thread.join(60)
    assert sender["r"].returncode == 0, sender["r"].stderr
    wait_for(lambda: delivered(tmp_path / "b") == 60, message="series 2 at destination b")
    assert (
        station.metric("station_instances_received_total", source="scp", calling_ae="STORESCU")
        == 62
    )

    # A broken file is reported; the routes in force stay.
    route.write_text("name: to-a\ndestinations: [a, nowhere]\n")
    station.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in station.run_log(), message="the refusal")
    assert "'nowhere' is not configured" in station.run_log()
    third = series_files(tmp_path / "s3", 1)
    assert storescu(station.port, third).returncode == 0
    wait_for(lambda: delivered(tmp_path / "b") == 61, message="series 3 still going to b")
    assert delivered(tmp_path / "a") == 2
