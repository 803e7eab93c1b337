"""Taking one dropped file or zip archive in: read through one open descriptor (never a
link's target), copied into the spool, checked, journaled; then the original is deleted or
moved only if it is still the file that was read. What is refused goes to quarantine once,
with its reason (station.store.quarantine). When a file is taken, and the rules for writers, are
DropFolders' concern (station.receive.folder)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from station.config import WatchConfig
from station.dicom.identify import identify
from station.errors import RejectedInstance
from station.receive.inputs import (
    COPY_CHUNK,
    Extraction,
    RejectedInput,
    checked_members,
    is_zip_archive,
    open_input,
    open_zip,
)
from station.receive.intake import Intake, Origin
from station.store.quarantine import Quarantine, free_name
from station.store.records import Dropped
from station.store.spool import full_disk_reason

log = logging.getLogger(__name__)


class Incomplete(Exception):
    """The file may still be being written: leave it and look again when it changes."""


class Changed(Exception):
    """The file changed while it was being taken: take it again later."""


class Ingestor:
    """Takes one dropped file or zip archive into the spool and journal."""

    def __init__(self, intake: Intake, ae_title: str) -> None:
        self.intake = intake
        self.spool = intake.spool
        self.journal = intake.journal
        self.metrics = intake.metrics
        self.ae_title = ae_title
        self.quarantine = Quarantine(self.spool.root, self.journal)

    def ingest(self, watch: WatchConfig, path: Path) -> str:
        """Ingest ``path``; return what happened. Raises RejectedInstance (disk full) to
        leave the file where it is for a later try, Incomplete or Changed to look again
        later."""
        st = path.lstat()
        if self.quarantine.held_in_place(path, st):
            return "taken before"  # refused, could not be moved: judged again once changed
        dropped = Dropped(path, st.st_size, st.st_mtime_ns)
        if self.journal.was_dropped(dropped):
            outcome = "taken before"
        else:
            kind = "link" if path.is_symlink() else "file"
            try:
                with open_input(path) as fh:
                    if os.fstat(fh.fileno()).st_ino != st.st_ino:
                        raise Changed  # replaced since we looked
                    if is_zip_archive(fh):
                        kind = "zip"
                        outcome = self._ingest_zip(watch, path, fh)
                        self.journal.mark_dropped(dropped, outcome)
                    else:
                        outcome = self._ingest_file(watch, path, fh, dropped)
            except RejectedInput as exc:
                return self.refuse(path, kind, exc.reason, str(exc), watch)
        if not _unchanged(path, st):
            raise Changed
        try:
            self._after(watch, path)
        except OSError as exc:
            self.refuse(
                path,
                "file",
                "undeletable",
                f"{path}: taken, but cannot {watch.after} it: {exc.strerror or exc}",
                watch,
            )
        return outcome

    def refuse(self, path: Path, kind: str, reason: str, detail: str, watch: WatchConfig) -> str:
        """Quarantine ``path`` (once), count it, say what happened."""
        item = self.quarantine.hold(path, kind, reason, detail, watch.path)
        self.metrics.quarantined_inputs.labels(reason).inc()
        return f"quarantined (item {item.id}): {detail}"

    def _ingest_file(self, watch: WatchConfig, path: Path, fh: BinaryIO, dropped: Dropped) -> str:
        before = os.fstat(fh.fileno())
        partial = self.spool.claim(before.st_size)
        try:
            with self._filling(partial), open(partial, "wb") as out:
                shutil.copyfileobj(fh, out, COPY_CHUNK)
            after = os.fstat(fh.fileno())
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise Changed
            return self._take(watch, partial, path.name, dropped)
        except BaseException:
            self.spool.remove(partial)
            raise

    @contextlib.contextmanager
    def _filling(self, partial: Path) -> Iterator[None]:
        """Out of space while writing a spool file: RejectedInstance (0xA700, disk_full),
        on which the drop folder pauses and tries again later; nothing partial stays."""
        try:
            yield
        except OSError as exc:
            if full_disk_reason(exc) == "disk_full":
                raise self.spool.refuse(partial, exc, "copy into the spool") from exc
            raise

    def _take(
        self, watch: WatchConfig, partial: Path, name: str, dropped: Dropped | None = None
    ) -> str:
        """Journal one file already copied to ``partial`` (claimed from the spool); the
        caller removes ``partial`` when this raises."""
        try:
            header = identify(partial)
        except RejectedInstance as exc:
            if exc.reason == "dicomdir":
                self.spool.remove(partial)
                if dropped is not None:
                    self.journal.mark_dropped(dropped, "skipped: DICOMDIR")
                return "skipped: DICOMDIR"
            if exc.incomplete and dropped is not None:
                raise Incomplete(str(exc)) from None
            self.metrics.instances_rejected.labels(exc.reason).inc()
            raise RejectedInput(exc.reason, f"{name}: {exc}") from None
        if dropped is not None and header.pixels_missing:
            raise Incomplete("an image without its pixel data: the data set ends before it")
        origin = Origin(
            calling_ae="", called_ae=self.ae_title, peer=str(watch.path), source="folder"
        )
        self.intake.take(partial, header, origin, dropped)
        return "ingested"

    def _ingest_zip(self, watch: WatchConfig, path: Path, fh: BinaryIO) -> str:
        """Take an archive's members, all of them checked first (RejectedInput refuses the
        archive whole); a member that is not DICOM goes to quarantine alone."""
        with open_zip(fh) as archive:
            members = checked_members(archive, watch.zip_limits)
            extraction = Extraction(archive, watch.zip_limits)
            taken = skipped = 0
            for info in members:
                partial = self.spool.claim(info.file_size)
                try:
                    with self._filling(partial):
                        extraction.extract(info, partial)
                    outcome = self._take(watch, partial, info.filename)
                except RejectedInput as exc:
                    self.spool.remove(partial)
                    if exc.reason in ("zip_limits", "corrupt_zip"):
                        raise
                    self._quarantine_member(watch, path, extraction, info, exc)
                    skipped += 1
                    continue
                except BaseException:
                    self.spool.remove(partial)
                    raise
                taken += outcome == "ingested"
                skipped += outcome != "ingested"
        return f"zip: {taken} instances" + (f", {skipped} other files" if skipped else "")

    def _quarantine_member(
        self,
        watch: WatchConfig,
        path: Path,
        extraction: Extraction,
        info: zipfile.ZipInfo,
        exc: RejectedInput,
    ) -> None:
        safe = "_".join(PurePosixPath(info.filename).parts) or "member"
        self.quarantine.hold_copy(
            lambda target: extraction.extract(info, target),
            f"{path.name}-{safe}",
            "member",
            exc.reason,
            f"from zip archive {path}: {exc}",
            f"{path}:{info.filename}",
            watch.path,
        )
        self.metrics.quarantined_inputs.labels(exc.reason).inc()

    def _after(self, watch: WatchConfig, path: Path) -> None:
        """Delete, move or keep a taken file. The journal's note of it is pruned later
        (DropFolders.rescan), so this costs no commit."""
        if watch.after == "delete":
            path.unlink(missing_ok=True)
        elif watch.after == "move":
            target = free_name(watch.done_folder / path.relative_to(watch.path))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)


def _unchanged(path: Path, st: os.stat_result) -> bool:
    """Whether ``path`` is still the file ``st`` described (not replaced, not written)."""
    try:
        now = path.lstat()
    except FileNotFoundError:
        return False
    return (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns) == (
        st.st_ino,
        st.st_dev,
        st.st_size,
        st.st_mtime_ns,
    )
