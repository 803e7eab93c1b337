"""The ``station`` command line: one module per command group, each adding its commands to
the one application (station.cli.app)."""

# Importing a command group adds its commands to ``app``.
from station.cli import inspect, plugins, quarantine, send, service  # noqa: F401
from station.cli.app import app


def main() -> None:
    app()
