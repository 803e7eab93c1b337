"""Bench only: the station's receiver processes (``python -m station.receive.worker``,
started by a station run through bench/patched.py) apply the same patches as their parent,
named in the environment it leaves them."""

import os
import sys
from pathlib import Path

if os.environ.get("STATION_BENCH_PATCHES"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import patched

    patched.apply([n for n in os.environ["STATION_BENCH_PATCHES"].split(",") if n])
