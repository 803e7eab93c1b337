"""The processes a benchmark run starts (DCMTK, Orthanc, the station), how they are stopped
(always by PID, children first), and how their memory and output are observed."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"
HOST = "127.0.0.1"
# Debian's DCMTK (and Orthanc, linked to it) keeps Nagle's algorithm on without this.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


class BenchError(RuntimeError):
    """A scenario could not run as intended (a peer did not start, files did not arrive)."""


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it is truthy; raise BenchError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# DCMTK's storescp refuses port 0 ("underflow"). It is given a random port below the
# kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default), where a
# port-0 bind never lands, and started again on another one when that one is taken: a port
# counts as its own only once /proc shows storescp itself listening on it.
FIXED_PORTS = range(20000, 32768)
IN_USE = "Address already in use"


def fixed_ports(attempts: int = 20) -> list[int]:
    """Ports to try, in turn, for a program that cannot bind port 0 (see FIXED_PORTS)."""
    return random.sample(FIXED_PORTS, attempts)


def held_port() -> socket.socket:
    """A socket bound to one of FIXED_PORTS on HOST that does not listen: connections to the
    port are refused while it is open (a closed port could be taken meanwhile), and once it
    is closed the port can be handed to a program such as storescp."""
    for port in fixed_ports():
        sock = socket.socket()
        try:
            sock.bind((HOST, port))
        except OSError:
            sock.close()
            continue
        return sock
    raise BenchError("every port tried was in use")


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port on HOST where a connection is refused, for as long as the context lasts."""
    with held_port() as sock:
        yield int(sock.getsockname()[1])


# --- /proc ----------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on: the socket inodes among its open files
    (/proc/<pid>/fd) in the LISTEN rows of /proc/<pid>/net/tcp and tcp6. Empty once the
    process is gone."""
    try:
        targets = [os.readlink(entry.path) for entry in os.scandir(f"/proc/{pid}/fd")]
        inodes = {t[len("socket:[") : -1] for t in targets if t.startswith("socket:[")}
        ports = set()
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}") as fh:
                for row in fh.read().splitlines()[1:]:
                    fields = row.split()  # sl local_address rem_address st ... inode
                    if fields[3] == "0A" and fields[9] in inodes:
                        ports.add(int(fields[1].rpartition(":")[2], 16))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return set()
    return ports


def peak_rss(pid: int) -> int:
    """Peak resident set size (VmHWM) of a running process, in bytes."""
    return _status_kib(pid, "VmHWM") * 1024


def _start_time(pid: int) -> int:
    """When a process started (clock ticks since boot), to tell it from a reused PID."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a running process and its reaped children."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a running process and of its descendants (the station's receiver
    processes), each with its reaped children."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in descendants(pid))


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from the parent links in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 10_000:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class TreeSampler:
    """Samples the summed RSS of a process and its descendants (a relay that forks senders,
    like DCMTK's storescp --exec-on-eostudy), every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        pids = [self.pid, *descendants(self.pid)]
        total = sum(_status_kib(p, "VmRSS") for p in pids) * 1024
        self.peak = max(self.peak, total, peak_rss(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# --- processes ------------------------------------------------------------------------------


class Proc:
    """A started process, registered so that it is stopped (by PID) whatever happens."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        fail_on: re.Pattern[str] | None = None,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.fail_on = fail_on  # a log line matching it fails the run
        self._checked = 0.0
        self.args = list(args)
        self.log_path = log
        self._log: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
        self.pid = self.popen.pid
        self.max_rss = 0  # bytes, from wait4 once the process has ended
        self.cpu_s = 0.0  # user + system, itself and its reaped children, once ended

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.popen.returncode is None and _reap(self, block=False) is None

    def check_running(self) -> None:
        """Raise BenchError if the process ended, or (every half second) logged a failure."""
        if not self.running():
            tail = "\n".join(self.log().splitlines()[-15:])
            raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")
        if self.fail_on is not None and time.monotonic() - self._checked > 0.5:
            self._checked = time.monotonic()
            match = self.fail_on.search(self.log())
            if match:
                raise BenchError(f"{self.name} logged: {match.group(0)}")

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself (bounded); its exit code."""
        deadline = time.monotonic() + timeout
        while (code := _reap(self, block=False)) is None:
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} still running after {timeout:g} s")
            time.sleep(0.005)
        return code

    def stop(self, sig: int | None = None, grace: float = 20) -> None:
        """Stop the process and whatever it started, by PID; SIGKILL after ``grace``."""
        sig = self.stop_signal if sig is None else sig
        if self.popen.returncode is None:
            kids = [(kid, _start_time(kid)) for kid in descendants(self.pid)]
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + grace
            while _reap(self, block=False) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.popen.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                _reap(self, block=True)
            for kid, started in kids:  # e.g. a storescu that storescp started
                if started and _start_time(kid) == started:  # the same process, still there
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(kid, signal.SIGKILL)
        self._log.close()


def _reap(proc: Proc, block: bool) -> int | None:
    """Reap the process with wait4, keeping its peak RSS (ru_maxrss, KiB on Linux)."""
    if proc.popen.returncode is not None:
        return proc.popen.returncode
    try:
        pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        proc.popen.returncode = proc.popen.returncode if proc.popen.returncode else -1
        return proc.popen.returncode
    if pid == 0:
        return None
    proc.max_rss = max(proc.max_rss, usage.ru_maxrss * 1024)
    proc.cpu_s = usage.ru_utime + usage.ru_stime
    proc.popen.returncode = os.waitstatus_to_exitcode(status)
    return proc.popen.returncode


class Processes:
    """Every process of one scenario; ``close()`` stops them all, last started first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, args: Sequence[str], **kwargs: Any) -> Proc:
        proc = Proc(name, args, self.workdir / f"{name}.log", **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        errors: list[BaseException] = []
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except BaseException as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]


