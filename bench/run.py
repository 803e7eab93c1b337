#!/usr/bin/env python3
"""The station against DCMTK and Orthanc, side by side, on 127.0.0.1, in one run.

    python3 bench/run.py [--smoke] [--corpus small,ct,series5000,series50]
                         [--scenario ...] [--repeat N] [--senders 1,4,8] [--json out.json]

Without options it prints the default table: the small and ct corpora sent by 1, 4 and 8
storescu at once, through DCMTK's store-and-forward, the station and Orthanc.

For each corpus (generated with pydicom into a cache, see corpus.py) it runs:

- ``dcmtk``        the limit: DCMTK storescu -> DCMTK storescp;
- ``dcmtk-sf``     DCMTK store-and-forward: storescu -> storescp --eostudy-timeout 1
                   --exec-on-eostudy "storescu ..." -> storescp;
- ``orthanc``      storescu -> Orthanc (own config; Lua OnStableSeries forwards the series as
                   one job, StableAge 1) -> storescp;
- ``station``      end to end: storescu -> ``station run`` (quiet_seconds 1) -> storescp;
- ``station-recv`` its receive leg alone: storescu -> station with nothing dispatched, until
                   storescu has every instance acknowledged (fsynced and journaled);
- ``station-send`` its send leg alone: the station restarted on the spool the receive leg
                   filled, from "listening" until the last file is at storescp;
- ``station-cli``  ``station send`` of the corpus files to storescp (start-up included);
- ``station-transcode`` as ``station``, on the corpus compressed JPEG Lossless (by DCMTK's
                   dcmcjpeg, cached beside it) and sent with ``storescu -xs``, to a
                   destination that takes Explicit VR Little Endian only: every instance
                   decompressed on the way out, one at a time.

Relay times run from the first byte sent (storescu started) until the last file exists at
the final storescp. Peak RSS is the relay's (VmHWM; for DCMTK's store-and-forward storescp
plus the storescu it forks, and for the station its process plus its receiver processes,
summed and sampled; for the limit the receiver's; for ``station-cli`` the sender's); CPU
likewise. Ratios compare with DCMTK's store-and-forward on the same
corpus: speed = its wall time / this wall time (>= 0.5 is the station's target), RSS = this
peak / its peak.

``--repeat N`` runs everything N times round-robin and keeps each row's median run;
``--variants base,no-fsync,...`` adds station rows for levers (VARIANTS below; patches in
patched.py); ``--profile DIR`` samples the station processes with py-spy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from corpus import FULL, SMOKE, Corpus, generate
from peers import (
    DCMTK_ENV,
    HOST,
    ORTHANC,
    STORESCP,
    STORESCU,
    BenchError,
    Proc,
    Processes,
    TreeSampler,
    count_files,
    count_tree,
    cpu_busy_seconds,
    cpu_seconds,
    peak_rss,
    refused_port,
    start_orthanc,
    start_profiler,
    start_station,
    start_storescp,
    storescu_args,
    tree_cpu_seconds,
)

SCENARIOS = (
    "dcmtk",
    "dcmtk-sf",
    "orthanc",
    "station",
    "station-recv",
    "station-send",
    "station-cli",
    "station-transcode",
)
BASELINE = "dcmtk-sf"
# The default table: several senders at once, against DCMTK's store-and-forward and Orthanc.
DEFAULT_CORPORA = "small,ct"
DEFAULT_SCENARIOS = "dcmtk-sf,station,orthanc"
DEFAULT_SENDERS = "1,4,8"
MIB = 1024 * 1024


@dataclass
class Row:
    corpus: str
    scenario: str
    instances: int
    bytes: int
    senders: int = 1
    wall_s: float = 0.0
    arrived: int = 0
    peak_rss_bytes: int = 0
    rss_of: str = ""
    other_cores: float = 0.0
    runs: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    speed_vs_sf: float | None = None
    rss_vs_sf: float | None = None

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s if self.wall_s > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["instances_per_s"] = round(self.instances_per_s, 1)
        data["mb_per_s"] = round(self.mb_per_s, 2)
        data["peak_rss_mib"] = round(self.peak_rss_bytes / MIB, 1)
        return data


@dataclass
class Options:
    work: Path
    station: list[str]  # the command that is ``station``
    timeout: float
    poll: float
    station_env: dict[str, str]
    station_extra: dict[str, Any]
    profile: Path | None = None
    profile_gil: bool = False
    settle: float = 0.0
    final_args: list[str] = field(default_factory=lambda: ["+B"])  # the station's peer
    smoke: bool = False
    senders: int = 1  # concurrent storescu associations, each a contiguous part of the corpus


# Levers, measured one at a time (--variants): how the station is run differently.
# "patch" runs it through bench/patched.py (see there), "config" is merged into its config,
# "peer" replaces the options of the storescp it sends to.
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "no-fsync": {"patch": "no-fsync"},
    "switch-1ms": {"patch": "switch-1ms"},
    "no-identify": {"patch": "no-identify"},
    "pdu-16k": {"config": {"listen": {"max_pdu_bytes": 16384}}},
    "peer-pdu-128k": {"peer": ["+B", "-pdu", "131072"]},
}


def variant_options(opts: Options, name: str, python: str) -> Options:
    spec = VARIANTS[name]
    extra: dict[str, Any] = {}
    merge(extra, opts.station_extra)
    merge(extra, spec.get("config", {}))
    station = opts.station
    if "patch" in spec:
        patches = ",".join(p for p in (spec["patch"], patch_of(opts.station)) if p)
        station = [python, str(Path(__file__).with_name("patched.py")), patches]
    return replace(
        opts, station=station, station_extra=extra, final_args=spec.get("peer", opts.final_args)
    )


def patch_of(station: list[str]) -> str:
    """The patches an already patched station command carries."""
    return station[2] if len(station) > 2 and station[1].endswith("patched.py") else ""


@dataclass
class Outcome:
    """One measured run of one scenario."""

    wall_s: float
    arrived: int
    peak_rss: int
    rss_of: str
    extra: dict[str, float] = field(default_factory=dict)
    other_cores: float = 0.0  # CPU used by processes not of this run, in cores


# --- helpers --------------------------------------------------------------------------------


def send(
    procs: Processes, corpus: Corpus, port: int, called: str, senders: int = 1
) -> tuple[float, list[Proc]]:
    """Start DCMTK storescu sending the corpus in order: one association, or ``senders``
    at once, each with a contiguous share (several modalities sending their series)."""
    started = time.monotonic()
    share = -(-len(corpus.files) // senders)
    parts = [corpus.files[i : i + share] for i in range(0, len(corpus.files), share)]
    names = ["storescu"] if len(parts) == 1 else [f"storescu-{n}" for n in range(len(parts))]
    proposing = ["-xs"] if corpus.spec.jpeg_lossless else []
    scus = [
        procs.start(
            name,
            storescu_args(port, called, part, proposing=proposing),
            env=DCMTK_ENV,
            cwd=corpus.root,
        )
        for name, part in zip(names, parts, strict=True)
    ]
    return started, scus


def wait_all(scus: Sequence[Proc], timeout: float) -> None:
    """Wait for every sender; raise BenchError naming the first that failed."""
    for scu in scus:
        code = scu.wait(timeout)
        if code != 0:
            raise BenchError(f"{scu.name} exited with {code}: {tail(scu)}")


def await_files(
    folder: Path,
    expected: int,
    opts: Options,
    alive: Sequence[Proc] = (),
    senders: Sequence[Proc] = (),
    counter: Callable[[Path], int] = count_files,
) -> tuple[float, int, dict[str, float]]:
    """Poll ``folder`` until ``expected`` files are there; return when (monotonic), how many,
    and when each of ``senders`` exited. Processes in ``alive`` must keep running; a sender
    that fails ends the wait early (with fewer files)."""
    deadline = time.monotonic() + opts.timeout
    exited: dict[str, float] = {}
    while True:
        now = time.monotonic()
        found = counter(folder)
        if found >= expected:
            return now, found, exited
        for proc in senders:
            if proc.name not in exited and not proc.running():
                exited[proc.name] = now
                if proc.popen.returncode != 0:
                    raise BenchError(
                        f"{proc.name} exited with {proc.popen.returncode}: {tail(proc)}"
                    )
        for proc in alive:
            proc.check_running()
        if now > deadline:
            raise BenchError(
                f"only {found} of {expected} files in {folder} after {opts.timeout:g} s"
            )
        time.sleep(opts.poll)


def tail(proc: Proc, lines: int = 8) -> str:
    return " | ".join(proc.log().strip().splitlines()[-lines:])


def station_config(
    workdir: Path, storage: Path, dest_port: int, quiet: float, opts: Options
) -> Path:
    config: dict[str, Any] = {
        "ae_title": "STATION",
        "listen": {"host": HOST, "port": 0},
        "metrics": {"enabled": False},
        "storage": str(storage),
        "series": {"quiet_seconds": quiet},
        "destinations": {
            "pacs": {"type": "dicom", "host": HOST, "port": dest_port, "ae_title": "PACS"}
        },
    }
    merge(config, opts.station_extra)
    path = workdir / f"station-{quiet:g}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def profile(procs: Processes, station: Proc, corpus: Corpus, opts: Options) -> None:
    if opts.profile is not None:
        opts.profile.mkdir(parents=True, exist_ok=True)
        output = opts.profile / f"{corpus.spec.name}-{station.name}.txt"
        start_profiler(procs, station, output, opts.profile_gil)
        time.sleep(0.3)  # py-spy attaches


def merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge ``extra`` into ``base``, mappings key by key."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def station_env(opts: Options) -> dict[str, str] | None:
    return {**os.environ, **opts.station_env} if opts.station_env else None


# --- scenarios ------------------------------------------------------------------------------


def run_dcmtk(corpus: Corpus, work: Path, procs: Processes, opts: Options) -> list[Outcome]:
    out = work / "out"
    scp, port = start_storescp(procs, "storescp", out, "PACS", ["+B"])
    cpu = cpu_seconds(scp.pid)
    t0, scus = send(procs, corpus, port, "PACS", opts.senders)
    t1, arrived, _ = await_files(out, corpus.count, opts, [scp], scus)
    cpu = cpu_seconds(scp.pid) - cpu
    return [Outcome(t1 - t0, arrived, peak_rss(scp.pid), "storescp (receiver)", {"cpu_s": cpu})]


def run_dcmtk_sf(corpus: Corpus, work: Path, procs: Processes, opts: Options) -> list[Outcome]:
    out = work / "out"
    _final, final_port = start_storescp(procs, "storescp-final", out, "PACS", ["+B"])
    forward = f"{STORESCU} -aet RELAY -aec PACS +sd {HOST} {final_port} #p"
    # Sorting into study folders (needed to know what to forward) excludes +B.
    relay, port = start_storescp(
        procs,
        "storescp-relay",
        work / "relay",
        "RELAY",
        ["-su", "study", "--eostudy-timeout", "1", "--exec-on-eostudy", forward],
    )
    with TreeSampler(relay.pid) as sampler:
        cpu = cpu_seconds(relay.pid)
        t0, scus = send(procs, corpus, port, "RELAY", opts.senders)
        t1, arrived, _ = await_files(out, corpus.count, opts, [relay], scus)
        time.sleep(0.05)  # the forked storescu exits once its association is released
        cpu = cpu_seconds(relay.pid) - cpu
    return [Outcome(t1 - t0, arrived, sampler.peak, "storescp + forked storescu", {"cpu_s": cpu})]


def run_orthanc(corpus: Corpus, work: Path, procs: Processes, opts: Options) -> list[Outcome]:
    out = work / "out"
    _final, final_port = start_storescp(procs, "storescp-final", out, "PACS", ["+B"])
    stop = signal.SIGKILL if opts.smoke else signal.SIGTERM
    orthanc, port = start_orthanc(procs, work, ("PACS", final_port), stop)
    cpu = cpu_seconds(orthanc.pid)
    t0, scus = send(procs, corpus, port, "ORTHANC", opts.senders)
    t1, arrived, _ = await_files(out, corpus.count, opts, [orthanc], scus)
    cpu = cpu_seconds(orthanc.pid) - cpu
    return [Outcome(t1 - t0, arrived, peak_rss(orthanc.pid), "Orthanc", {"cpu_s": cpu})]


def run_station(corpus: Corpus, work: Path, procs: Processes, opts: Options) -> list[Outcome]:
    out = work / "out"
    _final, final_port = start_storescp(procs, "storescp-final", out, "PACS", opts.final_args)
    config = station_config(work, work / "data", final_port, 1, opts)
    station, port = start_station(procs, "station", config, opts.station, station_env(opts))
    profile(procs, station, corpus, opts)
    cpu = tree_cpu_seconds(station.pid)
    with TreeSampler(station.pid) as sampler:
        t0, scus = send(procs, corpus, port, "STATION", opts.senders)
        t1, arrived, exited = await_files(out, corpus.count, opts, [station], scus)
        extra = {
            "acknowledged_s": max(exited.get(scu.name, t1) for scu in scus) - t0,
            "cpu_s": tree_cpu_seconds(station.pid) - cpu,
        }
    return [Outcome(t1 - t0, arrived, sampler.peak, "station + receivers", extra)]


def run_station_legs(corpus: Corpus, work: Path, procs: Processes, opts: Options) -> list[Outcome]:
    """The receive leg (nothing dispatched: the destination is down and the quiet period
    long), then the send leg: the same spool, the station restarted with the destination up."""
    storage = work / "data"
    with refused_port() as down:
        config = station_config(work, storage, down, 3600, opts)
        receiver, port = start_station(
            procs, "station-recv", config, opts.station, station_env(opts)
        )
        profile(procs, receiver, corpus, opts)
        cpu = tree_cpu_seconds(receiver.pid)
        with TreeSampler(receiver.pid) as sampler:
            t0, scus = send(procs, corpus, port, "STATION", opts.senders)
            wait_all(scus, opts.timeout)
            t1 = time.monotonic()
            cpu = tree_cpu_seconds(receiver.pid) - cpu
        spooled = count_tree(storage / "spool")
        recv = Outcome(t1 - t0, spooled, sampler.peak, "station + receivers", {"cpu_s": cpu})
        receiver.stop()
    if receiver.popen.returncode != 0:
        raise BenchError(f"station exited with {receiver.popen.returncode}: {tail(receiver)}")
    out = work / "out"
    _final, final_port = start_storescp(procs, "storescp-final", out, "PACS", opts.final_args)
    # Every batch must be past its quiet period when the station starts again.
    config = station_config(work, storage, final_port, 0.2, opts)
    time.sleep(max(0.0, t1 + 0.25 - time.monotonic()))
    started = time.monotonic()
    sender, _port = start_station(procs, "station-send", config, opts.station, station_env(opts))
    ready = time.monotonic()
    cpu = tree_cpu_seconds(sender.pid)
    profile(procs, sender, corpus, opts)
    with TreeSampler(sender.pid) as sampler:
        t2, arrived, _ = await_files(out, corpus.count, opts, [sender])
        extra = {"startup_s": ready - started, "cpu_s": tree_cpu_seconds(sender.pid) - cpu}
    sent = Outcome(t2 - ready, arrived, sampler.peak, "station + receivers", extra)
    return [recv, sent]


def run_station_cli(corpus: Corpus, work: Path, procs: Processes, opts: Options) -> list[Outcome]:
    out = work / "out"
    _final, final_port = start_storescp(procs, "storescp-final", out, "PACS", opts.final_args)
    files = [str(corpus.root / f) for f in corpus.files]
    args = [*opts.station, "send", *files, "--to", f"{HOST}:{final_port}"]
    t0 = time.monotonic()
    cli = procs.start("station-send", [*args, "--aet", "PACS"], env=station_env(opts), cwd=work)
    t1, arrived, _ = await_files(out, corpus.count, opts, [], [cli])
    code = cli.wait(opts.timeout)
    if code != 0:
        raise BenchError(f"station send exited with {code}: {tail(cli)}")
    return [Outcome(t1 - t0, arrived, cli.max_rss, "station send", {"cpu_s": cli.cpu_s})]


def run_station_transcode(
    corpus: Corpus, work: Path, procs: Processes, opts: Options
) -> list[Outcome]:
    """``station`` on the corpus's JPEG Lossless twin, its destination taking Explicit VR
    Little Endian only: every instance decompressed on the way out."""
    twin = generate(replace(corpus.spec, jpeg_lossless=True), corpus.root.parent)
    extra = json.loads(json.dumps(opts.station_extra))
    merge(extra, {"destinations": {"pacs": {"transfer_syntaxes": ["ExplicitVRLittleEndian"]}}})
    outcomes = run_station(twin, work, procs, replace(opts, station_extra=extra))
    return [replace(o, rss_of="station (JPEG Lossless to explicit LE)") for o in outcomes]


RUNNERS: dict[str, tuple[tuple[str, ...], Callable[..., list[Outcome]]]] = {
    "dcmtk": (("dcmtk",), run_dcmtk),
    "dcmtk-sf": (("dcmtk-sf",), run_dcmtk_sf),
    "orthanc": (("orthanc",), run_orthanc),
    "station": (("station",), run_station),
    "station-legs": (("station-recv", "station-send"), run_station_legs),
    "station-cli": (("station-cli",), run_station_cli),
    "station-transcode": (("station-transcode",), run_station_transcode),
}


# --- the run --------------------------------------------------------------------------------


def settle(limit: float, quiet_cores: float = 0.15) -> None:
    """Wait (at most ``limit`` seconds) until the machine is quiet: less than
    ``quiet_cores`` busy over half a second, this process aside."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy, own = cpu_busy_seconds(), sum(os.times()[:2])
        time.sleep(0.5)
        if (cpu_busy_seconds() - busy - (sum(os.times()[:2]) - own)) / 0.5 < quiet_cores:
            return
        time.sleep(1.0)


