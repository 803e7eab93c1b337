"""The ``station`` command line's application and what its commands share: the config
option, errors as exit codes, the journal read beside a running station.

Exit codes: 0 ok, 1 user or config error, 2 usage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from station import __version__
from station.config import StationConfig, load_config
from station.errors import ConfigError, JournalError
from station.store.journal import Journal
from station.store.journal.sqlite import SQLiteJournal
from station.store.recovery import journal_path

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="station: receive DICOM, route it per series, forward it reliably.",
)


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="STATION_CONFIG",
        dir_okay=False,
        help="YAML config file (default: built-in defaults).",
    ),
]


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"station {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """station: receive DICOM, route it per series, forward it reliably."""


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def config_from(path: Path | None) -> StationConfig:
    if path is not None and not path.exists():
        raise fail(f"{path}: no such config file")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def journal_of(config: StationConfig) -> Journal:
    """The journal for commands beside a running station: no lock taken, no spool touched,
    no schema change."""
    path = journal_path(config.storage.path)
    if not path.exists():
        raise fail(f"no journal at {path}: has the station run with this config?")
    try:
        return SQLiteJournal(path, migrate=False)
    except JournalError as exc:
        raise fail(str(exc)) from None


AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
