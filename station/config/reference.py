"""The configuration reference (docs/configuration.md), rendered from the models.

``python -m station.config.reference > docs/configuration.md`` writes it;
tests/test_generated_docs.py fails when the committed file differs from what the models
render, so it cannot drift: every key, type and default comes from the models
(station/config/models.py, destinations.py), every meaning from its field's ``description``.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from station.config.models import StationConfig
from station.config.values import UID, AETitle, Mode, Network

NAMES: dict[Any, str] = {
    AETitle: "AE title",
    UID: "UID",
    Network: "IP address or network",
    Mode: "octal mode",
    str: "text",
    int: "integer",
    float: "number",
    bool: "true or false",
    Path: "path",
    Any: "any",
}
LONGEST_DEFAULT = 5  # list items shown; a longer default is described, not listed

INTRO = """# Configuration reference

<!-- Rendered by `python -m station.config.reference > docs/configuration.md` from the
field descriptions in station/config/models.py and destinations.py; edit those, not this file. -->

One YAML file (`station run --config FILE`, or `STATION_CONFIG`); `examples/station.yaml`
shows every section with comments. Unknown keys are errors, every value has a default unless
marked required, and relative paths are relative to the config file. Without a file the
station runs on the defaults below plus a drop folder `./dropbox`.

`STATION_*` environment variables override the file, which overrides the defaults: the key
path in capitals, its parts joined by `__` (`STATION_LISTEN__PORT=11113` is `listen.port`,
`STATION_DESTINATIONS__PACS__PORT=104` is `destinations.pacs.port`). A list or section given
whole is read as YAML (`STATION_PLUGINS='[tagger, site.module]'`). An error in a value set
this way names the variable: `environment variable STATION_DESTINATIONS__PACS__PORT:
destinations.pacs.type: required key is missing` when no config defines `pacs`.
"""


def _name(annotation: Any) -> str:
    """How a value's type reads in the tables."""
    if annotation in NAMES:
        return NAMES[annotation]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _name(args[0])
    if origin is Literal:
        return " or ".join(f"`{arg}`" for arg in args)
    if origin in (Union, types.UnionType):
        names = ("none" if arg is type(None) else _name(arg) for arg in args)
        return " or ".join(dict.fromkeys(names))
    if origin is tuple:
        return f"list of {_name(args[0])}"
    if origin is dict:
        return f"mapping of {_name(args[0])} to {_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    raise TypeError(f"no name for {annotation!r} in station.config.reference.NAMES")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "see its keys"
    shown = TypeAdapter(field.rebuild_annotation()).dump_python(value, mode="json")
    if isinstance(shown, list) and len(shown) > LONGEST_DEFAULT:
        return f"{len(shown)} values"
    return f"`{json.dumps(shown)}`"


def _models(annotation: Any, key: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """The sections a field's type holds, with their key paths."""
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield key, annotation
    elif origin in (Annotated, Union, types.UnionType):
        for arg in args[:1] if origin is Annotated else args:
            yield from _models(arg, key)
    elif origin is tuple:
        yield from _models(args[0], f"{key}[]")
    elif origin is dict:
        yield from _models(args[1], f"{key}.NAME")


def _heading(key: str, model: type[BaseModel]) -> str:
    kind = model.model_fields.get("type")
    if kind is not None and get_origin(kind.annotation) is Literal:
        return f"## `{key}` (type: {get_args(kind.annotation)[0]})"
    return f"## `{key}`" + (" (type: any other)" if kind is not None else "")


def _sections(model: type[BaseModel], key: str, seen: set[tuple[str, str]]) -> Iterator[list[str]]:
    """One table per section, a section before the ones inside it."""
    doc = " ".join(inspect.cleandoc(model.__doc__ or "").split())
    lines = [_heading(key, model) if key else "## Top level", "", doc, ""]
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    inner: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no description")
        full = f"{key}.{name}" if key else name
        kind = _name(field.rebuild_annotation())
        lines.append(f"| `{full}` | {kind} | {_default(field)} | {field.description} |")
        inner += [(k, m) for k, m in _models(field.annotation, full) if (k, m.__name__) not in seen]
        seen.update((k, m.__name__) for k, m in inner)
    yield [*lines, ""]
    for inner_key, inner_model in inner:
        yield from _sections(inner_model, inner_key, seen)


def render() -> str:
    parts = [INTRO]
    for section in _sections(StationConfig, "", set()):
        parts.append("\n".join(section))
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
