"""Route files: which series go where, with which transforms.

A route file (``*.yaml`` in the ``routes`` folder, read in name order) holds one route (a
mapping) or several (a list). All ``match`` conditions must hold; a list means "any of";
``{regex: ...}`` searches the value. Keys are DICOM keywords of the series' first header,
``calling_ae``, ``called_ae``, ``source`` (scp or folder), ``peer`` (the sender's
address, or the drop folder's path), and ``labels`` (a mapping matched the same way).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from station.config import format_validation_error, load_yaml
from station.errors import ConfigError
from station.series import SeriesView

SERIES_KEYS = ("calling_ae", "called_ae", "source", "peer")


class Regex(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        return value


Condition = str | int | float | list[str | int | float] | Regex
_CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)


def _condition(key: str, value: Any) -> Condition:
    if isinstance(value, dict):
        try:
            return Regex.model_validate(value)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{key}: expected {{regex: PATTERN}} ({problem})") from None
    try:
        return _CONDITION.validate_python(value)
    except ValidationError:
        raise ValueError(f"{key}: expected a value or a list of values, got {value!r}") from None


class TransformStep(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    options: dict[str, Any] = {}


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    match: dict[str, Any] = {}
    transform: list[TransformStep] = []
    destinations: list[str] = []
    final: bool = False
    source_file: str = Field("", exclude=True)
    source_prefix: str = Field("", exclude=True)  # "2." for the third route of a list file
    source_lines: dict[str, int] = Field({}, exclude=True)  # "destinations.1" -> line

    def where(self, key: str) -> str:
        """``file:line: key`` of one of this route's keys, to start a message with."""
        line = self.source_lines.get(key)
        at = f"{self.source_file}:{line}" if line else self.source_file
        return f"{at}: {self.source_prefix}{key}"

    @field_validator("match", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        parsed: dict[str, Any] = {}
        for key, condition in value.items():
            if key == "labels":
                if not isinstance(condition, dict):
                    raise ValueError("labels: expected a mapping of label name to condition")
                parsed[key] = {
                    label: _condition(f"labels.{label}", c) for label, c in condition.items()
                }
                continue
            if key not in SERIES_KEYS and tag_for_keyword(key) is None:
                raise ValueError(
                    f"{key}: unknown key: expected a DICOM keyword (e.g. Modality, "
                    f"SeriesDescription) or one of labels, {', '.join(SERIES_KEYS)}"
                )
            parsed[key] = _condition(key, condition)
        return parsed

    @field_validator("transform", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        steps: list[dict[str, Any]] = []
        for item in value:
            if isinstance(item, str):
                steps.append({"name": item})
            elif isinstance(item, dict) and len(item) == 1:
                name, options = next(iter(item.items()))
                if options is not None and not isinstance(options, dict):
                    raise ValueError(f"transform {name!r}: options must be a mapping")
                steps.append({"name": name, "options": options or {}})
            else:
                raise ValueError("each transform is a name or a one-key mapping {name: options}")
        return steps

    def matches(self, series: SeriesView) -> bool:
        for key, condition in self.match.items():
            if key == "labels":
                for label, wanted in condition.items():
                    if not _holds(wanted, series.labels.get(label)):
                        return False
            elif key in SERIES_KEYS:
                if not _holds(condition, getattr(series, key)):
                    return False
            elif not _holds(condition, series.get(key)):
                return False
        return True


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        parts = [str(v) for v in value]
        return [*parts, "\\".join(parts)]
    return [str(value).strip()]


def _holds(condition: Any, value: Any) -> bool:
    candidates = _values(value)
    if isinstance(condition, Regex):
        pattern = re.compile(condition.regex)
        return any(pattern.search(c) for c in candidates)
    wanted = condition if isinstance(condition, list) else [condition]
    return any(str(w) == c for w in wanted for c in candidates)


def _key_paths(route: dict[str, Any]) -> list[tuple[str | int, ...]]:
    """The keys of a route that messages after validation point at."""
    paths: list[tuple[str | int, ...]] = [("name",)]
    for key in ("destinations", "transform"):
        value = route.get(key)
        count = len(value) if isinstance(value, list) else 0
        paths += [(key,), *((key, i) for i in range(count))]
    return paths


def load_routes(path: Path) -> list[Route]:
    """Read a folder of route files (or one file); raise ConfigError naming every problem."""
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    elif path.exists():
        files = [path]
    else:
        raise ConfigError(f"routes: {path}: no such file or folder")
    routes: list[Route] = []
    problems: list[str] = []
    for file in files:
        try:
            data, line_of = load_yaml(file)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        items = data if isinstance(data, list) else [data] if data is not None else []
        for index, item in enumerate(items):
            prefix: tuple[Any, ...] = (index,) if isinstance(data, list) else ()
            if not isinstance(item, dict):
                problems.append(f"{file}:{line_of(prefix)}: a route must be a mapping")
                continue
            lines = {".".join(map(str, k)): line_of(prefix + k) for k in _key_paths(item)}
            source = {
                "source_file": str(file),
                "source_prefix": "".join(f"{p}." for p in prefix),
                "source_lines": {k: line for k, line in lines.items() if line},
            }
            try:
                routes.append(Route.model_validate({**item, **source}))
            except ValidationError as exc:
                problems.append(format_validation_error(exc, file, line_of, prefix))
    names: dict[str, str] = {}
    for route in routes:
        if route.name in names:
            problems.append(
                f"{route.where('name')}: {route.name!r} is already used in {names[route.name]}"
            )
        names[route.name] = route.source_file
    if problems:
        raise ConfigError("\n".join(problems))
    return routes


def check_references(
    routes: list[Route], destinations: Mapping[str, Any], transforms: Mapping[str, Any]
) -> list[str]:
    """Problems with names a route uses that nothing provides."""
    problems = []
    for route in routes:
        for index, name in enumerate(route.destinations):
            if name not in destinations:
                known = ", ".join(sorted(destinations)) or "none"
                problems.append(
                    f"{route.where(f'destinations.{index}')}: {name!r} is not configured "
                    f"(known: {known})"
                )
        for index, step in enumerate(route.transform):
            if step.name not in transforms:
                known = ", ".join(sorted(transforms)) or "none"
                problems.append(
                    f"{route.where(f'transform.{index}')}: {step.name!r} is not provided by "
                    f"any plugin (known: {known})"
                )
        if not route.destinations:
            problems.append(
                f"{route.where('destinations')}: route {route.name!r} goes nowhere; "
                "list at least one destination"
            )
    return problems
