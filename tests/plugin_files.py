"""Helpers for the bundled plugins' tests: every valid file, read and written as the
dispatcher does for a transformed copy, a series view of one file, and an HTTP receiver
for webhook notices."""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
from conftest import VALID
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from station.series import SeriesView
from station_plugins.uid_remap import element_vr

FILES = sorted(VALID.glob("*.dcm"))  # every transfer syntax of the corpus


def read(path: Path) -> Dataset:
    """The whole data set of a file (lazily decoded values: see ``quiet``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # real-world values that break VR rules
        return pydicom.dcmread(path)


def written(dataset: Dataset) -> Dataset:
    """``dataset`` written in its own transfer syntax, as a destination gets it, read back."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.save_as(buffer, enforce_file_format=True)
        return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def walk(dataset: Dataset) -> Iterator[tuple[Dataset, BaseTag, str]]:
    """(data set, tag, VR) of every element, sequence items included, without decoding
    values (a structure set's contours would take seconds)."""
    for tag in list(dataset.keys()):
        vr = element_vr(dataset, tag)
        yield dataset, tag, vr
        if vr == "SQ":
            for item in dataset[tag].value:
                yield from walk(item)


def series_of(path: Path, calling_ae: str = "SCANNER1") -> SeriesView:
    """The view of a one-file series, as the router builds it (UIDs may be absent)."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return SeriesView(
        study_uid=str(header.get("StudyInstanceUID", "")),
        series_uid=str(header.get("SeriesInstanceUID", "")),
        batch_id=1,
        calling_ae=calling_ae,
        called_ae="STATION",
        peer="127.0.0.1",
        source="scp",
        instance_count=1,
        header=header,
        paths=(path,),
    )


# Values of the corpus that break VR rules warn when first read; they are not under test.
QUIET = ("ignore:Invalid value for VR", "ignore:The value length")


class Receiver(ThreadingHTTPServer):
    """Collects the JSON bodies and headers POSTed to it; answers ``status``; a handler
    waits while ``hold`` is clear."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.notices: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.hold = threading.Event()
        self.hold.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/station"

    def start(self) -> Receiver:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.hold.set()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.hold.wait(10)
        self.server.notices.append(json.loads(body))
        self.server.headers.append(dict(self.headers))
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass
