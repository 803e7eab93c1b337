"""The bundled ``webhook`` plugin against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import VALID, needs_corpus, wait_for
from plugin_files import Receiver, series_of

from station.errors import ConfigError
from station.routing.plugins import Plugins

CT = VALID / "CT_small.dcm"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()
    Plugins()  # every bundled plugin configured again without options


@needs_corpus
def test_delivered_and_failed_notices_are_posted_without_patient_data(receiver: Receiver) -> None:
    plugins = Plugins(
        options={"webhook": {"url": receiver.url, "headers": {"Authorization": "Bearer t"}}}
    )
    series = series_of(CT)
    plugins.notify("station_series_delivered", series=series, destination="research")
    plugins.notify("station_series_failed", series=series, destination="pacs", reason="refused")
    wait_for(lambda: len(receiver.notices) == 2, 10, message="two notices")
    delivered, failed = receiver.notices
    assert delivered == {
        "event": "series.delivered",
        "outcome": "delivered",
        "study_uid": series.study_uid,
        "series_uid": series.series_uid,
        "modality": "CT",
        "calling_ae": "SCANNER1",
        "source": "scp",
        "destination": "research",
        "instances": 1,
        "reason": None,
        "timestamp": delivered["timestamp"],
    }
    assert delivered["timestamp"].endswith("+00:00")
    assert (failed["outcome"], failed["destination"], failed["reason"]) == (
        "failed",
        "pacs",
        "refused",
    )
    text = json.dumps(receiver.notices)
    assert "CompressedSamples" not in text and "1CT1" not in text  # no name, no ID
    assert receiver.headers[0]["Authorization"] == "Bearer t"
    assert receiver.headers[0]["Content-Type"] == "application/json"


@needs_corpus
def test_only_the_chosen_events_and_nothing_without_url(receiver: Receiver) -> None:
    series = series_of(CT)
    plugins = Plugins()
    plugins.notify("station_series_failed", series=series, destination="a", reason="x")
    plugins = Plugins(options={"webhook": {"url": receiver.url, "events": ["failed"]}})
    plugins.notify("station_series_delivered", series=series, destination="a")
    plugins.notify("station_series_failed", series=series, destination="b", reason="y")
    wait_for(lambda: receiver.notices, 10, message="a notice")
    plugins.notify("station_series_failed", series=series, destination="c", reason="z")
    wait_for(lambda: len(receiver.notices) == 2, 10, message="the second notice")
    assert [n["destination"] for n in receiver.notices] == ["b", "c"]


@needs_corpus
def test_a_slow_or_failing_receiver_never_holds_up_or_breaks_dispatch(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, refused_port: int
) -> None:
    series = series_of(CT)
    receiver.hold.clear()  # the receiver does not answer until told
    plugins = Plugins(options={"webhook": {"url": receiver.url, "timeout_seconds": 0.5}})
    plugins.notify("station_series_delivered", series=series, destination="slow")
    plugins.notify("station_series_delivered", series=series, destination="next")
    assert receiver.notices == []  # both hook calls returned while the receiver waits
    with caplog.at_level(logging.WARNING, logger="station_plugins.webhook"):
        wait_for(lambda: "timed out" in caplog.text, 10, message="the timeout logged")
        receiver.hold.set()
        wait_for(lambda: len(receiver.notices) == 2, 10, message="both notices arrived")
        receiver.status = 500
        plugins.notify("station_series_failed", series=series, destination="x", reason="r")
        wait_for(lambda: "HTTP Error 500" in caplog.text, 10, message="the 500 logged")
        closed = f"http://127.0.0.1:{refused_port}/"
        plugins = Plugins(options={"webhook": {"url": closed}})
        plugins.notify("station_series_failed", series=series, destination="y", reason="r")
        wait_for(lambda: "Connection refused" in caplog.text, 10, message="refusal logged")
    assert "series.failed for series" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://host/x"}, "url: expected an http"),
        ({"url": "http://h/", "events": ["sent"]}, "events: expected a list"),
        ({"url": "http://h/", "timeout_seconds": 0}, "timeout_seconds: expected a number"),
        ({"url": "http://h/", "headers": {"X": 1}}, "headers: expected a mapping"),
        ({"uri": "http://h/"}, r"unknown options \['uri'\]"),
    ],
)
def test_wrong_options_stop_the_station(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"plugin_options\.webhook: " + message):
        Plugins(options={"webhook": options})
