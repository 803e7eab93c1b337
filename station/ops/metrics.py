"""Prometheus metrics (names fixed in DESIGN.md) and the /metrics + /healthz endpoint.

One ``Metrics`` object per service owns its own ``CollectorRegistry``; tests read values
back with ``metrics.registry.get_sample_value(...)``. Labels come from bounded sets only:
destination names, hook and plugin names, outcome enums, configured AE titles.

The receiver processes keep their values in files (prometheus-client's multiprocess mode,
``record_in_files``); the service adds them to its own (``add_processes``): ``exposed`` is
what /metrics serves, every sample summed over the processes. Gauges are summed over the
live processes only (``livesum``), so each process sets its own share (its associations).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    make_wsgi_app,
    values,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from station import __version__

REJECT_REASONS = (
    "not_dicom",
    "malformed",
    "truncated",
    "bad_deflate",
    "missing_uid",
    "invalid_uid",
    "uid_mismatch",
    "dicomdir",
    "disk_full",
    "internal",
    "sop_class_mismatch",
)
# Why an A-ASSOCIATE-RQ was answered with A-ASSOCIATE-RJ.
ASSOCIATION_REJECT_REASONS = (
    "protocol_version",
    "application_context",
    "called_ae",
    "calling_ae",
    "peer_host",
    "busy",
    "busy_host",
)
# Why a connection was closed without an association, or an association aborted by us.
CONNECTION_CLOSE_REASONS = (
    "too_many_pending_host",
    "too_many_pending",
    "tls_handshake",
    "request_timeout",
    "bad_request",
    "idle_timeout",
)
# Why a dropped input can be refused, beyond REJECT_REASONS: station.receive.inputs refuses
# the first six, the drop folder the others (incomplete for too long, taken but not removable).
INPUT_REASONS = (
    "symlink",
    "not_regular",
    "unreadable",
    "unsafe_zip",
    "zip_limits",
    "corrupt_zip",
    "incomplete",
    "undeletable",
)
# What a quarantine item holds (station.store.quarantine).
QUARANTINE_KINDS = ("file", "zip", "member", "link", "series")
# Gauges of several processes add up, the dead ones' dropped (see the module's docstring).
LIVE: dict[str, Any] = {"multiprocess_mode": "livesum"}
MAX_CALLING_AES = 64  # bounds the calling_ae label when no allow-list is configured
DISPATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LATENCY_BUCKETS = (1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def record_in_files(directory: Path) -> None:
    """In a receiver process, before its ``Metrics`` is made: keep every value in files
    under ``directory`` (prometheus-client reads it from PROMETHEUS_MULTIPROC_DIR)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _Summed(Collector):
    """This process's metrics plus those the receiver processes keep in files, each
    sample summed over the processes (a family only they have is shown as they give it)."""

    def __init__(self, registry: CollectorRegistry, directory: Path) -> None:
        self.registry = registry
        self.files = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
        theirs: Iterable[Metric] = self.files.collect()  # type: ignore[no-untyped-call]
        for family in [*self.registry.collect(), *theirs]:
            if family.name not in families:
                families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                totals[family.name] = {}
            summed = totals[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                before = summed.get(key)
                summed[key] = (
                    sample if before is None else before._replace(value=before.value + sample.value)
                )
        for name, family in families.items():
            family.samples = list(totals[name].values())
            yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.exposed = self.registry  # what /metrics serves (see add_processes)
        self._files: Path | None = None
        r = self.registry
        self.instances_received = Counter(
            "station_instances_received_total",
            "Instances accepted into the spool.",
            ["source", "calling_ae"],
            registry=r,
        )
        self.received_bytes = Counter(
            "station_received_bytes_total", "Bytes of accepted instances.", ["source"], registry=r
        )
        self.instances_rejected = Counter(
            "station_instances_rejected_total",
            "Instances refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.series_completed = Counter(
            "station_series_completed_total",
            "Series batches completed (quiet period or max wait).",
            registry=r,
        )
        self.series_filtered = Counter(
            "station_series_filtered_total",
            "Series batches dropped by a filter plugin.",
            ["plugin"],
            registry=r,
        )
        self.series_unrouted = Counter(
            "station_series_unrouted_total", "Series batches no route matched.", registry=r
        )
        self.series_quarantined = Counter(
            "station_series_quarantined_total",
            "Series batches set aside, by reason.",
            ["reason"],
            registry=r,
        )
        self.dispatch_instances = Counter(
            "station_dispatch_instances_total",
            "Instances dispatched, by outcome (sent, failed).",
            ["destination", "outcome"],
            registry=r,
        )
        self.dispatch_attempts = Counter(
            "station_dispatch_attempts_total",
            "Dispatch attempts of series batches, by outcome (success, retry, dead_letter).",
            ["destination", "outcome"],
            registry=r,
        )
        self.dispatch_duration = Histogram(
            "station_dispatch_duration_seconds",
            "Time to dispatch one series batch.",
            ["destination"],
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self.series_latency = Histogram(
            "station_series_latency_seconds",
            "From the first instance received to the series batch delivered.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_series = Gauge(
            "station_queue_series",
            "Series batches waiting for dispatch.",
            ["destination"],
            **LIVE,
            registry=r,
        )
        self.dead_letter_series = Gauge(
            "station_dead_letter_series",
            "Series batches in the dead letter.",
            ["destination"],
            **LIVE,
            registry=r,
        )
        self.hook_duration = Histogram(
            "station_hook_duration_seconds", "Time spent in plugin hooks.", ["hook"], registry=r
        )
        self.plugin_errors = Counter(
            "station_plugin_errors_total",
            "Plugin hook calls that raised or returned a wrong type.",
            ["plugin", "hook"],
            registry=r,
        )
        # Beyond DESIGN.md's list: rejected inputs (drop-folder files, zip archives) held in
        # quarantine, and quarantined series, so an alert sees quarantine grow.
        self.quarantined_inputs = Counter(
            "station_quarantined_inputs_total",
            "Inputs (drop-folder files, zip archives or members) quarantined, by reason.",
            ["reason"],
            registry=r,
        )
        self.quarantine_items = Gauge(
            "station_quarantine_items",
            "Items held in quarantine, by kind (file, zip, member, link, series).",
            ["kind"],
            **LIVE,
            registry=r,
        )
        self.spool_bytes = Gauge(
            "station_spool_bytes", "Bytes of instance files in the spool.", **LIVE, registry=r
        )
        # Beyond DESIGN.md's list: with these an alert sees the disk filling up before the
        # station starts refusing (at station_spool_min_free_bytes).
        self.spool_free_bytes = Gauge(
            "station_spool_free_bytes",
            "Free bytes on the spool's file system.",
            **LIVE,
            registry=r,
        )
        self.spool_min_free_bytes = Gauge(
            "station_spool_min_free_bytes",
            "storage.min_free_bytes: below this much free space new instances are refused.",
            **LIVE,
            registry=r,
        )
        self.associations_active = Gauge(
            "station_associations_active",
            "DICOM associations in progress (inbound).",
            **LIVE,
            registry=r,
        )
        # Beyond DESIGN.md's list: who is turned away at the door, and why.
        self.associations_rejected = Counter(
            "station_associations_rejected_total",
            "A-ASSOCIATE-RQs rejected, by reason.",
            ["reason"],
            registry=r,
        )
        self.connections_closed = Counter(
            "station_connections_closed_total",
            "Inbound connections closed or aborted by the station, by reason.",
            ["reason"],
            registry=r,
        )
        # Exposed as station_build_info (Info adds the suffix).
        self.build_info = Info("station_build", "Station version.", registry=r)
        self.build_info.info({"version": __version__})
        for reason in REJECT_REASONS:
            self.instances_rejected.labels(reason).inc(0)
        for reason in (*REJECT_REASONS, *INPUT_REASONS):
            self.quarantined_inputs.labels(reason).inc(0)
        for kind in QUARANTINE_KINDS:
            self.quarantine_items.labels(kind).set(0)
        for reason in ASSOCIATION_REJECT_REASONS:
            self.associations_rejected.labels(reason).inc(0)
        for reason in CONNECTION_CLOSE_REASONS:
            self.connections_closed.labels(reason).inc(0)
        self._calling_aes: set[str] = set()

    def add_processes(self, directory: Path) -> None:
        """Serve the values receiver processes keep in ``directory`` too, summed with this
        process's own."""
        self._files = directory
        self.exposed = CollectorRegistry()
        self.exposed.register(_Summed(self.registry, directory))

    def process_ended(self, pid: int) -> None:
        """Drop the gauges of a receiver process that has ended (its counts stay)."""
        if self._files is not None:
            mark_process_dead(pid, str(self._files))  # type: ignore[no-untyped-call]

    def value(self, name: str) -> float:
        """One unlabelled sample as /metrics shows it (summed over the processes)."""
        return self.exposed.get_sample_value(name) or 0.0

    def calling_ae_label(self, ae_title: str) -> str:
        """The AE title as a label value, or ``other`` past MAX_CALLING_AES distinct ones."""
        if ae_title in self._calling_aes or len(self._calling_aes) < MAX_CALLING_AES:
            self._calling_aes.add(ae_title)
            return ae_title
        return "other"

    def declare_destinations(self, names: Iterable[str]) -> None:
        """Create every destination's series up front so dashboards show zeros."""
        for name in names:
            for outcome in ("sent", "failed"):
                self.dispatch_instances.labels(name, outcome).inc(0)
            for outcome in ("success", "retry", "dead_letter"):
                self.dispatch_attempts.labels(name, outcome).inc(0)
            self.queue_series.labels(name).set(0)
            self.dead_letter_series.labels(name).set(0)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


def _answer(start_response: StartResponse, code: int, body: bytes, ctype: str) -> list[bytes]:
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
    start_response(f"{code} {HTTPStatus(code).phrase}", headers)
    return [body]


class MetricsServer:
    """Serves /metrics through prometheus-client's own exposition (text or OpenMetrics, gzip
    when asked) and /healthz (JSON; 503 while not healthy) on a thread of its own."""

    def __init__(
        self, metrics: Metrics, host: str, port: int, health: Callable[[], dict[str, object]]
    ) -> None:
        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                # metrics.exposed is read per request: the receivers' files join it once
                # they run (add_processes), after this server was made.
                body: Iterable[bytes] = make_wsgi_app(metrics.exposed)(environ, start_response)
                return body
            if path == "/healthz":
                state = health()
                code = 200 if state.get("ok") else 503
                return _answer(start_response, code, json.dumps(state).encode(), "application/json")
            return _answer(start_response, 404, b"see /metrics and /healthz\n", "text/plain")

        self._server = make_server(host, port, app, ThreadingWSGIServer, _Quiet)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
