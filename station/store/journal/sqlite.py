"""The journal in SQLite (WAL, synchronous=FULL): the station's embedded backend.

Its parts, each a module of this package: ``database`` (the connection, its lock and
transactions, the schema checked and migrated on opening), ``batches`` (instances received,
series batches assembled and routed, expiry), ``deliveries`` (dispatch attempts, dead
letters, retry) and ``reports`` (what status and trace read, the quarantine's rows)."""

from __future__ import annotations

from station.store.journal.batches import Batches
from station.store.journal.deliveries import Deliveries
from station.store.journal.reports import Reports


class SQLiteJournal(Batches, Deliveries, Reports):
    """The Journal (station/store/journal/__init__.py) in one SQLite file. Thread-safe; one
    instance per process. See ``Database`` for opening and ``migrate``."""
