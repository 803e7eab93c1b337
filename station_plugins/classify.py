"""``classify``: labels from regular expressions over a series' tags, for routes to match.

A classify hook. Its options give, per label name, the values it can take and the patterns
that choose each value. The first value (in the order written) with any pattern found in
its tag wins; no match leaves the label unset. Patterns are Python regular expressions,
searched (not anchored: use ``^...$`` for a whole value; ``(?i)`` ignores case) in the
value of a DICOM keyword of the series' first header -- every value of a multi-valued tag
such as ImageType, and the whole value ``ORIGINAL\\PRIMARY`` -- or in ``calling_ae``,
``called_ae``, ``source`` or ``peer``. Labels of other classify plugins are not visible in
any given order, so patterns cannot use labels.

Without options no label is set. A wrong keyword or pattern stops the station at start-up
(and ``station check`` names it).

Example::

    # station.yaml
    plugin_options:
      classify:
        labels:
          body_part:
            CHEST: {SeriesDescription: "(?i)thorax|chest|lung", BodyPartExamined: "^CHEST$"}
            HEAD: {SeriesDescription: "(?i)head|brain|skull", BodyPartExamined: "^(HEAD|BRAIN)$"}
          sequence:
            FLAIR: {SeriesDescription: "(?i)flair", ProtocolName: "(?i)flair"}
            T1: {SeriesDescription: '(?i)\\bt1'}     # single quotes: YAML keeps the \\
          site:
            north: {calling_ae: "^NORTH"}

    # routes/chest.yaml
    name: chest-to-research
    match: {labels: {body_part: CHEST}}
    destinations: [research]
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from station import hookimpl
from station.routing.routes import Route

if TYPE_CHECKING:
    from station.series import SeriesView

# label name -> [(value, [one-condition matchers, any of which gives the value])]
Rules = dict[str, list[tuple[str, list[Route]]]]
_rules: Rules = {}


def _pattern(where: str, key: str, pattern: Any) -> Route:
    """One ``key: pattern`` condition, checked and matched exactly as in a route file."""
    if not isinstance(pattern, str):
        raise ValueError(f"{where}.{key}: expected a regular expression, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}.{key}: invalid regular expression {pattern!r}: {exc}") from None
    try:
        return Route.model_validate({"name": where, "match": {key: {"regex": pattern}}})
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"{where}.{problem}") from None


def parse_rules(options: dict[str, Any]) -> Rules:
    """The ``labels`` option, every keyword and pattern checked; ValueError names a bad one."""
    unknown = set(options) - {"labels"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected labels")
    labels = options.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError("labels: expected a mapping of label name to {value: {KEYWORD: regex}}")
    rules: Rules = {}
    for name, values in labels.items():
        if not isinstance(values, dict) or not values:
            raise ValueError(f"labels.{name}: expected a mapping of value to {{KEYWORD: regex}}")
        rules[str(name)] = []
        for value, patterns in values.items():
            where = f"labels.{name}.{value}"
            if isinstance(value, bool):
                raise ValueError(f'{where}: a YAML boolean; quote the label value ("YES")')
            if not isinstance(patterns, dict) or not patterns:
                raise ValueError(f"{where}: expected a mapping of keyword to regular expression")
            matchers = [_pattern(where, key, p) for key, p in patterns.items()]
            rules[str(name)].append((str(value), matchers))
    return rules


@hookimpl
def station_configure(options: dict[str, Any]) -> None:
    parsed = parse_rules(options)
    _rules.clear()
    _rules.update(parsed)


@hookimpl
def station_classify_series(series: SeriesView) -> dict[str, str] | None:
    labels = {}
    for name, values in _rules.items():
        for value, matchers in values:
            if any(m.matches(series) for m in matchers):
                labels[name] = value
                break
    return labels or None
