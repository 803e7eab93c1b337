"""The journal is never trusted blindly: checked at start, and rebuilt from the spool when
it cannot be trusted.

A missing, empty, unreadable or damaged journal beside spool files that hold data would,
taken at its word, make every spooled instance look never acknowledged (and removed).
``open_journal`` refuses that with a message naming the journal and ``station recover``;
``rebuild`` keeps the broken journal aside (never deleted) and journals every spooled
instance that parses as just received, so each is routed and delivered again
(at-least-once: duplicates allowed, nothing lost).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from station.dicom.identify import identify, read_header
from station.dicom.pdu import IMPLEMENTATION_CLASS_UID
from station.errors import JournalError, RejectedInstance
from station.store.journal import Journal
from station.store.journal.schema import NewerJournal
from station.store.journal.sqlite import SQLiteJournal
from station.store.records import Received
from station.store.spool import Spool, make_folder

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.sqlite"
RECOVERED_PEER = "station recover"


def journal_path(storage: Path) -> Path:
    return storage / JOURNAL_NAME


def untrusted(storage: Path, spool: Spool) -> str | None:
    """Why the journal under ``storage`` cannot be trusted with this spool, or None.
    Raises NewerJournal for a journal of a newer schema (no rebuild would be right)."""
    path = journal_path(storage)
    has_data = bool(spool.data_files())
    if not path.exists() or path.stat().st_size == 0:
        if not has_data:
            return None  # a new station: nothing to lose
        return f"journal {path} is {'empty' if path.exists() else 'missing'}"
    try:
        journal = SQLiteJournal(path)
    except NewerJournal:
        raise  # sound, only newer than this code: neither trusted nor rebuilt
    except JournalError as exc:
        return str(exc)
    try:
        journal.check_integrity()
        if has_data and journal.fresh:
            return f"journal {path} holds no tables"
    except JournalError as exc:
        return str(exc)
    finally:
        journal.close()
    return None


def open_journal(storage: Path, spool: Spool, hint: str = "station recover") -> Journal:
    """The journal for ``station run``, checked; raise JournalError when it cannot be
    trusted, naming it and the command (``hint``) that rebuilds it from the spool."""
    problem = untrusted(storage, spool)
    if problem is not None:
        files = len(spool.data_files())
        raise JournalError(
            f"{problem}, beside {files} spooled instance files under {spool.files}. "
            f"Nothing was changed or deleted. Run `{hint}` to rebuild the journal from the "
            "spool (the old one is kept aside; every instance is delivered again), or "
            "`station run --recover` to do that and start"
        )
    return SQLiteJournal(journal_path(storage))


@dataclass
class Recovered:
    """What ``rebuild`` did."""

    kept_aside: list[Path] = field(default_factory=list)
    requeued: int = 0
    unreadable: list[Path] = field(default_factory=list)  # moved to quarantine/


def set_aside(path: Path, now: float) -> list[Path]:
    """Rename the journal and its -wal and -shm files to ``<name>.broken-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    moved = []
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            target = path.with_name(f"{path.name}.broken-{stamp}{suffix}")
            os.replace(source, target)
            moved.append(target)
    return moved


def rebuild(storage: Path, spool: Spool, now: float | None = None) -> Recovered:
    """Keep the journal aside and journal every spooled instance again, as received now.
    Files that do not parse go to ``quarantine/spool-<time>/``; empty ones (made ahead,
    never used) are left for the start-up clean-up. The caller holds the storage lock."""
    now = time.time() if now is None else now
    result = Recovered(kept_aside=set_aside(journal_path(storage), now))
    journal = SQLiteJournal(journal_path(storage))
    try:
        for path in spool.data_files():
            try:
                header = identify(path)
            except RejectedInstance as exc:
                result.unreadable.append(_quarantine(spool, path, now))
                log.warning("recover: %s does not parse (%s): moved to quarantine", path, exc)
                continue
            source, calling = _sender(path)
            received = Received(
                header.sop_uid,
                header.study_uid,
                header.series_uid,
                header.sop_class,
                header.transfer_syntax,
                path,
                path.stat().st_size,
                calling,
                "",
                RECOVERED_PEER,
                source,
            )
            _batch, stale = journal.record_instance(received, now=now)
            if stale is not None:  # the same instance twice: the later copy wins
                spool.remove(stale)
        result.requeued = journal.instance_count()
    finally:
        journal.close()
    return result


def _sender(path: Path) -> tuple[str, str]:
    """Source and calling AE as far as the file tells: the station's own File Meta
    Information (written on receipt over DICOM) names the calling AE; other files came
    from a drop folder."""
    try:
        meta = read_header(path).file_meta
    except Exception:
        return "folder", ""
    if str(meta.get("ImplementationClassUID", "")) == IMPLEMENTATION_CLASS_UID:
        return "scp", str(meta.get("SourceApplicationEntityTitle", "")).strip()
    return "folder", ""


def _quarantine(spool: Spool, path: Path, now: float) -> Path:
    folder = spool.quarantine / f"spool-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    make_folder(folder)
    target = folder / f"{path.parent.name}-{path.name}"
    shutil.move(path, target)
    return target
