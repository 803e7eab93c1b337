"""station.testing and the guard around hook calls: a plugin that raises, overruns its time
limit or returns the wrong type quarantines that series only, and is counted.

Everything here runs in-process on real files of the test corpus; throwaway plugins are
classes registered on a fresh manager (``run_plugins`` builds one per call).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from conftest import MALFORMED, VALID, needs_corpus, wait_for
from test_routing import Triage  # drops US, labels MR body=head, sends heads to b too

from station import hookimpl
from station.config import load_config
from station.errors import ConfigError, PluginError
from station.ops.metrics import Metrics
from station.routing.plugins import MAX_OVERRUNNING, Plugins
from station.series import SeriesView
from station.service import load_setup
from station.testing import (
    apply_transforms,
    load_plugins,
    run_plugins,
    series_from_dataset,
    series_from_files,
)

CT = VALID / "CT_small.dcm"
MR = VALID / "MR_small.dcm"
# The same MR instance (one SOP Instance UID) in six transfer syntaxes.
MR_COPIES = sorted(VALID.glob("MR_small*.dcm"))
SET_TAGS = Path(__file__).resolve().parents[1] / "station_plugins" / "set_tags.py"
ALL = [{"name": "everything", "destinations": ["pacs"]}]


# --- series_from_files --------------------------------------------------------------------


@needs_corpus
def test_series_from_files_is_the_series_the_station_would_assemble() -> None:
    series = series_from_files(MR_COPIES, calling_ae="MRI3", source="scp", peer="10.1.2.3")
    header = pydicom.dcmread(MR, stop_before_pixels=True)
    assert (series.study_uid, series.series_uid) == (
        header.StudyInstanceUID,
        header.SeriesInstanceUID,
    )
    assert (series.calling_ae, series.called_ae, series.peer, series.source) == (
        "MRI3",
        "STATION",
        "10.1.2.3",
        "scp",
    )
    # One SOP Instance UID sent six times is stored once; the later copy wins.
    assert series.instance_count == 1
    assert series.files() == (MR_COPIES[-1],)
    assert series.get("Modality") == "MR"
    assert "PixelData" not in series.header
    assert dict(series.labels) == {}


@needs_corpus
def test_series_from_files_takes_folders_and_refuses_what_the_station_refuses(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "series"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "ct.dcm").write_bytes(CT.read_bytes())
    assert series_from_files(folder).files() == (folder / "sub" / "ct.dcm",)

    with pytest.raises(ValueError, match="expected the files of one series; series found: "):
        series_from_files([CT, MR])
    with pytest.raises(ValueError, match="series found: none"):
        series_from_files([])
    truncated = MALFORMED / "derived_CT_small_truncated_in_dataset.dcm"
    with pytest.raises(ValueError, match="the station would refuse it: data set is truncated"):
        series_from_files(truncated)
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not an image")
    with pytest.raises(ValueError, match=f"{not_dicom}: the station would refuse it: not a DICOM"):
        series_from_files(not_dicom)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        series_from_files(tmp_path / "missing")


@needs_corpus
def test_series_from_dataset_tries_a_rule_on_a_changed_header() -> None:
    header = pydicom.dcmread(MR, stop_before_pixels=True)
    header.SeriesDescription = "AX FLAIR"
    series = series_from_dataset(header, calling_ae="", source="folder", labels={"a": "b"})
    assert series.get("SeriesDescription") == "AX FLAIR"
    assert (series.instance_count, series.files(), dict(series.labels)) == (1, (), {"a": "b"})
    assert series.series_uid == header.SeriesInstanceUID


# --- run_plugins: the decision ------------------------------------------------------------


ROUTES = [
    {"name": "heads", "match": {"labels": {"body": "head"}}, "destinations": ["research"]},
    {
        "name": "heads-renamed",
        "match": {"labels": {"body": "head"}},
        "transform": [{"set-tags": {"set": {"InstitutionName": "X"}}}],
        "destinations": ["research", "teaching"],
    },
]


@needs_corpus
def test_run_plugins_returns_labels_and_destinations_per_route() -> None:
    result = run_plugins(
        series_from_files(MR),
        plugins=[Triage(), SET_TAGS],
        routes=ROUTES,
        destinations=["research", "teaching", "b"],
    )
    assert (result.state, result.labels, result.error) == ("routed", {"body": "head"}, None)
    assert result.destinations == ["b", "research", "teaching"]
    assert result.routes == {
        "heads": ["research"],
        "heads-renamed": ["research", "teaching"],
        "plugin:Triage": ["b"],
    }
    renamed = [d for d in result.deliveries if d.routes == ("heads-renamed",)]
    assert [d.transforms for d in renamed] == [
        ({"name": "set-tags", "options": {"set": {"InstitutionName": "X"}}},)
    ] * 2

    us = run_plugins(series_from_files(VALID / "US_GREYSCALE_IMAGE.dcm"), [Triage()], routes=ALL)
    assert (us.state, us.reason, us.deliveries) == ("filtered", "filtered by plugin Triage", ())
    ct = run_plugins(series_from_files(CT), plugins=[Triage(), SET_TAGS], routes=ROUTES)
    assert (ct.state, ct.reason, ct.labels) == ("unrouted", "no route matched", {})


@needs_corpus
def test_run_plugins_reads_route_files_and_checks_them_like_station_check(
    tmp_path: Path,
) -> None:
    (tmp_path / "10-mr.yaml").write_text("name: mr\nmatch: {Modality: MR}\ndestinations: [a]\n")
    assert run_plugins(series_from_files(MR), routes=tmp_path).routes == {"mr": ["a"]}

    with pytest.raises(ConfigError, match="'set-tags' is not provided by any plugin"):
        run_plugins(series_from_files(MR), plugins=[Triage()], routes=ROUTES)
    with pytest.raises(ConfigError, match=r"^routes\[0\]: destinations.0: 'pacs' is not config"):
        run_plugins(series_from_files(MR), routes=ALL, destinations=["archive"])
    with pytest.raises(ConfigError, match=r"routes\[0\]: match: Modalty: unknown key"):
        run_plugins(series_from_files(MR), routes=[{"name": "x", "match": {"Modalty": "MR"}}])


class Configurable:
    """Labels every series with the option ``value``; refuses other options."""

    value = "unset"

    @hookimpl
    def station_configure(self, options: dict[str, Any]) -> None:
        if set(options) - {"value"}:
            raise ValueError(f"unknown options {sorted(options)}")
        self.value = options.get("value", "unset")

    @hookimpl
    def station_classify_series(self, series: SeriesView) -> dict[str, str]:
        return {"value": self.value}


@needs_corpus
def test_options_reach_station_configure_as_from_plugin_options() -> None:
    plugin = Configurable()
    result = run_plugins(
        series_from_files(CT), plugins={"conf": plugin}, options={"conf": {"value": "42"}}
    )
    assert result.labels == {"value": "42"}
    with pytest.raises(ConfigError, match=r"station.testing: plugin_options.conf: unknown"):
        run_plugins(series_from_files(CT), plugins={"conf": plugin}, options={"conf": {"x": 1}})
    with pytest.raises(ConfigError, match=r"plugin_options\.other: no plugin of that name"):
        run_plugins(series_from_files(CT), plugins={"conf": plugin}, options={"other": {}})


# --- apply_transforms ---------------------------------------------------------------------


@needs_corpus
def test_apply_transforms_gives_the_data_set_a_destination_would_receive() -> None:
    steps = [{"set-tags": {"set": {"InstitutionName": "X"}, "remove": ["PatientName"]}}]
    changed = apply_transforms(MR, steps, plugins=[SET_TAGS])
    original = pydicom.dcmread(MR)
    assert changed.InstitutionName == "X" and "PatientName" not in changed
    assert changed.PixelData == original.PixelData  # read whole, as the dispatcher does

    again = apply_transforms(changed, ["set-tags"], plugins=[SET_TAGS])  # no options
    assert again == changed and again is not changed
    # The transforms of a decision, as run_plugins returns them, apply the same way.
    decided = run_plugins(
        series_from_files(MR), [SET_TAGS], routes=[{**ALL[0], "transform": steps}]
    )
    (delivery,) = decided.deliveries
    assert apply_transforms(original, delivery.transforms, [SET_TAGS]) == changed
    assert original.InstitutionName != "X"  # a data set given is copied, never changed

    with pytest.raises(ConfigError, match=r"transform 'anonymize' is not provided .*\(set-tags\)"):
        apply_transforms(MR, ["anonymize"], plugins=[SET_TAGS])
    with pytest.raises(ValueError, match="is not a DICOM keyword") as raised:
        apply_transforms(MR, [{"set-tags": {"set": {"NoSuchKeyword": 1}}}], plugins=[SET_TAGS])
    assert raised.value.__notes__ == [
        "in transform step 'set-tags' with options {'set': {'NoSuchKeyword': 1}}"
    ]


# --- the guard: exceptions, wrong types, time limits -----------------------------------------


class Wrong:
    """Each hook returns the wrong type of value for the series' modality."""

    @hookimpl
    def station_filter_series(self, series: SeriesView) -> Any:
        return "no" if series.get("Modality") == "CT" else None

    @hookimpl
    def station_classify_series(self, series: SeriesView) -> Any:
        return {"sequence": 1} if series.get("Modality") == "MR" else None

    @hookimpl
    def station_route_series(self, series: SeriesView) -> Any:
        return "pacs" if series.get("Modality") == "US" else None


