"""Drop folders: files and zip archives put into a watched folder are ingested like received
instances, with the same durability.

A file is taken once it is complete: its size and mtime unchanged for ``settle_seconds``
(a file moved in is taken at once). Its copy is fsynced in the spool and journaled before
the original is deleted, moved or kept (``after``). The journal remembers each taken file
(path, size, mtime), so a restart neither loses nor re-takes it. watchdog reports changes;
a periodic rescan catches whatever it missed (event queue overflow, network shares).
Hidden files (``.name``) are never taken: copy tools write those while in progress.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from station.config import WatchConfig
from station.errors import RejectedInstance
from station.inputs import is_zip_archive
from station.receive.intake import Intake, Origin
from station.records import Dropped
from station.spool import DISK_FULL, identify

log = logging.getLogger(__name__)
TICK_SECONDS = 0.2
COPY_CHUNK = 1 << 20


class Unacceptable(Exception):
    """The whole file (or archive) goes to quarantine with this reason."""


@dataclass
class _Candidate:
    watch: WatchConfig
    size: int = -1
    mtime_ns: int = -1
    stable_since: float = 0.0
    moved_in: bool = False


class Ingestor:
    """Takes one dropped file or zip archive into the spool and journal."""

    def __init__(self, intake: Intake, ae_title: str) -> None:
        self.intake = intake
        self.spool = intake.spool
        self.journal = intake.journal
        self.metrics = intake.metrics
        self.ae_title = ae_title
        self.quarantine = self.spool.root / "quarantine"

    def ingest(self, watch: WatchConfig, path: Path) -> str:
        """Ingest ``path``; return what happened. Raises RejectedInstance (disk full) to
        leave the file where it is for a later try."""
        stat = path.stat()
        dropped = Dropped(path, stat.st_size, stat.st_mtime_ns)
        if self.journal.was_dropped(dropped):
            outcome = "taken before"
        else:
            try:
                if is_zip_archive(path):
                    outcome = self._ingest_zip(watch, path)
                    self.journal.mark_dropped(dropped, outcome)
                else:
                    partial = self.spool.claim(stat.st_size)
                    try:
                        shutil.copyfile(path, partial)
                    except OSError as exc:
                        if exc.errno in DISK_FULL:  # pause the drop folder, retry later
                            raise self.spool.refuse(partial, exc, "copy into the spool") from exc
                        self.spool.remove(partial)
                        raise
                    outcome = self._take(watch, partial, path.name, dropped)
            except Unacceptable as exc:
                self._quarantine_file(path, str(exc))
                return f"quarantined: {exc}"
        self._after(watch, path)
        return outcome

    def _take(
        self, watch: WatchConfig, partial: Path, name: str, dropped: Dropped | None = None
    ) -> str:
        """Journal one file already copied to ``partial`` (claimed from the spool)."""
        try:
            header = identify(partial)
        except RejectedInstance as exc:
            self.spool.remove(partial)
            if exc.reason == "dicomdir":
                if dropped is not None:
                    self.journal.mark_dropped(dropped, "skipped: DICOMDIR")
                return "skipped: DICOMDIR"
            self.metrics.instances_rejected.labels(exc.reason).inc()
            raise Unacceptable(f"{name}: {exc}") from None
        origin = Origin(
            calling_ae="", called_ae=self.ae_title, peer=str(watch.path), source="folder"
        )
        self.intake.take(partial, header, origin, dropped)
        return "ingested"

    def _ingest_zip(self, watch: WatchConfig, path: Path) -> str:
        try:
            with zipfile.ZipFile(path) as archive:
                members = _checked_members(archive, watch)
                taken = skipped = 0
                for info in members:
                    partial = self.spool.claim(info.file_size)
                    _extract(archive, info, partial)
                    try:
                        outcome = self._take(watch, partial, info.filename)
                    except Unacceptable as exc:
                        self._quarantine_member(path, archive, info, str(exc))
                        skipped += 1
                        continue
                    taken += outcome == "ingested"
                    skipped += outcome != "ingested"
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            raise Unacceptable(f"corrupt zip archive: {exc}") from None
        except NotImplementedError as exc:
            raise Unacceptable(f"zip archive uses an unsupported feature: {exc}") from None
        return f"zip: {taken} instances" + (f", {skipped} other files" if skipped else "")

    def _after(self, watch: WatchConfig, path: Path) -> None:
        """Delete, move or keep a taken file. The journal's note of it is pruned later
        (DropFolders.rescan), so this costs no commit."""
        if watch.after == "delete":
            path.unlink(missing_ok=True)
        elif watch.after == "move":
            target = _free_name(watch.done_folder / path.relative_to(watch.path))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)

    def _quarantine_file(self, path: Path, reason: str) -> Path:
        target = _free_name(self.quarantine / path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        _write_reason(target, reason)
        log.warning("quarantined %s as %s: %s", path, target, reason)
        self.metrics.series_quarantined.labels("bad_input").inc()
        return target

    def _quarantine_member(
        self, path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, reason: str
    ) -> None:
        safe = "_".join(PurePosixPath(info.filename).parts) or "member"
        target = _free_name(self.quarantine / f"{path.name}-{safe}")
        target.parent.mkdir(parents=True, exist_ok=True)
        _extract(archive, info, target)
        _write_reason(target, f"from zip archive {path}: {reason}")
        log.warning("quarantined %s from %s: %s", info.filename, path, reason)


def _checked_members(archive: zipfile.ZipFile, watch: WatchConfig) -> list[zipfile.ZipInfo]:
    """The file members of an archive, refusing the whole archive when any is unsafe."""
    members = [info for info in archive.infolist() if not info.is_dir()]
    for info in members:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or ":" in info.filename:
            raise Unacceptable(f"zip member {info.filename!r} points outside the archive")
        if info.flag_bits & 0x1:
            raise Unacceptable(f"zip member {info.filename!r} is encrypted")
    if len(members) > watch.zip_max_files:
        raise Unacceptable(
            f"zip archive has {len(members)} files; watch.zip_max_files is {watch.zip_max_files}"
        )
    total = sum(info.file_size for info in members)
    if total > watch.zip_max_bytes:
        raise Unacceptable(
            f"zip archive expands to {total} bytes; watch.zip_max_bytes is {watch.zip_max_bytes}"
        )
    return members


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Extract one member, never writing more than it declares (a lying header is a bomb).
    When that fails (a bomb, a corrupt member), nothing is left at ``target``."""
    written = 0
    try:
        with archive.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(COPY_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise Unacceptable(
                        f"zip member {info.filename!r} expands beyond its stated size"
                    )
                dst.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _free_name(path: Path) -> Path:
    """``path``, or ``path`` with a counter added if that name is taken."""
    candidate, n = path, 1
    while candidate.exists() or candidate.with_name(candidate.name + ".reason.txt").exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def _write_reason(target: Path, reason: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    target.with_name(target.name + ".reason.txt").write_text(f"{stamp}\n{reason}\n")


class _Events(FileSystemEventHandler):
    def __init__(self, sink: queue.SimpleQueue[tuple[str, bool]]) -> None:
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if event.event_type == "moved":
            self.sink.put((os.fsdecode(event.dest_path), True))
        elif event.event_type in ("created", "modified", "closed"):
            self.sink.put((os.fsdecode(event.src_path), False))


class DropFolders:
    """Watches every configured drop folder and feeds complete files to the Ingestor."""

    def __init__(self, watches: tuple[WatchConfig, ...], ingestor: Ingestor) -> None:
        self.watches = watches
        self.ingestor = ingestor
        self._events: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        self._candidates: dict[Path, _Candidate] = {}
        self._observers: list[Observer] = []
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
            if path.is_relative_to(watch.path) and not _hidden(path, watch):
                if watch.after == "move" and path.is_relative_to(watch.done_folder):
                    return None
                if not watch.recursive and path.parent != watch.path:
                    return None
                return watch
        return None

    def _consider(self, path: Path, moved_in: bool = False) -> None:
        watch = self._watch_of(path)
        if watch is None:
            return
        candidate = self._candidates.setdefault(path, _Candidate(watch))
        candidate.moved_in = candidate.moved_in or moved_in

    def rescan(self) -> None:
        self.ingestor.journal.prune_dropped()
        for watch in self.watches:
            for path in _walk(watch):
                self._consider(path)

    def _run(self) -> None:
        next_rescan = 0.0
        while not self._stop.is_set():
            try:
                while True:
                    name, moved_in = self._events.get_nowait()
                    self._consider(Path(name), moved_in)
            except queue.Empty:
                pass
            if time.monotonic() >= next_rescan:
                self.rescan()
                next_rescan = time.monotonic() + min(w.rescan_seconds for w in self.watches)
            self._take_settled()
            self._stop.wait(TICK_SECONDS)

    def _take_settled(self) -> None:
        now = time.monotonic()
        for path, candidate in list(self._candidates.items()):
            if self._stop.is_set():
                return
            try:
                stat = path.stat()
            except FileNotFoundError:
                del self._candidates[path]
                continue
            if (stat.st_size, stat.st_mtime_ns) != (candidate.size, candidate.mtime_ns):
                candidate.size, candidate.mtime_ns = stat.st_size, stat.st_mtime_ns
                candidate.stable_since = now
                if not candidate.moved_in:
                    continue
            if (
                not candidate.moved_in
                and now - candidate.stable_since < candidate.watch.settle_seconds
            ):
                continue
            try:
                outcome = self.ingestor.ingest(candidate.watch, path)
            except RejectedInstance as exc:
                log.warning("drop folder paused: %s", exc)
                return
            except FileNotFoundError:
                outcome = "vanished before it was taken"
            except Exception:
                log.exception("cannot ingest %s; will try again", path)
                candidate.stable_since = now
                continue
            del self._candidates[path]
            if outcome != "taken before":
                log.info("drop folder %s: %s", path, outcome)


def _hidden(path: Path, watch: WatchConfig) -> bool:
    return any(part.startswith(".") for part in path.relative_to(watch.path).parts)


def _walk(watch: WatchConfig) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(watch.path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if watch.recursive else []
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name
