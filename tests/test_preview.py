"""`station preview` on a known zip: per-series counts, routes, and transform diffs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml
from conftest import VALID, needs_corpus


def preview(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    routes = tmp_path / "routes"
    routes.mkdir(exist_ok=True)
    (routes / "r.yaml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "mr-research",
                    "match": {"Modality": "MR"},
                    "transform": [
                        {
                            "set-tags": {
                                "set": {"InstitutionName": "Research"},
                                "remove": ["PatientName"],
                            }
                        }
                    ],
                    "destinations": ["research"],
                },
                {"name": "everything", "destinations": ["pacs"]},
            ]
        )
    )
    config = tmp_path / "station.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": str(tmp_path / "data"),
                "routes": "routes",
                "destinations": {
                    "pacs": {"type": "folder", "path": str(tmp_path / "pacs")},
                    "research": {"type": "folder", "path": str(tmp_path / "research")},
                },
            }
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "station", "preview", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def known_zip(tmp_path: Path) -> Path:
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(VALID / "CT_small.dcm", "patient/ct/1.dcm")
        for name in ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"):
            zf.write(VALID / name, f"patient/mr/{name}")  # one SOP Instance UID, 3 encodings
        zf.write(VALID / "JPGExtended.dcm", "patient/nm/a.dcm")
        zf.write(VALID / "JPEG2000.dcm", "patient/nm/b.dcm")
        zf.writestr("notes.txt", "not an image")
    return archive


@needs_corpus
def test_preview_json_counts_series_routes_and_transform_changes(tmp_path: Path) -> None:
    result = preview(tmp_path, str(known_zip(tmp_path)), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    by_modality = {s["modality"]: s for s in data["series"]}
    assert {m: (s["files"], s["instances"]) for m, s in by_modality.items()} == {
        "CT": (1, 1),
        "MR": (3, 1),
        "NM": (2, 2),
    }
    assert by_modality["MR"]["transfer_syntaxes"] == [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.5",
    ]
    assert by_modality["CT"]["patient_id"] == "1CT1"
    mr = {d["destination"]: d for d in by_modality["MR"]["deliveries"]}
    assert set(mr) == {"research", "pacs"}
    assert mr["pacs"]["changes"] == []
    changes = {c["keyword"]: (c["before"], c["after"]) for c in mr["research"]["changes"]}
    assert changes == {
        "InstitutionName": ("TOSHIBA", "Research"),
        "PatientName": ("CompressedSamples^MR1", "(absent)"),
    }
    assert [d["destination"] for d in by_modality["CT"]["deliveries"]] == ["pacs"]
    assert len(data["not_dicom"]) == 1 and "notes.txt" in data["not_dicom"][0]


@needs_corpus
def test_preview_table_names_series_and_files_that_are_not_dicom(tmp_path: Path) -> None:
    result = preview(tmp_path, str(known_zip(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "3 series, 6 files, 4 distinct instances" in result.stdout
    assert "-> research (route mr-research) with set-tags" in result.stdout
    assert "InstitutionName: 'TOSHIBA' -> 'Research'" in result.stdout
    assert "notes.txt: not a DICOM file" in result.stdout


def test_preview_of_nothing_dicom_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    result = preview(tmp_path, str(tmp_path / "x.txt"))
    assert result.returncode == 1
    assert "no DICOM files found" in result.stderr
    assert "Traceback" not in result.stderr
