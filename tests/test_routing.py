"""Routing: filter, classify, route files and per-route transforms.

End-to-end tests run ``station run`` as a subprocess with plugins written as files into
tmp_path, route files in a ``routes`` folder, and DCMTK storescp instances as destinations.
Unit tests check route matching and ``decide`` on headers of real files.
"""

from __future__ import annotations

import json
import struct
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from conftest import (
    VALID,
    StationProcess,
    StoreSCP,
    dicom_destination,
    needs_corpus,
    storescu,
    wait_for,
)
from typer.testing import CliRunner

from station import hookimpl
from station.cli import app
from station.errors import PluginError
from station.routing.plugins import Plugins
from station.routing.router import decide
from station.routing.routes import Route
from station.series import SeriesView

CT = VALID / "CT_small.dcm"
MR = VALID / "MR_small.dcm"
OT = VALID / "chrX1.dcm"
US = VALID / "US_GREYSCALE_IMAGE.dcm"  # SeriesDescription "US KIDNEY"
FINAL_STATES = ("routed", "filtered", "unrouted", "quarantined")


# --- helpers -----------------------------------------------------------------------------


def write_plugin(folder: Path, name: str, body: str) -> Path:
    """A plugin module ``name.py`` in ``folder`` (the hookimpl import is added)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text("from station import hookimpl\n\n" + textwrap.dedent(body))
    return path


def write_routes(folder: Path, files: dict[str, Any]) -> Path:
    """Route files ``{file name: route or list of routes}`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, routes in files.items():
        (folder / name).write_text(yaml.safe_dump(routes, sort_keys=False))
    return folder


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def received(scp: StoreSCP) -> dict[str, Path]:
    """SOP Instance UID -> file, for everything the storescp has written."""
    return {sop_uid(p): p for p in scp.files()}


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file: everything after its File Meta Information."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00", path
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


def journal_status(station: StationProcess) -> dict[str, Any]:
    """``station status --json`` for this station (in-process, fast enough to poll)."""
    result = CliRunner().invoke(app, ["status", "--json", "--config", str(station.config_path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def settled(station: StationProcess, batches: int) -> dict[str, Any] | None:
    """The status once ``batches`` series batches are decided and nothing is pending."""
    state = journal_status(station)
    decided = sum(state["series"].get(s, 0) for s in FINAL_STATES)
    pending = any(counts.get("pending") for counts in state["destinations"].values())
    return state if decided == batches and not pending else None


@pytest.fixture
def start_pacs(tmp_path: Path) -> Iterator[Callable[[str], StoreSCP]]:
    """Start DCMTK storescp instances named by folder (and AE title); stop them all."""
    started: list[StoreSCP] = []

    def start(name: str) -> StoreSCP:
        scp = StoreSCP(tmp_path / name, ae_title=name.upper()).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def send(station: StationProcess, *files: Path) -> None:
    result = storescu(station.port, list(files))
    assert result.returncode == 0, result.stderr


# --- end to end --------------------------------------------------------------------------


@pytest.mark.e2e
@needs_corpus
def test_filter_plugin_drops_a_series(
    tmp_path: Path, start_pacs: Callable[[str], StoreSCP], start_station: Any
) -> None:
    plugin = write_plugin(
        tmp_path / "plugins",
        "no_mr",
        """
        @hookimpl
        def station_filter_series(series):
            return series.get("Modality") != "MR"
        """,
    )
    pacs = start_pacs("pacs")
    station = start_station(
        {"plugins": [str(plugin)], "destinations": {"pacs": dicom_destination(pacs)}}
    )
    send(station, CT, MR, OT)
    state = wait_for(lambda: settled(station, 3), message="three series decided and delivered")
    assert state["series"] == {"routed": 2, "filtered": 1}
    assert set(received(pacs)) == {sop_uid(CT), sop_uid(OT)}
    assert station.metric("station_series_filtered_total", plugin="no_mr") == 1
    assert station.metric("station_series_completed_total") == 3


@pytest.mark.e2e
@needs_corpus
def test_classify_labels_choose_the_route(
    tmp_path: Path, start_pacs: Callable[[str], StoreSCP], start_station: Any
) -> None:
    plugin = write_plugin(
        tmp_path / "plugins",
        "body",
        """
        @hookimpl
        def station_classify_series(series):
            return {"body": "head"} if series.get("Modality") == "MR" else None
        """,
    )
    routes = write_routes(
        tmp_path / "routes",
        {
            "10-head.yaml": {
                "name": "heads-to-a",
                "match": {"labels": {"body": "head"}},
                "destinations": ["a"],
            },
            "20-ct.yaml": {"name": "ct-to-b", "match": {"Modality": "CT"}, "destinations": ["b"]},
        },
    )
    a, b = start_pacs("a"), start_pacs("b")
    station = start_station(
        {
            "plugins": [str(plugin)],
            "routes": str(routes),
            "destinations": {"a": dicom_destination(a), "b": dicom_destination(b)},
        }
    )
    send(station, MR, CT, OT)
    state = wait_for(lambda: settled(station, 3), message="three series decided and delivered")
    assert state["series"] == {"routed": 2, "unrouted": 1}
    assert set(received(a)) == {sop_uid(MR)}
    assert set(received(b)) == {sop_uid(CT)}
    assert state["destinations"] == {"a": {"delivered": 1}, "b": {"delivered": 1}}


@pytest.mark.e2e
@needs_corpus
def test_transform_applies_only_to_the_route_that_names_it(
    tmp_path: Path, start_pacs: Callable[[str], StoreSCP], start_station: Any
) -> None:
    routes = write_routes(
        tmp_path / "routes",
        {
            "routes.yaml": [
                {
                    "name": "research-copy",
                    "transform": [{"set-tags": {"set": {"InstitutionName": "X"}}}],
                    "destinations": ["a"],
                },
                {"name": "clinical-copy", "destinations": ["b"]},
            ]
        },
    )
    a, b = start_pacs("a"), start_pacs("b")
    station = start_station(
        {
            "routes": str(routes),
            "destinations": {"a": dicom_destination(a), "b": dicom_destination(b)},
        }
    )
    # station send (pynetdicom) sends the file's bytes as they are; storescu would drop the
    # trailing padding on the way in, and the bytes at b could not be compared with the file.
    sent = station.cli("send", str(MR), "--to", f"127.0.0.1:{station.port}", "--aet", "STATION")
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: settled(station, 1), message="the series delivered to a and b")
    (copy_a,) = a.files()
    (copy_b,) = b.files()

    original = pydicom.dcmread(MR)
    assert original.InstitutionName != "X"
    transformed = pydicom.dcmread(copy_a)
    assert transformed.InstitutionName == "X"
    original.InstitutionName = "X"
    assert transformed == original  # nothing else changed
    assert dataset_bytes(copy_b) == dataset_bytes(MR)  # the other copy: the very same bytes


@pytest.mark.e2e
@needs_corpus
def test_plugin_error_quarantines_the_series_and_retry_reroutes_it(
    tmp_path: Path, start_pacs: Callable[[str], StoreSCP], start_station: Any
) -> None:
    broken = tmp_path / "classifier-is-broken"
    broken.touch()
    plugin = write_plugin(
        tmp_path / "plugins",
        "flaky",
        f"""
        from pathlib import Path

        BROKEN = Path({str(broken)!r})

        @hookimpl
        def station_classify_series(series):
            if series.get("Modality") == "MR" and BROKEN.exists():
                raise RuntimeError("no MR classifier today")
            return None
        """,
    )
    pacs = start_pacs("pacs")
    station = start_station(
        {"plugins": [str(plugin)], "destinations": {"pacs": dicom_destination(pacs)}}
    )
    send(station, CT, MR)
    state = wait_for(lambda: settled(station, 2), message="two series decided")
    assert state["series"] == {"routed": 1, "quarantined": 1}
    assert set(received(pacs)) == {sop_uid(CT)}  # the other series flowed on
    (quarantined,) = state["quarantined"]
    mr_series = str(pydicom.dcmread(MR, stop_before_pixels=True).SeriesInstanceUID)
    assert quarantined["series_uid"] == mr_series
    hook = "station_classify_series"
    assert station.metric("station_plugin_errors_total", plugin="flaky", hook=hook) == 1
    assert station.metric("station_series_quarantined_total", reason="plugin_error") == 1

    status = station.cli("status")
    assert status.returncode == 0, status.stderr
    assert "quarantined series" in status.stdout
    assert f"series {mr_series}" in status.stdout
    assert f"plugin 'flaky', hook {hook}: RuntimeError: no MR classifier today" in status.stdout

    broken.unlink()  # the plugin is fixed
    retry = station.cli("retry")
    assert retry.returncode == 0, retry.stderr
    assert "re-queued 1" in retry.stdout
    wait_for(lambda: sop_uid(MR) in received(pacs), message="the MR series after retry")
    state = wait_for(lambda: settled(station, 2), message="both series delivered")
    assert state["series"] == {"routed": 2}
    assert state["quarantined"] == []


@pytest.mark.e2e
@needs_corpus
def test_unrouted_series_are_counted_and_shown(
    tmp_path: Path, start_pacs: Callable[[str], StoreSCP], start_station: Any
) -> None:
    routes = write_routes(
        tmp_path / "routes",
        {"ct.yaml": {"name": "ct-only", "match": {"Modality": "CT"}, "destinations": ["pacs"]}},
    )
    pacs = start_pacs("pacs")
    station = start_station(
        {"routes": str(routes), "destinations": {"pacs": dicom_destination(pacs)}}
    )
    send(station, CT, MR)
    state = wait_for(lambda: settled(station, 2), message="two series decided")
    assert state["series"] == {"routed": 1, "unrouted": 1}
    assert set(received(pacs)) == {sop_uid(CT)}
    assert station.metric("station_series_unrouted_total") == 1
    status = station.cli("status")
    assert status.returncode == 0, status.stderr
    assert "1 unrouted" in status.stdout.splitlines()[0]


# --- route matching and decide(), on headers of real files --------------------------------


def view(
    path: Path,
    calling_ae: str = "SCANNER1",
    source: str = "scp",
    labels: dict[str, str] | None = None,
) -> SeriesView:
    """A SeriesView of one real file, as the router would build it."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return SeriesView(
        study_uid=str(header.StudyInstanceUID),
        series_uid=str(header.SeriesInstanceUID),
        batch_id=1,
        calling_ae=calling_ae,
        called_ae="STATION",
        peer="127.0.0.1",
        source=source,
        instance_count=1,
        header=header,
        paths=(path,),
    ).with_labels(labels or {})


def route(match: dict[str, Any], **extra: Any) -> Route:
    """A route validated exactly as one read from a file."""
    return Route.model_validate({"name": "r", "match": match, "destinations": ["a"], **extra})


@needs_corpus
@pytest.mark.parametrize(
    ("match", "matching", "not_matching"),
    [
        ({}, [CT, MR, US], []),
        ({"Modality": "CT"}, [CT], [MR, US]),
        ({"Modality": ["CT", "MR"]}, [CT, MR], [US, OT]),  # a list means any of
        ({"SeriesDescription": {"regex": "(?i)kidney"}}, [US], [CT, MR]),  # absent: no match
        ({"InstitutionName": {"regex": "^JFK"}}, [CT], [MR, US]),
        ({"ImageType": "AXIAL"}, [CT], [MR, US]),  # one of the values of a multi-valued tag
        ({"ImageType": "DERIVED\\SECONDARY\\OTHER"}, [MR], [CT]),  # or the whole value
        ({"ImageType": {"regex": "^ORIGINAL$"}}, [CT, US], [MR]),
        ({"ImageType": ["SMALL PARTS", "OTHER"]}, [US, MR], [CT]),
        ({"Modality": "CT", "ImageType": "SECONDARY"}, [], [CT, MR]),  # all must hold
        ({"Rows": 64}, [MR], [CT]),  # numbers compare as text
    ],
)
def test_route_matching_on_tags(
    match: dict[str, Any], matching: list[Path], not_matching: list[Path]
) -> None:
    r = route(match)
    for path in matching:
        assert r.matches(view(path)), f"{match} should match {path.name}"
    for path in not_matching:
        assert not r.matches(view(path)), f"{match} should not match {path.name}"


@needs_corpus
def test_route_matching_on_who_sent_it_and_labels() -> None:
    scanner = view(CT, calling_ae="SCANNER1", labels={"body": "head", "site": "north"})
    other = view(CT, calling_ae="MODALITY2", source="folder", labels={"body": "chest"})
    assert route({"calling_ae": "SCANNER1"}).matches(scanner)
    assert not route({"calling_ae": "SCANNER1"}).matches(other)
    assert route({"calling_ae": {"regex": "^MOD"}}).matches(other)
    assert route({"source": "folder"}).matches(other)
    assert not route({"source": "folder"}).matches(scanner)
    assert route({"called_ae": "STATION"}).matches(scanner)
    assert route({"labels": {"body": "head"}}).matches(scanner)
    assert not route({"labels": {"body": "head"}}).matches(other)
    assert route({"labels": {"body": ["head", "chest"]}}).matches(other)
    assert route({"labels": {"body": {"regex": "^h"}, "site": "north"}}).matches(scanner)
    assert not route({"labels": {"site": "north"}}).matches(other)  # label absent
    assert not route({"Modality": "CT", "labels": {"body": "head"}}).matches(other)


@needs_corpus
def test_decide_final_stops_later_routes_and_merges_same_copies() -> None:
    routes = [
        route({"Modality": "CT"}, name="ct-only-to-a", final=True),
        route({}, name="all-to-a", destinations=["a"]),
        route({}, name="all-to-b", destinations=["b"]),
        route(
            {},
            name="anonymized-to-b",
            destinations=["b"],
            transform=[{"set-tags": {"remove": ["PatientName"]}}],
        ),
    ]
    plugins = Plugins(entry_points=False)
    destinations = {"a": object(), "b": object()}

    ct = decide(view(CT), plugins, routes, destinations)
    assert ct.state == "routed"
    assert [(d, r) for d, r, _steps in ct.deliveries] == [("a", ("ct-only-to-a",))]

    mr = decide(view(MR), plugins, routes, destinations)
    assert [(d, r, s) for d, r, s in mr.deliveries] == [
        ("a", ("all-to-a",), ()),
        ("b", ("all-to-b",), ()),
        (
            "b",
            ("anonymized-to-b",),
            ({"name": "set-tags", "options": {"remove": ["PatientName"]}},),
        ),
    ]
    # Two routes sending the same copy to the same destination make one delivery.
    twice = decide(view(MR), plugins, routes[1:2] * 2, destinations)
    assert [(d, r) for d, r, _steps in twice.deliveries] == [("a", ("all-to-a", "all-to-a"))]

    nothing = decide(view(MR), plugins, routes[:1], destinations)
    assert (nothing.state, nothing.reason, nothing.deliveries) == (
        "unrouted",
        "no route matched",
        [],
    )


class Triage:
    """A throwaway plugin: drops ultrasound, labels MR as head, adds b for heads."""

    @hookimpl
    def station_filter_series(self, series: SeriesView) -> bool:
        return series.get("Modality") != "US"

    @hookimpl
    def station_classify_series(self, series: SeriesView) -> dict[str, str] | None:
        return {"body": "head"} if series.get("Modality") == "MR" else None

    @hookimpl
    def station_route_series(self, series: SeriesView) -> list[str] | None:
        return ["b"] if series.labels.get("body") == "head" else None


@needs_corpus
def test_decide_runs_filter_then_classify_then_routes_then_route_hooks() -> None:
    plugins = Plugins(entry_points=False)
    plugins.register(Triage(), name="triage")
    try:
        routes = [route({"labels": {"body": "head"}}, name="heads")]
        destinations = {"a": object(), "b": object()}

        us = decide(view(US), plugins, routes, destinations)
        assert (us.state, us.reason) == ("filtered", "filtered by plugin triage")

        mr = decide(view(MR), plugins, routes, destinations)
        assert mr.state == "routed"
        assert mr.labels == {"body": "head"}
        assert [(d, r) for d, r, _steps in mr.deliveries] == [
            ("a", ("heads",)),
            ("b", ("plugin:triage",)),
        ]

        ct = decide(view(CT), plugins, routes, destinations)
        assert (ct.state, ct.labels) == ("unrouted", {})
    finally:
        plugins.unregister("triage")


class Broken:
    """A throwaway plugin whose classify hook raises on MR and returns a non-str label else."""

    @hookimpl
    def station_classify_series(self, series: SeriesView) -> dict[str, str]:
        if series.get("Modality") == "MR":
            raise KeyError("Rows")
        return {"body": 1}  # type: ignore[dict-item]  # not a str: a plugin bug


@needs_corpus
def test_decide_names_the_plugin_and_hook_that_failed() -> None:
    plugins = Plugins(entry_points=False)
    plugins.register(Broken(), name="broken")
    try:
        with pytest.raises(PluginError) as raised:
            decide(view(MR), plugins, [route({})], {"a": object()})
        assert (raised.value.plugin, raised.value.hook) == ("broken", "station_classify_series")
        assert "KeyError: 'Rows'" in str(raised.value)
        with pytest.raises(PluginError) as wrong_type:
            decide(view(CT), plugins, [route({})], {"a": object()})
        assert "expected dict[str, str] or None" in str(wrong_type.value)
    finally:
        plugins.unregister("broken")


@needs_corpus
def test_a_route_hook_naming_an_unknown_destination_is_a_plugin_error() -> None:
    class Elsewhere:
        @hookimpl
        def station_route_series(self, series: SeriesView) -> list[str]:
            return ["nowhere"]

    plugins = Plugins(entry_points=False)
    plugins.register(Elsewhere(), name="elsewhere")
    try:
        with pytest.raises(PluginError, match="destination 'nowhere' is not configured"):
            decide(view(CT), plugins, [], {"a": object()})
    finally:
        plugins.unregister("elsewhere")
