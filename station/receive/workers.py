"""The receiver processes: ``listen.workers`` of them accept on the station's port(s), so
that several senders at once use every core (one Python process has one GIL).

The station's process binds the listening sockets and starts each receiver with
``python -m station.receive.worker`` (spawned, never forked from a process with threads),
passing the sockets down. The kernel hands each new connection to one receiver waiting in
``accept``; that one negotiates, spools, journals and answers, as station/receive/scp.py
says. What holds across them: the journal (SQLite serializes the writers; an instance joins
its series' open batch whichever process journals it, so series assembly spans them), the
connection limits (station/receive/board.py) and the metrics (station/ops/metrics.py).

Receivers are started, watched and restarted from one thread, which lives until they have
ended: the kernel kills them when it ends (so with the station's process, whatever kills
it). A receiver that dies is restarted, at most MAX_RESTARTS times in RESTART_WINDOW
seconds; past that it stays down and ``ended()`` says so (the systemd watchdog stops).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from station.config import StationConfig
from station.ops.logs import logging_in_force
from station.ops.metrics import Metrics
from station.receive.board import Board, slots_for
from station.receive.worker import WorkerSpec
from station.store.spool import make_folder

log = logging.getLogger(__name__)
READY_SECONDS = 60.0  # for a receiver to start accepting
WATCH_SECONDS = 0.2
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
KILL_GRACE_SECONDS = 5.0  # beyond the drain, before a receiver is killed at stop


class ReceiverFailed(Exception):
    """A receiver process could not be started."""


class Receivers:
    def __init__(
        self, config: StationConfig, metrics: Metrics, run: Path, drain_seconds: float
    ) -> None:
        """Receivers for ``config``; ``run`` is a folder for their shared files (emptied
        at start)."""
        self.config = config
        self.listen = config.listen
        self.metrics = metrics
        self.run = run
        self.drain_seconds = drain_seconds
        self.count = self.listen.workers
        self.server: socket.socket | None = None
        self.tls_server: socket.socket | None = None
        self.port = self.listen.port
        self.tls_port = self.listen.tls.port if self.listen.tls is not None else None
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self._free: list[list[Path]] = [[] for _ in range(self.count)]
        self.board: Board | None = None
        self._restarts: deque[float] = deque()
        self._given_up: list[str] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._failure: str | None = None
        self._thread = threading.Thread(target=self._supervise, name="receivers", daemon=True)

    def start(self) -> None:
        """Bind the port(s) (OSError when one is taken), start every receiver and return
        once they all accept; ReceiverFailed when one cannot start."""
        listen = self.listen
        self.server = socket.create_server((listen.host, listen.port), backlog=128)
        self.port = self.server.getsockname()[1]
        if listen.tls is not None:
            self.tls_server = socket.create_server((listen.host, listen.tls.port), backlog=128)
            self.tls_port = self.tls_server.getsockname()[1]
        shutil.rmtree(self.run, ignore_errors=True)
        make_folder(self.run / "metrics")
        self.board = Board(slots_for(listen), self.run / "connections")
        self.metrics.add_processes(self.run / "metrics")
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            self.stop(0)
            raise ReceiverFailed(self._failure)

    def adopt(self, free: list[Path]) -> None:
        """Share folders of free spool files left by the last run among the receivers,
        for them to take over as they start."""
        self._free = [free[index :: self.count] for index in range(self.count)]

    def _spec(self, ready_fd: int, index: int) -> WorkerSpec:
        assert self.server is not None
        level, log_format = logging_in_force()
        return WorkerSpec(
            parent=os.getpid(),
            config=self.config.model_dump(mode="json", include={"ae_title", "listen", "storage"}),
            fd=self.server.fileno(),
            tls_fd=self.tls_server.fileno() if self.tls_server is not None else None,
            ready_fd=ready_fd,
            board=str(self.run / "connections"),
            metrics=str(self.run / "metrics"),
            drain_seconds=self.drain_seconds,
            log_level=level,
            log_format=log_format.value,
            free_folders=[str(folder) for folder in self._free[index]],
        )

    def _spawn(self, *indexes: int) -> None:
        """Start receivers ``indexes`` together (each makes its reserve of free spool files
        before it accepts) and wait until every one accepts; ReceiverFailed if one ends or
        takes too long."""
        readers: list[int] = []
        try:
            for index in indexes:
                ready_r, ready_w = os.pipe()
                readers.append(ready_r)
                spec = self._spec(ready_w, index)
                self._free[index] = []  # a receiver started again later makes its own
                fds = [fd for fd in (spec.fd, spec.tls_fd, ready_w) if fd is not None]
                try:
                    self.processes[index] = subprocess.Popen(
                        [sys.executable, "-m", "station.receive.worker", spec.encode()],
                        pass_fds=fds,
                    )
                finally:
                    os.close(ready_w)
            deadline = time.monotonic() + READY_SECONDS
            for index, ready_r in zip(indexes, readers, strict=True):
                proc = self.processes[index]
                assert proc is not None
                wait = max(0.0, deadline - time.monotonic())
                readable, _, _ = select.select([ready_r], [], [], wait)
                if (os.read(ready_r, 16) if readable else b"") != b"ready":
                    code = proc.poll()
                    raise ReceiverFailed(
                        f"receiver process {proc.pid} did not start"
                        + (f": it exited with {code} (see the log)" if code is not None else "")
                    )
                log.debug("receiver %d is PID %d", index, proc.pid)
        finally:
            for ready_r in readers:
                os.close(ready_r)

    def _supervise(self) -> None:
        try:
            self._spawn(*range(self.count))
        except (OSError, ReceiverFailed) as exc:
            self._failure = str(exc)
            self._stop.set()
        self._started.set()
        while not self._stop.wait(WATCH_SECONDS):
            for index, proc in enumerate(self.processes):
                if proc is not None and proc.poll() is not None:
                    self._ended(index, proc)
        self._end_all()

    def _ended(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        """A receiver died: forget it and start another, within the restart budget."""
        self.processes[index] = None
        self._forget(proc.pid)
        now = time.monotonic()
        while self._restarts and self._restarts[0] < now - RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            problem = f"receiver process {proc.pid} exited with {proc.returncode}"
            log.error(
                "%s; %d restarts in %g s: not restarting it", problem, MAX_RESTARTS, RESTART_WINDOW
            )
            self._given_up.append(problem)
            return
        self._restarts.append(now)
        log.error("receiver process %d exited with %d; starting another", proc.pid, proc.returncode)
        try:
            self._spawn(index)
        except (OSError, ReceiverFailed) as exc:
            log.error("%s", exc)

    def _forget(self, pid: int) -> None:
        self.metrics.process_ended(pid)
        if self.board is not None:
            self.board.release(pid)

    def _end_all(self) -> None:
        """Drain and end every receiver (SIGTERM), killing those still there after the
        drain and a grace period."""
        running = [p for p in self.processes if p is not None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_seconds + KILL_GRACE_SECONDS
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("receiver process %d did not stop: killing it", proc.pid)
                proc.kill()
                proc.wait()
            self._forget(proc.pid)
        self.processes = [None] * self.count

    def stop(self, drain_seconds: float) -> None:
        """Take no new associations; let each receiver finish those in progress (at most
        ``drain_seconds``, then they are aborted) and end."""
        self.drain_seconds = drain_seconds
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for server in (self.server, self.tls_server):
            if server is not None:
                server.close()
        self.server = self.tls_server = None
        if self.board is not None:
            self.board.close()
            self.board = None

    def alive(self) -> bool:
        return self._started.is_set() and all(p is not None for p in self.processes)

    def ended(self) -> str | None:
        """What is wrong with the receivers, for the watchdog; None when all run."""
        return "; ".join(self._given_up) or None
