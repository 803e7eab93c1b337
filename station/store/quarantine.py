"""Quarantine: rejected inputs, held until someone releases or discards them.

Every input the station refuses (a drop-folder file that is not DICOM, a symbolic link, an
unreadable file, a whole zip archive, a member of an accepted archive) is a journal row
(table ``quarantine``): kind, reason (a short code, the metric label), what is wrong in
words, where it came from, when. Its content is moved under ``<storage>/quarantine/<item>/``
beside nothing else: the journal holds the rest. A link is moved as the link itself, never
followed. What cannot be moved (a file in a folder we may not write) is noted as held in
place, and not tried again until it changes. Quarantined series (a plugin failed) live in
the journal's batches; ``station retry`` re-routes them.

``station quarantine release ID`` moves an item back to where it came from, where the drop
folder takes it again; ``discard ID`` deletes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from station.ops.metrics import QUARANTINE_KINDS
from station.store.journal import Journal
from station.store.records import QuarantineItem
from station.store.states import QuarantineState

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes, on Linux file systems


class QuarantineError(Exception):
    """A release or discard that cannot be done; the message says why."""


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """``name`` shortened (in its stem, keeping the suffix) to at most ``limit`` bytes."""
    if len(os.fsencode(name)) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not stem or len(os.fsencode(suffix)) > 16:
        stem, dot, suffix = name, "", ""
    room = limit - len(os.fsencode(dot + suffix))
    short = os.fsencode(stem)[:room].decode("utf-8", errors="ignore")
    return short + dot + suffix


class Quarantine:
    """The quarantine under ``<storage>/quarantine``, with its journal rows."""

    def __init__(self, storage: Path, journal: Journal) -> None:
        self.folder = storage / "quarantine"
        self.journal = journal

    def hold(
        self,
        path: Path,
        kind: str,
        reason: str,
        detail: str,
        watch: Path | None = None,
    ) -> QuarantineItem:
        """Move ``path`` itself (a link is not followed) into quarantine and journal it;
        when it cannot be moved, journal it as held in place."""
        st = path.lstat()
        place = self._new_place(path.name)
        try:
            shutil.move(path, place)
        except OSError as exc:
            with contextlib.suppress(OSError):
                place.parent.rmdir()
            detail = f"{detail}; left in place: cannot move it: {exc.strerror or exc}"
            return self._record(kind, reason, detail, str(path), watch, None, st)
        return self._record(kind, reason, detail, str(path), watch, place, st)

    def hold_copy(
        self,
        write: Callable[[Path], None],
        name: str,
        kind: str,
        reason: str,
        detail: str,
        source: str,
        watch: Path | None = None,
    ) -> QuarantineItem:
        """Journal an item whose content ``write`` puts at the path it is given (a zip
        member, extracted)."""
        place = self._new_place(name)
        write(place)
        return self._record(kind, reason, detail, source, watch, place, place.lstat())

    def adopt_orphans(self) -> int:
        """At start: journal the files under quarantine/ that no row names (the station
        stopped between moving a file there and journaling it, or `station recover` put
        unreadable spool files there), so that status lists them and release/discard work."""
        if not self.folder.is_dir():
            return 0
        known = self.journal.quarantine_paths()
        adopted = 0
        for path in sorted(p for p in self.folder.rglob("*") if not p.is_dir()):
            if str(path) not in known:
                detail = "found in quarantine at start with no journal record"
                self._record("file", "orphan", detail, str(path), None, path, path.lstat())
                adopted += 1
        return adopted

    def _new_place(self, name: str) -> Path:
        folder = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True, mode=0o700)
        return folder / fit_name(name)

    def _record(
        self,
        kind: str,
        reason: str,
        detail: str,
        source: str,
        watch: Path | None,
        place: Path | None,
        st: os.stat_result,
    ) -> QuarantineItem:
        item_id = self.journal.add_quarantine_item(
            kind, reason, detail, source, watch, place, st.st_size, st.st_mtime_ns, time.time()
        )
        item = self.item(item_id)
        assert item is not None
        log.warning(
            "quarantined %s (item %d%s): %s",
            source,
            item_id,
            f", {place}" if place else ", left in place",
            detail,
        )
        return item

    def held_in_place(self, path: Path, st: os.stat_result) -> bool:
        """Whether ``path``, as it is now, was refused before and could not be moved."""
        return self.journal.held_in_place(str(path), st.st_size, st.st_mtime_ns)

    def forget_gone(self) -> int:
        """Items held in place whose file was removed or changed since: mark them gone (a
        changed file is judged again)."""
        gone = []
        for item in self.items():
            if item.path is not None:
                continue
            try:
                st = os.lstat(item.source)
            except FileNotFoundError:
                gone.append(item.id)
                continue
            if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
                gone.append(item.id)
        self._resolve(gone, QuarantineState.GONE)
        return len(gone)

    def items(self, state: QuarantineState | None = QuarantineState.HELD) -> list[QuarantineItem]:
        """Items in ``state`` (None: all), oldest first."""
        return self.journal.quarantine_items(state)

    def item(self, item_id: int) -> QuarantineItem | None:
        return self.journal.quarantine_item(item_id)

    def counts(self) -> dict[str, int]:
        """Held items per kind (every kind present), series quarantined by plugins too."""
        return dict.fromkeys(QUARANTINE_KINDS, 0) | self.journal.quarantine_counts()

    def release(self, item_id: int) -> Path:
        """Move a held item back to where it was found (a free name beside it, if that is
        taken), for the drop folder to take again; return where it went."""
        item = self._held(item_id)
        if item.path is None:
            raise QuarantineError(
                f"quarantine item {item_id} was never moved: it is still at {item.source}; "
                "fix it there (it is taken again once it changes) or discard the item"
            )
        if item.kind == "member":
            archive = item.source.rpartition(":")[0]
            raise QuarantineError(
                f"quarantine item {item_id} is a member of zip archive {archive}, whose other "
                f"members were taken: copy it out of {item.path} yourself, or discard the item"
            )
        held, target = Path(item.path), free_name(Path(item.source))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(held, target)
        except OSError as exc:
            raise QuarantineError(
                f"cannot move quarantine item {item_id} back to {target}: {exc.strerror or exc}"
            ) from None
        with contextlib.suppress(OSError):
            held.parent.rmdir()
        self._resolve([item_id], QuarantineState.RELEASED)
        return target

    def discard(self, item_id: int) -> None:
        """Delete a held item's content (a link itself, never its target)."""
        item = self._held(item_id)
        if item.path is not None:
            held = Path(item.path)
            try:
                held.unlink(missing_ok=True)
            except OSError as exc:
                raise QuarantineError(
                    f"cannot delete quarantine item {item_id} ({held}): {exc.strerror or exc}"
                ) from None
            with contextlib.suppress(OSError):
                held.parent.rmdir()
        self._resolve([item_id], QuarantineState.DISCARDED)

    def _held(self, item_id: int) -> QuarantineItem:
        item = self.item(item_id)
        if item is None:
            raise QuarantineError(f"no quarantine item {item_id} (`station quarantine list`)")
        if item.state != QuarantineState.HELD:
            raise QuarantineError(f"quarantine item {item_id} is already {item.state}")
        return item

    def _resolve(self, ids: list[int], state: QuarantineState) -> None:
        self.journal.resolve_quarantine_items(ids, state, time.time())


def free_name(path: Path) -> Path:
    """``path``, or a name beside it with a counter (within NAME_MAX) when that is taken."""
    candidate, n = path, 1
    stem, dot, suffix = path.name.rpartition(".")
    if not stem or len(os.fsencode(suffix)) > 16:
        stem, dot, suffix = path.name, "", ""
    while os.path.lexists(candidate):
        tail = f"-{n}{dot}{suffix}"
        candidate = path.with_name(fit_name(stem, NAME_MAX - len(os.fsencode(tail))) + tail)
        n += 1
    return candidate
