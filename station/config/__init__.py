"""Configuration: one YAML file validated into frozen pydantic models.

Every value has a default, unknown keys are errors, relative paths are taken relative to the
config file, and ``STATION_*`` environment variables override the file
(``STATION_LISTEN__PORT=11113`` sets ``listen.port``; values are read as YAML). The models
live in ``models`` and ``destinations``, their loading in ``load``; docs/configuration.md
is rendered from the models by ``reference``.
"""

from station.config.destinations import (
    DestinationConfig,
    DicomDestinationConfig,
    FolderDestinationConfig,
    PluginDestinationConfig,
    RetryConfig,
)
from station.config.load import format_validation_error, load_config, load_yaml
from station.config.models import (
    DEFAULT_DESTINATION,
    DEFAULT_TIMEOUT_SECONDS,
    ListenConfig,
    ListenTlsConfig,
    StationConfig,
    WatchConfig,
    ZipLimits,
    default_destinations,
)

__all__ = [
    "DEFAULT_DESTINATION",
    "DEFAULT_TIMEOUT_SECONDS",
    "DestinationConfig",
    "DicomDestinationConfig",
    "FolderDestinationConfig",
    "ListenConfig",
    "ListenTlsConfig",
    "PluginDestinationConfig",
    "RetryConfig",
    "StationConfig",
    "WatchConfig",
    "ZipLimits",
    "default_destinations",
    "format_validation_error",
    "load_config",
    "load_yaml",
]
