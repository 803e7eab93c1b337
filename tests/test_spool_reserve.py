"""The reserve of free spool files (issue 16): made before a receiver accepts, handed out
without a file creation on the way in, topped up in the background, owner-only whatever
the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from station.store.spool import FILE_MODE, ON_DEMAND, Spool


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def free_files(spool: Spool) -> list[Path]:
    return [p for p in spool.files.rglob("*.dcm") if p.stat().st_size == 0]


@pytest.mark.usefixtures("umask")
def test_start_makes_the_whole_reserve_before_it_returns(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0, free_files=300)
    spool.free.start()
    made = free_files(spool)
    assert len(made) == 300
    assert sorted(len(list(folder.iterdir())) for folder in spool.files.iterdir()) == [44, 256]
    assert {stat.S_IMODE(p.stat().st_mode) for p in made} == {FILE_MODE}


@pytest.mark.usefixtures("umask")
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
