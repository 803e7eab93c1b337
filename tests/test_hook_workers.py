"""Hooks called as pluggy designs them (order, tryfirst/trylast, wrappers, tracing), still
contained per plugin; series decided on routing workers, so a slow plugin delays only its
own series."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pydicom
import pytest
from conftest import VALID, StationProcess, c_store, needs_corpus, spool_and_journal, wait_for
from pydicom.uid import generate_uid

from station import hookimpl
from station.errors import PluginError
from station.ops.metrics import Metrics
from station.routing import hookspecs
from station.routing.router import Router
from station.routing.routes import Route
from station.routing.workers import RoutingWorkers
from station.series import SeriesView
from station.store.journal import Journal
from station.store.journal.sqlite import SQLiteJournal
from station.store.spool import Spool
from station.testing import load_plugins, run_plugins, series_from_files

CT = VALID / "CT_small.dcm"
MR = VALID / "MR_small.dcm"
ALL = [{"name": "all", "destinations": ["pacs"]}]


def test_hookimpl_is_importable_from_station_and_is_the_old_marker_too() -> None:
    assert hookspecs.hookimpl is hookimpl
    assert isinstance(hookimpl, pluggy.HookimplMarker) and hookimpl.project_name == "station"


# --- pluggy's order and wrappers ------------------------------------------------------------


class Labeller:
    """Labels every series ``order=<name>`` and notes in ``calls`` that it was called; its
    hook is marked with ``opts`` (tryfirst, trylast)."""

    def __init__(self, name: str, calls: list[str], **opts: bool) -> None:
        def station_classify_series(series: SeriesView) -> dict[str, str]:
            calls.append(name)
            return {"order": name}

        self.station_classify_series = hookimpl(**opts)(station_classify_series)


@needs_corpus
def test_implementations_run_in_pluggys_order_with_tryfirst_and_trylast() -> None:
    calls: list[str] = []
    plugins = load_plugins(
        {
            "last": Labeller("last", calls, trylast=True),
            "early": Labeller("early", calls),
            "first": Labeller("first", calls, tryfirst=True),
            "late": Labeller("late", calls),  # registered after "early": called before it
        }
    )
    pairs = plugins.call_each(
        "station_classify_series", lambda _: True, "any", series=series_from_files(MR)
    )
    assert calls == ["first", "late", "early", "last"]
    assert pairs == [(name, {"order": name}) for name in calls]  # each result, its plugin


class Wrapper:
    """A new-style wrapper: sees every result and adds a label of its own."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl(wrapper=True)
    def station_classify_series(
        self, series: SeriesView
    ) -> Generator[None, list[dict[str, str]], list[dict[str, str]]]:
        try:
            results = yield
        except PluginError as exc:
            self.seen.append(exc)
            raise
        self.seen.append(list(results))
        return [*results, {"wrapped": "yes"}]


class OldWrapper:
    """An old-style hookwrapper: sees the outcome, changes nothing."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl(hookwrapper=True)
    def station_classify_series(self, series: SeriesView) -> Generator[None, Any, None]:
        outcome = yield
        self.seen.append(outcome.get_result())


class Sequence:
    @hookimpl
    def station_classify_series(self, series: SeriesView) -> dict[str, str]:
        return {"sequence": "T2"}


@needs_corpus
def test_hook_wrappers_see_the_results_and_a_changed_result_is_the_wrappers() -> None:
    wrapper, old = Wrapper(), OldWrapper()
    plugins = load_plugins({"seq": Sequence(), "wrapper": wrapper, "old": old})
    pairs = plugins.call_each(
        "station_classify_series",
        lambda r: isinstance(r, dict),
        "dict",
        series=series_from_files(MR),
    )
    assert wrapper.seen == [[{"sequence": "T2"}]]
    assert old.seen == [[{"sequence": "T2"}, {"wrapped": "yes"}]]  # outside the new-style one
    assert pairs == [("wrapper, old", {"sequence": "T2"}), ("wrapper, old", {"wrapped": "yes"})]

    result = run_plugins(series_from_files(MR), [Sequence(), Wrapper()], routes=ALL)
    assert (result.state, result.labels) == ("routed", {"sequence": "T2", "wrapped": "yes"})


class Raises:
    @hookimpl
    def station_classify_series(self, series: SeriesView) -> None:
        raise KeyError("EchoTime")


@needs_corpus
def test_a_raising_plugin_is_named_and_counted_and_a_wrapper_sees_its_error() -> None:
    metrics, wrapper = Metrics(), Wrapper()
    calls: list[str] = []
    result = run_plugins(
        series_from_files(MR),
        {"raises": Raises(), "wrapper": wrapper, "after": Labeller("after", calls)},
        routes=ALL,
        metrics=metrics,
    )
    assert result.state == "quarantined"
    assert result.reason == "plugin 'raises', hook station_classify_series: KeyError: 'EchoTime'"
    assert isinstance(result.error, PluginError) and isinstance(result.error.__cause__, KeyError)
    assert calls == ["after"]  # registered last, called first; "raises" stopped the call
    assert [str(e) for e in wrapper.seen] == [result.reason]
    errors = {"plugin": "raises", "hook": "station_classify_series"}
    assert metrics.registry.get_sample_value("station_plugin_errors_total", errors) == 1


@needs_corpus
def test_trace_writes_every_hook_call_and_its_result() -> None:
    lines: list[str] = []
    plugins = load_plugins({"seq": Sequence()})
    plugins.trace(lines.append)
    plugins.call_each(
        "station_classify_series", lambda _: True, "any", series=series_from_files(MR)
    )
    text = "".join(lines)
    assert "station_classify_series [hook]" in text
    assert "finish station_classify_series --> [{'sequence': 'T2'}] [hook]" in text


# --- routing workers ------------------------------------------------------------------------


class SlowOnCT:
    """Blocks its classify hook on CT series until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.classified: list[str] = []

    @hookimpl
    def station_classify_series(self, series: SeriesView) -> None:
        if series.get("Modality") == "CT":
            self.entered.set()
            self.release.wait(60)
        self.classified.append(series.get("Modality"))


