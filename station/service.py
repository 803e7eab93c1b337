"""Wires the stages: SCP -> spool + journal -> assembler -> routing workers (hooks, routes)
-> dispatcher; metrics."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from station.config import (
    DestinationConfig,
    DicomDestinationConfig,
    PluginDestinationConfig,
    RetryConfig,
    StationConfig,
    default_destinations,
    load_config,
)
from station.dicom.tls import client_context, server_context
from station.dispatch.base import Destination
from station.dispatch.dispatcher import Dispatcher, build_destination
from station.errors import ConfigError
from station.ops.metrics import Metrics, MetricsServer
from station.ops.preflight import bind_problem, storage_problem
from station.receive.folder import DropFolders
from station.receive.ingest import Ingestor
from station.receive.intake import Intake
from station.receive.workers import ReceiverFailed, Receivers
from station.routing.plugins import Plugins
from station.routing.router import Router
from station.routing.routes import Route, check_references, load_routes
from station.routing.workers import RoutingWorkers
from station.series import Assembler
from station.store.lock import StorageLock
from station.store.recovery import open_journal, rebuild, untrusted
from station.store.spool import Spool
from station.store.states import DeliveryState

log = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 1.0
# Settings a reload cannot change in a running station (sockets, files, workers own them).
RESTART_KEYS = ("ae_title", "listen", "watch", "storage", "series", "destinations", "metrics")
RETENTION_CHECK_SECONDS = 60.0
# SIGTERM: Station.stop() returns within this; TimeoutStopSec= of systemd/station.service
# must be longer (tests/test_service_ops.py checks it).
STOP_SECONDS = 45.0
ROUTING_STOP_SECONDS = 10.0
SCP_DRAIN_SECONDS = 20.0
DROP_FOLDER_STOP_SECONDS = 10.0


@dataclass(frozen=True)
class Setup:
    """Everything a configuration names, loaded and cross-checked (no side effects)."""

    config: StationConfig
    plugins: Plugins
    routes: list[Route]
    destinations: dict[str, DestinationConfig]


def load_setup(
    config: StationConfig, plugins: Plugins | None = None, metrics: Metrics | None = None
) -> Setup:
    """Load plugins and routes and check every name they use; raise ConfigError."""
    plugins = plugins or Plugins(
        config.plugins,
        config.blocked_plugins,
        metrics,
        options=config.plugin_options,
        options_source=str(config.source or "built-in defaults"),
        timeout_seconds=config.plugin_timeout_seconds,
    )
    destinations = default_destinations(config)
    problems = []
    for name, dest in destinations.items():
        if isinstance(dest, PluginDestinationConfig) and dest.type not in plugins.destination_types:
            known = ", ".join(["dicom", "folder", *sorted(plugins.destination_types)])
            problems.append(
                f"{config.source or 'config'}: destinations.{name}.type: "
                f"unknown destination type {dest.type!r} (known: {known})"
            )
    if config.routes is not None:
        routes = load_routes(config.routes)
    else:
        routes = [Route(name="default", destinations=list(destinations), source_file="built-in")]
    problems += check_references(routes, destinations, plugins.transforms)
    problems += _tls_problems(config, destinations)
    if problems:
        raise ConfigError("\n".join(problems))
    return Setup(config, plugins, routes, destinations)


def _tls_problems(config: StationConfig, destinations: Mapping[str, object]) -> list[str]:
    """Load every TLS certificate, key and CA the config names, so that `station check`
    reports a missing or unreadable one instead of the service failing to start."""
    where = config.source or "config"
    problems = []
    tls = config.listen.tls
    if tls is not None:
        try:
            server_context(tls.certificate, tls.key, tls.ca, tls.require_client_certificate)
        except ConfigError as exc:
            problems.append(f"{where}: listen.tls: {exc}")
    for name, dest in destinations.items():
        if isinstance(dest, DicomDestinationConfig) and dest.tls is not None:
            t = dest.tls
            try:
                client_context(t.ca, t.certificate, t.key, t.check_hostname)
            except ConfigError as exc:
                problems.append(f"{where}: destinations.{name}.tls: {exc}")
    return problems


class Station:
    """One running station. ``start()`` then ``stop()``; everything else is owned here."""

    def __init__(
        self,
        config: StationConfig,
        plugins: Plugins | None = None,
        recover: bool = False,
        trace_hooks: Callable[[str], None] | None = None,
    ) -> None:
        """Load everything, take the storage's lock (StorageInUse when another station
        has it) and open the journal, checked (JournalError when it cannot be trusted;
        with ``recover`` it is first rebuilt from the spool in that case). ``trace_hooks``
        receives pluggy's trace of every hook call (``station run --trace-hooks``)."""
        self.config = config
        self.metrics = Metrics()
        self.trace_hooks = trace_hooks
        setup = load_setup(config, plugins, self.metrics)
        self.plugins = setup.plugins
        self.plugins.metrics = self.metrics
        if trace_hooks:
            self.plugins.trace(trace_hooks)
        self.routes = setup.routes
        storage = config.storage.path
        problem = storage_problem(storage)
        if problem:
            raise ConfigError(problem)
        self.lock = StorageLock(storage).acquire()
        try:
            self.spool = Spool(storage, config.storage.min_free_bytes, config.storage.free_files)
            if recover and (problem := untrusted(storage, self.spool)):
                done = rebuild(storage, self.spool)
                log.warning(
                    "%s: rebuilt the journal from the spool: %d instances re-queued, "
                    "%d unreadable files quarantined; the old journal is kept as %s",
                    problem,
                    done.requeued,
                    len(done.unreadable),
                    ", ".join(map(str, done.kept_aside)) or "-",
                )
            hint = "station recover" + (f" --config {config.source}" if config.source else "")
            self.journal = open_journal(storage, self.spool, hint)
        except (OSError, sqlite3.Error) as exc:
            self.lock.release()
            raise ConfigError(f"storage {storage}: cannot be set up: {exc}") from exc
        except BaseException:
            self.lock.release()
            raise
        self.metrics.spool_min_free_bytes.set(config.storage.min_free_bytes)
        self.destinations: dict[str, Destination] = {
            name: build_destination(name, dest, self.plugins.destination_types, config.ae_title)
            for name, dest in setup.destinations.items()
        }
        retries: Mapping[str, RetryConfig] = {n: d.retry for n, d in setup.destinations.items()}
        workers = {
            n: d.max_associations
            for n, d in setup.destinations.items()
            if isinstance(d, DicomDestinationConfig)
        }
        self.metrics.declare_destinations(self.destinations)
        self.router = Router(
            self.journal, self.plugins, self.routes, self.destinations, self.metrics
        )
        self.dispatcher = Dispatcher(
            self.journal, self.destinations, retries, self.plugins, self.metrics, workers
        )
        self.routing = RoutingWorkers(config.routing_workers, self._complete)
        self.assembler = Assembler(
            self.journal,
            config.series.quiet_seconds,
            config.series.max_wait_seconds,
            self.routing.submit,
            on_closed=self.metrics.series_completed.inc,
        )
        intake = Intake(self.spool, self.journal, self.metrics)
        self.receivers = Receivers(config, self.metrics, storage / "run", SCP_DRAIN_SECONDS)
        self.ingestor = Ingestor(intake, config.ae_title)
        self.drop_folders = DropFolders(config.watch, self.ingestor)
        self.http: MetricsServer | None = None
        if config.metrics.enabled:
            host, port = config.metrics.host, config.metrics.port
            try:
                self.http = MetricsServer(self.metrics, host, port, self.health)
            except OSError as exc:
                raise ConfigError(bind_problem("metrics.port", host, port, exc)) from exc
        self._stop = threading.Event()
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="housekeeping", daemon=True
        )
        self.started = False

    def _complete(self, batch_id: int) -> None:
        """Route a complete batch (on a routing worker) and wake its destinations."""
        decision = self.router.route(batch_id)
        for destination, _routes, _steps in decision.deliveries if decision else ():
            self.dispatcher.wake(destination)

    def reload(self) -> bool:
        """SIGHUP: load the config file again and put its routes, plugins and plugin
        options in force for the batches routed from now on. Associations, transfers and
        deliveries in progress are not touched. A broken new file is reported and the
        running configuration stays; settings that need a restart are named."""
        try:
            config = load_config(self.config.source)
            setup = load_setup(config, metrics=self.metrics)
            problems = check_references(setup.routes, self.destinations, setup.plugins.transforms)
            if problems:
                raise ConfigError("\n".join(problems))
        except ConfigError as exc:
            log.error("reload refused; the running configuration stays in force:\n%s", exc)
            return False
        restart = [key for key in RESTART_KEYS if getattr(config, key) != getattr(self.config, key)]
        if restart:
            log.warning(
                "reload: %s changed; that takes effect at the next restart", ", ".join(restart)
            )
        if self.trace_hooks:
            setup.plugins.trace(self.trace_hooks)
        self.plugins = setup.plugins
        self.routes = setup.routes
        self.router.use(setup.plugins, setup.routes)
        self.dispatcher.plugins = setup.plugins
        log.info(
            "reloaded %s: routes %s; plugins %s",
            config.source or "built-in defaults",
            ", ".join(r.name for r in setup.routes),
            ", ".join(i.name for i in setup.plugins.describe()) or "none",
        )
        return True

    def remove_unacknowledged(self) -> None:
        """After a restart: drop files that were never acknowledged (the journal, checked
        when opened, does not know them); the receivers take over the free files made
        ahead. Batches left open or complete and pending deliveries continue by themselves
        from the journal."""
        removed, free = self.spool.remove_orphans(self.journal.known_paths())
        self.receivers.adopt(free)
        if removed:
            log.info("removed %d spool files that were never acknowledged", removed)
        adopted = self.ingestor.quarantine.adopt_orphans()
        if adopted:
            log.warning("journaled %d quarantined files that had no record", adopted)

    def start(self) -> None:
        self.remove_unacknowledged()
        try:  # first: a port in use stops the start before any worker runs
            self.receivers.start()
        except OSError as exc:
            listen = self.config.listen
            raise ConfigError(bind_problem("listen.port", listen.host, listen.port, exc)) from exc
        except ReceiverFailed as exc:
            raise ConfigError(f"cannot start the receivers: {exc}") from exc
        if self.http:
            self.http.start()
        self.dispatcher.start()
        self.routing.start()
        self.assembler.start()
        if self.config.watch:
            self.drop_folders.start()
        self._housekeeper.start()
        self.started = True

    def stop(self) -> None:
        """SIGTERM: take no new files or associations, let the associations in progress
        finish (SCP_DRAIN_SECONDS at most), let each routing worker finish the batch it is
        deciding (ROUTING_STOP_SECONDS at most) and each destination the batch it is
        sending. Whatever is left stays in the journal and continues at the next start.
        Returns within STOP_SECONDS."""
        deadline = time.monotonic() + STOP_SECONDS
        self._stop.set()
        if self.config.watch:
            self.drop_folders.stop(DROP_FOLDER_STOP_SECONDS)
        self.receivers.stop(SCP_DRAIN_SECONDS)
        self.assembler.stop()
        routing = self.routing.stop(ROUTING_STOP_SECONDS)
        sending = self.dispatcher.stop(max(0.0, deadline - time.monotonic()))
        if self._housekeeper.is_alive():
            self._housekeeper.join(HOUSEKEEPING_SECONDS)
        if self.http:
            self.http.stop()
        if routing:  # their batches stay complete: routed again next time
            log.warning("stopping while %s still wait for a hook", ", ".join(routing))
        if sending:  # their deliveries stay pending: sent again (at least once) next time
            log.warning("stopping while still sending to %s", ", ".join(sending))
        if routing or sending:
            return  # the lock goes with the process, once those threads are cut off
        self.journal.close()
        self.lock.release()

    def stalled(self, max_age: float) -> str | None:
        """What has stopped working, for the systemd watchdog: series assembly not turning
        for ``max_age`` seconds, or a routing or dispatch worker or a receiver process that
        ended for good; None when all is well."""
        problem = self.receivers.ended()
        if problem:
            return problem
        idle = self.assembler.idle_for()
        if idle > max_age:
            return f"series assembly has not turned for {idle:.0f} s"
        if ended := self.routing.ended():
            return f"routing worker ended: {', '.join(ended)}"
        ended = self.dispatcher.ended_workers()
        if ended:
            return f"dispatch worker ended: {', '.join(ended)}"
        return None

    def summary(self) -> str:
        """One line for systemd's STATUS=: what listens, what is in progress and queued."""
        counts = self.journal.queue_counts()
        queued = sum(n for (_, state), n in counts.items() if state == DeliveryState.PENDING)
        dead = sum(n for (_, state), n in counts.items() if state == DeliveryState.DEAD_LETTER)
        associations = self.metrics.value("station_associations_active")
        return (
            f"SCP {self.config.ae_title} on port {self.receivers.port};"
            f" {associations:.0f} associations;"
            f" {queued} series queued; {dead} dead letters"
        )

    def health(self) -> dict[str, Any]:
        ok = self.started and not self._stop.is_set() and self.receivers.alive()
        return {"ok": ok, "ae_title": self.config.ae_title, "dicom_port": self.receivers.port}

    def update_gauges(self) -> None:
        counts = self.journal.queue_counts()
        for name in self.destinations:
            pending = counts.get((name, DeliveryState.PENDING), 0)
            self.metrics.queue_series.labels(name).set(pending)
            dead = counts.get((name, DeliveryState.DEAD_LETTER), 0)
            self.metrics.dead_letter_series.labels(name).set(dead)
        self.metrics.spool_bytes.set(self.journal.spool_bytes())
        for kind, count in self.ingestor.quarantine.counts().items():
            self.metrics.quarantine_items.labels(kind).set(count)
        self.metrics.spool_free_bytes.set(self.spool.free_bytes())

    def expire(self, now: float | None = None) -> int:
        """Remove delivered (or filtered, unrouted) batches older than the retention."""
        now = time.time() if now is None else now
        cutoff = now - self.config.storage.retention_hours * 3600
        expired = self.journal.expired_batches(cutoff)
        for batch_id in expired:
            for path in self.journal.forget_instances(batch_id):
                self.spool.remove(path)
        return len(expired)

    def _housekeep(self) -> None:
        last_expiry = 0.0
        while not self._stop.wait(HOUSEKEEPING_SECONDS):
            try:
                self.update_gauges()
                if time.monotonic() - last_expiry > RETENTION_CHECK_SECONDS:
                    last_expiry = time.monotonic()
                    self.expire()
            except Exception:
                log.exception("housekeeping failed; will try again")
