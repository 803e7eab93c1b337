"""The configuration's models: one frozen pydantic model per section, unknown keys refused.

Each field's ``description`` is its documentation: docs/configuration.md is rendered from
these models (``python -m station.config.reference``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydicom.uid import AllTransferSyntaxes

from station.config.destinations import (
    DestinationConfig,
    FolderDestinationConfig,
)
from station.config.values import UID, AETitle, Model, Network

DEFAULT_DESTINATION = "local-folder"
DEFAULT_DROPBOX = "dropbox"
DEFAULT_TIMEOUT_SECONDS = 30.0  # plugin_timeout_seconds: how long one hook call may take
# Every transfer syntax of the standard (pydicom's table): the station stores the data set
# as it came and forwards it in the same syntax, so it never needs to understand pixel data.
STANDARD_TRANSFER_SYNTAXES = tuple(str(uid) for uid in AllTransferSyntaxes)


class PeerConfig(Model):
    """A known calling AE: from these addresses only (none listed: from anywhere)."""

    hosts: tuple[Network, ...] = Field(
        (),
        description="IP addresses or networks (CIDR, e.g. `10.0.0.0/24`; not host names) this "
        "AE may call from; none (`SCANNER1:`): from anywhere. The right AE from another "
        "address is rejected like an unknown one",
    )


class ListenTlsConfig(Model):
    """A second listener speaking DICOM over TLS (PS3.15 annex B, BCP 195 suites, TLS 1.2+;
    docs/conformance.md)."""

    port: int = Field(2762, ge=0, le=65535, description="the TLS listener's port")
    certificate: Path = Field(description="the station's certificate (PEM)")
    key: Path = Field(description="its private key (PEM)")
    ca: Path | None = Field(None, description="verifies client certificates")
    require_client_certificate: bool = Field(
        False, description="refuse clients without a valid certificate (mutual authentication)"
    )

    @field_validator("require_client_certificate")
    @classmethod
    def _needs_ca(cls, value: bool, info: Any) -> bool:
        if value and info.data.get("ca") is None:
            raise ValueError("require_client_certificate needs `ca` to verify them against")
        return value


class ListenConfig(Model):
    """The C-STORE SCP: where it listens, whom it accepts, how much it takes at once."""

    host: str = Field("0.0.0.0", description="the address the SCP listens on")
    port: int = Field(11112, ge=0, le=65535, description="0: any free port, printed at start")
    allowed_calling_aes: tuple[AETitle, ...] = Field(
        (),
        description="calling AE titles accepted from any address; with this or `peers` set, "
        "any other calling AE is rejected at association (reason 3, calling AE not recognised)",
    )
    peers: dict[AETitle, PeerConfig] = Field(
        {}, description="known calling AEs and the addresses each may call from"
    )
    check_called_ae: bool = Field(
        True,
        description="the called AE title of a request must be one of `called_aes`, else it is "
        "rejected (reason 7, called AE not recognised)",
    )
    called_aes: tuple[AETitle, ...] = Field(
        (), description="accepted called AE titles; none: `ae_title`"
    )
    transfer_syntaxes: tuple[UID, ...] = Field(
        STANDARD_TRANSFER_SYNTAXES,
        min_length=1,
        description="the syntaxes accepted (default: every transfer syntax of the standard, "
        "docs/conformance.md); each context in the first one the sender proposed from this "
        "list; a context proposing none of them is refused (result 4)",
    )
    max_associations: int = Field(
        16,
        ge=1,
        le=1000,
        description="concurrent inbound associations (then rejected transiently, reason 2)",
    )
    max_associations_per_host: int = Field(
        8, ge=1, le=1000, description="concurrent associations from one IP address"
    )
    max_pending_per_host: int = Field(
        8,
        ge=1,
        le=1000,
        description="connections not yet associated (TLS handshake, A-ASSOCIATE-RQ) from one "
        "IP address; further ones are closed at once",
    )
    max_pending: int = Field(
        256, ge=1, le=10000, description="connections not yet associated, from all addresses"
    )
    request_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="the ARTIM: a new connection must complete its TLS handshake and its whole "
        "A-ASSOCIATE-RQ within this, else it is closed",
    )
    idle_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="an association that sends nothing for this long is aborted (A-ABORT)",
    )
    max_pdu_bytes: int = Field(
        4_194_304, ge=0, description="the largest P-DATA-TF announced (0: no limit)"
    )
    tls: ListenTlsConfig | None = Field(None, description="a second listener, over TLS")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="receiver processes accepting on the port(s), each spooling and answering "
        "C-STOREs itself; the limits above hold across all of them (default: one per core)",
    )

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
    """A drop folder: files and zip archives put there are ingested like received ones
    (README, "Drop folders")."""

    path: Path = Field(description="the folder watched")
    settle_seconds: float = Field(
        2.0, ge=0, description="unchanged this long (after its writer closed it) before taken"
    )
    after: Literal["delete", "move", "keep"] = Field(
        "delete", description="what becomes of a file once it is safely in the spool"
    )
    move_to: Path | None = Field(
        None, description="where `after: move` puts files (none: `<path>/.station-done`)"
    )
    recursive: bool = Field(True, description="watch sub-folders too")
    polling: bool = Field(
        False, description="poll instead of inotify: for network shares, where inotify is silent"
    )
    rescan_seconds: float = Field(
        30.0, gt=0, description="a full rescan catches anything the watcher missed"
    )
    zip_max_bytes: int = Field(20 * 2**30, gt=0, description="bytes one zip archive may inflate to")
    zip_max_files: int = Field(100_000, gt=0, description="members of one zip archive")
    zip_max_ratio: float = Field(
        100.0,
        gt=1,
        description="inflated / compressed, per member and per archive (above 1 MiB)",
    )
    ignore_suffixes: tuple[str, ...] = Field(
        (".partial", ".part", ".tmp", ".filepart", ".crdownload"),
        description="names ending so are never taken (a writer renames them when done)",
    )
    ready_marker: str | None = Field(
        None,
        min_length=1,
        pattern=r"^[^/\\]+$",
        description="e.g. `READY`: a folder's files are taken only once this file is in it; "
        "the station removes it once everything under the folder is taken",
    )
    incomplete_seconds: float = Field(
        600.0, gt=0, description="a cut-short file left unchanged this long goes to quarantine"
    )

    @property
    def done_folder(self) -> Path:
        """Where ``after: move`` puts ingested files."""
        return self.move_to or self.path / ".station-done"

    @property
    def zip_limits(self) -> ZipLimits:
        return ZipLimits(self.zip_max_files, self.zip_max_bytes, self.zip_max_ratio)


class StorageConfig(Model):
    """Where the spool, journal and quarantine live; `storage: PATH` is short for
    `storage: {path: PATH}`."""

    path: Path = Field(Path("station-data"), description="the storage folder")
    retention_hours: float = Field(
        24.0,
        ge=0,
        description="delivered series stay in the spool this long, for `station retry --series`",
    )
    min_free_bytes: int = Field(
        200_000_000,
        ge=0,
        description="below this free space new instances are refused with 0xA700 (never below "
        "256 KiB, kept for the journal); float notation such as `2e9` is accepted",
    )

    free_files: int = Field(
        2048,
        ge=0,
        description="empty spool files each receiver makes ahead, as it starts and whenever "
        "half are taken: a burst of up to this many instances pays no file creation on its way "
        "in; 0 makes them when needed, a few at a time",
    )

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
    """When a series batch is complete."""

    quiet_seconds: float = Field(10.0, gt=0, description="this long without a new instance")
    max_wait_seconds: float = Field(900.0, gt=0, description="or this long after its first one")


class MetricsConfig(Model):
    """The HTTP endpoint serving `/metrics` (Prometheus) and `/healthz` (JSON)."""

    enabled: bool = Field(True, description="serve it")
    host: str = Field("127.0.0.1", description="the address it listens on")
    port: int = Field(9108, ge=0, le=65535, description="its port (0: any free port)")


class StationConfig(BaseSettings):
    """The whole file. `STATION_*` environment variables override its keys (read by
    station/config/load.py)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix="STATION_",
        env_nested_delimiter="__",
        env_parse_none_str="null",
    )

    ae_title: AETitle = Field(
        "STATION", description="our AE title, also the calling AE title when sending"
    )
    listen: ListenConfig = Field(ListenConfig.model_validate({}), description="the SCP")
    watch: tuple[WatchConfig, ...] = Field(
        (), description="drop folders (built-in defaults, without a file: `./dropbox`)"
    )
    storage: StorageConfig = Field(StorageConfig(), description="spool, journal, quarantine")
    series: SeriesConfig = Field(SeriesConfig(), description="series completion")
    plugins: tuple[str, ...] = Field(
        (),
        description="plugin files, folders or module names (beside the `station.plugins` "
        "entry points)",
    )
    blocked_plugins: tuple[str, ...] = Field((), description="plugin names not to load")
    plugin_options: dict[str, dict[str, Any]] = Field(
        {}, description="per plugin name: options handed to its `station_configure` hook"
    )
    plugin_timeout_seconds: float = Field(
        DEFAULT_TIMEOUT_SECONDS,
        gt=0,
        le=3600,
        description="time limit of each plugin hook call; a series whose hook overruns it "
        "goes to quarantine",
    )
    routing_workers: int = Field(
        4,
        ge=1,
        le=64,
        description="series decided at the same time (their hooks run on these workers): "
        "a slow plugin holds up one worker, the others route other series",
    )
    routes: Path | None = Field(
        None,
        description="a folder of `*.yaml` route files (read in name order) or one file; none: "
        "every series goes to every destination",
    )
    destinations: dict[str, DestinationConfig] = Field(
        {},
        description="by name (letters, digits, `-`, `_`, `.`); none: the folder "
        "`<storage>/outgoing`",
    )
    metrics: MetricsConfig = Field(MetricsConfig(), description="`/metrics` and `/healthz`")
    source: Path | None = Field(None, exclude=True, description="the file this came from")

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
