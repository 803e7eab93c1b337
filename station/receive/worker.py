"""One receiver process: ``python -m station.receive.worker SPEC`` (started by
station/receive/workers.py, never by hand).

It accepts associations on the listening sockets the parent bound and passed down, and
spools, journals and answers every C-STORE itself, through its own journal connection (the
parent has migrated the journal) and its own spool files. Its metrics go to files the parent
serves. It dies with the parent, even by SIGKILL (``PR_SET_PDEATHSIG``), so that no orphan
keeps the port; SIGTERM (or SIGINT) drains the associations in progress, as a stopping
station does, then ends it.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # A receiver never decodes pixel data (the receive path must not); pydicom imports numpy
    # whenever it is installed, which costs each receiver about 18 MiB for nothing.
    sys.modules["numpy"] = None  # type: ignore[assignment]

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from station.config import StationConfig
from station.ops.logs import LogFormat, setup_logging
from station.ops.metrics import Metrics, record_in_files
from station.receive.board import Board, slots_for
from station.receive.intake import Intake
from station.receive.scp import StoreSCP
from station.store.journal.sqlite import SQLiteJournal
from station.store.recovery import journal_path
from station.store.spool import Spool

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What a receiver process is told on its command line."""

    parent: int  # the PID it must not outlive
    config: dict[str, Any]  # ae_title, listen and storage of the station's config
    fd: int  # the listening socket
    tls_fd: int | None  # the TLS listening socket
    ready_fd: int  # written to once it accepts
    board: str  # station/receive/board.py's file
    metrics: str  # where its metrics go
    drain_seconds: float
    log_level: str
    log_format: str
    free_folders: list[str] = field(default_factory=list)  # free spool files to take over

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


def die_with(parent: int) -> None:
    """Have the kernel kill this process when the thread that started it ends (the parent
    process dying, by any signal); end at once if that has happened already."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def main(argv: Sequence[str]) -> int:
    spec = WorkerSpec.decode(argv[0])
    die_with(spec.parent)
    os.umask(0o077)  # all it writes (spool, metrics files) is the station's own: owner only
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the parent's business
    setup_logging(spec.log_level, LogFormat(spec.log_format))
    record_in_files(Path(spec.metrics))
    config = StationConfig.model_validate(spec.config)
    storage = config.storage.path
    journal = SQLiteJournal(journal_path(storage), migrate=False)
    spool = Spool(storage, config.storage.min_free_bytes, config.storage.free_files)
    # Before accepting: the first burst then creates no files.
    spool.free.start([Path(folder) for folder in spec.free_folders])
    intake = Intake(spool, journal, Metrics())
    board = Board(slots_for(config.listen), Path(spec.board))
    scp = StoreSCP(config.ae_title, config.listen, intake, board)
    tls = socket.socket(fileno=spec.tls_fd) if spec.tls_fd is not None else None
    scp.serve(socket.socket(fileno=spec.fd), tls)
    with contextlib.suppress(OSError):
        os.write(spec.ready_fd, b"ready")
    os.close(spec.ready_fd)
    while not stop.wait(1.0):
        pass
    scp.stop(spec.drain_seconds)
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