# --- peers ----------------------------------------------------------------------------------


def start_storescp(
    procs: Processes, name: str, folder: Path, ae_title: str, extra: Sequence[str] = ()
) -> tuple[Proc, int]:
    """DCMTK storescp writing what it receives, bit-preserved, into ``folder``, on a port of
    its own (see FIXED_PORTS)."""
    folder.mkdir(parents=True, exist_ok=True)
    for port in fixed_ports():
        args = [STORESCP, "-aet", ae_title, "-od", str(folder), "+xa", *extra, str(port)]
        proc = procs.start(name, args, env=DCMTK_ENV)
        wait_until(
            lambda: not proc.running() or port in listening_ports(proc.pid),  # noqa: B023
            10,
            f"{name} on port {port}",
        )
        if proc.running():
            return proc, port
        if IN_USE not in proc.log():
            proc.check_running()
    raise BenchError(f"{name}: every port tried was in use")


def storescu_args(
    port: int,
    called: str,
    files: Sequence[str],
    calling: str = "BENCH",
    proposing: Sequence[str] = (),
) -> list[str]:
    """storescu sending ``files``; ``proposing``: its transfer syntax options (``-xs``: JPEG
    lossless; without any it proposes uncompressed syntaxes only)."""
    return [STORESCU, "-aet", calling, "-aec", called, *proposing, HOST, str(port), *files]


def orthanc_config(
    workdir: Path, dicom_port: int, destination: tuple[str, int], stable_age: int = 1
) -> Path:
    """An Orthanc of our own: its own storage, ports and Lua script; no HTTP server and no
    plugins. OnStableSeries forwards each series, as one job, to the destination."""
    lua = workdir / "forward.lua"
    lua.write_text(
        "function OnStableSeries(seriesId, tags, metadata)\n"
        "  RestApiPost('/modalities/pacs/store',\n"
        "              DumpJson({Resources = {seriesId}, Synchronous = false}, true))\n"
        "end\n"
    )
    config = {
        "Name": "station-bench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "StorageCompression": False,
        "HttpServerEnabled": False,
        "RemoteAccessAllowed": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {"pacs": [destination[0], HOST, destination[1]]},
        "StableAge": stable_age,
        "LuaScripts": [str(lua)],
        "Plugins": [],
        "SaveJobs": False,
        "ConcurrentJobs": 2,
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_orthanc(
    procs: Processes,
    workdir: Path,
    destination: tuple[str, int],
    stop_signal: int = signal.SIGTERM,
) -> tuple[Proc, int]:
    """Our own Orthanc (see orthanc_config) on the port it picks itself (DicomPort 0), read
    from /proc. Its orderly shutdown takes 1.5 s; ``stop_signal`` SIGKILL skips it (its
    storage is a scratch folder)."""
    config = orthanc_config(workdir, 0, destination)
    args = [ORTHANC, str(config)]
    proc = procs.start("orthanc", args, env=DCMTK_ENV, cwd=workdir, stop_signal=stop_signal)

    def port() -> int | None:
        proc.check_running()
        return next(iter(listening_ports(proc.pid)), None)  # DICOM only: no HTTP server

    return proc, wait_until(port, 60, "Orthanc to listen")


LISTENING = re.compile(r"listening on [\d.]+:(\d+)")
STATION_FAILURE = re.compile(r"^.* (ERROR|CRITICAL) .*$", re.MULTILINE)


def start_station(
    procs: Processes,
    name: str,
    config: Path,
    command: Sequence[str],
    env: dict[str, str] | None = None,
) -> tuple[Proc, int]:
    """``station run`` (``command`` starts ``station``) on the port it picks itself."""
    args = [*command, "run", "--config", str(config)]
    proc = procs.start(name, args, env=env, cwd=config.parent, fail_on=STATION_FAILURE)

    def port() -> int | None:
        proc.check_running()
        match = LISTENING.search(proc.log())
        return int(match.group(1)) if match else None

    return proc, wait_until(port, 60, f"{name} to listen", interval=0.005)


def start_profiler(procs: Processes, target: Proc, output: Path, gil: bool = False) -> Proc:
    """py-spy sampling ``target`` and its subprocesses (the station's receivers) into
    collapsed stacks (one line per stack: frames; count), all threads, idle ones left out
    (``gil``: only the thread holding the GIL); it writes ``output`` on SIGINT or when the
    target ends."""
    args = ["py-spy", "record", "--pid", str(target.pid), "--subprocesses", "--rate", "250"]
    args += ["--format", "raw"]
    args += ["--gil"] if gil else []
    return procs.start(
        f"py-spy-{target.name}", [*args, "-o", str(output)], stop_signal=signal.SIGINT
    )


def cpu_busy_seconds() -> float:
    """CPU time the whole machine spent busy since boot (all cores; idle and iowait not)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # minus idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def count_files(folder: Path) -> int:
    """Files directly in ``folder`` (the final storescp writes them there, flat)."""
    try:
        return sum(1 for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return 0


def count_tree(folder: Path) -> int:
    """Files holding data under ``folder`` (the station's spool also keeps empty files
    created ahead)."""
    return sum(
        1
        for top, _sub, files in os.walk(folder)
        for name in files
        if os.path.getsize(os.path.join(top, name))
    )
