"""The dispatcher: per destination its own workers, queue, retries and backoff.

A destination has as many workers as it takes associations at once (``max_associations``
of a DICOM peer; one for the other types). A worker claims the earliest due delivery of its
destination that no other worker holds, sends that series batch over one association (or
one folder write), and journals the outcome. A claim lives in this process only: after a
crash the delivery is still pending in the journal and is sent again (at least once). A
dead or slow destination never delays another. The journal is re-read every second, so
deliveries re-queued by ``station retry`` from another process are picked up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from station.config import RetryConfig
from station.dicom.status import describe_status
from station.dispatch.base import Destination, Prepare
from station.dispatch.dicom import DicomDestination
from station.dispatch.folder import FolderDestination
from station.errors import PermanentSendError, TransientSendError
from station.ops.logs import series_fields
from station.ops.metrics import Metrics
from station.routing.plugins import Plugins
from station.series import SeriesView
from station.store.journal import Journal
from station.store.records import Delivery, Instance

log = logging.getLogger(__name__)


def backoff(attempt: int, retry: RetryConfig, rand: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential, capped,
    with +-25 % jitter so that many failed batches do not retry in lockstep."""
    base = min(retry.max_seconds, retry.initial_seconds * 2 ** (attempt - 1))
    return float(base * (rand or random).uniform(0.75, 1.25))


