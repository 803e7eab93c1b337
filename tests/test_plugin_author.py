"""The plugin author's path: docs/plugins.md, ``station plugins new``, and a plugin seen
acting in a running station.

Every fenced block of docs/plugins.md is named (``<!-- file: NAME -->`` or ``<!-- output:
COMMAND -->``) and exercised here: plugins run through station.testing on real files, the
documented test runs under pytest, the commands run through the CLI, the pyproject's entry
point is found by ``station plugins``, and the 20-line plugin routes real traffic from
DCMTK's storescu to a DCMTK storescp.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from conftest import VALID, StoreSCP, dicom_destination, needs_corpus, storescu, wait_for
from test_cli import cli
from test_routing import received, settled, sop_uid

from station.config import load_config
from station.dicom.identify import identify
from station.dispatch.dispatcher import build_destination
from station.errors import ConfigError
from station.routing import hookspecs
from station.series import SeriesView
from station.service import load_setup
from station.store.records import Instance
from station.testing import (
    apply_transforms,
    load_plugins,
    run_plugins,
    series_from_dataset,
    series_from_files,
)

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "docs" / "plugins.md").read_text()
BLOCK = re.compile(r"<!-- (file|output): (.+?) -->\n```\w+\n(.*?)^```$", re.DOTALL | re.MULTILINE)
BLOCKS = {name: text for _kind, name, text in BLOCK.findall(DOCS)}
PLUGIN = "plugins/mr_sequence.py"
ROUTE = "routes/30-mr-by-sequence.yaml"
MR = VALID / "MR_small.dcm"
EMRI = VALID / "emri_small.dcm"  # enhanced MR; ImageType ORIGINAL\PRIMARY\T1
CT = VALID / "CT_small.dcm"


def docs_files(folder: Path, *names: str) -> Path:
    """Write the named blocks of docs/plugins.md under ``folder``, as the docs lay them out."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(BLOCKS[name])
    return folder


def pytest_run(folder: Path) -> subprocess.CompletedProcess[str]:
    """pytest on ``folder`` as a plugin author runs it: its own rootdir, none of ours."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
    )


def ruff_clean(folder: Path) -> None:
    """``ruff check`` (our rules) and ``ruff format --check`` pass on the Python files of
    ``folder``, run there as in an author's own folder (station is a third-party package)."""
    rules = ["--isolated", "--line-length", "100", "--select", "E,F,W,I,B,UP,SIM,RUF"]
    for command in (["check", *rules], ["format", "--check", *rules[:3]]):
        linted = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "."],
            capture_output=True,
            text=True,
            cwd=folder,
        )
        assert linted.returncode == 0, linted.stdout + linted.stderr


# --- docs/plugins.md ----------------------------------------------------------------------


EXERCISED = {
    PLUGIN: "test_the_docs_plugin_labels_the_real_mr_files and the end-to-end test",
    ROUTE: "test_the_docs_plugin_labels_the_real_mr_files and the end-to-end test",
    "station.yaml": "test_see_it_act_commands_work_as_documented and the end-to-end test",
    "see-it-act.sh": "test_see_it_act_commands_work_as_documented",
    "station plugins --config station.yaml": "test_see_it_act_commands_work_as_documented",
    "plugins/site.py": "test_configure_example_takes_its_options",
    "plugin_options.yaml": "test_configure_example_takes_its_options",
    "plugins/no_reports.py": "test_filter_example_drops_reports",
    "plugins/dwi_lab.py": "test_route_hook_example_adds_a_destination",
    "plugins/mark_sequence.py": "test_transform_example_marks_the_description",
    "routes/40-marked-copy.yaml": "test_transform_example_marks_the_description",
    "plugins/manifest.py": "test_destination_type_example_writes_its_manifest",
    "manifest-destination.yaml": "test_destination_type_example_writes_its_manifest",
    "plugins/notices.py": "test_notification_example_logs_deliveries_and_failures",
    "plugins/test_mr_sequence.py": "test_the_documented_tests_pass_under_pytest",
    "plugins/test_mark_sequence.py": "test_the_documented_tests_pass_under_pytest",
    "pyproject.toml": "test_the_packaged_plugin_is_found_by_its_entry_point",
}


def test_every_code_block_of_the_docs_is_named_and_exercised() -> None:
    fences = len(re.findall(r"^```", DOCS, re.MULTILINE))
    assert fences == 2 * len(BLOCK.findall(DOCS)), "a fenced block without a name comment"
    assert set(BLOCKS) == set(EXERCISED)


