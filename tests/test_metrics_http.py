"""The /metrics and /healthz endpoint in process, on port 0: prometheus-client's exposition
(with its content negotiation) beside the station's health answer."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from station.ops.metrics import Metrics, MetricsServer

HEALTH: dict[str, object] = {"ok": True, "ae_title": "STATION", "dicom_port": 11112}


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    http = MetricsServer(Metrics(), "127.0.0.1", 0, lambda: dict(HEALTH))
    http.start()
    try:
        yield http
    finally:
        http.stop()


def get(server: MetricsServer, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_port_zero_reports_the_bound_port(server: MetricsServer) -> None:
    assert server.port > 0


def test_metrics_in_the_text_format_gzip_and_openmetrics(server: MetricsServer) -> None:
    code, headers, body = get(server, "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=")
    assert b'station_build_info{version="' in body
    code, headers, zipped = get(server, "/metrics", **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"station_spool_bytes" in gzip.decompress(zipped)
    code, headers, body = get(server, "/metrics", Accept="application/openmetrics-text")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_healthz_answers_json_and_503_when_not_ok(server: MetricsServer) -> None:
    code, headers, body = get(server, "/healthz")
    assert (code, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == HEALTH
    HEALTH["ok"] = False
    try:
        code, _headers, body = get(server, "/healthz")
    finally:
        HEALTH["ok"] = True
    assert code == 503 and json.loads(body)["ok"] is False


def test_other_paths_are_not_found(server: MetricsServer) -> None:
    code, _headers, body = get(server, "/")
    assert (code, body) == (404, b"see /metrics and /healthz\n")
