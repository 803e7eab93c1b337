"""The journal's SQLite schema and its history: ``PRAGMA user_version`` says which step of
MIGRATIONS a journal file has reached; opening it runs the steps it lacks.

Version 1 is the schema as it was before versions were kept, so an unversioned journal
that has the tables is adopted by running it (every statement is IF NOT EXISTS).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from station.errors import JournalError

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    completed_at REAL,
    calling_ae TEXT, called_ae TEXT, peer TEXT, source TEXT,
    labels TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS batches_state ON batches(state, series_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    batch_id INTEGER NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class TEXT, transfer_syntax TEXT,
    path TEXT NOT NULL, size INTEGER NOT NULL,
    calling_ae TEXT, called_ae TEXT, peer TEXT, source TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_batch ON instances(batch_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    batch_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    routes TEXT NOT NULL,
    transforms TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    only_failed INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries(state, destination, next_attempt);
CREATE TABLE IF NOT EXISTS instance_failures (
    delivery_id INTEGER NOT NULL,
    sop_uid TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (delivery_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    batch_id INTEGER,
    kind TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_batch ON events(batch_id);
CREATE TABLE IF NOT EXISTS dropped_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    at REAL NOT NULL
);
"""

# Version 2: warning statuses peers answered per instance sent, and rejected inputs held
# in quarantine (station/store/quarantine.py reads and writes these rows).
SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS instance_warnings (
    delivery_id INTEGER NOT NULL,
    sop_uid TEXT NOT NULL,
    status INTEGER NOT NULL,
    comment TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (delivery_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    source TEXT NOT NULL,
    watch TEXT,
    path TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'held',
    resolved_at REAL
);
CREATE INDEX IF NOT EXISTS quarantine_state ON quarantine(state, source);
"""
# The schema's history: step N takes a journal from version N-1 to N (``PRAGMA
# user_version``), each in its own transaction. A step is SQL or a function of the open
# connection; a new table or column is a new step appended here, never an edit of an old one.
Migration = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[int, Migration]] = [
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class NewerJournal(JournalError):
    """The journal was written by a newer station: not damaged, and not to be rebuilt."""


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def has_tables(db: sqlite3.Connection) -> bool:
    """Whether the journal holds the station's tables (a new, empty file does not)."""
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='instances'")
    return row.fetchone() is not None


def upgrade(db: sqlite3.Connection, path: Path, migrate: bool) -> bool:
    """Bring the journal at ``path`` up to SCHEMA_VERSION, each step in its own transaction;
    return whether it was fresh (no tables). ``migrate`` False (read-only commands) refuses
    an outdated journal instead of writing to it; a newer one raises NewerJournal."""
    found = version(db)
    if found > SCHEMA_VERSION:
        raise NewerJournal(
            f"journal {path} has schema version {found}; this station knows "
            f"versions up to {SCHEMA_VERSION}: it was written by a newer station. "
            "Run that version (or a newer one), or restore a journal it wrote"
        )
    fresh = found == 0 and not has_tables(db)
    if found == 0 and not fresh:
        found = 1  # the version 1 schema, only not stamped yet
    steps = [(v, step) for v, step in MIGRATIONS if v > found]
    if steps and not migrate:
        raise JournalError(
            f"journal {path} has schema version {found}, not {SCHEMA_VERSION}: "
            "`station run` brings it up to date"
        )
    for target, step in steps:
        db.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(step, str):
                for statement in step.split(";"):
                    if statement.strip():
                        db.execute(statement)
            else:
                step(db)
            db.execute(f"PRAGMA user_version={int(target)}")
        except BaseException:
            rollback(db)
            raise
        db.execute("COMMIT")
    return fresh


def rollback(db: sqlite3.Connection) -> None:
    """Roll back what is still open. SQLite may have rolled back by itself (disk full,
    I/O error); then there is nothing to do, and the next transaction starts clean."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            if db.in_transaction:
                raise
