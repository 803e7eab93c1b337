"""The routing workers: complete series batches are decided here, several at a time, so
that a plugin slow on one series delays that series only.

The assembler closes batches and hands every complete one over, again at each of its
passes until the batch is decided; a batch queued or being decided is not queued twice.
Each worker takes one batch at a time and runs ``route(batch_id)`` on it (the hooks, each
call waited for at most ``plugin_timeout_seconds``, then the journal). A slow plugin holds
one worker for at most that limit per hook; the other workers go on with other series.
Nothing is kept here that the journal does not have: a batch still queued at a stop or a
crash is still complete in the journal, and is handed over again at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from station.series import RETRY_SECONDS

log = logging.getLogger(__name__)


class RoutingWorkers:
    """``count`` threads deciding the batches handed over with ``submit``."""

    def __init__(self, count: int, route: Callable[[int], None]) -> None:
        self.route = route
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._taken: set[int] = set()  # queued or being decided
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"routing-{n}", daemon=True)
            for n in range(1, count + 1)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, batch_id: int) -> None:
        """Queue a complete batch, unless it is queued or being decided already."""
        with self._lock:
            if batch_id in self._taken:
                return
            self._taken.add(batch_id)
        self._queue.put(batch_id)

    def ended(self) -> list[str]:
        """Workers that ended while they should run (for the watchdog)."""
        if self._stop.is_set():
            return []
        return [t.name for t in self._threads if t.ident is not None and not t.is_alive()]

    def stop(self, timeout: float) -> list[str]:
        """Let each worker finish the batch it is deciding (queued ones stay complete in
        the journal); return the names of those still at work after ``timeout`` seconds."""
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]

    def _run(self) -> None:
        while True:
            batch_id = self._queue.get()
            if batch_id is None or self._stop.is_set():
                return
            try:
                self.route(batch_id)
            except Exception:  # the journal cannot be written: handed over again after a pause
                log.exception("routing batch %d failed; it stays complete, to be retried", batch_id)
                self._stop.wait(RETRY_SECONDS)
            finally:
                with self._lock:
                    self._taken.discard(batch_id)
