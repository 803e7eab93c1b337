"""station: a DICOM data-transfer station.

``hookimpl`` marks a plugin's hook implementations (``from station import hookimpl``);
``hookspec`` marks the specifications, which are in ``station.routing.hookspecs``.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

PROJECT = "station"
hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

try:
    __version__ = version("dicom-station")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
