"""Commands that talk to DICOM peers or read files without a service: echo, send,
preview."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from station.cli.app import AsJson, ConfigOption, app, config_from, fail
from station.config import DicomDestinationConfig, StationConfig
from station.dicom.identify import identify
from station.dispatch.dicom import Peer, echo, store
from station.errors import ConfigError, RejectedInstance, SendError
from station.preview import render, route, summarize
from station.receive.inputs import input_files
from station.service import load_setup
from station.store.records import Instance


def _peer(dest: str, config: StationConfig, aet: str | None, calling: str | None) -> Peer:
    configured = config.destinations.get(dest)
    if isinstance(configured, DicomDestinationConfig):
        if aet:
            configured = configured.model_copy(update={"ae_title": aet})
        return Peer.configured(
            configured, calling or configured.calling_ae_title or config.ae_title
        )
    if configured is not None:
        raise fail(f"destination {dest!r} is of type {configured.type}, not dicom")
    host, _, port = dest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        names = [n for n, d in config.destinations.items() if isinstance(d, DicomDestinationConfig)]
        raise fail(
            f"{dest!r} is neither a configured dicom destination "
            f"({', '.join(names) or 'none configured'}) nor HOST:PORT"
        )
    return Peer(host, int(port), aet or "ANY-SCP", calling or config.ae_title)


AetOption = Annotated[str | None, typer.Option("--aet", help="Called AE title of the peer.")]


CallingOption = Annotated[
    str | None, typer.Option("--calling-aet", help="Our AE title (default: ae_title).")
]


@app.command("echo")
def echo_command(
    dest: Annotated[str, typer.Argument(help="Configured destination name or HOST:PORT.")],
    config: ConfigOption = None,
    aet: AetOption = None,
    calling_aet: CallingOption = None,
) -> None:
    """C-ECHO a DICOM destination."""
    peer = _peer(dest, config_from(config), aet, calling_aet)
    started = time.monotonic()
    try:
        echo(peer)
    except SendError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"C-ECHO {peer}: success ({(time.monotonic() - started) * 1000:.0f} ms)")


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or zip archives.")],
    to: Annotated[str, typer.Option("--to", help="Configured destination name or HOST:PORT.")],
    config: ConfigOption = None,
    aet: AetOption = None,
    calling_aet: CallingOption = None,
) -> None:
    """Send DICOM files as a C-STORE SCU (like storescu), checking every status."""
    peer = _peer(to, config_from(config), aet, calling_aet)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="station-send-") as scratch:
        instances = []
        for item in input_files(paths, Path(scratch), problems):
            try:
                h = identify(item.path)
            except RejectedInstance as exc:
                problems.append(f"{item.name}: {exc}")
                continue
            instances.append(
                Instance(
                    h.sop_uid,
                    h.study_uid,
                    h.series_uid,
                    h.sop_class,
                    h.transfer_syntax,
                    item.path,
                    item.path.stat().st_size,
                )
            )
        for problem in problems:
            typer.echo(f"skipped {problem}", err=True)
        if not instances:
            raise fail("nothing to send: no DICOM files found")
        try:
            result = store(peer, instances)
        except SendError as exc:
            raise fail(str(exc)) from None
    for uid, reason in result.failed.items():
        typer.echo(f"failed {uid}: {reason}", err=True)
    typer.echo(
        f"sent {result.sent} of {len(instances)} instances to {peer}"
        + (f"; {len(result.failed)} refused" if result.failed else "")
        + (f"; {len(problems)} skipped" if problems else "")
    )
    if result.failed or problems:
        raise typer.Exit(1)


@app.command()
def preview(
    paths: Annotated[list[Path], typer.Argument(help="Folders, zip archives or files.")],
    config: ConfigOption = None,
    as_json: AsJson = False,
    source: Annotated[str, typer.Option(help="Route as if received by: folder or scp.")] = "folder",
) -> None:
    """Show per series what PATH holds, which routes match and what transforms change."""
    settings = config_from(config)
    try:
        setup = load_setup(settings)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="station-preview-") as scratch:
        result = summarize(input_files(paths, Path(scratch), problems), problems)
        route(result, setup, source, ", ".join(map(str, paths)))
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        typer.echo(render(result))
    if not result.series:
        raise fail("no DICOM files found")
