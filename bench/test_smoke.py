"""The benchmark (``bench/run.py``, README "Performance") in smoke mode: a few instances of
every corpus through every scenario, DCMTK, Orthanc and the station alike, so that the
benchmark never rots. No time is asserted; every instance must arrive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import SMOKE
from peers import ORTHANC
from run import SCENARIOS

# Not in the default test run (testpaths is tests/): `python3 -m pytest bench` runs it.
pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parent


def test_benchmark_smoke_runs_every_scenario(tmp_path: Path) -> None:
    if not Path(ORTHANC).exists():
        pytest.fail("Orthanc is missing: apt-get install -y orthanc (the README's test command)")
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(BENCH / "run.py"),
        "--smoke",
        "--json",
        str(out),
        "--cache",
        str(tmp_path / "corpora"),
        "--workdir",
        str(tmp_path / "work"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-4000:]}"

    data = json.loads(out.read_text())
    assert data["smoke"] is True
    rows = {(row["corpus"], row["scenario"]): row for row in data["rows"]}
    assert sorted(rows) == sorted((c, s) for c in SMOKE for s in SCENARIOS)
    for (corpus, scenario), row in rows.items():
        where = f"{corpus}/{scenario}"
        assert row["error"] is None, f"{where}: {row['error']}"
        assert row["instances"] == data["corpora"][corpus]["instances"] > 0, where
        assert row["arrived"] == row["instances"], f"{where}: not every instance arrived"
        assert row["wall_s"] > 0, where
        assert row["instances_per_s"] > 0 and row["mb_per_s"] > 0, where
        assert row["peak_rss_bytes"] > 0, f"{where}: no peak RSS"
        assert row["speed_vs_sf"] is not None and row["speed_vs_sf"] > 0, where
        assert row["rss_vs_sf"] is not None and row["rss_vs_sf"] > 0, where
    # The printed table carries the same rows.
    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["corpus", "scenario", "senders", "wall"]
    assert len(table) == 1 + len(rows)
