"""The built wheel is what users install: it must hold every module of the source tree, the
files `station install-service` reads, and honest metadata. Building it takes a few seconds
(setuptools is fetched into an isolated build environment), so it is an e2e test."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import station

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("station", "station_plugins")
SHARED = ("systemd", "examples/station.yaml", "routes")  # what install-service copies


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[zipfile.ZipFile, str]:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path), build.stdout + build.stderr


def test_the_wheel_holds_every_module_of_the_source_tree(
    wheel: tuple[zipfile.ZipFile, str],
) -> None:
    archive, _ = wheel
    names = set(archive.namelist())
    modules = sorted(
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    )
    assert "station/dicom/pdu.py" in modules  # the subpackage a hand-kept list once left out
    missing = [m for m in modules if m not in names]
    assert missing == [], f"modules left out of the wheel: {missing}"


def test_the_wheel_holds_what_install_service_reads(wheel: tuple[zipfile.ZipFile, str]) -> None:
    archive, _ = wheel
    data = [n.split(".data/data/share/station/", 1)[1] for n in archive.namelist() if ".data/" in n]
    for shared in SHARED:
        expected = sorted(
            p.relative_to(ROOT).as_posix()
            for p in ([ROOT / shared] if (ROOT / shared).is_file() else (ROOT / shared).iterdir())
        )
        assert [d for d in data if d.startswith(shared)] == expected


def test_metadata_has_an_spdx_license_and_the_version(wheel: tuple[zipfile.ZipFile, str]) -> None:
    archive, log = wheel
    (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Version"] == station.__version__
    assert "SetuptoolsDeprecationWarning" not in log
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    entry_points = archive.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    assert "station = station.cli:main" in entry_points
