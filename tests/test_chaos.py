"""Chaos (issue 14, item 8): `station run` killed with SIGKILL at random moments while three
senders send, series complete, a slow plugin hook runs and series are dispatched to DCMTK's
storescp; restarted each time. At the end every instance the station acknowledged
(0x0000, as the pynetdicom senders saw it) must have arrived at storescp or be
dead-lettered: ``lost == 0``; duplicates are allowed (at-least-once) and counted.

Replay a run with the seed it prints: ``CHAOS_SEED=N``; ``CHAOS_CYCLES`` sets the number of
kills (default 20). Everything on 127.0.0.1; every process is stopped by its PID.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import VALID, StationProcess, StoreSCP, dicom_destination
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

pytestmark = pytest.mark.e2e

SENDERS = 3
SERIES_PER_SENDER = 30
PER_SERIES = 10  # one association per series: kills land inside associations
SETTLE_SECONDS = 60  # after the last restart, for everything acknowledged to arrive
SLOW_PLUGIN = '''
"""Chaos test plugin: a classify hook that takes a while, so kills land inside hooks."""
import random
import time

from station import hookimpl


@hookimpl
def station_classify_series(series):
    time.sleep(random.uniform(0.0, 0.3))
    return None
'''


def make_corpus(folder: Path, sender: int) -> list[tuple[Path, str]]:
    """Unique copies of MR_small (new Study/Series/SOP Instance UIDs), series by series."""
    folder.mkdir(parents=True)
    ds = dcmread(VALID / "MR_small.dcm")
    ds.StudyInstanceUID = generate_uid()
    made = []
    for series in range(SERIES_PER_SENDER):
        ds.SeriesInstanceUID = generate_uid()
        ds.SeriesNumber = series + 1
        for number in range(PER_SERIES):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = number + 1
            path = folder / f"{sender}-{series:02d}-{number:02d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            made.append((path, str(ds.SOPInstanceUID)))
    return made


class Sender(threading.Thread):
    """A modality: sends its series one association each, sends again what was not
    acknowledged (the station was killed), until everything is or ``stop`` is set.
    ``acknowledged`` holds exactly the SOP Instance UIDs answered 0x0000."""

    def __init__(self, port: int, corpus: list[tuple[Path, str]], seed: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.port = port
        self.pending = list(corpus)
        self.random = random.Random(seed)
        self.stop = stop
        self.acknowledged: set[str] = set()
        self.refused: Counter[int] = Counter()
        self.associations = 0

    def run(self) -> None:
        ae = AE(ae_title="CHAOSSCU")
        # Short: a C-STORE in flight when the station is killed waits this long for an
        # answer; one that takes longer is just not acknowledged (and sent again).
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2
        first = dcmread(self.pending[0][0], stop_before_pixels=True)
        ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
        while self.pending and not self.stop.is_set():
            assoc = ae.associate("127.0.0.1", self.port, ae_title="STATION")
            if not assoc.is_established:
                self.stop.wait(0.05)  # the station is down: try again shortly
                continue
            self.associations += 1
            for path, uid in self.pending[:PER_SERIES]:
                answer = assoc.send_c_store(path)
                status = int(answer.Status) if answer and "Status" in answer else None
                if status == 0x0000:
                    self.acknowledged.add(uid)
                elif status is not None:
                    self.refused[status] += 1
                if not assoc.is_established or self.stop.is_set():
                    break
            if assoc.is_established:
                assoc.release()
            self.pending = [(p, uid) for p, uid in self.pending if uid not in self.acknowledged]
            self.stop.wait(self.random.uniform(0, 0.1))


def arrivals(log: Path) -> Counter[str]:
    """How many times storescp received each SOP Instance UID (its files are named
    ``<modality>.<SOP Instance UID>``; -xcr appends each file name to ``log``)."""
    if not log.exists():
        return Counter()
    names = [line.strip() for line in log.read_text().splitlines() if line.strip()]
    return Counter(name.partition(".")[2] for name in names)


def dead_lettered(journal: Path) -> set[str]:
    """SOP Instance UIDs in dead-lettered deliveries (whole batches or single instances)."""
    with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT i.sop_uid FROM instances i JOIN deliveries d ON d.batch_id=i.batch_id"
            " WHERE d.state='dead_letter' UNION SELECT sop_uid FROM instance_failures"
        ).fetchall()
    return {row[0] for row in rows}


def test_kill_9_at_random_points_loses_nothing_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 32)))
    cycles = int(os.environ.get("CHAOS_CYCLES", "20"))
    chance = random.Random(seed)
    with capsys.disabled():
        print(f"\nchaos: seed={seed} cycles={cycles} (replay: CHAOS_SEED={seed})")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # refused associations

    received = tmp_path / "received.txt"
    pacs = StoreSCP(tmp_path / "pacs", extra=("-xcr", f"echo #f >> {received}")).start()
    plugin = tmp_path / "slow_classify.py"
    plugin.write_text(SLOW_PLUGIN)
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "series": {"quiet_seconds": 0.3, "max_wait_seconds": 5},
        "plugins": [str(plugin)],
        "destinations": {
            "pacs": dicom_destination(
                pacs, retry={"max_attempts": 50, "initial_seconds": 0.2, "max_seconds": 1}
            )
        },
    }
    station = StationProcess(tmp_path / "station", config)
    stop = threading.Event()
    started = time.monotonic()
    senders: list[Sender] = []
    try:
        station.start()
        station.config["listen"]["port"] = station.port  # restarts keep the senders' address
        senders = [
            Sender(station.port, make_corpus(tmp_path / f"corpus{n}", n), seed + n, stop)
            for n in range(SENDERS)
        ]
        for sender in senders:
            sender.start()
        for _cycle in range(cycles):
            # Kill soon after start (receiving, recovering), or later (series completing,
            # the slow hook, dispatching while receiving goes on).
            time.sleep(chance.choice([chance.uniform(0.05, 0.4), chance.uniform(0.4, 1.5)]))
            station.stop(signal.SIGKILL)
            station.start()
        stop.set()
        for sender in senders:
            sender.join(30)
            assert not sender.is_alive(), "a sender did not stop"
        acknowledged = set().union(*(s.acknowledged for s in senders))

        def settled() -> bool:
            journal = station.storage / "journal.sqlite"
            return acknowledged <= set(arrivals(received)) | dead_lettered(journal)

        deadline = time.monotonic() + SETTLE_SECONDS  # then report what is missing
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert station.stop() == 0
        dead = dead_lettered(station.storage / "journal.sqlite")
    finally:
        stop.set()
        station.stop(signal.SIGKILL)
        pacs.stop()

    counts = arrivals(received)
    delivered = acknowledged & set(counts)
    lost = acknowledged - set(counts) - dead
    duplicated = sum(n - 1 for uid, n in counts.items() if uid in acknowledged and n > 1)
    refused = sum((s.refused for s in senders), Counter())
    with capsys.disabled():
        print(
            f"chaos: acknowledged={len(acknowledged)} delivered={len(delivered)} "
            f"lost={len(lost)} duplicated={duplicated} dead_lettered={len(dead)} "
            f"associations={sum(s.associations for s in senders)} refused={dict(refused)} "
            f"kills={cycles} seconds={time.monotonic() - started:.0f} seed={seed}"
        )
    assert acknowledged, "nothing was acknowledged: the chaos tested nothing"
    assert not lost, f"lost {len(lost)} acknowledged instances (seed {seed}): {sorted(lost)[:5]}"
