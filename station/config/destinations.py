"""The destinations' models: DICOM peers, folders, and the types plugins provide."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from station.config.values import AETitle, Mode, Model, SyntaxPreference
from station.dicom.uids import DEFAULT_PREFERENCES


class RetryConfig(Model):
    """Retries of a transient failure, with exponential backoff and jitter."""

    max_attempts: int = Field(10, ge=1, description="attempts before the dead letter")
    initial_seconds: float = Field(5.0, ge=0, description="the first backoff")
    max_seconds: float = Field(900.0, ge=0, description="the longest backoff")


class DestinationTlsConfig(Model):
    """DICOM over TLS to a peer (TLS 1.2+, BCP 195 suites)."""

    ca: Path | None = Field(
        None, description="the peer's certificate is verified against it (none: system roots)"
    )
    certificate: Path | None = Field(
        None, description="ours, shown when the peer asks (mutual authentication)"
    )
    key: Path | None = Field(None, description="the key of `certificate`")
    check_hostname: bool = Field(True, description="the peer's certificate must name `host`")


class DicomDestinationConfig(Model):
    """A DICOM peer, sent to as a C-STORE SCU."""

    type: Literal["dicom"] = Field(description="`dicom`")
    host: str = Field(description="the peer's host name or address")
    port: int = Field(ge=1, le=65535, description="the peer's port")
    ae_title: AETitle = Field(description="the peer's (called) AE title")
    calling_ae_title: AETitle | None = Field(None, description="ours (none: `ae_title`)")
    timeout_seconds: float = Field(30.0, gt=0, description="network and DIMSE timeout")
    max_pdu_bytes: int = Field(4_194_304, ge=0, description="the largest PDU we accept")
    max_associations: int = Field(
        2,
        ge=1,
        le=64,
        description="associations opened to the peer at once, each sending its own series "
        "batch (1: one batch after the other)",
    )
    tls: DestinationTlsConfig | None = Field(None, description="none: plain TCP")
    retry: RetryConfig = Field(RetryConfig(), description="retries of transient failures")
    transfer_syntaxes: tuple[SyntaxPreference, ...] = Field(
        DEFAULT_PREFERENCES,
        min_length=1,
        description="most preferred first, UIDs or pydicom keywords, `stored` for the syntax "
        "an instance was received in; each instance is offered in those it can be converted "
        "to and goes in the first the peer accepts (README: Transcoding)",
    )
    allow_lossy: bool = Field(
        False,
        description="allow converting into a lossy syntax (JPEG-LS near-lossless, JPEG "
        "2000); without it such an entry of `transfer_syntaxes` is never used",
    )


class FolderDestinationConfig(Model):
    """A folder, written one file per instance. The files hold PHI: owner-only unless the
    config says otherwise."""

    type: Literal["folder"] = Field(description="`folder`")
    path: Path = Field(description="the folder written into")
    retry: RetryConfig = Field(RetryConfig(), description="retries of transient failures")
    file_mode: Mode = Field(
        0o600, description='the mode of files written, an octal string such as `"0640"`'
    )
    folder_mode: Mode = Field(0o700, description="the same, for folders created")


class PluginDestinationConfig(BaseModel):
    """A destination type provided by a plugin; the plugin's class validates the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = Field(description="a type a plugin provides")
    retry: RetryConfig = Field(RetryConfig(), description="retries of transient failures")


def _destination_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)
    return kind if kind in ("dicom", "folder") else "plugin"


DestinationConfig = Annotated[
    Annotated[DicomDestinationConfig, Tag("dicom")]
    | Annotated[FolderDestinationConfig, Tag("folder")]
    | Annotated[PluginDestinationConfig, Tag("plugin")],
    Discriminator(_destination_kind),
]
