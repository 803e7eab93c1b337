"""The ``station`` command line. Exit codes: 0 ok, 1 user or config error, 2 usage."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from station import __version__
from station.config import DicomDestinationConfig, StationConfig, load_config
from station.dicom.identify import identify
from station.dispatch.dicom import Peer, echo, store
from station.errors import (
    ConfigError,
    JournalError,
    RejectedInstance,
    SendError,
    StorageInUse,
)
from station.ops.install import hidden_paths, install_service
from station.ops.logs import LogFormat, setup_logging
from station.ops.preflight import port_problems, storage_problem
from station.ops.status import render_quarantine, render_status, status_report
from station.ops.systemd import Notifier
from station.ops.trace import render as render_trace
from station.ops.trace import trace
from station.preview import render, route, summarize
from station.receive.inputs import input_files
from station.scaffold import new_plugin
from station.service import Station, load_setup
from station.store.journal import Journal
from station.store.lock import StorageLock
from station.store.quarantine import Quarantine, QuarantineError
from station.store.records import Instance
from station.store.recovery import journal_path, rebuild, untrusted
from station.store.spool import Spool

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


def _config(path: Path | None) -> StationConfig:
    if path is not None and not path.exists():
        raise fail(f"{path}: no such config file")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _journal(config: StationConfig) -> Journal:
    """The journal for commands beside a running station: no lock taken, no spool touched,
    no schema change."""
    path = journal_path(config.storage.path)
    if not path.exists():
        raise fail(f"no journal at {path}: has the station run with this config?")
    try:
        return Journal(path, migrate=False)
    except JournalError as exc:
        raise fail(str(exc)) from None


@app.command()
def run(
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="human, or json: one JSON object per line (ts, level, logger, message, "
            "study_uid, series_uid, calling_ae)."
        ),
    ] = LogFormat.human,
    host: Annotated[
        str | None, typer.Option(help="Address the SCP listens on (overrides listen.host).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="SCP port, 0 for any free one (listen.port)."),
    ] = None,
    recover: Annotated[
        bool,
        typer.Option(
            "--recover",
            help="When the journal cannot be trusted (missing, empty, damaged) beside "
            "spooled data, rebuild it from the spool first, as `station recover` does.",
        ),
    ] = False,
) -> None:
    """Run the service: DICOM SCP, series assembly, routing, dispatch and /metrics.

    Under systemd (Type=notify) it reports READY once everything listens, its status, and
    watchdog pings while its loops turn."""
    setup_logging(log_level, log_format)
    # In JSON mode what it listens on is logged too, so that every line is JSON.
    say = logging.getLogger(__name__).info if log_format is LogFormat.json else typer.echo
    # The options are environment overrides, so that a reload (SIGHUP) keeps them too.
    for name, value in (("STATION_LISTEN__HOST", host), ("STATION_LISTEN__PORT", port)):
        if value is not None:
            os.environ[name] = str(value)
    settings = _config(config)
    notifier = Notifier()
    try:
        station = Station(settings, recover=recover)
        station.start()
    except (ConfigError, JournalError, StorageInUse) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot start: {exc}") from None
    stop, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    say(f"station {__version__} ({settings.source or 'built-in defaults'})")
    say(f"DICOM SCP {settings.ae_title} listening on {settings.listen.host}:{station.scp.port}")
    if station.scp.tls_port is not None:
        say(f"DICOM over TLS (BCP 195) on {settings.listen.host}:{station.scp.tls_port}")
    if station.http:
        say(f"metrics on http://{settings.metrics.host}:{station.http.port}/metrics")
    say(f"storage {settings.storage.path}")
    for watch in settings.watch:
        say(f"watching drop folder {watch.path} (after: {watch.after})")
    for name, dest in station.destinations.items():
        say(f"destination {name}: {getattr(dest, 'peer', None) or getattr(dest, 'root', '')}")
    sys.stdout.flush()
    notifier.ready(station.summary())
    notifier.supervise(station.stalled, station.summary)
    while not stop.wait(0.2):
        if reload.is_set():
            reload.clear()
            notifier.reloading()
            say("reloaded" if station.reload() else "reload refused (see the log)")
            notifier.ready(station.summary())
    say("stopping: finishing associations in progress")
    notifier.stopping("stopping: finishing associations in progress")
    station.stop()
    say("stopped")


@app.command()
def check(config: ConfigOption = None) -> None:
    """Validate the config, route files and plugins; every error names file, key and fix."""
    settings = _config(config)
    try:
        setup = load_setup(settings)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    running = StorageLock(settings.storage.path).holder()
    problems = [] if running else port_problems(settings)  # its own ports are in use
    problem = storage_problem(settings.storage.path)
    if problems or problem:
        raise fail("\n".join([*problems, *([problem] if problem else [])]))
    typer.echo(f"{settings.source or 'built-in defaults'}: ok")
    if running:
        typer.echo(f"  a station (PID {running}) runs on this storage: its ports not checked")
    typer.echo(f"  destinations: {', '.join(setup.destinations)}")
    typer.echo(f"  routes: {', '.join(r.name for r in setup.routes)}")
    typer.echo(f"  plugins: {', '.join(i.name for i in setup.plugins.describe()) or 'none'}")


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
    peer = _peer(dest, _config(config), aet, calling_aet)
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
    peer = _peer(to, _config(config), aet, calling_aet)
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
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    source: Annotated[str, typer.Option(help="Route as if received by: folder or scp.")] = "folder",
) -> None:
    """Show per series what PATH holds, which routes match and what transforms change."""
    settings = _config(config)
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


@app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Queues per destination, dead letters and quarantine with their reasons."""
    journal = _journal(_config(config))
    state = status_report(journal)
    journal.close()
    typer.echo(json.dumps(state, indent=2) if as_json else render_status(state))


