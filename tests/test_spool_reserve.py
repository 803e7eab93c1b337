"""The reserve of free spool files (issue 16): made before a receiver accepts, handed out
without a file creation on the way in, topped up in the background, owner-only whatever
the umask, and taken over by the next start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import VALID, StationProcess, c_store, wait_for

from station.store.spool import FILE_MODE, ON_DEMAND, Spool


def free_files(spool: Spool) -> list[Path]:
    return free_files_under(spool.root)


@pytest.mark.usefixtures("umask_022")
def test_start_makes_the_whole_reserve_before_it_returns(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0, free_files=300)
    spool.free.start()
    made = free_files(spool)
    assert len(made) == 300
    assert sorted(len(list(folder.iterdir())) for folder in spool.files.iterdir()) == [44, 256]
    assert {stat.S_IMODE(p.stat().st_mode) for p in made} == {FILE_MODE}


@pytest.mark.usefixtures("umask_022")
def test_taking_below_half_tops_the_reserve_up_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0, free_files=40)
    spool.free.start()
    taken = [spool.claim() for _ in range(25)]
    assert len(set(taken)) == 25
    assert all(p.exists() and p.stat().st_size == 0 for p in taken)
    # 15 left: below half, so the background thread makes 25 more (each claimed file stays
    # on disk, empty, until its instance is written into it).
    wait_for(lambda: len(free_files(spool)) == 65, 10, message="the reserve topped up")
    assert len(set(free_files(spool)) - set(taken)) == 40


def test_without_a_reserve_files_are_made_a_few_at_a_time_when_needed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0, free_files=0)
    spool.free.start()
    assert free_files(spool) == []
    first = spool.claim()
    assert len(free_files(spool)) == ON_DEMAND
    assert first in free_files(spool)


def test_files_are_owner_only_even_under_a_umask_that_takes_the_owners_bits(
    tmp_path: Path,
) -> None:
    old = os.umask(0o277)  # what os.open would give: 0400
    try:
        spool = Spool(tmp_path, 0, free_files=3)
        spool.free.start()
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in free_files(spool)} == {FILE_MODE}


def test_a_start_keeps_the_free_files_and_removes_what_was_never_acknowledged(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, 0, free_files=300)
    spool.free.start()
    journaled, unacknowledged = spool.claim(), spool.claim()
    journaled.write_bytes(b"an instance the journal knows")
    unacknowledged.write_bytes(b"cut off before its acknowledgement")
    left = set(free_files(spool))

    removed, free = Spool(tmp_path, 0).remove_orphans({str(journaled)})

    assert removed == 1 and not unacknowledged.exists() and journaled.exists()
    assert set(free) == {p.parent for p in left}
    taker = Spool(tmp_path, 0, free_files=300)
    taker.free.start(free)
    assert set(free_files(taker)) > left and len(free_files(taker)) == 300  # 2 made anew
    assert taker.claim() != journaled


def test_a_folder_where_the_journal_knows_an_empty_file_is_not_offered(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0, free_files=10)
    spool.free.start()
    damaged = spool.claim()  # journaled, but its data set never reached the disk

    removed, free = Spool(tmp_path, 0).remove_orphans({str(damaged)})

    assert (removed, free) == (0, [])
    assert damaged.exists()
    assert list(damaged.parent.iterdir()) == [damaged]


@pytest.mark.e2e
def test_a_restarted_station_takes_over_the_free_files_of_the_last_run(tmp_path: Path) -> None:
    listen = {"host": "127.0.0.1", "port": 0, "workers": 2}
    station = StationProcess(tmp_path / "station", {"listen": listen}).start()
    try:
        assert c_store(station.port, VALID / "CT_small.dcm") == 0x0000
        station.stop()
        made = set(free_files_under(station.storage))
        station.restart()
        assert c_store(station.port, VALID / "MR_small.dcm") == 0x0000
        now = set(free_files_under(station.storage))
        assert len(made) == 2 * 32 - 1  # the reserves of the 2 receivers, less one taken
        assert len(made - now) <= 1  # kept, but the one the second instance went into
        assert len(now) == len(made)  # one made anew at most: a reserve topped up to 32
    finally:
        station.stop()


def free_files_under(storage: Path) -> list[Path]:
    return [p for p in (storage / "spool").rglob("*.dcm") if p.stat().st_size == 0]
