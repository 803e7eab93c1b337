"""/metrics scraped during real traffic (pynetdicom and DCMTK storescu -> `station run` ->
DCMTK storescp, plus a drop folder), checked against what was sent."""

from __future__ import annotations

import re
import shutil
import urllib.request

import pytest
from conftest import (
    VALID,
    StationProcess,
    dicom_destination,
    needs_corpus,
    storescu,
    storescu_successes,
    wait_for,
)
from pydicom import dcmread
from pynetdicom import AE, _config

from station import __version__
from station.ops.metrics import REJECT_REASONS

pytestmark = pytest.mark.e2e

MODALITY1 = [VALID / "CT_small.dcm"]  # sent by pynetdicom on one held-open association
MODALITY2 = [VALID / "MR_small.dcm", VALID / "rtplan.dcm", VALID / "rtdose.dcm"]  # storescu
DROPPED = [VALID / "RTImageStorage.dcm"]  # through the drop folder


def scrape(station: StationProcess) -> dict[str, float]:
    """Every sample of /metrics, keyed ``name{label="value",...}`` with labels sorted."""
    url = f"http://127.0.0.1:{station.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name, _, labels = key.partition("{")
            ordered = ",".join(sorted(re.findall(r'\w+="[^"]*"', labels)))
            samples[f"{name}{{{ordered}}}" if ordered else name] = float(value)
    return samples


@needs_corpus
def test_metrics_match_the_traffic(tmp_path, pacs, start_station):
    sent = MODALITY1 + MODALITY2 + DROPPED
    series = {str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in sent}
    assert len(series) == len(sent), "one series per file, so batches are easy to count"
    dropbox = tmp_path / "dropbox"
    station = start_station(
        {
            "destinations": {"pacs": dicom_destination(pacs)},
            "watch": [{"path": str(dropbox), "settle_seconds": 0.2}],
            "storage": {"path": str(tmp_path / "data"), "min_free_bytes": 1000},
        }
    )
    assert scrape(station)["station_associations_active"] == 0

    # An association held open: the gauge counts it, the counter has its instance already.
    ae = AE(ae_title="MODALITY1")
    ds = dcmread(MODALITY1[0])
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", station.port, ae_title="STATION")
    assert assoc.is_established
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes as they are
    try:
        assert assoc.send_c_store(MODALITY1[0]).Status == 0x0000
        during = scrape(station)
        assert during["station_associations_active"] == 1
        received = 'station_instances_received_total{calling_ae="MODALITY1",source="scp"}'
        assert during[received] == 1
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()

    result = storescu(station.port, MODALITY2, aet="MODALITY2", extra=("-v",))
    assert storescu_successes(result) == len(MODALITY2), result.stderr
    dropbox.mkdir(exist_ok=True)
    shutil.copy(DROPPED[0], dropbox / "dropped.dcm")

    wait_for(lambda: len(pacs.files()) == len(sent), 30, message="every instance at storescp")
    done = 'station_dispatch_attempts_total{destination="pacs",outcome="success"}'
    wait_for(lambda: scrape(station)[done] == len(series), 10, message="every batch recorded")
    wait_for(lambda: scrape(station)["station_spool_bytes"] > 0, 10, message="the spool gauge")
    m = scrape(station)

    # Received, per source and calling AE; bytes per source are what the spool holds.
    assert m['station_instances_received_total{calling_ae="MODALITY1",source="scp"}'] == 1
    assert m['station_instances_received_total{calling_ae="MODALITY2",source="scp"}'] == 3
    assert m['station_instances_received_total{calling_ae="",source="folder"}'] == 1
    spooled = {p: p.stat().st_size for p in station.spooled()}
    assert len(spooled) == len(sent)
    scp_bytes = m['station_received_bytes_total{source="scp"}']
    folder_bytes = m['station_received_bytes_total{source="folder"}']
    assert folder_bytes == DROPPED[0].stat().st_size  # a dropped file is copied as it is
    assert scp_bytes + folder_bytes == sum(spooled.values()) == m["station_spool_bytes"]
    # Over DICOM the data set comes without its File Meta, which the spool file has again.
    sent_files = MODALITY1 + MODALITY2
    assert abs(scp_bytes - sum(p.stat().st_size for p in sent_files)) < 256 * len(sent_files)
    assert all(m[f'station_instances_rejected_total{{reason="{r}"}}'] == 0 for r in REJECT_REASONS)

    # Assembled, routed, dispatched: one batch per series, every instance sent once.
    assert m["station_series_completed_total"] == len(series)
    assert m["station_series_unrouted_total"] == 0
    assert m['station_dispatch_instances_total{destination="pacs",outcome="sent"}'] == len(sent)
    assert m['station_dispatch_instances_total{destination="pacs",outcome="failed"}'] == 0
    assert m['station_dispatch_attempts_total{destination="pacs",outcome="retry"}'] == 0
    assert m['station_dispatch_duration_seconds_count{destination="pacs"}'] == len(series)
    assert m["station_series_latency_seconds_count"] == len(series)
    assert m["station_series_latency_seconds_sum"] > 0
    assert m['station_series_latency_seconds_bucket{le="+Inf"}'] == len(series)
    assert m['station_queue_series{destination="pacs"}'] == 0
    assert m['station_dead_letter_series{destination="pacs"}'] == 0

    # State of the station itself.
    assert m["station_associations_active"] == 0
    assert m["station_spool_free_bytes"] > 0 and m["station_spool_min_free_bytes"] == 1000
    assert m[f'station_build_info{{version="{__version__}"}}'] == 1
