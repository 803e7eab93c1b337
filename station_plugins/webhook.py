"""``webhook``: a JSON notice to a URL when a series was delivered or has failed.

Notification hooks. For each series batch delivered to a destination (every instance
confirmed), and each one dead-lettered, it POSTs a JSON object to ``url``::

    {"event": "series.delivered",            # or "series.failed"
     "outcome": "delivered",                 # or "failed"
     "study_uid": "1.2...", "series_uid": "1.2...",
     "modality": "CT", "calling_ae": "SCANNER1", "source": "scp",
     "destination": "research-pacs", "instances": 120,
     "reason": null,                         # why it failed
     "timestamp": "2024-05-01T12:00:00.123456+00:00"}

No patient name, ID or date is sent. Dispatch is never held up: the hooks only queue the
notice; one background thread posts them in order, each with ``timeout_seconds``. A notice
that cannot be posted (refused, timed out, an HTTP error status) is logged and dropped,
never retried and never raised; so is one that finds 1000 notices already waiting. Queued
notices are lost when the station stops.

Options (``plugin_options.webhook`` in the config; without ``url`` nothing is posted):

``url``
    the ``http://`` or ``https://`` address to POST to.
``events`` (default ``[delivered, failed]``)
    which notices to send.
``headers`` (default none)
    extra HTTP headers, e.g. ``{Authorization: "Bearer ..."}``.
``timeout_seconds`` (default 5)
    for each POST.

Example (``station.yaml``)::

    plugin_options:
      webhook:
        url: https://chat.example.org/hooks/station
        events: [failed]
        headers: {Authorization: "Bearer s3cr3t"}
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from station import hookimpl

if TYPE_CHECKING:
    from station.series import SeriesView

log = logging.getLogger(__name__)
EVENTS = ("delivered", "failed")
MAX_QUEUE = 1000


@dataclass(frozen=True)
class Settings:
    url: str
    events: tuple[str, ...] = EVENTS
    headers: dict[str, str] = field(default_factory=dict)
    timeout_seconds: float = 5.0


class Poster:
    """One background thread posting queued notices, in order, each with a timeout."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.queue: queue.Queue[tuple[Settings, dict[str, Any]]] = queue.Queue(MAX_QUEUE)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, event: str, notice: dict[str, Any]) -> None:
        settings = self.settings
        if settings is None or event not in settings.events:
            return
        try:
            self.queue.put_nowait((settings, notice))
        except queue.Full:
            log.warning("webhook: queue full, notice for series %s dropped", notice["series_uid"])
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            settings, notice = self.queue.get()
            try:
                post(settings, notice)
            except Exception as exc:
                log.warning(
                    "webhook: %s for series %s to %s failed: %s: %s",
                    notice["event"],
                    notice["series_uid"],
                    notice["destination"],
                    type(exc).__name__,
                    exc,
                )


def post(settings: Settings, notice: dict[str, Any]) -> None:
    """POST one notice as JSON; raises on a connection problem or an HTTP error status."""
    request = urllib.request.Request(
        settings.url,
        data=json.dumps(notice).encode(),
        headers={"Content-Type": "application/json", **settings.headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=settings.timeout_seconds) as response:
        response.read()


_poster = Poster()


def parse_options(options: dict[str, Any]) -> Settings | None:
    """The settings (None without ``url``); ValueError names a wrong option."""
    known = ("url", "events", "headers", "timeout_seconds")
    unknown = set(options) - set(known)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected {', '.join(known)}")
    url = options.get("url")
    if url is None:
        return None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url: expected an http:// or https:// address, got {url!r}")
    events = options.get("events", list(EVENTS))
    if not isinstance(events, list) or not set(events) <= set(EVENTS):
        raise ValueError(f"events: expected a list of {' and '.join(EVENTS)}, got {events!r}")
    headers = options.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("headers: expected a mapping of header name to text")
    timeout = options.get("timeout_seconds", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"timeout_seconds: expected a number above 0, got {timeout!r}")
    return Settings(url, tuple(events), {str(k): v for k, v in headers.items()}, timeout)


def notice(series: SeriesView, destination: str, outcome: str, reason: str | None) -> dict:
    """The JSON object posted for one series batch and destination."""
    return {
        "event": f"series.{outcome}",
        "outcome": outcome,
        "study_uid": series.study_uid,
        "series_uid": series.series_uid,
        "modality": str(series.get("Modality", "") or ""),
        "calling_ae": series.calling_ae,
        "source": series.source,
        "destination": destination,
        "instances": series.instance_count,
        "reason": reason,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
    }


@hookimpl
def station_configure(options: dict[str, Any]) -> None:
    _poster.settings = parse_options(options)


@hookimpl
def station_series_delivered(series: SeriesView, destination: str) -> None:
    _poster.submit("delivered", notice(series, destination, "delivered", None))


@hookimpl
def station_series_failed(series: SeriesView, destination: str, reason: str) -> None:
    _poster.submit("failed", notice(series, destination, "failed", reason))
