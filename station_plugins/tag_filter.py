"""``tag-filter``: drop series by rules on their tags, before routing.

A filter hook. Its options are a list of rules under ``drop``; a series is dropped when any
rule holds (recorded as "filtered by plugin tag-filter" in the journal, ``station status``
and ``station_series_filtered_total{plugin="tag-filter"}``). A rule is written exactly like
a route's ``match``: all its conditions must hold; a list of values means "any of";
``{regex: PATTERN}`` searches the value; a multi-valued tag such as ImageType holds when any
one of its values (or the whole value, ``DERIVED\\SECONDARY``) matches; keys are DICOM
keywords of the series' first header, or ``calling_ae``, ``called_ae``, ``source`` and
``peer``. A tag the series does not have matches nothing. Labels are not set yet when
filters run, so rules cannot use them.

Without options nothing is dropped. A wrong rule stops the station at start-up (and
``station check`` names it).

Example (``station.yaml``)::

    plugin_options:
      tag-filter:
        drop:
          - Modality: [SR, PR, KO]                 # reports, presentation states, selections
          - ImageType: [DERIVED, SECONDARY]        # derived or secondary images
          - BurnedInAnnotation: "YES"              # text burned into the pixels
          - Modality: CT                           # CT localizers
            SeriesDescription: {regex: "(?i)scout|localizer|topogram"}
          - calling_ae: TESTSCANNER                # everything from a test modality
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from station import hookimpl
from station.routing.routes import Route

if TYPE_CHECKING:
    from station.series import SeriesView

log = logging.getLogger(__name__)
_rules: list[Route] = []


def parse_rules(options: dict[str, Any]) -> list[Route]:
    """The ``drop`` rules, each checked like a route's ``match``; ValueError names a bad one."""
    unknown = set(options) - {"drop"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected drop")
    drop = options.get("drop") or []
    if not isinstance(drop, list):
        raise ValueError(
            "drop: expected a list of rules, each a mapping of conditions that must all hold "
            "(like a route's match), e.g. [{Modality: [SR, PR]}, {BurnedInAnnotation: 'YES'}]"
        )
    rules = []
    for index, rule in enumerate(drop):
        if not isinstance(rule, dict) or not rule:
            raise ValueError(f"drop[{index}]: expected a mapping of conditions, got {rule!r}")
        for key, condition in rule.items():
            values = condition if isinstance(condition, list) else [condition]
            if any(isinstance(v, bool) for v in values):
                raise ValueError(
                    f"drop[{index}].{key}: {condition!r} is a YAML boolean (YES, NO, ON, OFF); "
                    'quote the value ("YES")'
                )
        try:
            rules.append(Route.model_validate({"name": f"drop[{index}]", "match": rule}))
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"drop[{index}]: {problem}") from None
    return rules


@hookimpl
def station_configure(options: dict[str, Any]) -> None:
    _rules[:] = parse_rules(options)


@hookimpl
def station_filter_series(series: SeriesView) -> bool | None:
    for rule in _rules:
        if rule.matches(series):
            log.info("series %s dropped by tag-filter rule %s", series.series_uid, rule.name)
            return False
    return None
