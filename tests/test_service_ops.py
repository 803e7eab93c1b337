"""Running as a systemd service: the unit files, `station install-service`, the notify
protocol (READY, WATCHDOG, STATUS, STOPPING) and SIGTERM.

This machine has systemd's tools but no systemd as PID 1: the units are checked with
systemd-analyze, systemd-sysusers and systemd-tmpfiles against a staging root, and the notify
protocol with a datagram socket the test binds, as systemd would, and hands over in
NOTIFY_SOCKET.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    LISTENING,
    METRICS,
    VALID,
    FollowedStorescu,
    StationProcess,
    dicom_destination,
    needs_corpus,
    wait_for,
)
from test_failures import arrived_uids, make_instances

from station.config import load_config
from station.ops.install import CONFIG, ROUTES, SYSUSERS, TMPFILES, UNIT
from station.service import SCP_DRAIN_SECONDS, STOP_SECONDS

REPO = Path(__file__).resolve().parents[1]
UNIT_FILE = REPO / "systemd" / "station.service"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order of appearance."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(timespan: str) -> float:
    """A systemd time span such as ``60s``, ``5min`` or ``1min 30s`` in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan))


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "station", "install-service", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_service_puts_everything_in_place_and_keeps_an_existing_config(tmp_path):
    first = install(tmp_path)
    assert first.returncode == 0, first.stderr
    for target in (UNIT, SYSUSERS, TMPFILES, CONFIG, ROUTES / "10-everything-to-pacs.yaml"):
        assert (tmp_path / target).is_file(), target
        assert f"written  {tmp_path / target}" in first.stdout

    unit = unit_settings(tmp_path / UNIT)
    command = unit["ExecStart"][0].split()
    assert Path(command[0]).is_file() and os.access(command[0], os.X_OK), command
    assert command[-3:] == ["run", "--config", "/etc/station/station.yaml"]
    assert (tmp_path / UNIT).read_text().replace(unit["ExecStart"][0], "") == (
        UNIT_FILE.read_text().replace(unit_settings(UNIT_FILE)["ExecStart"][0], "")
    ), "install-service changes nothing but ExecStart"

    # The config is valid as installed (its routes and plugins resolve), and everything it
    # writes to is writable under the unit: the StateDirectory or a ReadWritePaths entry.
    env = {"STATION_ROUTES": str(tmp_path / ROUTES)}
    config = load_config(tmp_path / CONFIG, environ=env)
    checked = subprocess.run(
        [sys.executable, "-m", "station", "check", "--config", str(tmp_path / CONFIG)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    state = Path("/var/lib", *unit["StateDirectory"])
    assert config.storage.path == Path("/var/lib/station") == state
    writable = [state]
    writable += [Path(p.removeprefix("-")) for p in unit["ReadWritePaths"]]
    written = [w.path for w in config.watch] + [
        d.path for d in config.destinations.values() if d.type == "folder"
    ]
    assert written and all(any(p.is_relative_to(w) for w in writable) for p in written), written
    assert unit["ConfigurationDirectory"] == ["station"]
    assert yaml.safe_load((tmp_path / CONFIG).read_text())["routes"] == "/etc/station/routes"

    (tmp_path / CONFIG).write_text("ae_title: EDITED\n")
    (tmp_path / ROUTES / "10-everything-to-pacs.yaml").unlink()  # an operator's choice
    again = install(tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"kept     {tmp_path / CONFIG}" in again.stdout
    assert f"kept     {tmp_path / ROUTES}" in again.stdout
    assert (tmp_path / CONFIG).read_text() == "ae_title: EDITED\n"
    assert not (tmp_path / ROUTES / "10-everything-to-pacs.yaml").exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_verify_and_create_their_user_and_folders(tmp_path):
    assert install(tmp_path).returncode == 0
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    # Exposure 0 (locked down) to 10 (unprotected), in tenths: this unit rates 1.6 ("OK").
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(tmp_path / UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:]

    # sysusers and tmpfiles, applied to the staging root as systemd would to /.
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    users = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}"], capture_output=True, text=True, timeout=60
    )
    assert users.returncode == 0, users.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    user = re.search(r"^station:x:(\d+):(\d+):.*:/var/lib/station:/usr/sbin/nologin$", passwd, re.M)
    assert user, passwd
    folders = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", "station.conf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert folders.returncode == 0, folders.stderr
    dropbox = (tmp_path / "srv" / "station" / "dropbox").stat()
    assert dropbox.st_uid == int(user.group(1)) and oct(dropbox.st_mode & 0o7777) == "0o2770"


def test_stop_timeouts_are_consistent():
    unit = unit_settings(UNIT_FILE)
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["KillSignal"] == ["SIGTERM"]
    # Station.stop() (SCP drain included) returns within STOP_SECONDS; systemd waits longer
    # before it sends SIGKILL.
    assert SCP_DRAIN_SECONDS < STOP_SECONDS < seconds(unit["TimeoutStopSec"][0]) - 5
    assert unit["CapabilityBoundingSet"] == unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert seconds(unit["WatchdogSec"][0]) >= 60


class NotifySocket:
    """The datagram socket systemd listens on for sd_notify(3) messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def receive(self) -> list[dict[str, str]]:
        """Read what has arrived; return every message so far (its assignments), in order."""
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def first(self, key: str) -> dict[str, str] | None:
        return next((m for m in self.receive() if key in m), None)

    def indices(self, key: str, value: str = "") -> list[int]:
        """Where the messages that assign ``key`` (a value starting with ``value``) are."""
        return [i for i, m in enumerate(self.receive()) if key in m and m[key].startswith(value)]

    def close(self) -> None:
        self.sock.close()


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def run_station(
    workdir: Path, config: dict[str, Any], env: dict[str, str], args: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`station run ARGS` with this environment added; output in ``workdir/station.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "station.yaml").write_text(yaml.safe_dump(config))
    with open(workdir / "station.log", "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "station",
                "run",
                "--config",
                str(workdir / "station.yaml"),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, **env},
        )


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM a `station run`; its exit code (after a SIGKILL if it outlived STOP_SECONDS)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def base_config(workdir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "storage": str(workdir / "data"),
        "series": {"quiet_seconds": 0.5},
        "watch": [{"path": str(workdir / "dropbox")}],
        **extra,
    }


def announced_ports(workdir: Path) -> tuple[int, int] | None:
    """The DICOM and metrics ports a `station run` in ``workdir`` printed (it binds port 0)."""
    log = (workdir / "station.log").read_text(errors="replace")
    dicom, metrics = LISTENING.search(log), METRICS.search(log)
    return (int(dicom.group(1)), int(metrics.group(1))) if dicom and metrics else None


@pytest.mark.e2e
def test_notify_ready_after_listening_watchdog_pings_and_stopping(tmp_path, notify):
    config = base_config(tmp_path / "station")
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    proc = run_station(tmp_path / "station", config, env)
    try:
        ready = wait_for(lambda: notify.first("READY"), 30, message="READY=1")
        # Everything listens at the moment READY=1 arrives: the SCP, /metrics, the drop folder.
        ports = announced_ports(tmp_path / "station")
        assert ports, "READY=1 before the station said where it listens"
        port, metrics = ports
        assert accepts(port), "READY=1 before the DICOM port accepts connections"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=5) as answer:
            assert json.load(answer)["ok"] is True
        assert (tmp_path / "station" / "dropbox").is_dir()
        assert notify.messages[0] == ready, "nothing is announced before READY=1"
        assert ready["STATUS"].startswith(f"SCP STATION on port {port}; 0 associations")

        # WATCHDOG_USEC=1 s: a ping every quarter of it while the loops turn, so the first
        # four come before the second of the STATUS= updates sent every STATUS_SECONDS (5 s).
        wait_for(lambda: len(notify.indices("WATCHDOG", "1")) >= 4, 10, message="four pings")
        pings, updates = notify.indices("WATCHDOG", "1"), notify.indices("STATUS")[1:]
        assert pings[0] > 0 and (len(updates) < 2 or pings[3] < updates[1]), notify.messages

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_SECONDS) == 0
        stopping = notify.first("STOPPING")
        assert stopping and stopping["STOPPING"] == "1", notify.messages[-3:]
        assert "stopping" in stopping["STATUS"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.e2e
@needs_corpus
def test_watchdog_keeps_pinging_while_a_hook_is_held(tmp_path, notify):
    """A classify hook that blocks until the test releases it holds up its own series on a
    routing worker, not series assembly: the watchdog pings go on, never STATUS=stalled."""
    entered, release = tmp_path / "entered", tmp_path / "release"
    plugin = tmp_path / "slow.py"
    plugin.write_text(
        "import pathlib\n"
        "import time\n\n"
        "from station import hookimpl\n\n\n"
        "@hookimpl\n"
        "def station_classify_series(series):\n"
        f"    pathlib.Path({str(entered)!r}).touch()\n"
        f"    for _ in range(1200):  # until {release.name} exists, 60 s at most\n"
        f"        if pathlib.Path({str(release)!r}).exists():\n"
        "            return\n"
        "        time.sleep(0.05)\n"
    )
    config = base_config(tmp_path / "station", plugins=[str(plugin)])
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    proc = run_station(tmp_path / "station", config, env)
    try:
        wait_for(lambda: notify.first("READY"), 30, message="READY=1")
        shutil.copy(VALID / "CT_small.dcm", tmp_path / "station" / "dropbox" / "ct.dcm")
        wait_for(entered.exists, 30, message="the hook to be called")
        held = len(notify.receive())
        wait_for(
            lambda: sum("WATCHDOG" in m for m in notify.receive()[held:]) >= 3,
            15,
            message="watchdog pings while the hook is held",
        )
        assert notify.indices("STATUS", "stalled") == []
    finally:
        release.touch()
        stop(proc)


@pytest.mark.e2e
def test_sigterm_lets_the_association_in_progress_finish(tmp_path, pacs, start_station):
    """SIGTERM in the middle of a storescu run: that association is served to its end (every
    instance acknowledged), the station exits 0 well within the stop timeout, and what it
    had not sent yet is delivered after the next start."""
    made = make_instances(tmp_path / "outgoing", 150)
    station: StationProcess = start_station({"destinations": {"pacs": dicom_destination(pacs)}})
    sender = FollowedStorescu(station.port, made, tmp_path / "storescu.cfg", 20)
    try:
        assert sender.enough.wait(60) and len(sender.acknowledged) >= 20
        assert station.proc is not None
        station.proc.send_signal(signal.SIGTERM)
        assert sender.finish(60) == 0
        assert station.proc.wait(STOP_SECONDS) == 0, station.run_log()  # raises if it outlives it
    finally:
        sender.stop()
    assert len(sender.acknowledged) == len(made), "every instance of that association was taken"
    assert not accepts(station.port)

    station.start()
    cache: dict[Path, str] = {}
    wait_for(
        lambda: set(made.values()) <= arrived_uids(pacs, cache),
        60,
        message="all 150 instances at storescp after the restart",
    )
