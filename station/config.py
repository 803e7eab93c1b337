"""Configuration: one YAML file validated into frozen pydantic models.

Every value has a default, unknown keys are errors, relative paths are taken relative to the
config file, and ``STATION_*`` environment variables override the file
(``STATION_LISTEN__PORT=11113`` sets ``listen.port``; values are read as YAML).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)
from pydicom.uid import AllTransferSyntaxes

from station.errors import ConfigError

ENV_PREFIX = "STATION_"
DEFAULT_DESTINATION = "local-folder"
DEFAULT_DROPBOX = "dropbox"
DEFAULT_TIMEOUT_SECONDS = 30.0  # plugin_timeout_seconds: how long one hook call may take
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 printable chars, no backslash


def _ae_title(value: Any) -> Any:
    if isinstance(value, str) and (not _AE_TITLE.match(value) or not value.strip()):
        raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
    return value.strip() if isinstance(value, str) else value


AETitle = Annotated[str, BeforeValidator(_ae_title)]
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _uid(value: Any) -> Any:
    if isinstance(value, str) and (len(value) > 64 or not _UID.match(value)):
        raise ValueError("a UID is digits and dots, at most 64 characters, like 1.2.840.10008.1.2")
    return value


def _network(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(
                "an IP address or network (CIDR), like 10.0.0.7 or 10.0.0.0/24; "
                "host names are not resolved"
            ) from None
    return value


UID = Annotated[str, BeforeValidator(_uid)]
Network = Annotated[str, BeforeValidator(_network)]
# Every transfer syntax of the standard (pydicom's table): the station stores the data set
# as it came and forwards it in the same syntax, so it never needs to understand pixel data.
STANDARD_TRANSFER_SYNTAXES = tuple(str(uid) for uid in AllTransferSyntaxes)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeerConfig(Model):
    """A known calling AE: from these addresses only (none listed: from anywhere)."""

    hosts: tuple[Network, ...] = ()


class ListenTlsConfig(Model):
    """A second listener speaking DICOM over TLS (PS3.15 annex B, BCP 195)."""

    port: int = Field(2762, ge=0, le=65535)
    certificate: Path
    key: Path
    ca: Path | None = None  # verifies client certificates
    require_client_certificate: bool = False

    @field_validator("require_client_certificate")
    @classmethod
    def _needs_ca(cls, value: bool, info: Any) -> bool:
        if value and info.data.get("ca") is None:
            raise ValueError("require_client_certificate needs `ca` to verify them against")
        return value


class ListenConfig(Model):
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    allowed_calling_aes: tuple[AETitle, ...] = ()
    peers: dict[AETitle, PeerConfig] = {}
    check_called_ae: bool = True
    called_aes: tuple[AETitle, ...] = ()  # accepted called AE titles; empty: ae_title
    transfer_syntaxes: tuple[UID, ...] = Field(STANDARD_TRANSFER_SYNTAXES, min_length=1)
    max_associations: int = Field(16, ge=1, le=1000)
    max_associations_per_host: int = Field(8, ge=1, le=1000)
    max_pending_per_host: int = Field(8, ge=1, le=1000)
    max_pending: int = Field(256, ge=1, le=10000)
    request_timeout_seconds: float = Field(5.0, gt=0, le=300)
    idle_timeout_seconds: float = Field(60.0, gt=0, le=86400)
    max_pdu_bytes: int = Field(4_194_304, ge=0)
    tls: ListenTlsConfig | None = None
    # Receiver processes accepting on the port(s), each spooling and answering C-STOREs
    # itself (station/receive/workers.py); the limits above hold across all of them.
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)

    @field_validator("peers", mode="before")
    @classmethod
    def _peer_without_hosts(cls, value: Any) -> Any:
        """``SCANNER1:`` with nothing after it: a known AE, from any address."""
        if isinstance(value, Mapping):
            return {ae: {} if peer is None else peer for ae, peer in value.items()}
        return value

    @property
    def access_controlled(self) -> bool:
        return bool(self.allowed_calling_aes or self.peers)


@dataclass(frozen=True)
class ZipLimits:
    """How much one zip archive may hold (``watch.zip_max_*``; the same defaults for send
    and preview)."""

    max_files: int = 100_000
    max_bytes: int = 20 * 2**30
    max_ratio: float = 100.0


class WatchConfig(Model):
    """A drop folder: files and zip archives put there are ingested like received ones."""

    path: Path
    settle_seconds: float = Field(2.0, ge=0)
    after: Literal["delete", "move", "keep"] = "delete"
    move_to: Path | None = None
    recursive: bool = True
    polling: bool = False
    rescan_seconds: float = Field(30.0, gt=0)
    zip_max_bytes: int = Field(20 * 2**30, gt=0)
    zip_max_files: int = Field(100_000, gt=0)
    zip_max_ratio: float = Field(100.0, gt=1)
    ignore_suffixes: tuple[str, ...] = (".partial", ".part", ".tmp", ".filepart", ".crdownload")
    ready_marker: str | None = Field(None, min_length=1, pattern=r"^[^/\\]+$")
    incomplete_seconds: float = Field(600.0, gt=0)

    @property
    def done_folder(self) -> Path:
        """Where ``after: move`` puts ingested files."""
        return self.move_to or self.path / ".station-done"

    @property
    def zip_limits(self) -> ZipLimits:
        return ZipLimits(self.zip_max_files, self.zip_max_bytes, self.zip_max_ratio)


class StorageConfig(Model):
    path: Path = Path("station-data")
    retention_hours: float = Field(24.0, ge=0)
    min_free_bytes: int = Field(200_000_000, ge=0)

    @field_validator("min_free_bytes", mode="before")
    @classmethod
    def _accept_float_notation(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class SeriesConfig(Model):
    quiet_seconds: float = Field(10.0, gt=0)
    max_wait_seconds: float = Field(900.0, gt=0)


class RetryConfig(Model):
    max_attempts: int = Field(10, ge=1)
    initial_seconds: float = Field(5.0, ge=0)
    max_seconds: float = Field(900.0, ge=0)


class DestinationTlsConfig(Model):
    """DICOM over TLS to a peer: its certificate checked against ``ca`` (else the system's
    trusted roots), ours (``certificate``, ``key``) shown when the peer asks for one."""

    ca: Path | None = None
    certificate: Path | None = None
    key: Path | None = None
    check_hostname: bool = True


class DicomDestinationConfig(Model):
    type: Literal["dicom"]
    host: str
    port: int = Field(ge=1, le=65535)
    ae_title: AETitle
    calling_ae_title: AETitle | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    max_pdu_bytes: int = Field(4_194_304, ge=0)
    tls: DestinationTlsConfig | None = None
    retry: RetryConfig = RetryConfig()


def _mode(value: Any) -> Any:
    """A permission mode: an octal string ("0640", "640") or the number YAML made of an
    unquoted 0640; rwx bits only (no setuid, setgid or sticky bit)."""
    if isinstance(value, str):
        if not re.fullmatch(r"0?[0-7]{3}", value.strip()):
            raise ValueError(f'{value!r} is not an octal permission mode such as "0640"')
        value = int(value, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError(f'{value!r} is not a permission mode between "0000" and "0777"')
    return value


Mode = Annotated[int, BeforeValidator(_mode)]


class FolderDestinationConfig(Model):
    type: Literal["folder"]
    path: Path
    retry: RetryConfig = RetryConfig()
    # The files hold PHI: owner-only unless the config says otherwise.
    file_mode: Mode = 0o600
    folder_mode: Mode = 0o700


class PluginDestinationConfig(BaseModel):
    """A destination type provided by a plugin; the plugin's class validates the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str
    retry: RetryConfig = RetryConfig()


