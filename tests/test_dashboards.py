"""The metrics contract (DESIGN.md), the Grafana dashboard and the Prometheus alert rules.

Every query of dashboards/station.json and dashboards/alerts.yaml may name only metrics and
labels that station/ops/metrics.py exposes; promtool parses every query and runs the alert
rules' unit tests (dashboards/alerts_test.yaml).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from station.ops.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "dashboards" / "station.json"
ALERTS = REPO / "dashboards" / "alerts.yaml"
ALERT_TESTS = REPO / "dashboards" / "alerts_test.yaml"
DESIGN = REPO.parent / "shared" / "DESIGN.md"
PROMETHEUS_LABELS = {"job", "instance"}  # added by the scrape
PROMETHEUS_METRICS = {"up": PROMETHEUS_LABELS}
needs_promtool = pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool is not installed (Debian package prometheus)"
)


def exposition() -> tuple[dict[str, set[str]], dict[str, str]]:
    """Every sample name station/ops/metrics.py exposes, with its label names (every labelled
    metric given one child), and the HELP text of every metric family."""
    metrics = Metrics()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(*("x" for _ in collector._labelnames))
    samples: dict[str, set[str]] = {}
    helps: dict[str, str] = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("# HELP "):
            name, _, text = line.removeprefix("# HELP ").partition(" ")
            helps[name] = text
        elif not line.startswith("#"):
            name, _, labels = line.partition(" ")[0].partition("{")
            samples.setdefault(name, set()).update(re.findall(r'(\w+)="', labels))
    return samples, helps


SAMPLES, HELPS = exposition()


def design_metrics() -> Iterator[tuple[str, set[str]]]:
    """The metrics DESIGN.md's "Metrics" section names, with their labels."""
    if not DESIGN.exists():
        pytest.skip(f"{DESIGN} is not there (the shared folder beside the repository)")
    section = DESIGN.read_text().partition("## Metrics")[2].partition("\n## ")[0]
    for name, labels in re.findall(r"`(station_\w+)(?:\{([\w,]*)\})?`", section):
        yield name, set(filter(None, labels.split(",")))


def test_every_design_metric_is_exposed_with_its_labels_and_help():
    names = dict(design_metrics())
    assert len(names) >= 18
    for name, labels in names.items():
        histogram = name.endswith("_seconds") and f"{name}_bucket" in SAMPLES
        sample = f"{name}_count" if histogram else name
        assert sample in SAMPLES, f"{name} is not exposed"
        assert SAMPLES[sample] == labels, f"{name}: labels {SAMPLES[sample]}, DESIGN.md {labels}"
        family = name.removesuffix("_info") if name.endswith("_info") else name
        assert HELPS.get(name) or HELPS.get(family), f"{name} has no help text"
    for name in HELPS:
        assert HELPS[name].strip(), f"{name}: empty help"


def referenced(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    metrics = set(re.findall(r"\b(station_\w+|up)\b(?!\s*\()", without_strings))
    labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", without_strings):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    return metrics, labels


def check_expr(expr: str, where: str) -> set[str]:
    """Fail unless ``expr`` names only exposed metrics and their labels; return the metrics."""
    known = {**SAMPLES, **PROMETHEUS_METRICS}
    metrics, labels = referenced(expr)
    assert metrics, f"{where}: no metric in {expr!r}"
    unknown = metrics - set(known)
    assert not unknown, f"{where}: {sorted(unknown)} not in station/ops/metrics.py: {expr}"
    allowed = set().union(*(known[m] for m in metrics)) | PROMETHEUS_LABELS
    assert labels <= allowed, f"{where}: labels {sorted(labels - allowed)} unknown: {expr}"
    return metrics


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(SELECTOR, LABEL): the same check
            selector, label = re.fullmatch(
                r"label_values\((.*), *(\w+)\)", variable["definition"]
            ).groups()
            yield f"variable {variable['name']}", f"sum by ({label}) ({selector})"


def promtool_parses(exprs: list[str], tmp_path: Path) -> None:
    """promtool check rules on one recording rule per expression (Grafana's variables
    replaced by values), which fails on any PromQL syntax error."""
    rules = [
        {"record": f"dashboard:query{n}", "expr": expr.replace("$__rate_interval", "5m")}
        for n, expr in enumerate(exprs)
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_only_metrics_that_exist(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    used: set[str] = set()
    exprs = []
    for where, expr in dashboard_queries(dashboard):
        used |= check_expr(expr, where)
        exprs.append(expr)
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    # What the dashboard is for: throughput, queues, dead letters, latencies, plugins, disk.
    for required in (
        "station_instances_received_total",
        "station_received_bytes_total",
        "station_queue_series",
        "station_dead_letter_series",
        "station_dispatch_duration_seconds_bucket",
        "station_series_latency_seconds_bucket",
        "station_plugin_errors_total",
        "station_hook_duration_seconds_bucket",
        "station_spool_bytes",
        "station_associations_active",
    ):
        assert required in used, f"no panel shows {required}"
    if shutil.which("promtool"):
        promtool_parses(exprs, tmp_path)


def test_dashboard_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        g = panel["gridPos"]
        columns, rows = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        cells = {(x, y) for x in columns for y in rows}
        assert g["x"] + g["w"] <= 24 and not cells & taken, panel["title"]
        taken |= cells


def test_alert_rules_cover_the_failures_and_query_existing_metrics():
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {
        "StationDown",
        "StationDestinationFailing",
        "StationDeadLettersGrowing",
        "StationQueueNotDraining",
        "StationSpoolDiskNearlyFull",
        "StationNoTraffic",
    } <= names
    for rule in rules:
        check_expr(rule["expr"], rule["alert"])
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
    tested = {
        test["alertname"]
        for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for test in case["alert_rule_test"]
    }
    assert len(tested) >= 2 and tested <= names


@needs_promtool
def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    check = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        ["promtool", "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
