"""The journal is never trusted blindly, and one station per storage (issue 14, items 2, 3).

Schema versions in-process; the rest end to end: `station run` subprocesses, DCMTK
storescu/storescp on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    StationProcess,
    StoreSCP,
    dicom_destination,
    storescu,
    storescu_successes,
    wait_for,
)
from test_failures import FAST_RETRY, arrived_uids, make_instances

from station.errors import JournalError
from station.store.journal import schema
from station.store.journal.schema import SCHEMA_VERSION
from station.store.journal.sqlite import SQLiteJournal

# --- schema versions (in-process) ----------------------------------------------------------


def test_new_journal_is_stamped_with_the_schema_version(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    assert journal.version() == SCHEMA_VERSION == len(schema.MIGRATIONS)
    assert journal.fresh
    journal.close()
    again = SQLiteJournal(tmp_path / "journal.sqlite")
    assert not again.fresh
    again.check_integrity()
    again.close()


def test_unversioned_journal_with_the_tables_is_adopted_as_version_1(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.executescript(schema.SCHEMA_V1)  # as stations wrote it before versions
    db.execute("INSERT INTO events (ts, kind) VALUES (1, 'kept')")
    db.commit()
    db.close()
    # A read-only command does not write to it: it is version 1, and station run migrates.
    with pytest.raises(JournalError, match=f"schema version 1, not {SCHEMA_VERSION}"):
        SQLiteJournal(path, migrate=False)
    journal = SQLiteJournal(path)
    assert journal.version() == SCHEMA_VERSION and not journal.fresh
    journal.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT kind FROM events").fetchall() == [("kept",)]
    db.close()


def test_newer_journal_is_refused_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    SQLiteJournal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(
        JournalError, match=f"schema version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}"
    ):
        SQLiteJournal(path)
    config = tmp_path / "station.yaml"
    config.write_text(yaml.safe_dump({"storage": str(tmp_path)}))
    for command in ("run", "recover"):  # neither starts on it nor rebuilds it
        done = subprocess.run(
            [sys.executable, "-m", "station", command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert "written by a newer station" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("journal.sqlite.broken-*"))


def test_migrations_run_in_order_each_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Next steps (a table, then a function) take the journal on by one version each; a
    read-only opener refuses the old version rather than writing to it."""
    path = tmp_path / "journal.sqlite"
    SQLiteJournal(path).close()
    calls: list[int] = []

    now, table, last = SCHEMA_VERSION, SCHEMA_VERSION + 1, SCHEMA_VERSION + 2

    def step_last(db: sqlite3.Connection) -> None:
        calls.append(last)
        db.execute("INSERT INTO later (reason) VALUES ('from the last step')")

    steps = [
        *schema.MIGRATIONS,
        (table, "CREATE TABLE later (id INTEGER PRIMARY KEY, reason TEXT)"),
        (last, step_last),
    ]
    monkeypatch.setattr(schema, "MIGRATIONS", steps)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", last)
    with pytest.raises(JournalError, match=f"schema version {now}, not {last}"):
        SQLiteJournal(path, migrate=False)
    journal = SQLiteJournal(path)
    assert journal.version() == last
    journal.close()
    SQLiteJournal(path).close()
    assert calls == [last]
    db = sqlite3.connect(path)
    assert db.execute("SELECT reason FROM later").fetchall() == [("from the last step",)]
    db.close()


# --- end to end -----------------------------------------------------------------------------