def _destination_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)
    return kind if kind in ("dicom", "folder") else "plugin"


DestinationConfig = Annotated[
    Annotated[DicomDestinationConfig, Tag("dicom")]
    | Annotated[FolderDestinationConfig, Tag("folder")]
    | Annotated[PluginDestinationConfig, Tag("plugin")],
    Discriminator(_destination_kind),
]


class MetricsConfig(Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class StationConfig(Model):
    ae_title: AETitle = "STATION"
    listen: ListenConfig = ListenConfig.model_validate({})
    watch: tuple[WatchConfig, ...] = ()
    storage: StorageConfig = StorageConfig()
    series: SeriesConfig = SeriesConfig()
    plugins: tuple[str, ...] = ()
    blocked_plugins: tuple[str, ...] = ()
    plugin_options: dict[str, dict[str, Any]] = {}
    plugin_timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=3600)
    routes: Path | None = None
    destinations: dict[str, DestinationConfig] = {}
    metrics: MetricsConfig = MetricsConfig()
    source: Path | None = Field(None, exclude=True)

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str | Path) else value

    @field_validator("destinations", mode="before")
    @classmethod
    def _destination_names(cls, value: Any) -> Any:
        for name in value if isinstance(value, Mapping) else ():
            if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]+$", name):
                raise ValueError(f"destination name {name!r}: use letters, digits, '-', '_', '.'")
        return value


def default_destinations(config: StationConfig) -> dict[str, DestinationConfig]:
    """The destinations in force: the configured ones, or one folder under the storage."""
    if config.destinations:
        return dict(config.destinations)
    outgoing = config.storage.path / "outgoing"
    return {DEFAULT_DESTINATION: FolderDestinationConfig(type="folder", path=outgoing)}


# --- YAML with line numbers -------------------------------------------------------------


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


def _override_keys(name: str) -> list[str] | None:
    """The key path an environment variable sets, or None when it is no override: only
    ``STATION_<SECTION>...`` names count, so that ``STATION_CONFIG`` (the CLI's --config)
    or another program's ``STATION_*`` variable never makes the config invalid."""
    if not name.startswith(ENV_PREFIX):
        return None
    keys = name[len(ENV_PREFIX) :].lower().split("__")
    return keys if keys[0] in StationConfig.model_fields and keys[0] != "source" else None


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        keys = _override_keys(name)
        if keys is None:
            continue
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        target = overrides
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return overrides


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
    overrides = _env_overrides(environ)
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