@app.command()
def retry(
    config: ConfigOption = None,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    series: Annotated[str | None, typer.Option(help="Only this Series Instance UID.")] = None,
) -> None:
    """Re-queue dead-lettered deliveries (and re-route quarantined series)."""
    journal = _journal(_config(config))
    count = journal.retry_dead_letters(destination, series)
    journal.close()
    if not count:
        raise fail(
            "nothing to retry"
            + (f" for destination {destination}" if destination else "")
            + (f" for series {series}" if series else "")
        )
    typer.echo(f"re-queued {count}; a running station picks them up within a second")


quarantine_app = typer.Typer(help="Rejected inputs held in quarantine: list, release, discard.")
app.add_typer(quarantine_app, name="quarantine")
ItemIds = Annotated[list[int], typer.Argument(help="Item numbers (`station quarantine list`).")]


def _quarantine(config: Path | None) -> Quarantine:
    settings = _config(config)
    return Quarantine(settings.storage.path, _journal(settings))


@quarantine_app.command("list")
def quarantine_list(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    every: Annotated[
        bool, typer.Option("--all", help="Released, discarded and gone items too.")
    ] = False,
) -> None:
    """Rejected inputs held in quarantine, with reason, source and time."""
    quarantine = _quarantine(config)
    items = quarantine.items(None if every else "held")
    quarantine.journal.close()
    if as_json:
        typer.echo(json.dumps([item.as_dict() for item in items], indent=2))
    else:
        typer.echo(render_quarantine([item.as_dict() for item in items]) or "quarantine is empty")


@quarantine_app.command("release")
def quarantine_release(ids: ItemIds, config: ConfigOption = None) -> None:
    """Move items back to where they were found, for the drop folder to take again."""
    _resolve(ids, config, lambda q, i: f"released {i} to {q.release(i)}")


@quarantine_app.command("discard")
def quarantine_discard(ids: ItemIds, config: ConfigOption = None) -> None:
    """Delete items from quarantine for good."""

    def discard(quarantine: Quarantine, item_id: int) -> str:
        quarantine.discard(item_id)
        return f"discarded {item_id}"

    _resolve(ids, config, discard)


def _resolve(ids: list[int], config: Path | None, action: Callable[[Quarantine, int], str]) -> None:
    quarantine = _quarantine(config)
    errors = []
    for item_id in ids:
        try:
            typer.echo(action(quarantine, item_id))
        except QuarantineError as exc:
            errors.append(str(exc))
    quarantine.journal.close()
    if errors:
        raise fail("\n".join(errors))


