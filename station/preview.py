"""``station preview``: what a folder or zip holds and where the station would send it.

Headers only (``stop_before_pixels``) for the per-series summary; one sample instance per
transformed route is read whole to show what its transforms change, as a tag diff.
Nothing is sent and nothing is written outside a temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from station.config import DicomDestinationConfig
from station.dicom.identify import identify, read_header
from station.dicom.transcode import SyntaxPolicy, describe_plan
from station.errors import PluginError, RejectedInstance
from station.receive.inputs import InputFile
from station.routing.router import decide
from station.series import SeriesView
from station.service import Setup
from station.store.states import BatchState


@dataclass
class SeriesSummary:
    series_uid: str
    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    modality: str
    series_number: str
    series_description: str
    files: int = 0
    instances: int = 0
    bytes: int = 0
    transfer_syntaxes: set[str] = field(default_factory=set)
    paths: list[Path] = field(default_factory=list)
    sop_uids: set[str] = field(default_factory=set)
    outcome: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("paths", "sop_uids")}
        data["transfer_syntaxes"] = sorted(self.transfer_syntaxes)
        return data


@dataclass
class Preview:
    series: list[SeriesSummary]
    not_dicom: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"series": [s.as_dict() for s in self.series], "not_dicom": self.not_dicom}


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


def summarize(files: Iterable[InputFile], problems: list[str]) -> Preview:
    """Group the DICOM files by series; list the others with the reason."""
    by_series: dict[str, SeriesSummary] = {}
    for item in files:
        try:
            header = identify(item.path)
        except RejectedInstance as exc:
            problems.append(f"{item.name}: {exc}")
            continue
        summary = by_series.get(header.series_uid)
        if summary is None:
            ds = read_header(item.path)
            summary = by_series[header.series_uid] = SeriesSummary(
                series_uid=header.series_uid,
                study_uid=header.study_uid,
                patient_name=_text(ds, "PatientName"),
                patient_id=_text(ds, "PatientID"),
                study_date=_text(ds, "StudyDate"),
                modality=_text(ds, "Modality"),
                series_number=_text(ds, "SeriesNumber"),
                series_description=_text(ds, "SeriesDescription"),
            )
        summary.files += 1
        summary.sop_uids.add(header.sop_uid)
        summary.instances = len(summary.sop_uids)
        summary.bytes += item.path.stat().st_size
        summary.transfer_syntaxes.add(header.transfer_syntax)
        summary.paths.append(item.path)
    ordered = sorted(
        by_series.values(), key=lambda s: (s.patient_id, s.study_date, s.study_uid, s.series_number)
    )
    return Preview(ordered, problems)


def route(preview: Preview, setup: Setup, source: str, peer: str) -> None:
    """Fill in, per series, the routing decision and each transform's tag diff."""
    for summary in preview.series:
        series = SeriesView(
            study_uid=summary.study_uid,
            series_uid=summary.series_uid,
            batch_id=0,
            calling_ae="",
            called_ae=setup.config.ae_title,
            peer=peer,
            source=source,
            instance_count=summary.files,
            header=read_header(summary.paths[0]),
            labels=MappingProxyType({}),
            paths=tuple(summary.paths),
        )
        try:
            decision = decide(series, setup.plugins, setup.routes, setup.destinations)
        except PluginError as exc:
            summary.outcome = f"quarantined: {exc}"
            continue
        summary.outcome = (
            decision.state
            if decision.state == BatchState.ROUTED
            else (f"{decision.state}: {decision.reason}")
        )
        summary.labels = decision.labels
        for destination, routes, steps in decision.deliveries:
            summary.deliveries.append(
                {
                    "destination": destination,
                    "routes": list(routes),
                    "transforms": [s["name"] for s in steps],
                    "changes": transform_diff(summary.paths[0], series, steps, setup)
                    if steps
                    else [],
                    "syntaxes": _syntax_plans(summary, setup.destinations.get(destination)),
                }
            )


def _syntax_plans(summary: SeriesSummary, config: Any) -> list[str]:
    """For a DICOM destination, per stored syntax of the series: sent as stored or
    converted, from its ``transfer_syntaxes`` (what the peer accepts is known only once
    associated)."""
    if not isinstance(config, DicomDestinationConfig):
        return []
    policy = SyntaxPolicy(config.transfer_syntaxes, config.allow_lossy)
    return [describe_plan(ts, policy) for ts in sorted(summary.transfer_syntaxes)]


def transform_diff(
    sample: Path, series: SeriesView, steps: Iterable[dict[str, Any]], setup: Setup
) -> list[dict[str, str]]:
    """Apply the steps to one instance; list every element they added, changed or removed."""
    before = dcmread(sample)
    after = dcmread(sample)
    try:
        for step in steps:
            setup.plugins.transforms[step["name"]](after, series, dict(step["options"]))
    except Exception as exc:
        return [
            {
                "tag": "-",
                "keyword": "-",
                "before": "-",
                "after": f"transform failed: {type(exc).__name__}: {exc}",
            }
        ]
    changes = []
    for tag in sorted(set(before.keys()) | set(after.keys())):
        old = before.get(tag)
        new = after.get(tag)
        if old != new:
            element = new if new is not None else old
            changes.append(
                {
                    "tag": f"({tag.group:04X},{tag.element:04X})",
                    "keyword": element.keyword or "private",
                    "before": _shown(old),
                    "after": _shown(new),
                }
            )
    return changes


def _shown(element: Any) -> str:
    if element is None:
        return "(absent)"
    if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"):
        size = len(element.value) if element.value is not None else 0
        return f"<{element.VR}, {size} {'items' if element.VR == 'SQ' else 'bytes'}>"
    text = str(element.value)
    return text if len(text) <= 64 else text[:61] + "..."


def render(preview: Preview) -> str:
    """The human-readable table."""
    header = (
        "patient",
        "id",
        "date",
        "mod",
        "#",
        "series description",
        "files",
        "instances",
        "size",
        "transfer syntaxes",
    )
    rows = [
        (
            s.patient_name[:24],
            s.patient_id[:16],
            s.study_date,
            s.modality,
            s.series_number,
            s.series_description[:32],
            str(s.files),
            str(s.instances),
            _size(s.bytes),
            ", ".join(sorted(UID(ts).keyword or ts for ts in s.transfer_syntaxes)),
        )
        for s in preview.series
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    files = sum(s.files for s in preview.series)
    instances = sum(s.instances for s in preview.series)
    lines.append(
        f"{len(preview.series)} series, {files} files, {instances} distinct instances "
        "(a SOP Instance UID given twice is sent once)"
    )
    for s in preview.series:
        lines.append("")
        lines.append(
            f"series {s.series_uid} ({s.modality} #{s.series_number} "
            f"{s.series_description!r}): {s.outcome}"
        )
        if s.labels:
            lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items())))
        for d in s.deliveries:
            via = ", ".join(d["routes"])
            steps = f" with {', '.join(d['transforms'])}" if d["transforms"] else ""
            lines.append(f"  -> {d['destination']} (route {via}){steps}")
            for c in d["changes"]:
                lines.append(f"       {c['tag']} {c['keyword']}: {c['before']!r} -> {c['after']!r}")
            lines += [f"     {plan}" for plan in d["syntaxes"]]
    if preview.not_dicom:
        lines.append("")
        lines.append(f"{len(preview.not_dicom)} files are not DICOM or cannot be read:")
        lines += [f"  {problem}" for problem in preview.not_dicom]
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
