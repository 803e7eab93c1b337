"""systemd's notify protocol (sd_notify(3)), through the sdnotify package.

``READY=1`` once everything listens, ``STATUS=`` lines an operator sees in
``systemctl status station``, ``RELOADING=1`` around a reload, ``STOPPING=1`` on SIGTERM, and
``WATCHDOG=1`` only while the station's loops turn: when series assembly stops turning (a
plugin hook hangs, the journal's disk blocks) or a dispatch worker dies, the pings stop and
systemd restarts the service after ``WatchdogSec``. Without ``NOTIFY_SOCKET`` (not started
by systemd) nothing is sent and no thread runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

import sdnotify

log = logging.getLogger(__name__)
STATUS_SECONDS = 5.0


def watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """The watchdog period systemd asked this process for (``WATCHDOG_USEC``), or None."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6


class Notifier:
    """Tells systemd how the service is doing; every call is a no-op outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self.watchdog = watchdog_seconds(environ) if self.enabled else None
        self._systemd = sdnotify.SystemdNotifier()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, *assignments: str) -> None:
        if self.enabled:
            self._systemd.notify("\n".join(assignments))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading")

    def stopping(self, status: str) -> None:
        """SIGTERM: say so, and end the supervision (the service is about to go)."""
        self._stop.set()
        if self._thread:
            self._thread.join(STATUS_SECONDS)
        self.send("STOPPING=1", f"STATUS={status}")

    def supervise(self, stalled: Callable[[float], str | None], status: Callable[[], str]) -> None:
        """Keep ``STATUS=`` current and, when systemd set a watchdog, send ``WATCHDOG=1``
        at a quarter of its period as long as ``stalled(max_age)`` finds nothing that has
        stopped turning for half of it."""
        if not self.enabled:
            return
        self._thread = threading.Thread(
            target=self._supervise, args=(stalled, status), name="systemd-notify", daemon=True
        )
        self._thread.start()

    def _supervise(self, stalled: Callable[[float], str | None], status: Callable[[], str]) -> None:
        interval = (
            STATUS_SECONDS if self.watchdog is None else min(STATUS_SECONDS, self.watchdog / 4)
        )
        last_status = 0.0
        while not self._stop.wait(interval):
            try:
                problem = stalled(self.watchdog / 2) if self.watchdog else None
                if problem:
                    log.error("not sending the watchdog ping: %s", problem)
                    self.send(f"STATUS=stalled: {problem}")
                    last_status = 0.0
                    continue
                if self.watchdog:
                    self.send("WATCHDOG=1")
                if time.monotonic() - last_status >= STATUS_SECONDS:
                    self.send(f"STATUS={status()}")
                    last_status = time.monotonic()
            except Exception:
                log.exception("systemd notification failed; will try again")