@needs_corpus
@pytest.mark.parametrize(
    ("path", "hook", "message"),
    [
        (CT, "station_filter_series", "returned str 'no'; expected bool or None"),
        (MR, "station_classify_series", "returned dict {'sequence': 1}; expected dict[str, str]"),
        (VALID / "US_GREYSCALE_IMAGE.dcm", "station_route_series", "expected list[str] or None"),
    ],
)
def test_a_wrong_return_type_quarantines_the_series(path: Path, hook: str, message: str) -> None:
    metrics = Metrics()
    result = run_plugins(series_from_files(path), plugins=[Wrong()], routes=ALL, metrics=metrics)
    assert result.state == "quarantined"
    assert result.reason is not None and result.reason.startswith(f"plugin 'Wrong', hook {hook}: ")
    assert message in result.reason
    errors = {"plugin": "Wrong", "hook": hook}
    assert metrics.registry.get_sample_value("station_plugin_errors_total", errors) == 1


class Raises:
    @hookimpl
    def station_classify_series(self, series: SeriesView) -> None:
        if series.get("Modality") == "MR":
            raise KeyError("EchoTime")
        raise SystemExit(3)  # not even this ends the station


@needs_corpus
def test_an_exception_quarantines_the_series_with_the_error_kept() -> None:
    result = run_plugins(series_from_files(MR), plugins=[Raises()], routes=ALL)
    assert result.state == "quarantined"
    assert result.reason == "plugin 'Raises', hook station_classify_series: KeyError: 'EchoTime'"
    assert isinstance(result.error, PluginError)
    assert isinstance(result.error.__cause__, KeyError)  # the plugin's traceback is there
    exited = run_plugins(series_from_files(CT), plugins=[Raises()], routes=ALL)
    assert exited.reason == "plugin 'Raises', hook station_classify_series: SystemExit: 3"


