"""Quarantine rows and files agree, even after a stop between moving a file and journaling
it (in-process: a real journal in a temporary storage)."""

from __future__ import annotations

from pathlib import Path

from station.store.journal.sqlite import SQLiteJournal
from station.store.quarantine import Quarantine
from station.store.states import QuarantineState


def test_files_in_quarantine_without_a_row_are_journaled_once(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    quarantine = Quarantine(tmp_path, journal)
    dropped = tmp_path / "dropbox" / "not-dicom.txt"
    dropped.parent.mkdir()
    dropped.write_text("hello\n")
    held = quarantine.hold(dropped, "file", "not_dicom", "not a DICOM file")
    orphan = tmp_path / "quarantine" / "20261202-000000-deadbeef" / "moved-then-killed.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"\0" * 200)

    assert quarantine.adopt_orphans() == 1
    assert quarantine.adopt_orphans() == 0  # once
    items = {item.path: item for item in quarantine.items(QuarantineState.HELD)}
    assert set(items) == {held.path, str(orphan)}
    assert items[str(orphan)].reason == "orphan"
    assert items[str(orphan)].size == 200
    quarantine.discard(items[str(orphan)].id)
    assert not orphan.exists()
    journal.close()
