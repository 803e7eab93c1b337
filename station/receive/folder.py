"""Drop folders: files and zip archives put into a watched folder are ingested like received
instances, with the same durability (station.receive.ingest takes each one).

A file is taken only when its writer is done with it:

- with inotify (``polling: false``), a file written to must have been closed since (a
  close-write event) and then left unchanged for ``settle_seconds``; a file moved in (an
  atomic rename) is taken at once. With polling (network shares, where no events come),
  only the settle period and the completeness check tell: writers there should rename
  finished files into place or use the ready marker.
- names ending in one of ``ignore_suffixes`` (``.partial``, ``.tmp``, ...) and hidden names
  (``.name``) are never taken: a writer renames a finished file to its final name.
- with ``ready_marker`` set, files are taken only once a file of that name is in their
  folder or one above it (within the drop folder); the marker is removed once everything
  under it is taken (not with ``after: keep``).
- the data set must be complete: a file cut short, or an image without its pixel data (a
  writer paused at an element boundary), stays where it is and is judged again when it
  changes; left unchanged so for ``incomplete_seconds``, it goes to quarantine.

A file that cannot be taken for an unexpected reason is logged once and tried again with
a growing backoff, never in a tight loop. watchdog reports changes; a periodic rescan
catches whatever it missed (event queue overflow, network shares).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from station.config import WatchConfig
from station.errors import RejectedInstance
from station.receive.ingest import Changed, Incomplete, Ingestor

log = logging.getLogger(__name__)
TICK_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 300.0


@dataclass
class _Candidate:
    watch: WatchConfig
    size: int = -1
    mtime_ns: int = -1
    stable_since: float = 0.0
    moved_in: bool = False
    writing: bool = False  # written to, and no close-write seen since (inotify only)
    incomplete_since: float | None = None  # judged incomplete, unchanged since then
    retry_at: float = 0.0
    failures: int = 0


class _Events(FileSystemEventHandler):
    def __init__(self, sink: queue.SimpleQueue[tuple[str, str]]) -> None:
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if event.event_type == "moved":
            self.sink.put((os.fsdecode(event.dest_path), "moved"))
        elif event.event_type in ("created", "modified", "closed"):
            self.sink.put((os.fsdecode(event.src_path), event.event_type))


class DropFolders:
    """Watches every configured drop folder and feeds complete files to the Ingestor."""

    def __init__(self, watches: tuple[WatchConfig, ...], ingestor: Ingestor) -> None:
        self.watches = watches
        self.ingestor = ingestor
        self._events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._candidates: dict[Path, _Candidate] = {}
        self._observers: list[BaseObserver] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drop-folders", daemon=True)

    def start(self) -> None:
        for watch in self.watches:
            watch.path.mkdir(parents=True, exist_ok=True)
            observer = PollingObserver() if watch.polling else Observer()
            observer.schedule(_Events(self._events), str(watch.path), recursive=watch.recursive)
            observer.start()
            self._observers.append(observer)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Take no more files; the one being taken finishes (a zip archive not yet taken
        whole is taken again at the next start: its instances are stored once)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def _watch_of(self, path: Path) -> WatchConfig | None:
        for watch in self.watches:
            if path.is_relative_to(watch.path) and not _ignored(path, watch):
                if watch.after == "move" and path.is_relative_to(watch.done_folder):
                    return None
                if not watch.recursive and path.parent != watch.path:
                    return None
                return watch
        return None

    def _consider(self, path: Path, event: str = "found") -> None:
        watch = self._watch_of(path)
        if watch is None:
            return
        candidate = self._candidates.setdefault(path, _Candidate(watch))
        if event == "moved":
            candidate.moved_in, candidate.writing = True, False
        elif event == "modified" and not watch.polling:
            candidate.moved_in, candidate.writing = False, True
        elif event == "closed":
            candidate.writing = False

    def rescan(self) -> None:
        self.ingestor.journal.prune_dropped()
        self.ingestor.quarantine.forget_gone()
        for watch in self.watches:
            markers: list[Path] = []
            for path in _walk(watch, markers):
                self._consider(path)
            self._retire_markers(watch, markers)

    def _retire_markers(self, watch: WatchConfig, markers: list[Path]) -> None:
        """Remove the ready markers with nothing left under them to take."""
        if watch.after == "keep":
            return
        for marker in markers:
            folder = marker.parent
            if not any(p.is_relative_to(folder) for p in self._candidates) and not any(
                True for _ in _walk(watch, [], folder)
            ):
                marker.unlink(missing_ok=True)

    def _run(self) -> None:
        next_rescan = 0.0
        while not self._stop.is_set():
            try:
                while True:
                    name, event = self._events.get_nowait()
                    self._consider(Path(name), event)
            except queue.Empty:
                pass
            if time.monotonic() >= next_rescan:
                self.rescan()
                next_rescan = time.monotonic() + min(w.rescan_seconds for w in self.watches)
            if self._take_settled() and not self._candidates:
                next_rescan = 0.0  # all taken: retire the ready markers now
            self._stop.wait(TICK_SECONDS)

    def _take_settled(self) -> int:
        """Take every candidate whose writer is done; return how many were taken."""
        now = time.monotonic()
        taken = 0
        for path, candidate in list(self._candidates.items()):
            if self._stop.is_set():
                break
            try:
                stat = path.lstat()
            except FileNotFoundError:
                del self._candidates[path]
                continue
            if (stat.st_size, stat.st_mtime_ns) != (candidate.size, candidate.mtime_ns):
                candidate.size, candidate.mtime_ns = stat.st_size, stat.st_mtime_ns
                candidate.stable_since = now
                candidate.incomplete_since = None
                if not candidate.moved_in:
                    continue
            if not self._ready(path, candidate, now):
                continue
            try:
                outcome = self.ingestor.ingest(candidate.watch, path)
            except RejectedInstance as exc:
                log.warning("drop folder paused: %s", exc)
                break
            except FileNotFoundError:
                outcome = "vanished before it was taken"
            except Changed:
                candidate.size = -1  # judged again once it holds still
                continue
            except Incomplete as exc:
                self._incomplete(path, candidate, str(exc), now)
                continue
            except Exception:
                candidate.failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 2.0**candidate.failures)
                if candidate.failures == 1:
                    log.exception("cannot ingest %s; trying again with backoff", path)
                candidate.retry_at = now + delay
                continue
            del self._candidates[path]
            taken += 1
            if outcome != "taken before" and not outcome.startswith("quarantined"):
                log.info("drop folder %s: %s", path, outcome)
        return taken

    def _ready(self, path: Path, candidate: _Candidate, now: float) -> bool:
        """Whether the writer is done with ``path`` as far as the rules can tell."""
        watch = candidate.watch
        if now < candidate.retry_at or candidate.writing:
            return False
        if candidate.incomplete_since is not None:
            return now - candidate.incomplete_since >= watch.incomplete_seconds
        if not candidate.moved_in and now - candidate.stable_since < watch.settle_seconds:
            return False
        return watch.ready_marker is None or _marked_ready(path, watch)

    def _incomplete(self, path: Path, candidate: _Candidate, reason: str, now: float) -> None:
        """Leave an incomplete file to its writer; after incomplete_seconds unchanged,
        quarantine it."""
        if candidate.incomplete_since is None:
            candidate.incomplete_since = now
            log.info("drop folder %s: not taken yet, %s; waiting for its writer", path, reason)
            return
        del self._candidates[path]
        self.ingestor.refuse(
            path,
            "file",
            "incomplete",
            f"{reason}, unchanged for {candidate.watch.incomplete_seconds:g} s",
            candidate.watch,
        )


def _ignored(path: Path, watch: WatchConfig) -> bool:
    """Hidden names, names of files still being written, and the ready marker."""
    parts = path.relative_to(watch.path).parts
    return (
        any(part.startswith(".") for part in parts)
        or path.name.endswith(watch.ignore_suffixes)
        or path.name == watch.ready_marker
    )


def _marked_ready(path: Path, watch: WatchConfig) -> bool:
    assert watch.ready_marker is not None
    folder = path.parent
    while True:
        if os.path.lexists(folder / watch.ready_marker):
            return True
        if folder == watch.path or not folder.is_relative_to(watch.path):
            return False
        folder = folder.parent


def _walk(watch: WatchConfig, markers: list[Path], top: Path | None = None) -> Iterator[Path]:
    """The files to take under ``top`` (the drop folder); ready markers go to ``markers``.
    Links to folders are not entered: they are taken (and refused) as entries."""
    for dirpath, dirnames, filenames in os.walk(top or watch.path):
        entries = [*filenames, *(d for d in dirnames if os.path.islink(Path(dirpath, d)))]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if watch.recursive else []
        for name in entries:
            path = Path(dirpath) / name
            if name == watch.ready_marker:
                markers.append(path)
            elif not _ignored(path, watch):
                yield path
