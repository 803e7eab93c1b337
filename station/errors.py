"""The station's exceptions: a small hierarchy, each carrying a message a user can act on."""

from __future__ import annotations


class StationError(Exception):
    """Base class of every error the station raises on purpose."""


class ConfigError(StationError):
    """A configuration, route or plugin file is wrong; the message names file, key and fix."""


class RejectedInstance(StationError):
    """An incoming instance is refused; ``status`` is the DIMSE status to answer with."""

    def __init__(self, status: int, reason: str, message: str, incomplete: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.incomplete = incomplete  # cut short: it may still be being written


class SendError(StationError):
    """Sending to a destination failed."""


class TransientSendError(SendError):
    """Worth retrying later: peer down, association refused or aborted, out of resources."""


class PermanentSendError(SendError):
    """Retrying will not help: the peer refuses this data."""


class PluginError(StationError):
    """A plugin raised, timed out or returned the wrong type during a hook call."""

    def __init__(self, plugin: str, hook: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}, hook {hook}: {message}")
        self.plugin = plugin
        self.hook = hook


class JournalError(StationError):
    """The journal cannot be trusted (missing beside spooled data, unreadable, corrupt, or
    of a newer schema); the message names the file and what to run."""


class StorageInUse(StationError):
    """Another station holds the storage folder's lock."""