def test_the_docs_describe_every_hook_and_every_series_attribute() -> None:
    headings = re.findall(r"^### (.+)$", DOCS, re.MULTILINE)
    hooks = [name for name in vars(hookspecs) if name.startswith("station_")]
    for hook in hooks:
        assert any(h.startswith(f"{hook}(") or f" {hook}(" in h for h in headings), hook
    section = DOCS.split("## The series view")[1].split("\n## ")[0]
    first_cells = re.findall(r"^\| (.+?) \|", section, re.MULTILINE)[2:]  # after the head
    names = {n for cell in first_cells for n in re.findall(r"`(?:series\.)?(\w+)", cell)}
    public = {f.name for f in fields(SeriesView)} | {"get", "files", "datasets"}
    assert names == public


@needs_corpus
@pytest.mark.parametrize(
    ("file", "sequence"),
    [(p.name, "T2") for p in sorted(VALID.glob("MR_small*.dcm"))] + [(EMRI.name, "T1")],
)
def test_the_docs_plugin_labels_the_real_mr_files(tmp_path: Path, file: str, sequence: str) -> None:
    docs_files(tmp_path, PLUGIN, ROUTE)
    series = series_from_files(VALID / file)
    result = run_plugins(series, plugins=[tmp_path / PLUGIN], routes=tmp_path / "routes")
    assert result.labels == {"sequence": sequence}
    expected = {"mr-t2-to-research": ["research"]} if sequence == "T2" else {}
    assert result.routes == expected


@needs_corpus
def test_the_docs_plugin_leaves_every_other_real_file_alone(tmp_path: Path) -> None:
    plugin = docs_files(tmp_path, PLUGIN) / PLUGIN
    for path in sorted(VALID.iterdir()):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if header.get("Modality") != "MR":
            result = run_plugins(series_from_dataset(header), [plugin])
            assert (result.state, result.labels) == ("unrouted", {}), path.name


@needs_corpus
def test_configure_example_takes_its_options(tmp_path: Path) -> None:
    site = docs_files(tmp_path, "plugins/site.py") / "plugins/site.py"
    options = yaml.safe_load(BLOCKS["plugin_options.yaml"])["plugin_options"]
    north = series_from_files(CT, calling_ae="CT_NORTH")
    assert run_plugins(north, [site], options=options).labels == {"site": "north"}
    elsewhere = series_from_files(CT, calling_ae="CT_WEST")
    assert run_plugins(elsewhere, [site], options=options).labels == {}
    with pytest.raises(ConfigError, match=r"plugin_options\.site: unknown options \['colour'\]"):
        run_plugins(north, [site], options={"site": {"colour": "red"}})


@needs_corpus
def test_filter_example_drops_reports(tmp_path: Path) -> None:
    plugin = docs_files(tmp_path, "plugins/no_reports.py") / "plugins/no_reports.py"
    report = run_plugins(series_from_files(VALID / "test-SR.dcm"), [plugin])
    assert (report.state, report.reason) == ("filtered", "filtered by plugin no_reports")
    assert run_plugins(series_from_files(CT), [plugin]).state == "unrouted"


@needs_corpus
def test_route_hook_example_adds_a_destination(tmp_path: Path) -> None:
    docs_files(tmp_path, PLUGIN, ROUTE, "plugins/dwi_lab.py")
    header = pydicom.dcmread(MR, stop_before_pixels=True)
    header.SeriesDescription = "ep2d_diff_3scan_trace"
    result = run_plugins(
        series_from_dataset(header),
        plugins=[tmp_path / "plugins"],
        routes=tmp_path / "routes",
        destinations=["research", "dwi-lab"],
    )
    assert result.labels == {"sequence": "DWI"}
    assert result.routes == {"plugin:dwi_lab": ["dwi-lab"]}


@needs_corpus
def test_transform_example_marks_the_description(tmp_path: Path) -> None:
    docs_files(tmp_path, PLUGIN, "plugins/mark_sequence.py", "routes/40-marked-copy.yaml")
    plugins = [tmp_path / PLUGIN, tmp_path / "plugins/mark_sequence.py"]
    routes = tmp_path / "routes/40-marked-copy.yaml"
    decided = run_plugins(series_from_files(EMRI), plugins, routes=routes)
    (delivery,) = decided.deliveries
    assert (delivery.destination, delivery.transforms) == (
        "teaching",
        ({"name": "mark-sequence", "options": {"unknown": "MR"}},),
    )
    labelled = series_from_files(EMRI, labels=decided.labels)
    marked = apply_transforms(EMRI, delivery.transforms, plugins, series=labelled)
    assert marked.SeriesDescription == "T1"
    unlabelled = apply_transforms(CT, delivery.transforms, plugins)
    assert unlabelled.SeriesDescription == "MR"  # CT_small has no description; the option


