"""Commands that run, check, recover and install the service."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from station import __version__
from station.cli.app import ConfigOption, app, config_from, fail
from station.errors import ConfigError, JournalError, StorageInUse
from station.ops.install import hidden_paths, install_service
from station.ops.logs import LogFormat, setup_logging
from station.ops.preflight import port_problems, storage_problem
from station.ops.systemd import Notifier
from station.service import Station, load_setup
from station.store.lock import StorageLock
from station.store.recovery import journal_path, rebuild, untrusted
from station.store.spool import Spool


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
    trace_hooks: Annotated[
        bool,
        typer.Option(
            "--trace-hooks",
            help="Log every plugin hook call, with its arguments and result (pluggy's "
            "tracing), as DEBUG records of the logger station.hooks, shown whatever "
            "--log-level says (on standard error, or as JSON with --log-format json).",
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
    settings = config_from(config)
    notifier = Notifier()
    try:
        station = Station(settings, recover=recover, trace_hooks=_hook_tracer(trace_hooks))
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
    receivers = station.receivers
    say(f"DICOM SCP {settings.ae_title} listening on {settings.listen.host}:{receivers.port}")
    if receivers.tls_port is not None:
        say(f"DICOM over TLS (BCP 195) on {settings.listen.host}:{receivers.tls_port}")
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


def _hook_tracer(enabled: bool) -> Callable[[str], None] | None:
    """What ``--trace-hooks`` hands pluggy's trace lines to."""
    if not enabled:
        return None
    hooks = logging.getLogger("station.hooks")
    hooks.setLevel(logging.DEBUG)
    return lambda text: hooks.debug("%s", text.rstrip())


@app.command()
def check(config: ConfigOption = None) -> None:
    """Validate the config, route files and plugins; every error names file, key and fix."""
    settings = config_from(config)
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


@app.command()
def recover(config: ConfigOption = None) -> None:
    """Rebuild a missing, empty or damaged journal from the spool: every spooled instance
    that parses is journaled again as received (and delivered again: at-least-once). The
    old journal is kept aside under a timestamped name. Refused while a station runs."""
    settings = config_from(config)
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
