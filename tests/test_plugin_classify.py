"""The bundled ``classify`` plugin: labels from regular expressions, matched by routes."""

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
LABELS = {
    "labels": {
        "body_part": {
            "CHEST": {"SeriesDescription": "(?i)thorax|chest", "BodyPartExamined": "^CHEST$"},
            "HEAD": {"SeriesDescription": "(?i)brain|head", "BodyPartExamined": "^HEAD$"},
            "KIDNEY": {"SeriesDescription": "(?i)kidney"},
        },
        "kind": {
            "derived": {"ImageType": "^DERIVED$"},  # any one value of a multi-valued tag
            "original": {"ImageType": r"^ORIGINAL\\PRIMARY"},  # or the whole value
        },
        "site": {"north": {"calling_ae": "^NORTH"}},
    }
}
ROUTES = [
    Route.model_validate(
        {"name": "heads", "match": {"labels": {"body_part": "HEAD"}}, "destinations": ["neuro"]}
    )
]


@pytest.fixture
def configured() -> Iterator[Plugins]:
    yield Plugins(options={"classify": LABELS})
    Plugins()  # every bundled plugin configured again without options


@needs_corpus
def test_labels_of_the_valid_files(configured: Plugins) -> None:
    labels = {
        path.name: decide(series_of(path), configured, ROUTES, {"neuro": 1}).labels
        for path in FILES
    }
    assert labels["chrJapMulti.dcm"] == {"body_part": "CHEST", "kind": "derived"}  # "Chest PA"
    assert labels["ctbrain1.dcm"] == {"body_part": "HEAD", "kind": "original"}  # both match
    assert labels["emri_small.dcm"] == {"body_part": "HEAD", "kind": "original"}  # BodyPart
    assert labels["US_GREYSCALE_IMAGE.dcm"] == {"body_part": "KIDNEY", "kind": "original"}
    assert labels["MR_small.dcm"] == {"kind": "derived"}
    assert labels["DICOMDIR-empty.dcm"] == {}  # no tags to match: no labels
    north = decide(series_of(VALID / "CT_small.dcm", "NORTH_CT"), configured, ROUTES, {})
    assert north.labels == {"kind": "original", "site": "north"}


@needs_corpus
def test_routes_match_the_labels(configured: Plugins) -> None:
    routed = {
        path.name
        for path in FILES
        if decide(series_of(path), configured, ROUTES, {"neuro": 1}).state == "routed"
    }
    assert routed == {"ctbrain1.dcm", "emri_small.dcm"}


@needs_corpus
def test_without_options_no_labels() -> None:
    assert decide(series_of(VALID / "ctbrain1.dcm"), Plugins(), ROUTES, {}).labels == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels": {"body": {"HEAD": {"SeriesDescription": "(brain"}}}}, "invalid regular"),
        ({"labels": {"body": {"HEAD": {"SeriesDescriptoin": "x"}}}}, "SeriesDescriptoin: unknown"),
        ({"labels": {"body": {"HEAD": {"SeriesDescription": 3}}}}, "expected a regular expr"),
        ({"labels": {"body": {"HEAD": "brain"}}}, r"labels\.body\.HEAD: expected a mapping"),
        ({"labels": {"body": {True: {"Modality": "x"}}}}, "YAML boolean"),
        ({"labels": {"body": []}}, r"labels\.body: expected a mapping"),
        ({"rules": {}}, r"unknown options \['rules'\]"),
    ],
)
def test_wrong_options_stop_the_station_with_a_clear_message(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"plugin_options\.classify: .*" + message):
        Plugins(options={"classify": options})
