#!/usr/bin/env python3
"""Bench only: ``station`` with experimental patches, to measure what a lever would gain
before anyone changes ``station/``. ``python3 bench/patched.py PATCH[,PATCH] run ...`` (what
``bench/run.py --patch`` starts); the station's own code is never modified. The receiver
processes get the same patches (through ``bench/site/sitecustomize.py``); ``timing``
reports once per process.

Patches:

- ``timing``        time the receive and dispatch steps; the totals go to the log at exit;
- ``no-fsync``      no fsync of spool files and folders, SQLite ``synchronous=OFF`` (what
                    durability costs: the most group commit could win back);
- ``switch-1ms``     the GIL handed over after 1 ms instead of 5 ms (``sys.setswitchinterval``);
- ``no-identify``   the UIDs taken from the C-STORE request instead of parsing the file
                    (what ``identify`` costs; skips its checks, so never in production).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PATCHES_ENV = "STATION_BENCH_PATCHES"  # for the receiver processes (bench/site)

TIMES: dict[str, list[float]] = {}
_LOCK = threading.Lock()


def _timed(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            with _LOCK:
                entry = TIMES.setdefault(label, [0.0, 0])
                entry[0] += elapsed
                entry[1] += 1

    setattr(owner, name, wrapper)


def _report() -> None:
    for label, (total, count) in sorted(TIMES.items()):
        mean = 1000 * total / count if count else 0.0
        print(
            f"bench timing [pid {os.getpid()}] {label}: {total:.3f} s in {count} calls "
            f"({mean:.3f} ms each)"
        )
    sys.stdout.flush()


def timing() -> None:
    from station.dispatch import dicom, dispatcher
    from station.receive import intake, scp
    from station.store.journal.sqlite import SQLiteJournal
    from station.store.spool import IncomingFile, Spool

    _timed(scp.StoreSCP, "_store", "receive: C-STORE, request in to response out")
    _timed(scp.StoreSCP, "_take", "receive: C-STORE handler after the data set is in")
    _timed(scp, "identify", "receive: identify (parse the file)")
    _timed(intake.Intake, "take", "receive: intake (spool + journal + metrics)")
    _timed(Spool, "commit", "receive: spool commit (fdatasync; drop folders)")
    _timed(IncomingFile, "close", "receive: spool file close (fdatasync; C-STORE)")
    _timed(SQLiteJournal, "record_instance", "receive: journal record_instance (commit)")
    _timed(dispatcher.Dispatcher, "deliver", "send: deliver (one batch, all of it)")
    _timed(dicom, "_associate", "send: associate")
    atexit.register(_report)


def no_fsync() -> None:
    import os

    from station.store.journal.sqlite import SQLiteJournal

    # The spool makes data durable with fdatasync and folders with fsync: stub both.
    os.fsync = os.fdatasync = lambda fd: None  # type: ignore[assignment]
    init = SQLiteJournal.__init__

    def unsynced(self: SQLiteJournal, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._db.execute("PRAGMA synchronous=OFF")

    SQLiteJournal.__init__ = unsynced  # type: ignore[method-assign]


def no_identify() -> None:
    from pydicom import dcmread

    from station.dicom.files import Header
    from station.receive import scp

    def from_file_meta(path: Any) -> Header:
        # Only the file meta and the two UIDs the request does not carry.
        ds = dcmread(
            path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"]
        )
        meta = ds.file_meta
        return Header(
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.get("SeriesInstanceUID", ds.StudyInstanceUID)),
            sop_uid=str(meta.MediaStorageSOPInstanceUID),
            sop_class=str(meta.MediaStorageSOPClassUID),
            transfer_syntax=str(meta.TransferSyntaxUID),
        )

    scp.identify = from_file_meta  # type: ignore[assignment]


def switch_1ms() -> None:
    sys.setswitchinterval(0.001)


PATCHES: dict[str, Callable[[], None]] = {
    "timing": timing,
    "no-fsync": no_fsync,
    "no-identify": no_identify,
    "switch-1ms": switch_1ms,
}


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()


def main() -> None:
    names = [n for n in sys.argv[1].split(",") if n] if len(sys.argv) > 1 else []
    unknown = [n for n in names if n not in PATCHES]
    if unknown:
        sys.exit(f"unknown patch {', '.join(unknown)}; known: {', '.join(PATCHES)}")
    apply(names)
    # The receivers are processes of their own (python -m station.receive.worker): they
    # inherit these and apply the same patches from bench/site/sitecustomize.py.
    os.environ[PATCHES_ENV] = ",".join(names)
    site = str(Path(__file__).with_name("site"))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    from station.cli import main as station_main

    sys.argv = ["station", *sys.argv[2:]]
    station_main()


if __name__ == "__main__":
    main()
