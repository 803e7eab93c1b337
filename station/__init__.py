"""station: a DICOM data-transfer station."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dicom-station")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