class Dispatcher:
    def __init__(
        self,
        journal: Journal,
        destinations: Mapping[str, Destination],
        retries: Mapping[str, RetryConfig],
        plugins: Plugins,
        metrics: Metrics,
        workers: Mapping[str, int] | None = None,
    ) -> None:
        """``workers``: how many batches each destination is sent at once (default 1)."""
        self.journal = journal
        self.destinations = destinations
        self.retries = retries
        self.plugins = plugins
        self.metrics = metrics
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in destinations}
        self._claim_lock = {name: threading.Lock() for name in destinations}
        self._claimed: dict[str, set[int]] = {name: set() for name in destinations}
        self._threads = [
            (
                name,
                threading.Thread(
                    target=self._work, args=(name,), name=f"dispatch-{name}-{i}", daemon=True
                ),
            )
            for name in destinations
            for i in range((workers or {}).get(name, 1))
        ]

    def start(self) -> None:
        for _, thread in self._threads:
            thread.start()

    def ended_workers(self) -> list[str]:
        """Destinations with a worker thread that has ended although it was not told to stop."""
        if self._stop.is_set():
            return []
        ended = (n for n, t in self._threads if t.ident is not None and not t.is_alive())
        return list(dict.fromkeys(ended))

    def wake(self, destination: str | None = None) -> None:
        for name, event in self._wake.items():
            if destination in (None, name):
                event.set()

    def stop(self, timeout: float = 30) -> list[str]:
        """Stop taking new work; the batches being sent finish (or stay pending). Returns the
        destinations still sending after ``timeout``."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for _, thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return list(dict.fromkeys(name for name, t in self._threads if t.is_alive()))

    def claim(self, name: str) -> tuple[Delivery | None, float | None]:
        """Take the earliest due delivery to ``name`` that no worker holds: (it, None); or,
        when there is none, (None, when the next one not held is due, if any). Another
        idle worker of the destination is woken when more are due."""
        with self._claim_lock[name]:
            held = tuple(self._claimed[name])
            due = self.journal.due_deliveries(name, time.time(), limit=2, exclude=held)
            if not due:
                return None, self.journal.next_due(name, exclude=held)
            self._claimed[name].add(due[0].id)
        if len(due) > 1:
            self._wake[name].set()
        return due[0], None

    def release(self, delivery: Delivery) -> None:
        """Let go of a claimed delivery once its attempt is journaled."""
        with self._claim_lock[delivery.destination]:
            self._claimed[delivery.destination].discard(delivery.id)

    def _work(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stop.is_set():
            try:
                delivery, next_due = self.claim(name)
                if delivery is not None:
                    try:
                        self.deliver(delivery)
                    finally:
                        self.release(delivery)
                    continue
            except Exception:
                log.exception("dispatch worker %s failed; continuing", name)
                next_due = None
            wait = 1.0 if next_due is None else min(1.0, max(0.0, next_due - time.time()))
            wake.wait(wait)
            wake.clear()

    def deliver(self, delivery: Delivery) -> str:
        """One attempt at one delivery; returns the outcome (success, retry, dead_letter)."""
        name = delivery.destination
        destination = self.destinations.get(name)
        batch = self.journal.batch(delivery.batch_id)
        instances = self.journal.instances(delivery.batch_id)
        if delivery.only_failed:
            earlier = self.journal.failed_instances(delivery.id)
            instances = [i for i in instances if i.sop_uid in earlier]
        sender = batch.calling_ae or batch.source
        context = f"study {batch.study_uid} series {batch.series_uid} from {sender} -> {name}"
        fields = series_fields(batch.study_uid, batch.series_uid, batch.calling_ae)
        if destination is None:
            return self._finish(
                delivery, batch, "dead_letter", f"destination {name!r} is no longer configured", {}
            )
        missing = [
            s["name"] for s in delivery.transforms if s["name"] not in self.plugins.transforms
        ]
        if missing:
            return self._finish(
                delivery,
                batch,
                "dead_letter",
                f"transform {missing[0]!r} is no longer provided by any plugin",
                {},
            )
        prepare = self._prepare(delivery, batch, instances)
        started = time.monotonic()
        try:
            result = destination.send(instances, prepare)
        except PermanentSendError as exc:  # e.g. the association rejected-permanent
            error = f"{exc} (permanent: not retried; `station retry` once it is fixed)"
            log.error("%s: dead letter at once: %s", context, error, extra=fields)
            return self._finish(delivery, batch, "dead_letter", error, None)
        except TransientSendError as exc:
            error = str(exc)
            result = None
        except Exception as exc:  # a plugin destination with a bug: retry, like transient
            log.exception("%s: destination raised", context, extra=fields)
            error = f"{type(exc).__name__}: {exc}"
            result = None
        finally:
            self.metrics.dispatch_duration.labels(name).observe(time.monotonic() - started)
        if result is None:
            retry = self.retries[name]
            attempt = delivery.attempts + 1
            if attempt >= retry.max_attempts:
                log.error(
                    "%s: dead letter after %d attempts: %s", context, attempt, error, extra=fields
                )
                return self._finish(
                    delivery,
                    batch,
                    "dead_letter",
                    f"{error} (gave up after {attempt} attempts)",
                    None,
                )
            delay = backoff(attempt, retry)
            log.warning(
                "%s: attempt %d failed, retrying in %.1f s: %s",
                context,
                attempt,
                delay,
                error,
                extra=fields,
            )
            self.journal.record_attempt(delivery, "retry", error, time.time() + delay)
            self.metrics.dispatch_attempts.labels(name, "retry").inc()
            return "retry"
        self.metrics.dispatch_instances.labels(name, "sent").inc(result.sent)
        for sop_uid, (code, comment) in result.warnings.items():
            log.warning(
                "%s: instance %s sent with warning status %s",
                context,
                sop_uid,
                describe_status(code, comment),
                extra=fields,
            )
        if result.failed:
            self.metrics.dispatch_instances.labels(name, "failed").inc(len(result.failed))
            first = next(iter(result.failed.values()))
            error = f"{len(result.failed)} of {len(instances)} instances refused: {first}"
            log.error("%s: %s", context, error, extra=fields)
            return self._finish(
                delivery, batch, "dead_letter", error, result.failed, result.warnings
            )
        log.info("%s: delivered %d instances", context, result.sent, extra=fields)
        return self._finish(delivery, batch, "success", None, {}, result.warnings)

    def _finish(
        self,
        delivery: Delivery,
        batch: Any,
        outcome: str,
        error: str | None,
        failures: dict[str, str] | None,
        warnings: dict[str, tuple[int, str]] | None = None,
    ) -> str:
        self.journal.record_attempt(delivery, outcome, error, failures=failures, warnings=warnings)
        self.metrics.dispatch_attempts.labels(delivery.destination, outcome).inc()
        series = SeriesView.from_batch(batch, [i.path for i in self.journal.instances(batch.id)])
        if outcome == "success":
            self.metrics.series_latency.observe(max(0.0, time.time() - batch.first_received))
            self.plugins.notify(
                "station_series_delivered", series=series, destination=delivery.destination
            )
        else:
            self.plugins.notify(
                "station_series_failed",
                series=series,
                destination=delivery.destination,
                reason=error or "",
            )
        return outcome

    def _prepare(self, delivery: Delivery, batch: Any, instances: list[Instance]) -> Prepare:
        if not delivery.transforms:
            return None
        steps = [
            (self.plugins.transforms[s["name"]], s["name"], s["options"])
            for s in delivery.transforms
        ]
        series = SeriesView.from_batch(batch, [i.path for i in instances])

        def prepare(inst: Instance) -> Dataset:
            dataset = dcmread(inst.path)
            for function, step_name, options in steps:
                try:
                    function(dataset, series, dict(options))
                except Exception as exc:
                    raise RuntimeError(f"{step_name}: {type(exc).__name__}: {exc}") from exc
            return dataset

        return prepare


def build_destination(
    name: str, config: Any, plugin_types: Mapping[str, type], station_ae: str
) -> Destination:
    """Construct the destination object for one configured destination."""
    if config.type == "dicom":
        return DicomDestination(name, config, station_ae)
    if config.type == "folder":
        return FolderDestination(name, config)
    made: Destination = plugin_types[config.type](name, config.model_dump())
    return made