@needs_corpus
def test_destination_type_example_writes_its_manifest(tmp_path: Path) -> None:
    docs_files(tmp_path, "plugins/manifest.py")
    config = yaml.safe_load(BLOCKS["manifest-destination.yaml"])
    manifest = tmp_path / "manifest.jsonl"
    config["destinations"]["tracker"]["path"] = str(manifest)
    (tmp_path / "station.yaml").write_text(yaml.safe_dump({"plugins": ["plugins"], **config}))
    setup = load_setup(load_config(tmp_path / "station.yaml", environ={}))
    tracker = build_destination(
        "tracker", setup.destinations["tracker"], setup.plugins.destination_types, "STATION"
    )
    h = identify(CT)
    instance = Instance(h.sop_uid, h.study_uid, h.series_uid, h.sop_class, h.transfer_syntax, CT, 1)
    assert tracker.send([instance], None).sent == 1
    assert json.loads(manifest.read_text()) == {"series": h.series_uid, "sop": h.sop_uid}


@needs_corpus
def test_notification_example_logs_deliveries_and_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugins = load_plugins([docs_files(tmp_path, "plugins/notices.py") / "plugins/notices.py"])
    series = series_from_files(MR)
    with caplog.at_level(logging.INFO, logger="station.notices"):
        plugins.notify("station_series_delivered", series=series, destination="research")
        plugins.notify("station_series_failed", series=series, destination="pacs", reason="0xA700")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"series {series.series_uid} delivered to research"),
        ("WARNING", f"series {series.series_uid}: not delivered to pacs: 0xA700"),
    ]


def test_the_documented_tests_pass_under_pytest(tmp_path: Path) -> None:
    docs_files(tmp_path, PLUGIN, ROUTE, "plugins/mark_sequence.py")
    docs_files(tmp_path, "plugins/test_mr_sequence.py", "plugins/test_mark_sequence.py")
    result = pytest_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout


def test_the_python_examples_are_lint_clean(tmp_path: Path) -> None:
    ruff_clean(docs_files(tmp_path, *(name for name in BLOCKS if name.endswith(".py"))))


@needs_corpus
def test_see_it_act_commands_work_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs_files(tmp_path, "station.yaml", PLUGIN, ROUTE, "plugins/test_mr_sequence.py")
    study = tmp_path / "incoming" / "mr-study"
    study.mkdir(parents=True)
    for source in (MR, EMRI):
        (study / source.name).write_bytes(source.read_bytes())
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for line in BLOCKS["see-it-act.sh"].splitlines():
        command = shlex.split(line)
        assert command[0] == "station"
        result = cli(*command[1:])
        assert result.exit_code == 0, result.output
        outputs[command[1]] = result.stdout
    assert re.search(r"^  plugins: .*\bmr_sequence\b", outputs["check"], re.MULTILINE)
    shown = BLOCKS["station plugins --config station.yaml"].replace("/etc/station", str(tmp_path))
    assert shown in outputs["plugins"]  # the test file beside the plugin is not loaded
    preview = outputs["preview"]
    assert "labels: sequence=T2\n  -> research (route mr-t2-to-research)" in preview
    assert "labels: sequence=T1\n" in preview