@app.command()
def recover(config: ConfigOption = None) -> None:
    """Rebuild a missing, empty or damaged journal from the spool: every spooled instance
    that parses is journaled again as received (and delivered again: at-least-once). The
    old journal is kept aside under a timestamped name. Refused while a station runs."""
    settings = _config(config)
    storage = settings.storage.path
    try:
        lock = StorageLock(storage).acquire()
    except StorageInUse as exc:
        raise fail(f"{exc}; stop it before recovering") from None
    try:
        spool = Spool(storage, settings.storage.min_free_bytes)
        problem = untrusted(storage, spool)
        if problem is None:
            typer.echo(f"journal {journal_path(storage)} is sound: nothing to recover")
            return
        typer.echo(f"{problem}: rebuilding it from {spool.files}")
        done = rebuild(storage, spool)
    except JournalError as exc:
        raise fail(str(exc)) from None
    finally:
        lock.release()
    for path in done.kept_aside:
        typer.echo(f"kept the old journal as {path}")
    for path in done.unreadable:
        typer.echo(f"quarantined {path}: not a readable DICOM instance", err=True)
    typer.echo(f"re-queued {done.requeued} instances; `station run` routes and delivers them again")


plugins_app = typer.Typer(help="Loaded plugins; `station plugins new NAME` starts one.")
app.add_typer(plugins_app, name="plugins")


@plugins_app.callback(invoke_without_command=True)
def plugins(ctx: typer.Context, config: ConfigOption = None) -> None:
    """List loaded plugins, their hooks and where each came from."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        setup = load_setup(_config(config))
    except ConfigError as exc:
        raise fail(str(exc)) from None
    for info in setup.plugins.describe():
        typer.echo(f"{info.name}  ({info.origin})")
        for hook in info.hooks:
            typer.echo(f"    {hook}")
    if setup.plugins.transforms:
        typer.echo(f"transforms: {', '.join(sorted(setup.plugins.transforms))}")


@plugins_app.command("new")
def plugins_new(
    name: Annotated[str, typer.Argument(help="Plugin name: a Python module name.")],
    folder: Annotated[
        Path, typer.Option("--dir", file_okay=False, help="Where to write (default: here).")
    ] = Path("."),
) -> None:
    """Write a plugin module NAME.py and its test test_NAME.py, ready to edit."""
    try:
        plugin, test = new_plugin(name, folder)
    except (ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"wrote {plugin} and {test}")
    typer.echo(f"  test it:   python -m pytest {test}")
    typer.echo(f"  enable it: plugins: [{plugin.resolve()}] in station.yaml")
    typer.echo("  see it:    station plugins --config station.yaml; station preview FOLDER")


@app.command("trace")
def trace_command(
    uid: Annotated[str, typer.Argument(help="A Study, Series or SOP Instance UID.")],
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The whole history of a study, series or instance: received, hooks, routes, every
    dispatch attempt, and where it is now."""
    journal = _journal(_config(config))
    histories = trace(journal, uid)
    journal.close()
    if not histories:
        raise fail(f"{uid}: no study, series or (kept) instance with this UID in the journal")
    if as_json:
        typer.echo(json.dumps([h.as_dict() for h in histories], indent=2))
    else:
        typer.echo(render_trace(uid, histories))


@app.command("install-service")
def install_service_command(
    root: Annotated[
        Path, typer.Option(help="Install under this folder instead of / (packaging, tests).")
    ] = Path("/"),
) -> None:
    """Install the systemd unit, its user and folders, a config and example routes.

    An existing /etc/station/station.yaml or routes folder is kept as it is."""
    try:
        installed = install_service(root)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot install: {exc} (run it as root)") from None
    for item in installed:
        typer.echo(f"{item.action:<8} {item.path}")
    for path in hidden_paths():
        typer.echo(
            f"warning: the unit's ProtectHome=yes hides {path} from the service: install "
            "station outside /root and /home (e.g. in a venv under /opt/station)",
            err=True,
        )
    if root == Path("/"):
        typer.echo("next: systemd-sysusers && systemd-tmpfiles --create station.conf")
        typer.echo("      systemctl daemon-reload && systemctl enable --now station")


def main() -> None:
    app()
