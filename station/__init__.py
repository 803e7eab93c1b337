"""station: a DICOM data-transfer station.

``hookimpl`` marks a plugin's hook implementations (``from station import hookimpl``); the
hooks themselves are specified in ``station.routing.hookspecs``.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

PROJECT = "station"
hookimpl = pluggy.HookimplMarker(PROJECT)

try:
    __version__ = version("dicom-station")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