class Hangs:
    """Its hooks block on CT series until ``release`` is set (a plugin waiting forever)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.notified: list[str] = []
        self.classified: list[str] = []  # the modality of every classify call that returned

    @hookimpl
    def station_classify_series(self, series: SeriesView) -> dict[str, str] | None:
        if series.get("Modality") == "CT":
            self.release.wait(60)
        self.classified.append(series.get("Modality"))
        return {"seen": "yes"}

    @hookimpl
    def station_series_delivered(self, series: SeriesView, destination: str) -> None:
        self.release.wait(60)
        self.notified.append(destination)


@pytest.fixture
def hangs() -> Iterator[Hangs]:
    plugin = Hangs()
    yield plugin
    plugin.release.set()  # the abandoned threads end with the test


@needs_corpus
def test_a_hook_past_its_time_limit_quarantines_only_its_series(
    hangs: Hangs, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    clock = itertools.count(100.0, 0.25)  # each perf_counter() call, a quarter second later
    fake_time = SimpleNamespace(perf_counter=lambda: next(clock))
    monkeypatch.setattr("station.routing.plugins.time", fake_time)
    result = run_plugins(
        series_from_files(CT), [hangs], routes=ALL, timeout_seconds=0.2, metrics=metrics
    )
    monkeypatch.undo()
    assert hangs.classified == [], "the caller waited for the hook, not for the time limit"
    assert result.state == "quarantined"
    assert result.reason == "plugin 'Hangs', hook station_classify_series: timed out after 0.2 s"
    errors = {"plugin": "Hangs", "hook": "station_classify_series"}
    assert metrics.registry.get_sample_value("station_plugin_errors_total", errors) == 1
    durations = {"hook": "station_classify_series"}
    assert metrics.registry.get_sample_value("station_hook_duration_seconds_count", durations) == 1
    assert metrics.registry.get_sample_value("station_hook_duration_seconds_sum", durations) == 0.25

    mr = run_plugins(series_from_files(MR), [hangs], routes=ALL, timeout_seconds=0.2)
    assert (mr.state, mr.labels) == ("routed", {"seen": "yes"})


@needs_corpus
def test_a_plugin_with_too_many_calls_running_on_is_no_longer_called(hangs: Hangs) -> None:
    plugins = load_plugins({"hangs": hangs}, timeout_seconds=0.1)
    ct = series_from_files(CT)

    def classify() -> str:
        try:
            plugins.call_each("station_classify_series", lambda _: True, "any", series=ct)
        except PluginError as exc:
            return str(exc)
        return "returned"

    for _ in range(MAX_OVERRUNNING):
        assert classify().endswith("timed out after 0.1 s")
    before = set(threading.enumerate())
    assert classify().endswith(
        f"not called: {MAX_OVERRUNNING} earlier calls are still running past the 0.1 s time limit"
    )
    started = {t.name for t in set(threading.enumerate()) - before}
    assert "hook station_classify_series" not in started, "refused, yet a thread was started"
    hangs.release.set()  # once they have returned, the plugin is called again
    wait_for(lambda: classify() == "returned", 10, message="the plugin to be called again")


class Listener:
    def __init__(self) -> None:
        self.notified: list[str] = []

    @hookimpl
    def station_series_delivered(self, series: SeriesView, destination: str) -> None:
        self.notified.append(destination)


@needs_corpus
def test_a_hanging_notification_is_logged_and_counted_and_others_still_hear(
    hangs: Hangs, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    listener = Listener()
    plugins = load_plugins([listener, hangs], timeout_seconds=0.1, metrics=metrics)
    assert [i.plugin_name for i in plugins.pm.hook.station_series_delivered.get_hookimpls()] == [
        "Listener",
        "Hangs",
    ]  # pluggy calls the last registered first: the hanging one
    plugins.notify("station_series_delivered", series=series_from_files(MR), destination="pacs")
    assert "station_series_delivered: timed out after 0.1 s" in caplog.text
    errors = {"plugin": "Hangs", "hook": "station_series_delivered"}
    assert metrics.registry.get_sample_value("station_plugin_errors_total", errors) == 1
    assert (hangs.notified, listener.notified) == ([], ["pacs"])


class SlowStart:
    def __init__(self) -> None:
        self.release = threading.Event()

    @hookimpl
    def station_configure(self, options: dict[str, Any]) -> None:
        self.release.wait(60)


def test_start_up_hooks_have_the_time_limit_too() -> None:
    plugin = SlowStart()
    try:
        with pytest.raises(ConfigError, match="'SlowStart', hook station_configure: timed out"):
            load_plugins([plugin], timeout_seconds=0.1)
        assert not plugin.release.is_set()  # the hook is still blocked: nobody waited for it
    finally:
        plugin.release.set()


# --- the config key -----------------------------------------------------------------------


def test_plugin_timeout_seconds_is_validated_and_reaches_the_plugins(tmp_path: Path) -> None:
    assert load_setup(load_config(None, environ={})).plugins.timeout_seconds == 30
    config = tmp_path / "station.yaml"
    config.write_text("plugin_timeout_seconds: 2.5\n")
    assert load_setup(load_config(config, environ={})).plugins.timeout_seconds == 2.5
    for bad, problem in ((0, "greater than 0"), (7200, "less than or equal to 3600")):
        config.write_text(f"plugin_timeout_seconds: {bad}\n")
        with pytest.raises(ConfigError, match=rf"yaml:1: plugin_timeout_seconds: .*{problem}"):
            load_config(config, environ={})
    assert Plugins(entry_points=False).timeout_seconds == 30
