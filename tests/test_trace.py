"""`station trace` tells a series' story from the journal, and the logs carry its UIDs.

The story under test: a series from SCANNER1, labelled by a classify plugin, sent to a PACS
that is down for the first two attempts and up for the third.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import (
    VALID,
    StationProcess,
    StoreSCP,
    dicom_destination,
    needs_corpus,
    storescu,
    storescu_successes,
    wait_for,
)
from pydicom import dcmread
from test_service_ops import announced_ports, base_config, run_station, stop

pytestmark = pytest.mark.e2e
if not VALID.is_dir():  # the story is told about a corpus file, read here
    pytest.skip(needs_corpus.mark.kwargs["reason"], allow_module_level=True)

CT = dcmread(VALID / "CT_small.dcm", stop_before_pixels=True)
SERIES, STUDY, SOP = str(CT.SeriesInstanceUID), str(CT.StudyInstanceUID), str(CT.SOPInstanceUID)
PATIENT = str(CT.PatientName)
CLASSIFY = """\
from station import hookimpl


@hookimpl
def station_classify_series(series):
    return {"body_part": "CHEST"}
"""
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


def attempts(station: StationProcess, outcome: str) -> float:
    return station.metric("station_dispatch_attempts_total", destination="pacs", outcome=outcome)


@needs_corpus
def test_trace_tells_two_failed_attempts_then_delivery(tmp_path, start_station):
    plugin = tmp_path / "bodypart.py"
    plugin.write_text(CLASSIFY)
    pacs = StoreSCP(tmp_path / "pacs").reserve()  # down: its port refuses connections
    # Backoff after attempt 2 is 2 s +-25 %: time enough to start storescp before attempt 3.
    retry = {"max_attempts": 5, "initial_seconds": 1, "max_seconds": 10}
    station = start_station(
        {
            "destinations": {"pacs": dicom_destination(pacs, retry=retry)},
            "plugins": [str(plugin)],
        }
    )
    try:
        sent = storescu(station.port, [VALID / "CT_small.dcm"], aet="SCANNER1", extra=("-v",))
        assert storescu_successes(sent) == 1, sent.stderr
        wait_for(lambda: attempts(station, "retry") == 2, 15, message="two failed attempts")
        pacs.start()
        wait_for(lambda: attempts(station, "success") == 1, 15, message="the delivery")
    finally:
        pacs.stop()
    assert attempts(station, "retry") == 2

    shown = station.cli("trace", SERIES)
    assert shown.returncode == 0, shown.stderr
    story = shown.stdout
    refused = f"cannot connect to PACS@127.0.0.1:{pacs.port}"
    expected = [
        rf"^series {SERIES} of study {STUDY} \(batch \d+\)$",
        rf"^  received 1 instances \(\d+ bytes\) {TIME} to [\d:.]+ from SCANNER1 "
        r"\(127\.0\.0\.1:\d+\) to STATION via scp$",
        rf"^  {TIME}  opened      from SCANNER1 \(127\.0\.0\.1:\d+\) via scp$",
        rf"^  {TIME}  completed   1 instances$",
        rf"^  {TIME}  hook        station_classify_series: \S+ labelled it body_part=CHEST$",
        rf"^  {TIME}  routed      pacs via default$",
        rf"^  {TIME}  attempt     pacs: attempt 1: retry: .*{re.escape(refused)}",
        rf"^  {TIME}  attempt     pacs: attempt 2: retry: .*{re.escape(refused)}",
        rf"^  {TIME}  attempt     pacs: attempt 3: success$",
        r"^  now: routed; labels body_part=CHEST$",
        r"^    pacs: delivered after 3 attempts \(routes: default\)$",
    ]
    lines = story.splitlines()
    assert len(lines) == len(expected), story
    for pattern, line in zip(expected, lines, strict=True):
        assert re.search(pattern, line), f"{line!r} does not match {pattern!r}\n{story}"

    # The same story whichever UID is asked for; machine-readable with --json.
    for uid in (STUDY, SOP):
        again = station.cli("trace", uid)
        assert again.returncode == 0 and again.stdout.splitlines()[1:] == lines[1:], again.stdout
    assert f"(batch 1), holding instance {SOP}" in again.stdout.splitlines()[0]
    (history,) = json.loads(station.cli("trace", SERIES, "--json").stdout)
    outcomes = [e["detail"].split(": ")[2] for e in history["events"] if e["kind"] == "attempt"]
    assert outcomes == ["retry", "retry", "success"]
    assert history["deliveries"][0]["state"] == "delivered"

    unknown = station.cli("trace", "1.2.3.4")
    assert unknown.returncode == 1 and "1.2.3.4: no study, series" in unknown.stderr
    assert PATIENT not in station.log(), "the patient's name is in the log"


@needs_corpus
def test_json_log_lines_carry_the_series_and_calling_ae(tmp_path, pacs):
    workdir = tmp_path / "station"
    config = base_config(workdir, destinations={"pacs": dicom_destination(pacs)})
    proc = run_station(workdir, config, {}, ("--log-format", "json"))
    try:
        log = workdir / "station.log"
        port, _ = wait_for(lambda: announced_ports(workdir), 30, message="start")
        sent = storescu(port, [VALID / "CT_small.dcm"], aet="SCANNER1", extra=("-v",))
        assert storescu_successes(sent) == 1, sent.stderr
        wait_for(lambda: "delivered 1 instances" in log.read_text(), 15, message="delivery")
    finally:
        stop(proc)
    text = log.read_text()
    entries = [json.loads(line) for line in text.splitlines()]  # every line is one object
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    about = [e for e in entries if e.get("series_uid") == SERIES]
    assert {e["logger"] for e in about} >= {"station.routing.router", "station.dispatch.dispatcher"}
    assert all(e["study_uid"] == STUDY and e["calling_ae"] == "SCANNER1" for e in about)
    assert entries[-1]["message"] == "stopped"
    assert PATIENT not in text