def test_the_packaged_plugin_is_found_by_its_entry_point(tmp_path: Path) -> None:
    """The pyproject's entry point, as pip would install it: a dist-info on the path."""
    project = tomllib.loads(BLOCKS["pyproject.toml"])
    name, version = project["project"]["name"], project["project"]["version"]
    points = project["project"]["entry-points"]["station.plugins"]
    (module,) = project["tool"]["setuptools"]["py-modules"]
    assert list(points.values()) == [module]
    site = tmp_path / "site-packages"
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"{point} = {target}" for point, target in points.items()]
    (info / "entry_points.txt").write_text("[station.plugins]\n" + "\n".join(lines) + "\n")
    (site / f"{module}.py").write_text(BLOCKS[PLUGIN])
    result = subprocess.run(
        [sys.executable, "-m", "station", "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stderr
    listed = result.stdout.splitlines()
    at = listed.index(f"mr_sequence  (entry point of {name} {version})")
    assert listed[at + 1].strip() == "station_classify_series"


# --- station plugins new ------------------------------------------------------------------


def test_plugins_new_writes_a_plugin_and_a_test_that_pass_as_written(tmp_path: Path) -> None:
    folder = tmp_path / "site-plugins"
    result = cli("plugins", "new", "mr_flag", "--dir", str(folder))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["mr_flag.py", "test_mr_flag.py"]
    assert f"python -m pytest {folder / 'test_mr_flag.py'}" in result.stdout

    run = pytest_run(folder)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout
    ruff_clean(folder)

    # The station loads the folder (the test beside it is skipped) with the plugin's options.
    config = tmp_path / "station.yaml"
    config.write_text(f"plugins: [{folder}]\nplugin_options: {{mr_flag: {{modalities: [CT]}}}}\n")
    check = cli("check", "--config", str(config))
    assert check.exit_code == 0, check.output
    assert re.search(r"^  plugins: .*\bmr_flag\b", check.stdout, re.MULTILINE)
    config.write_text(f"plugins: [{folder}]\nplugin_options: {{mr_flag: {{colour: red}}}}\n")
    refused = cli("check", "--config", str(config))
    assert refused.exit_code == 1
    assert "plugin_options.mr_flag: unknown options ['colour']" in refused.stderr


def test_plugins_new_writes_here_by_default_and_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli("plugins", "new", "first").exit_code == 0
    assert (tmp_path / "first.py").exists() and (tmp_path / "test_first.py").exists()

    (tmp_path / "test_second.py").write_text("# mine\n")
    result = cli("plugins", "new", "second")
    assert result.exit_code == 1
    assert result.stderr == "error: test_second.py exists already; nothing was written\n"
    assert not (tmp_path / "second.py").exists()
    assert (tmp_path / "test_second.py").read_text() == "# mine\n"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mr-flag", "a Python module name: lowercase letters, digits and '_'"),
        ("MrFlag", "(for example 'mrflag')"),
        ("class", "a plugin name is a Python module name"),
        ("test_flag", "plugin folders skip files named test_*.py"),
        ("json", "a module of that name exists already"),
    ],
)
def test_plugins_new_refuses_names_that_cannot_work(
    tmp_path: Path, name: str, message: str
) -> None:
    result = cli("plugins", "new", name, "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {name!r}: ") and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_plugins_without_a_subcommand_still_lists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("plugins")
    assert result.exit_code == 0, result.output
    assert "set-tags  (entry point of dicom-station " in result.stdout
    assert "transforms: " in result.stdout
    missing = cli("plugins", "--config", "nowhere.yaml")
    assert (missing.exit_code, missing.stderr) == (1, "error: nowhere.yaml: no such config file\n")


# --- end to end ---------------------------------------------------------------------------

HANG = """\
import time

from station import hookimpl


@hookimpl
def station_filter_series(series):
    if series.get("Modality") == "CT":
        time.sleep(3600)  # far beyond the time limit
"""


@pytest.mark.e2e
@needs_corpus
def test_the_docs_plugin_routes_real_traffic_while_a_hanging_plugin_is_contained(
    tmp_path: Path, pacs: StoreSCP, start_station: Any
) -> None:
    workdir = docs_files(tmp_path / "station", PLUGIN, ROUTE)
    (workdir / "plugins" / "hang.py").write_text(HANG)
    config = yaml.safe_load(BLOCKS["station.yaml"])
    config["destinations"]["research"] = dicom_destination(pacs)
    station = start_station({**config, "plugin_timeout_seconds": 1}, "station")

    sent = storescu(station.port, [MR, EMRI, CT])
    assert sent.returncode == 0, sent.stderr
    state = wait_for(lambda: settled(station, 3), message="three series decided and delivered")
    assert state["series"] == {"routed": 1, "unrouted": 1, "quarantined": 1}
    assert set(received(pacs)) == {sop_uid(MR)}
    (quarantined,) = state["quarantined"]
    ct_series = str(pydicom.dcmread(CT, stop_before_pixels=True).SeriesInstanceUID)
    assert quarantined["series_uid"] == ct_series
    assert quarantined["reason"] == (
        "plugin 'hang', hook station_filter_series: timed out after 1 s"
    )
    errors = {"plugin": "hang", "hook": "station_filter_series"}
    assert station.metric("station_plugin_errors_total", **errors) == 1

    journal = sqlite3.connect(f"file:{workdir / 'data' / 'journal.sqlite'}?mode=ro", uri=True)
    labels = dict(journal.execute("SELECT series_uid, labels FROM batches").fetchall())
    journal.close()
    for path, sequence in ((MR, "T2"), (EMRI, "T1")):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        assert json.loads(labels[uid]) == {"sequence": sequence}

    assert station.stop() == 0  # the abandoned hook thread does not hold up the exit (no kill)