def run_scenario(
    runner: Callable[..., list[Outcome]], corpus: Corpus, opts: Options, label: str, keep: bool
) -> list[Outcome]:
    """One run; each outcome also says how much CPU other processes of the machine used
    meanwhile (busy time of all cores minus that of this run's processes, in cores)."""
    settle(opts.settle)
    work = Path(tempfile.mkdtemp(prefix=f"{corpus.spec.name}-{label}-", dir=opts.work))
    procs = Processes(work)
    busy, own, started = cpu_busy_seconds(), sum(os.times()[:2]), time.monotonic()
    try:
        outcomes = runner(corpus, work, procs, opts)
    finally:
        procs.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    ours = sum(p.cpu_s for p in procs.procs) + sum(os.times()[:2]) - own
    other = max(0.0, cpu_busy_seconds() - busy - ours) / (time.monotonic() - started)
    for outcome in outcomes:
        outcome.other_cores = round(other, 2)
    return outcomes


def measure(
    corpora: list[Corpus],
    scenarios: list[str],
    opts: Options,
    repeat: int,
    keep: bool,
    variants: Sequence[str] = ("base",),
    python: str = sys.executable,
) -> list[Row]:
    """Run every wanted scenario on every corpus ``repeat`` times, round-robin (so a slow
    spell of the machine hits every scenario alike); each row keeps the median run."""
    plan: list[tuple[Corpus, str, tuple[str, ...], Callable[..., list[Outcome]], Options]] = []
    for corpus in corpora:
        for key, (names, runner) in RUNNERS.items():
            if not any(n in scenarios for n in names):
                continue
            if not key.startswith("station"):
                plan.append((corpus, key, names, runner, opts))
                continue
            for variant in variants:  # levers apply to the station only
                label = "" if variant == "base" else f"+{variant}"
                plan.append(
                    (
                        corpus,
                        key + label,
                        tuple(n + label for n in names),
                        runner,
                        variant_options(opts, variant, python),
                    )
                )
    rows = {
        (c.spec.name, n): Row(c.spec.name, n, c.count, c.total_bytes, opts.senders)
        for c, _key, names, _runner, _opts in plan
        for n in names
        if n.split("+")[0] in scenarios
    }
    outcomes: dict[tuple[str, str], list[Outcome]] = {k: [] for k in rows}
    broken: set[tuple[str, str]] = set()
    for attempt in range(1, repeat + 1):
        for corpus, key, names, runner, run_opts in plan:
            name = corpus.spec.name
            if (name, key) in broken:
                continue
            try:
                results = run_scenario(runner, corpus, run_opts, key, keep)
            except Exception as exc:  # one broken scenario must not hide the others
                broken.add((name, key))
                for scenario in names:
                    if (name, scenario) in rows:
                        rows[name, scenario].error = f"{type(exc).__name__}: {exc}"
                print(f"  {name}/{key} run {attempt}: FAILED: {exc}", file=sys.stderr)
                continue
            for scenario, outcome in zip(names, results, strict=True):
                if (name, scenario) in rows:
                    outcomes[name, scenario].append(outcome)
                    print(
                        f"  run {attempt}/{repeat} {name:<11} {scenario:<24} "
                        f"x{opts.senders:<2} "
                        f"{outcome.wall_s:7.2f} s  (others {outcome.other_cores:.2f} cores)",
                        file=sys.stderr,
                        flush=True,
                    )
    for key, row in rows.items():
        runs = outcomes[key]
        if runs:
            row.runs = [round(o.wall_s, 3) for o in runs]
            middle = sorted(runs, key=lambda o: o.wall_s)[(len(runs) - 1) // 2]
            row.wall_s = middle.wall_s
            row.arrived = min(o.arrived for o in runs)
            row.peak_rss_bytes = max(o.peak_rss for o in runs)
            row.rss_of = middle.rss_of
            row.other_cores = max(o.other_cores for o in runs)
            row.extra = {k: round(v, 3) for k, v in middle.extra.items()}
    for row in rows.values():
        base = rows.get((row.corpus, BASELINE))
        if base and base.wall_s and row.wall_s:
            row.speed_vs_sf = round(base.wall_s / row.wall_s, 3)
        if base and base.peak_rss_bytes and row.peak_rss_bytes:
            row.rss_vs_sf = round(row.peak_rss_bytes / base.peak_rss_bytes, 2)
    return list(rows.values())


def calibrate() -> float:
    """Seconds one core takes for a fixed pure-Python loop: how fast the machine is now
    (a VM's speed drifts with its neighbours; compare runs with it)."""
    started = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i
    return round(time.perf_counter() - started, 3)


def header(width: int = 13) -> str:
    return (
        f"{'corpus':<11} {'scenario':<{width}} {'senders':>7} {'wall s':>7} {'inst/s':>7} "
        f"{'MB/s':>7} "
        f"{'RSS MiB':>8} {'CPU s':>6} {'speed/SF':>8} {'RSS/SF':>7} {'arrived':>11} {'others':>6}"
    )


def format_row(row: Row, width: int = 13) -> str:
    if row.error and not row.wall_s:
        return f"{row.corpus:<11} {row.scenario:<{width}} {row.senders:7d} FAILED: {row.error}"
    speed = f"{row.speed_vs_sf:.2f}" if row.speed_vs_sf is not None else "-"
    rss = f"{row.rss_vs_sf:.2f}" if row.rss_vs_sf is not None else "-"
    return (
        f"{row.corpus:<11} {row.scenario:<{width}} {row.senders:7d} {row.wall_s:7.2f} "
        f"{row.instances_per_s:7.0f} "
        f"{row.mb_per_s:7.1f} {row.peak_rss_bytes / MIB:8.1f} {row.extra.get('cpu_s', 0):6.1f} "
        f"{speed:>8} {rss:>7} "
        f"{row.arrived:>5}/{row.instances:<5} {row.other_cores:6.2f}"
    )


def versions() -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    for name, cmd in (("dcmtk", [STORESCP, "--version"]), ("orthanc", [ORTHANC, "--version"])):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            found[name] = text.strip().splitlines()[0] if text.strip() else "?"
        except (OSError, subprocess.SubprocessError):
            found[name] = "missing"
    try:
        import pydicom
        import pynetdicom

        found["pydicom"], found["pynetdicom"] = pydicom.__version__, pynetdicom.__version__
    except ImportError:
        pass
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few instances per corpus")
    parser.add_argument(
        "--corpus",
        help=f"default: {DEFAULT_CORPORA} ({','.join(SMOKE)} with --smoke)",
    )
    parser.add_argument(
        "--scenario",
        help=f"default: {DEFAULT_SCENARIOS} (all with --smoke: {','.join(SCENARIOS)})",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario (median)")
    parser.add_argument(
        "--variants",
        default="base",
        metavar="NAMES",
        help=f"station levers to compare, one row each: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("STATION_BENCH_CACHE", "/tmp/station-bench/corpora")),
        help="where generated corpora are kept (default %(default)s)",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's folder")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run wait up to this long for other processes to go quiet",
    )
    parser.add_argument("--timeout", type=float, help="seconds per scenario run")
    parser.add_argument(
        "--senders",
        metavar="N,N",
        help="storescu associations sending at once, each a contiguous share of the corpus; "
        f"one table row per number (default: {DEFAULT_SENDERS}, 1 with --smoke)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample each station process with py-spy into DIR (collapsed stacks; slows it)",
    )
    parser.add_argument(
        "--profile-gil", action="store_true", help="profile only what holds the GIL"
    )
    parser.add_argument("--python", default=sys.executable, help="python running the station")
    parser.add_argument(
        "--patch",
        default="",
        metavar="NAMES",
        help="run the station through bench/patched.py with these patches (levers, timing)",
    )
    parser.add_argument(
        "--station-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the station processes (levers)",
    )
    parser.add_argument(
        "--station-config",
        default="{}",
        metavar="YAML",
        help="merged into the station's config, e.g. '{listen: {max_pdu_bytes: 16384}}'",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every started process is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    specs = SMOKE if args.smoke else FULL
    corpus_list = args.corpus or (",".join(SMOKE) if args.smoke else DEFAULT_CORPORA)
    names = [n.strip() for n in corpus_list.split(",") if n.strip()]
    scenario_list = args.scenario or (",".join(SCENARIOS) if args.smoke else DEFAULT_SCENARIOS)
    scenarios = [s.strip() for s in scenario_list.split(",") if s.strip()]
    senders = [
        max(1, int(n))
        for n in (args.senders or ("1" if args.smoke else DEFAULT_SENDERS)).split(",")
    ]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in specs] + [s for s in scenarios if s not in SCENARIOS]
    unknown += [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown corpus or scenario: {', '.join(unknown)}", file=sys.stderr)
        return 2
    for tool in (STORESCP, STORESCU, ORTHANC):
        if not Path(tool).exists():
            print(f"missing {tool}: apt-get install -y dcmtk orthanc", file=sys.stderr)
            return 1
    started = time.monotonic()
    corpora = []
    for name in names:
        t = time.monotonic()
        corpora.append(generate(specs[name], args.cache))
        print(
            f"corpus {name}: {corpora[-1].count} instances, {corpora[-1].total_bytes / 1e6:.1f}"
            f" MB ({time.monotonic() - t:.1f} s)",
            file=sys.stderr,
        )
    scratch = args.workdir or Path(tempfile.mkdtemp(prefix="station-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    opts = Options(
        work=scratch,
        station=(
            [args.python, str(Path(__file__).with_name("patched.py")), args.patch]
            if args.patch
            else [args.python, "-m", "station"]
        ),
        timeout=args.timeout or (60.0 if args.smoke else 900.0),
        poll=0.01 if args.smoke else 0.02,
        station_env=dict(kv.split("=", 1) for kv in args.station_env),
        station_extra=yaml.safe_load(args.station_config) or {},
        profile=args.profile,
        profile_gil=args.profile_gil,
        settle=args.settle,
        smoke=args.smoke,
    )
    load = os.getloadavg()
    speed = [calibrate()]
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"calibration loop {speed[0]:.2f} s",
        file=sys.stderr,
    )
    try:
        rows = [
            row
            for n in senders
            for row in measure(
                corpora,
                scenarios,
                replace(opts, senders=n),
                max(1, args.repeat),
                args.keep,
                variants,
                args.python,
            )
        ]
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    speed.append(calibrate())
    width = max([13, *(len(r.scenario) for r in rows)])
    print(header(width))
    for row in rows:
        print(format_row(row, width))
    result = {
        "smoke": args.smoke,
        "cpus": os.cpu_count(),
        "senders": senders,
        "load_before": load,
        "load_after": os.getloadavg(),
        "calibration_s": speed,
        "seconds": round(time.monotonic() - started, 1),
        "versions": versions(),
        "options": {
            "repeat": args.repeat,
            "patch": args.patch,
            "variants": variants,
            "station_env": opts.station_env,
            "station_config": opts.station_extra,
        },
        "corpora": {
            c.spec.name: {"instances": c.count, "bytes": c.total_bytes, "series": c.series}
            for c in corpora
        },
        "rows": [r.as_json() for r in rows],
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    failed = [r for r in rows if r.error or r.arrived != r.instances]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
