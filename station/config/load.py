"""Loading the configuration: the YAML file (with line numbers for errors), ``STATION_*``
environment overrides through pydantic-settings, paths made absolute.

Precedence: environment over file over defaults. Every problem is reported at once, each
naming the file and line, or the environment variable, and the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from station.config.destinations import (
    DestinationConfig,
    DicomDestinationConfig,
    FolderDestinationConfig,
)
from station.config.models import DEFAULT_DROPBOX, StationConfig
from station.errors import ConfigError


def load_yaml(path: Path) -> tuple[Any, Callable[[tuple[Any, ...]], int | None]]:
    """Read a YAML file; return its data and a function mapping a key path to a line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc

    def line_of(loc: tuple[Any, ...]) -> int | None:
        current = node
        line = current.start_mark.line + 1 if current is not None else None
        for part in loc:
            if isinstance(current, yaml.MappingNode):
                pair = next(((k, v) for k, v in current.value if k.value == str(part)), None)
                if pair is None:
                    break
                line = pair[0].start_mark.line + 1
                current = pair[1]
            elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(current.value):
                    break
                current = current.value[part]
                line = current.start_mark.line + 1
            else:
                break
        return line

    return data, line_of


def format_validation_error(
    exc: ValidationError,
    path: Path | str,
    line_of: Callable[[tuple[Any, ...]], int | None] | None = None,
    prefix: tuple[Any, ...] = (),
    origin: Callable[[tuple[Any, ...]], str | None] | None = None,
) -> str:
    """One line per problem: ``file:line: key.path: what is wrong (got value)``; where
    ``origin`` names the environment variable behind a key, that variable instead of the
    file."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if len(loc) > 2 and loc[0] == "destinations" and loc[2] in ("dicom", "folder", "plugin"):
            loc = loc[:2] + loc[3:]
        full = prefix + loc
        message = error["msg"].removeprefix("Value error, ")
        # A validator's message may start with the key below this one ("Modality: ..."):
        # point at that key's line.
        head, sep, rest = message.partition(": ")
        refined = False
        if sep and line_of and " " not in head:
            deeper = full + tuple(head.split("."))
            if line_of(deeper) != line_of(full):
                full, message, refined = deeper, rest, True
        line = line_of(full) if line_of else None
        where = f"{path}:{line}" if line else f"{path}"
        variable = origin(full) if origin else None
        if variable:
            where = f"environment variable {variable}"
        key = ".".join(str(p) for p in full) or "(top level)"
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        got = error.get("input")
        quiet = refined or error["type"] in ("missing", "extra_forbidden")
        shown = "" if quiet else f" (got {got!r})"
        if isinstance(got, dict | list) and len(repr(got)) > 60:
            shown = ""
        lines.append(f"{where}: {key}: {message}{shown}")
    return "\n".join(lines)


class Environment(EnvSettingsSource):
    """pydantic-settings' reading of ``STATION_*`` variables from ``environ``, values read
    as YAML (``STATION_PLUGINS='[a, b]'``, ``STATION_STORAGE=/srv/station``)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(StationConfig)
        self.env_vars = parse_env_vars(
            environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name == "source":  # where the config came from, never a setting
            return None, field_name, False
        return super().get_field_value(field, field_name)

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        return _yaml(value)

    def __call__(self) -> dict[str, Any]:
        """The overrides; a plugin's options have no type to read a value by, so each one
        set by a variable of its own (``STATION_PLUGIN_OPTIONS__TAGS__MODALITIES='[CT]'``)
        is read as YAML too, as it would be in the file."""
        data = super().__call__()
        if isinstance(data.get("plugin_options"), Mapping):
            data["plugin_options"] = _yaml_leaves(data["plugin_options"])
        return data


def _yaml(value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value  # the model's validation names the variable and what is expected


def _yaml_leaves(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {key: _yaml_leaves(value) for key, value in node.items()}
    return _yaml(node) if isinstance(node, str) else node


def _override_keys(name: str) -> list[str] | None:
    """The key path an environment variable sets, or None when it is no override: only
    ``STATION_<KEY>...`` names count, so that ``STATION_CONFIG`` (the CLI's --config) or
    another program's ``STATION_*`` variable never makes the config invalid."""
    prefix = StationConfig.model_config.get("env_prefix", "")
    delimiter = StationConfig.model_config.get("env_nested_delimiter") or "__"
    if not name.upper().startswith(prefix.upper()):
        return None
    keys = name[len(prefix) :].lower().split(delimiter)
    return keys if keys[0] in StationConfig.model_fields and keys[0] != "source" else None


def _variable_behind(
    data: Mapping[str, Any], environ: Mapping[str, str]
) -> Callable[[tuple[Any, ...]], str | None]:
    """For a key path with a problem: the ``STATION_*`` variable that set it, or that made
    the section it lies in (``STATION_DESTINATIONS__PACS__PORT`` without a destination
    ``pacs`` in the file), else None."""
    variables = {name: keys for name in environ if (keys := _override_keys(name))}

    def in_file(path: Sequence[Any]) -> bool:
        node: Any = data
        for key in path:
            if not isinstance(node, Mapping) or str(key) not in node:
                return False
            node = node[str(key)]
        return True

    def behind(loc: tuple[Any, ...]) -> str | None:
        for name, keys in variables.items():
            common = 0
            while common < min(len(loc), len(keys)) and str(loc[common]) == keys[common]:
                common += 1
            if common and (common == len(keys) or not in_file(keys[:common])):
                return name
        return None

    return behind


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _resolve_paths(config: StationConfig, base: Path) -> StationConfig:
    def absolute(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    def tls_paths(tls: BaseModel) -> dict[str, Path]:
        names = ("certificate", "key", "ca")
        return {n: absolute(getattr(tls, n)) for n in names if getattr(tls, n) is not None}

    destinations: dict[str, DestinationConfig] = {}
    for name, dest in config.destinations.items():
        if isinstance(dest, FolderDestinationConfig):
            dest = dest.model_copy(update={"path": absolute(dest.path)})
        elif isinstance(dest, DicomDestinationConfig) and dest.tls is not None:
            dest = dest.model_copy(update={"tls": dest.tls.model_copy(update=tls_paths(dest.tls))})
        destinations[name] = dest
    listen = config.listen
    if listen.tls is not None:
        listen = listen.model_copy(
            update={"tls": listen.tls.model_copy(update=tls_paths(listen.tls))}
        )
    # A file or folder beside the config (``plugins: [plugins]``) is a path, not a module.
    plugins = tuple(
        str(absolute(Path(p))) if ("/" in p or p.endswith(".py") or (base / p).exists()) else p
        for p in config.plugins
    )
    watch = tuple(
        w.model_copy(
            update={"path": absolute(w.path), "move_to": absolute(w.move_to) if w.move_to else None}
        )
        for w in config.watch
    )
    return config.model_copy(
        update={
            "watch": watch,
            "listen": listen,
            "storage": config.storage.model_copy(update={"path": absolute(config.storage.path)}),
            "routes": absolute(config.routes) if config.routes else None,
            "destinations": destinations,
            "plugins": plugins,
        }
    )


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> StationConfig:
    """Load and validate the configuration; raise ConfigError naming every problem."""
    environ = os.environ if environ is None else environ
    data: Any = {}
    line_of = None
    if path is not None:
        data, line_of = load_yaml(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of keys, not a list or value"
            )
    overrides = Environment(environ)()
    if path is None:
        data = {"watch": [{"path": DEFAULT_DROPBOX}]}  # built-in defaults have a drop folder
    merged = _merge(data, overrides)
    source = str(path) if path else "built-in defaults"
    try:
        config = StationConfig.model_validate(merged)
    except ValidationError as exc:
        origin = _variable_behind(data, environ)
        raise ConfigError(format_validation_error(exc, source, line_of, origin=origin)) from exc
    base = path.resolve().parent if path else Path.cwd()
    return _resolve_paths(config, base).model_copy(update={"source": path})