def journal_one(spool: Spool, journal: Journal, source: Path, now: float) -> int:
    """Spool and journal a copy of ``source`` as a series of its own; its batch id."""
    ds = pydicom.dcmread(source)
    ds.SeriesInstanceUID = generate_uid()
    path = spool.root / f"{ds.Modality}.dcm"
    ds.save_as(path)
    return spool_and_journal(spool, journal, path, now)


@pytest.fixture
def slow() -> Iterator[SlowOnCT]:
    plugin = SlowOnCT()
    yield plugin
    plugin.release.set()


@needs_corpus
def test_a_slow_plugin_delays_only_its_own_series(tmp_path: Path, slow: SlowOnCT) -> None:
    spool = Spool(tmp_path / "store", 0)
    journal = SQLiteJournal(tmp_path / "store" / "journal.sqlite")
    plugins = load_plugins({"slow": slow})
    routes = [Route(name="all", destinations=["pacs"], source_file="test")]
    router = Router(journal, plugins, routes, {"pacs": None}, Metrics())
    workers = RoutingWorkers(2, router.route)
    ct = journal_one(spool, journal, CT, now=1000.0)
    mr = journal_one(spool, journal, MR, now=1000.0)
    assert sorted(journal.close_quiet_batches(2000.0, 2000.0)) == sorted([ct, mr])
    workers.start()
    try:
        workers.submit(ct)
        assert slow.entered.wait(30), "the CT series' hook never started"
        workers.submit(mr)
        workers.submit(ct)  # handed over again while it is being decided: not queued twice
        wait_for(lambda: journal.batch(mr).state == "routed", 30, message="MR to be routed")
        assert journal.batch(ct).state == "complete"  # still in its hook, not routed yet
        slow.release.set()
        wait_for(lambda: journal.batch(ct).state == "routed", 30, message="CT to be routed")
        workers.submit(ct)  # a batch no longer complete is left alone
    finally:
        assert workers.stop(30) == []
    assert sorted(slow.classified) == ["CT", "MR"]
    journal.close()


# --- station run --trace-hooks ----------------------------------------------------------------

TRACED = """\
from station import hookimpl


@hookimpl
def station_classify_series(series):
    return {"traced": "yes"}
"""


@pytest.mark.e2e
@needs_corpus
def test_station_run_trace_hooks_logs_each_hook_call(tmp_path: Path) -> None:
    plugin = tmp_path / "traced.py"
    plugin.write_text(TRACED)
    config = {"plugins": [str(plugin)], "destinations": {"out": {"type": "folder", "path": "out"}}}
    station = StationProcess(tmp_path / "station", config, args=("--trace-hooks",)).start()
    try:
        assert c_store(station.port, MR) == 0
        wait_for(
            lambda: "finish station_classify_series --> [{'traced': 'yes'}]" in station.log(),
            30,
            message="the traced hook call in the log",
        )
        assert "station_filter_series [hook]" in station.log()
    finally:
        station.stop()
