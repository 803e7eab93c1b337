"""The bundled ``tag-filter`` plugin: drop rules from plugin_options, on real headers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import VALID, needs_corpus
from plugin_files import FILES, QUIET, series_of

from station.errors import ConfigError
from station.routing.plugins import Plugins
from station.routing.router import decide
from station.routing.routes import Route

pytestmark = pytest.mark.filterwarnings(*QUIET)
RULES = {
    "drop": [
        {"Modality": ["SR", "PR", "KO"]},
        {"ImageType": ["SECONDARY"]},
        {"BurnedInAnnotation": "YES"},
        {"Modality": "CT", "SeriesDescription": {"regex": "(?i)brain"}},
        {"calling_ae": "TESTSCANNER"},
    ]
}
EVERYTHING = [Route.model_validate({"name": "all", "destinations": ["pacs"]})]


@pytest.fixture
def configured() -> Iterator[Plugins]:
    """The station's plugins (entry points included) with the rules above."""
    yield Plugins(options={"tag-filter": RULES})
    Plugins()  # every bundled plugin configured again without options


def states(plugins: Plugins, calling_ae: str = "SCANNER1") -> dict[str, str]:
    return {
        path.name: decide(series_of(path, calling_ae), plugins, EVERYTHING, {"pacs": 1}).state
        for path in FILES
    }


@needs_corpus
def test_rules_drop_matching_series_of_the_valid_files(configured: Plugins) -> None:
    dropped = {name for name, state in states(configured).items() if state == "filtered"}
    assert dropped == {
        "reportsi.dcm",  # SR
        "test-SR.dcm",  # SR
        "US_GREYSCALE_IMAGE.dcm",  # BurnedInAnnotation YES
        "ctbrain1.dcm",  # CT "BRAIN SEQ"
        *(p.name for p in FILES if p.name.startswith(("MR_small", "SC_rgb"))),  # SECONDARY
    }
    decision = decide(series_of(VALID / "test-SR.dcm"), configured, EVERYTHING, {"pacs": 1})
    assert decision.reason == "filtered by plugin tag-filter"
    from_test_scanner = states(configured, calling_ae="TESTSCANNER")
    assert set(from_test_scanner.values()) == {"filtered"}


@needs_corpus
def test_without_options_nothing_is_dropped() -> None:
    assert set(states(Plugins()).values()) == {"routed"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"drop": {"Modality": "SR"}}, "drop: expected a list of rules"),
        ({"drop": [{"Modalty": "SR"}]}, r"drop\[0\]: Modalty: unknown key"),
        ({"drop": [{"Modality": {"contains": "SR"}}]}, r"drop\[0\]: Modality: expected"),
        ({"drop": [{}, "SR"]}, r"drop\[0\]: expected a mapping"),
        ({"drop": [{"SeriesDescription": {"regex": "("}}]}, "invalid regular expression"),
        ({"drop": [{"BurnedInAnnotation": True}]}, r"YAML boolean .* quote the value"),
        ({"keep": []}, r"unknown options \['keep'\]"),
    ],
)
def test_wrong_rules_stop_the_station_with_a_clear_message(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"plugin_options\.tag-filter: .*" + message):
        Plugins(options={"tag-filter": options})
