"""Fixtures that start real peers on 127.0.0.1: DCMTK's storescp/storescu and `station run`.

Every process a test starts is stopped by its PID when the test ends; every wait polls a
condition with a deadline.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peers
import pytest
import yaml
from peers import DCMTK_ENV, IN_USE, STORESCP, STORESCU, fixed_ports, listening_ports
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from station.dicom.identify import identify
from station.store.journal import Journal
from station.store.records import Received
from station.store.spool import Spool

DATA = Path(
    os.environ.get(
        "STATION_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
    )
)
VALID = DATA / "valid"
MALFORMED = DATA / "malformed"

# Tests that read the shared DICOM corpus skip without it; the others run all the same.
needs_corpus = pytest.mark.skipif(
    not VALID.is_dir() or not MALFORMED.is_dir(),
    reason=f"test data not found: {DATA} has no valid/ and malformed/ folders. The tests use "
    "the shared DICOM corpus beside the repository (../shared/data/dicom); set "
    "STATION_TEST_DATA to its path.",
)

ECHOSCU = "/usr/bin/echoscu"


def dcmtk(tool: str) -> str:
    """``tool`` (a DCMTK program's path), or skip the test when DCMTK is not installed."""
    if not os.access(tool, os.X_OK):
        pytest.skip(f"{tool} not found: install DCMTK (Debian package dcmtk)")
    return tool


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll until ``condition()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask (children started meanwhile inherit it)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for the whole test (see peers)."""
    with peers.refused_port() as port:
        yield port


class StoreSCP:
    """DCMTK storescp writing every received instance, bit-preserved, into ``folder``."""

    def __init__(
        self,
        folder: Path,
        ae_title: str = "PACS",
        extra: tuple[str, ...] = (),
        port: int = 0,
        accept: str = "+xa",
    ) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.extra = extra
        # Which transfer syntaxes it accepts: +xa all, +x= uncompressed only, +xi implicit only.
        self.accept = accept
        self.port = port  # 0: one of peers.fixed_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.held: socket.socket | None = None

    def reserve(self) -> StoreSCP:
        """Take this storescp's port before starting it: while it is down, connections to
        the port are refused; ``start()`` hands the port over."""
        self.held = peers.held_port()
        self.port = self.held.getsockname()[1]
        return self

    def start(self) -> StoreSCP:
        """Start storescp on ``port``, or on a port of its own: it refuses port 0, so it is
        given one of ``peers.fixed_ports()`` after the other until /proc shows it listening."""
        storescp = dcmtk(STORESCP)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.release()
        for port in [self.port] if self.port else fixed_ports():
            self.proc = subprocess.Popen(
                [
                    storescp,
                    "-aet",
                    self.ae_title,
                    "-od",
                    str(self.folder),
                    self.accept,
                    "+B",
                    "-uf",
                    *self.extra,
                    str(port),
                ],
                env=DCMTK_ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            proc = self.proc
            wait_for(
                lambda: proc.poll() is not None or port in listening_ports(proc.pid),  # noqa: B023
                10,
                message=f"storescp on port {port}",
            )
            if proc.poll() is None:
                self.port = port
                return self
            assert proc.stderr is not None
            error = proc.stderr.read().decode()
            if self.port or IN_USE not in error:
                pytest.fail(f"storescp exited with {proc.returncode}: {error}")
        pytest.fail("storescp: every port tried was in use")

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def release(self) -> None:
        """Let go of the port ``reserve()`` took."""
        if self.held is not None:
            self.held.close()
            self.held = None

    def stop(self) -> None:
        self.release()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# What `station run` prints once it listens (it binds port 0 in the tests: these say where).
LISTENING = re.compile(r"listening on [\d.]+:(\d+)")
METRICS = re.compile(r"metrics on http://[\d.]+:(\d+)/")


class StationProcess:
    """`station run --config` (and ``args``) as a subprocess, on ports it picks itself."""

    def __init__(self, workdir: Path, config: dict[str, Any], args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.args = args
        self.config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "storage": str(workdir / "data"),
            "series": {"quiet_seconds": 0.5},
            **config,
        }
        storage = self.config["storage"]
        # A small reserve of free spool files per receiver, not the 2048 a production
        # start makes: hundreds of stations start in the suite, on 2 cores.
        self.config["storage"] = {
            "free_files": 32,
            **(storage if isinstance(storage, dict) else {"path": storage}),
        }
        self.config_path = workdir / "station.yaml"
        self.log_path = workdir / "station.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0
        self._log_start = 0  # where this run's output begins in the (appended) log

    def start(self) -> StationProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        self._log_start = len(self.log())
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "station",
                    "run",
                    "--config",
                    str(self.config_path),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        match = wait_for(self._ready, 30, message="station to listen")
        self.port = int(match.group(1))
        self.metrics_port = 0
        if self.config["metrics"].get("enabled", True):  # said a line after "listening"
            metrics = wait_for(lambda: METRICS.search(self.run_log()), 10, message="/metrics")
            self.metrics_port = int(metrics.group(1))
        return self

    def _ready(self) -> re.Match[str] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"station exited with {self.proc.returncode}:\n{self.log()}")
        matches = list(LISTENING.finditer(self.run_log()))
        return matches[-1] if matches else None

    def restart(self) -> StationProcess:
        """Start again with the same config and storage (after ``stop``, a kill or a crash)."""
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def run_log(self) -> str:
        """The output of the current (latest) run only."""
        return self.log()[self._log_start :]

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample scraped from /metrics (0.0 when absent)."""
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            sample, _, label_text = key.partition("{")
            got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if sample == name and got == wanted:
                return float(value)
        return 0.0

    @property
    def storage(self) -> Path:
        """The storage folder (a relative one, as the station's default, is in its cwd)."""
        return self.workdir / self.config["storage"].get("path", "station-data")

    def spooled(self) -> list[Path]:
        """The spool files holding data (the rest are free files created ahead)."""
        spool = self.storage / "spool"
        return [p for p in spool.rglob("*") if p.is_file() and p.stat().st_size]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "station", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.workdir,
        )

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def storescu_profile(files: list[Path], path: Path) -> list[str]:
    """Write a storescu association profile ``Exact`` to ``path``: one presentation context per
    (SOP class, transfer syntax) of ``files`` (folders: their files, not recursive).

    storescu's ``-R`` alone proposes only the uncompressed syntaxes (DCMTK 3.6.7): it converts
    deflated data sets and fails every compressed one ("unable to convert dataset"). Returns
    the storescu options that select the profile, or ``-R`` when no file could be read.
    """
    contexts: list[tuple[str, str]] = []
    for file in files:
        for candidate in sorted(file.iterdir()) if file.is_dir() else [file]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # real-world values that break VR rules
                    ds = dcmread(candidate, stop_before_pixels=True)
                pair = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            except Exception:
                continue  # storescu reports what it cannot read itself
            if pair not in contexts:
                contexts.append(pair)
    if not contexts:
        return ["-R"]
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts; one association allows 128")
    syntaxes = sorted({syntax for _, syntax in contexts})
    lines = ["[[TransferSyntaxes]]"]
    for number, syntax in enumerate(syntaxes):
        lines += [f"[TS{number}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for number, (sop_class, syntax) in enumerate(contexts, 1):
        lines.append(f"PresentationContext{number} = {sop_class}\\TS{syntaxes.index(syntax)}")
    lines += ["[[Profiles]]", "[Exact]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n")
    return ["-xf", str(path), "Exact"]


def storescu_command(
    port: int,
    files: list[Path],
    profile: Path,
    aec: str = "STATION",
    aet: str = "STORESCU",
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The storescu command line, proposing for each file exactly the transfer syntax it is in
    (the association profile is written to ``profile``)."""
    return [
        dcmtk(STORESCU),
        "-aet",
        aet,
        "-aec",
        aec,
        *storescu_profile(files, profile),
        "+sd",
        "-nh",
        *extra,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]


class FollowedStorescu:
    """storescu -v sending the files of ``made`` (path -> SOP Instance UID) in the background;
    ``acknowledged`` grows with each UID answered Success, and ``enough`` is set once
    ``count`` are (or storescu has ended)."""

    def __init__(self, port: int, made: dict[Path, str], profile: Path, count: int) -> None:
        self.made = made
        self.count = count
        self.acknowledged: list[str] = []
        self.enough = threading.Event()
        self.proc = subprocess.Popen(
            storescu_command(port, list(made), profile, extra=("-v",)),
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        """storescu -v: "Sending file: PATH", then "Received Store Response (Success)"."""
        assert self.proc.stdout is not None
        current = None
        for line in self.proc.stdout:
            if line.startswith("I: Sending file: "):
                current = Path(line.removeprefix("I: Sending file: ").strip())
            elif "Received Store Response (Success)" in line and current is not None:
                self.acknowledged.append(self.made[current])
                if len(self.acknowledged) >= self.count:
                    self.enough.set()
        self.enough.set()  # storescu ended: let the test see how far it got

    def finish(self, timeout: float = 30) -> int:
        """storescu's exit code, once it and the reading of its output are done."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def storescu(
    port: int,
    files: list[Path],
    aec: str = "STATION",
    aet: str = "STORESCU",
    extra: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu, proposing for each file exactly the transfer syntax it is in."""
    with tempfile.TemporaryDirectory(prefix="storescu-") as scratch:
        return subprocess.run(
            storescu_command(port, files, Path(scratch) / "storescu.cfg", aec, aet, extra),
            env=DCMTK_ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def storescu_successes(result: subprocess.CompletedProcess[str]) -> int:
    """How many C-STOREs a ``storescu -v`` run saw answered with Success. Without ``-v``
    storescu says nothing about a refusing status, and with ``-nh`` it still exits 0."""
    return result.stderr.count("Received Store Response (Success)")


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "pacs").start()
    yield scp
    scp.stop()


@pytest.fixture
def start_station(tmp_path: Path) -> Iterator[Callable[..., StationProcess]]:
    started: list[StationProcess] = []

    def start(config: dict[str, Any], name: str = "station") -> StationProcess:
        proc = StationProcess(tmp_path / name, config).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL)


def dicom_destination(scp: StoreSCP, **extra: Any) -> dict[str, Any]:
    return {
        "type": "dicom",
        "host": "127.0.0.1",
        "port": scp.port,
        "ae_title": scp.ae_title,
        **extra,
    }


def c_store(port: int, payload: Path | Dataset, calling_ae: str = "PYNETDICOM") -> int:
    """One C-STORE by pynetdicom, on its own association; the status, or -1 without one.
    A file goes as its bytes are, with the command's UIDs taken from its File Meta."""
    meta = read_file_meta_info(payload) if isinstance(payload, Path) else payload.file_meta
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="STATION")
    assert assoc.is_established, f"association to the station for {payload}"
    # By default pynetdicom decodes a file and sends its own re-encoding (which repairs a
    # truncated data set); chunked sending puts the file's bytes on the wire as they are.
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        answer = assoc.send_c_store(payload)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if assoc.is_established:
            assoc.release()
    return int(answer.Status) if answer and "Status" in answer else -1


def spool_and_journal(spool: Spool, journal: Journal, path: Path, now: float) -> int:
    """Spool a copy of ``path`` and journal it as received over the SCP; its batch id."""
    header = identify(path)
    stored = spool.claim()
    shutil.copyfile(path, stored)
    spool.commit(stored)
    batch, _stale = journal.record_instance(
        Received(
            header.sop_uid,
            header.study_uid,
            header.series_uid,
            header.sop_class,
            header.transfer_syntax,
            stored,
            stored.stat().st_size,
            "MODALITY",
            "STATION",
            "127.0.0.1:1",
            "scp",
        ),
        now=now,
    )
    return batch
