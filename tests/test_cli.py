"""The command line: exit codes (0 ok, 1 user error, 2 usage), messages, no tracebacks.

Commands that only read files run through typer's CliRunner; those that talk DICOM (echo,
send) run as subprocesses against a real DCMTK storescp, as a user would run them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import MALFORMED, VALID, StoreSCP, needs_corpus
from typer.testing import CliRunner, Result

from station import __version__ as station_version
from station.cli import app
from station.store.lock import StorageLock

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# Distinct SOP Instance UIDs, several transfer syntaxes, all accepted by DCMTK's storescp.
SENDABLE = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "JPEG2000.dcm",  # JPEG 2000
    "JPGExtended.dcm",  # JPEG extended
    "SC_rgb_rle_2frame.dcm",  # RLE, 2 frames
    "emri_small.dcm",  # enhanced MR, 10 frames
    "rtplan.dcm",  # implicit VR, no pixel data
    "reportsi.dcm",  # structured report
]


def cli(*args: str) -> Result:
    """Run the CLI in-process; a traceback would mean an error escaped the commands."""
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def station(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m station`` as a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "station", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def sop_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


# --- check -------------------------------------------------------------------------------


@pytest.mark.skipif(not EXAMPLES, reason="no example configs in examples/")
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_check_accepts_the_example_configs(example: Path) -> None:
    result = cli("check", "--config", str(example))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{example}: ok")


def test_check_example_as_a_subprocess() -> None:
    if not EXAMPLES:
        pytest.skip("no example configs in examples/")
    result = station("check", "--config", str(EXAMPLES[0]), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_on_built_in_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("check")
    assert result.exit_code == 0, result.output
    assert "built-in defaults: ok" in result.stdout
    assert "destinations: local-folder" in result.stdout
    assert "set-tags" in result.stdout  # the bundled plugin, from its entry point


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process would hold: bound and listening on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_check_names_a_port_in_use(tmp_path: Path, held_port: int) -> None:
    cfg = write(
        tmp_path / "station.yaml",
        f"""
        storage: data
        listen: {{host: 127.0.0.1, port: 0}}
        metrics: {{host: 127.0.0.1, port: {held_port}}}
        """,
    )
    result = cli("check", "--config", str(cfg))
    assert result.exit_code == 1
    assert result.output == f"error: metrics.port 127.0.0.1:{held_port} is in use\n"


def test_check_beside_a_running_station_leaves_its_ports_alone(
    tmp_path: Path, held_port: int
) -> None:
    """Check, then reload (README "Deploy as a service"): the ports in use are the running
    station's own, which holds the storage's lock."""
    cfg = write(
        tmp_path / "station.yaml",
        f"storage: data\nlisten: {{host: 127.0.0.1, port: {held_port}}}\n",
    )
    lock = StorageLock(tmp_path / "data").acquire()
    try:
        result = cli("check", "--config", str(cfg))
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    assert f"a station (PID {os.getpid()}) runs on this storage" in result.output
    assert cli("check", "--config", str(cfg)).exit_code == 1  # no station: port in use


def test_check_names_a_storage_that_cannot_be_made(tmp_path: Path) -> None:
    write(tmp_path / "a-file", "not a folder\n")
    cfg = write(tmp_path / "station.yaml", "storage: a-file/data\nlisten: {port: 0}\n")
    result = cli("check", "--config", str(cfg))
    assert result.exit_code == 1
    assert f"storage {tmp_path}/a-file/data: {tmp_path}/a-file is not a folder" in result.output


@pytest.mark.e2e
def test_run_names_the_port_in_use_and_takes_port_options(tmp_path: Path, held_port: int) -> None:
    cfg = write(tmp_path / "station.yaml", "storage: data\nmetrics: {enabled: false}\n")
    result = station("run", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(held_port))
    assert result.returncode == 1
    assert result.stderr == f"error: listen.port 127.0.0.1:{held_port} is in use\n"


def test_version() -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.output == f"station {station_version}\n"


def broken_setup(tmp_path: Path) -> Path:
    """A config whose route file has a typo in a keyword and names an unknown transform."""
    write(
        tmp_path / "routes" / "ct.yaml",
        """
        name: ct
        match:
          Modalty: CT
        destinations: [pacs]
        """,
    )
    return write(
        tmp_path / "station.yaml",
        """
        routes: routes
        listen:
          port: 99999
        destinations:
          pacs: {type: dicom, host: 127.0.0.1, port: 104, ae_title: PACS}
        """,
    )


def test_check_reports_config_errors_with_file_and_line(tmp_path: Path) -> None:
    cfg = broken_setup(tmp_path)
    result = cli("check", "--config", str(cfg))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {cfg}:3: listen.port: ")
    assert "less than or equal to 65535" in result.stderr

    # Once the config is right, the route file is checked.
    cfg.write_text(cfg.read_text().replace("99999", "11112"))
    result = cli("check", "--config", str(cfg))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'routes' / 'ct.yaml'}:3: match.Modalty: ")


def test_check_errors_as_a_subprocess(tmp_path: Path) -> None:
    cfg = broken_setup(tmp_path)
    result = station("check", "--config", str(cfg))
    assert result.returncode == 1
    assert f"{cfg}:3: listen.port:" in result.stderr


def test_check_names_a_missing_config_file(tmp_path: Path) -> None:
    result = cli("check", "--config", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'absent.yaml'}: no such config file\n"


def test_check_reports_a_plugin_that_does_not_import(tmp_path: Path) -> None:
    plugin = write(tmp_path / "bad_plugin.py", "import not_a_module_anywhere\n")
    cfg = write(tmp_path / "station.yaml", f"plugins: [{plugin}]\n")
    result = cli("check", "--config", str(cfg))
    assert result.exit_code == 1
    assert f"{plugin}: plugin failed to import: ModuleNotFoundError" in result.stderr


# --- echo --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_echo_a_real_storescp(pacs: StoreSCP, tmp_path: Path) -> None:
    result = station("echo", f"127.0.0.1:{pacs.port}", "--aet", "PACS")
    assert result.returncode == 0, result.stderr
    assert f"C-ECHO PACS@127.0.0.1:{pacs.port}: success" in result.stdout

    cfg = write(
        tmp_path / "station.yaml",
        f"""
        destinations:
          pacs: {{type: dicom, host: 127.0.0.1, port: {pacs.port}, ae_title: PACS}}
          archive: {{type: folder, path: archive}}
        """,
    )
    result = cli("echo", "pacs", "--config", str(cfg))  # a configured destination, by name
    assert result.exit_code == 0, result.output
    assert "success" in result.stdout
    result = cli("echo", "archive", "--config", str(cfg))
    assert result.exit_code == 1
    assert "destination 'archive' is of type folder, not dicom" in result.stderr


def test_echo_a_closed_port(refused_port: int) -> None:
    port = refused_port
    result = station("echo", f"127.0.0.1:{port}", "--aet", "PACS")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert f"PACS@127.0.0.1:{port}" in result.stderr
    assert "connect" in result.stderr


def test_echo_something_that_is_no_destination(tmp_path: Path) -> None:
    result = cli("echo", "no-such-pacs", "--config", str(write(tmp_path / "s.yaml", "{}\n")))
    assert result.exit_code == 1
    assert "'no-such-pacs' is neither a configured dicom destination" in result.stderr
    assert "HOST:PORT" in result.stderr


# --- send --------------------------------------------------------------------------------


@pytest.mark.e2e
@needs_corpus
def test_send_a_folder_with_subfolders(pacs: StoreSCP, tmp_path: Path) -> None:
    study = tmp_path / "study"
    for index, name in enumerate(SENDABLE):
        folder = study / f"series{index % 3}" / ("deeper" if index % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(VALID / name, folder / name)
    result = station("send", str(study), "--to", f"127.0.0.1:{pacs.port}", "--aet", "PACS")
    assert result.returncode == 0, result.stderr
    assert f"sent {len(SENDABLE)} of {len(SENDABLE)} instances" in result.stdout
    assert sop_uids(pacs.files()) == sop_uids([VALID / n for n in SENDABLE])


@pytest.mark.e2e
@needs_corpus
def test_send_a_zip_with_nested_folders(pacs: StoreSCP, tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("PATIENT/", "")
        for index, name in enumerate(SENDABLE):
            z.write(VALID / name, f"PATIENT/STUDY{index % 2}/SERIES{index}/IM{index:04d}")
    result = station("send", str(archive), "--to", f"127.0.0.1:{pacs.port}", "--aet", "PACS")
    assert result.returncode == 0, result.stderr
    assert f"sent {len(SENDABLE)} of {len(SENDABLE)} instances" in result.stdout
    assert sop_uids(pacs.files()) == sop_uids([VALID / n for n in SENDABLE])


@pytest.mark.e2e
@needs_corpus
def test_send_skips_and_reports_what_is_not_dicom(pacs: StoreSCP, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(VALID / "CT_small.dcm", folder / "CT_small.dcm")
    (folder / "notes.txt").write_text("not an image\n")
    shutil.copy(MALFORMED / "derived_empty_file.dcm", folder / "empty.dcm")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(VALID / "MR_small.dcm", "SERIES1/IM0001")
        z.writestr("SERIES1/README", "exported by a viewer\n")
    missing = tmp_path / "absent.dcm"
    args = [str(folder), str(archive), str(missing)]
    result = station("send", *args, "--to", f"127.0.0.1:{pacs.port}", "--aet", "PACS")
    assert result.returncode == 1
    assert f"skipped {folder / 'notes.txt'}: not a DICOM file" in result.stderr
    assert f"skipped {folder / 'empty.dcm'}: " in result.stderr
    assert f"skipped {archive}:SERIES1/README: not a DICOM file" in result.stderr
    assert f"skipped {missing}: no such file or folder" in result.stderr
    assert "sent 2 of 2 instances" in result.stdout and "; 4 skipped" in result.stdout
    expected = sop_uids([VALID / "CT_small.dcm", VALID / "MR_small.dcm"])
    assert sop_uids(pacs.files()) == expected


def test_send_nothing_sendable(tmp_path: Path, refused_port: int) -> None:
    port = refused_port  # never reached: there is nothing to send
    text = write(tmp_path / "notes.txt", "hello\n")
    result = cli("send", str(text), "--to", f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"skipped {text}: not a DICOM file" in result.stderr
    assert "nothing to send: no DICOM files found" in result.stderr


@needs_corpus
def test_send_to_a_closed_port(refused_port: int) -> None:
    port = refused_port
    result = station("send", str(VALID / "CT_small.dcm"), "--to", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and f"127.0.0.1:{port}" in result.stderr


# --- plugins, status, retry --------------------------------------------------------------


def test_plugins_lists_bundled_and_configured_plugins(tmp_path: Path) -> None:
    plugin = write(
        tmp_path / "plugins" / "tagger.py",
        """
        from station import hookimpl

        @hookimpl
        def station_classify_series(series):
            return None
        """,
    )
    cfg = write(tmp_path / "station.yaml", "plugins: [plugins/tagger.py]\n")
    result = cli("plugins", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    set_tags = lines.index("set-tags  (entry point of dicom-station 0.1.0)")
    assert lines[set_tags + 1].strip() == "station_transforms"
    tagger = lines.index(f"tagger  ({plugin})")
    assert lines[tagger + 1].strip() == "station_classify_series"
    assert "transforms: anonymize, private-tags, set-tags, uid-remap" in lines


@pytest.mark.parametrize("command", ["status", "retry"])
def test_status_and_retry_without_a_journal(tmp_path: Path, command: str) -> None:
    cfg = write(tmp_path / "station.yaml", "storage: data\n")
    result = cli(command, "--config", str(cfg))
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no journal at {tmp_path / 'data' / 'journal.sqlite'}: "
        "has the station run with this config?\n"
    )
    assert not (tmp_path / "data").exists()  # looking does not create anything


def test_status_without_a_journal_as_a_subprocess(tmp_path: Path) -> None:
    cfg = write(tmp_path / "station.yaml", "storage: data\n")
    result = station("status", "--config", str(cfg))
    assert result.returncode == 1
    assert result.stderr.startswith("error: no journal at ")


# --- usage errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["send"],  # no path
        ["send", "x.dcm"],  # no --to
        ["echo"],  # no destination
        ["status", "--bogus"],
        ["check", "--config"],  # option without its value
    ],
    ids=lambda args: " ".join(args) or "no arguments",
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output


def test_usage_error_as_a_subprocess() -> None:
    result = station("send", "x.dcm")
    assert result.returncode == 2
    assert "--to" in result.stderr