def run_station(workdir: Path, config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`station run` expected to refuse to start (bounded: a timeout fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "station", "run", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )


def data_files(storage: Path) -> set[Path]:
    return {p for p in (storage / "spool").rglob("*") if p.is_file() and p.stat().st_size}


@pytest.mark.e2e
def test_empty_journal_refuses_start_and_recover_delivers_everything(tmp_path: Path) -> None:
    """100 spooled instances: 50 delivered (kept for retention), 50 acknowledged and pending.
    The journal truncated to 0 (a bad restore): start-up refuses and deletes nothing;
    `station recover` re-queues all 100, and every one is delivered."""
    pacs = StoreSCP(tmp_path / "pacs").start()
    config: dict[str, Any] = {"destinations": {"pacs": dicom_destination(pacs, retry=FAST_RETRY)}}
    station = StationProcess(tmp_path / "station", config).start()
    storage = station.storage
    try:
        delivered = make_instances(tmp_path / "delivered", 50)
        pending = make_instances(tmp_path / "pending", 50)
        sent = storescu(station.port, list(delivered), extra=("-v",))
        assert storescu_successes(sent) == 50, sent.stderr
        seen: dict[Path, str] = {}
        wait_for(lambda: arrived_uids(pacs, seen) >= set(delivered.values()), 30, message="50")
        pacs.stop()
        sent = storescu(station.port, list(pending), extra=("-v",))
        assert storescu_successes(sent) == 50, sent.stderr
        station.stop(signal.SIGKILL)
        before = data_files(storage)
        assert len(before) == 100

        journal = storage / "journal.sqlite"
        os.truncate(journal, 0)
        for side in ("journal.sqlite-wal", "journal.sqlite-shm"):
            (storage / side).unlink(missing_ok=True)
        refused = run_station(station.workdir, station.config_path)
        assert refused.returncode == 1, refused.stderr
        assert f"journal {journal} is empty" in refused.stderr
        assert f"station recover --config {station.config_path}" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert data_files(storage) == before  # nothing deleted

        recovered = station.cli("recover")
        assert recovered.returncode == 0, recovered.stderr
        assert "re-queued 100 instances" in recovered.stdout
        assert list(storage.glob("journal.sqlite.broken-*")), "the old journal is kept aside"

        pacs.start()
        station.start()
        everything = set(delivered.values()) | set(pending.values())
        wait_for(lambda: arrived_uids(pacs, seen) >= everything, 60, message="all 100 again")
    finally:
        station.stop(signal.SIGKILL)
        pacs.stop()


@pytest.mark.e2e
def test_random_bytes_in_the_journal_header_give_a_clear_message(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    config: dict[str, Any] = {
        "destinations": {"pacs": dicom_destination(pacs)},
        "series": {"quiet_seconds": 0.5},
    }
    station = StationProcess(tmp_path / "station", config).start()
    storage = station.storage
    try:
        made = make_instances(tmp_path / "made", 4)
        assert storescu_successes(storescu(station.port, list(made), extra=("-v",))) == 4
        assert station.stop() == 0
        journal = storage / "journal.sqlite"
        with open(journal, "r+b") as fh:
            fh.write(os.urandom(100))  # the whole database header
        for command in (["status"], ["trace", "1.2.3"]):
            shown = station.cli(*command)
            assert shown.returncode == 1
            assert shown.stderr.startswith(f"error: journal {journal} cannot be read")
        refused = run_station(station.workdir, station.config_path)
        assert refused.returncode == 1, refused.stderr
        assert f"journal {journal} cannot be read: file is not a database" in refused.stderr
        assert "station recover" in refused.stderr and "Traceback" not in refused.stderr

        station.config_path.write_text(yaml.safe_dump(station.config))
        recovering = subprocess.Popen(
            [sys.executable, "-m", "station", "run", "--recover", "-c", str(station.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=station.workdir,
        )
        try:
            seen: dict[Path, str] = {}
            wait_for(lambda: arrived_uids(pacs, seen) >= set(made.values()), 30, message="4")
            kept = list(storage.glob("journal.sqlite.broken-*"))
            assert kept and kept[0].read_bytes()[:100] != b"SQLite format 3\0"[:100]
        finally:
            recovering.send_signal(signal.SIGTERM)
            output, _ = recovering.communicate(timeout=60)
        assert "rebuilt the journal from the spool: 4 instances re-queued" in output
    finally:
        station.stop(signal.SIGKILL)
        pacs.stop()


@pytest.mark.e2e
def test_second_station_on_one_storage_exits_and_the_first_keeps_serving(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    config: dict[str, Any] = {"destinations": {"pacs": dicom_destination(pacs)}}
    first = StationProcess(tmp_path / "first", config).start()
    storage = first.storage
    second = StationProcess(tmp_path / "second", {**config, "storage": str(storage)})
    second.workdir.mkdir()
    second.config_path.write_text(yaml.safe_dump(second.config))
    try:
        made = make_instances(tmp_path / "made", 20)
        files = list(made)
        assert storescu_successes(storescu(first.port, files[:10], extra=("-v",))) == 10
        free_before = {p for p in (storage / "spool").rglob("*.dcm")}

        refused = run_station(second.workdir, second.config_path)
        assert refused.returncode == 1
        assert f"storage {storage} is in use by PID {first.proc.pid}" in refused.stderr
        assert {p for p in (storage / "spool").rglob("*.dcm")} >= free_before  # untouched
        recover = first.cli("recover")
        assert recover.returncode == 1 and "is in use by PID" in recover.stderr

        assert storescu_successes(storescu(first.port, files[10:], extra=("-v",))) == 10
        seen: dict[Path, str] = {}
        wait_for(lambda: arrived_uids(pacs, seen) == set(made.values()), 30, message="all 20")
        status = first.cli("status")  # read-only commands work beside the running station
        assert status.returncode == 0 and "pacs" in status.stdout, status.stderr
        one = next(iter(made.values()))
        assert first.cli("trace", one).returncode == 0
        assert first.cli("check").returncode == 0
        wait_for(lambda: len(pacs.files()) >= 20, 5, message="files")
        assert len(pacs.files()) == 20  # each exactly once
    finally:
        first.stop(signal.SIGKILL)
        pacs.stop()
