"""Test plugins in-process: build a series from files, run the hooks and routes on it, and
apply transforms, through the station's own code, without a network or a journal.

A plugin's test in a few lines::

    from station.testing import run_plugins, series_from_files

    T2 = {"name": "t2", "match": {"labels": {"sequence": "T2"}}, "destinations": ["pacs"]}

    def test_labels_t2_series() -> None:
        series = series_from_files(["MR_small.dcm"])
        result = run_plugins(series, plugins=["mr_sequence.py"], routes=[T2])
        assert result.labels == {"sequence": "T2"}
        assert result.destinations == ["pacs"]

``run_plugins`` calls ``station.routing.router.decide`` with a fresh
``station.routing.plugins.Plugins`` holding only the plugins given (no entry points), so
every hook is called, type-checked, time-limited and contained exactly as in ``station
run``: a plugin that raises, overruns its time limit or returns the wrong type gives the
state ``"quarantined"`` with the reason
``station status`` would show.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from pydantic import ValidationError
from pydicom import dcmread
from pydicom.dataset import Dataset

from station.config import DEFAULT_TIMEOUT_SECONDS, format_validation_error
from station.dicom.files import Header
from station.dicom.identify import identify, read_header
from station.errors import ConfigError, PluginError, RejectedInstance
from station.ops.metrics import Metrics
from station.routing.plugins import Plugins
from station.routing.router import decide
from station.routing.routes import Route, TransformStep, check_references, load_routes
from station.series import SeriesView

# A plugin: a module or object with hook implementations, or a file, folder or module name
# as in the config's ``plugins:`` list. A mapping gives each plugin object its name.
PluginArgs = Iterable[ModuleType | object | str | Path] | Mapping[str, object]
Step = str | Mapping[str, Any]

__all__ = [
    "Delivery",
    "Outcome",
    "apply_transforms",
    "load_plugins",
    "run_plugins",
    "series_from_dataset",
    "series_from_files",
]


@dataclass(frozen=True)
class Delivery:
    """One copy of the series the station would send."""

    destination: str
    routes: tuple[str, ...]  # route names; ``plugin:NAME`` when a route hook chose it
    transforms: tuple[dict[str, Any], ...]  # ``{"name": ..., "options": {...}}``, in order


@dataclass(frozen=True)
class Outcome:
    """What the station decides for a series: the result of ``run_plugins``."""

    state: str  # routed, filtered, unrouted or quarantined
    reason: str | None  # who filtered it, why it is quarantined, or which routes matched
    labels: dict[str, str]
    deliveries: tuple[Delivery, ...]
    error: PluginError | None = None  # when quarantined; its __cause__ is the plugin's error

    @property
    def destinations(self) -> list[str]:
        """The destinations the series goes to, sorted, each once."""
        return sorted({d.destination for d in self.deliveries})

    @property
    def routes(self) -> dict[str, list[str]]:
        """Destinations per route (``plugin:NAME`` for a route hook), in decision order."""
        chosen: dict[str, list[str]] = {}
        for delivery in self.deliveries:
            for route in delivery.routes:
                chosen.setdefault(route, []).append(delivery.destination)
        return chosen


def series_from_dataset(
    dataset: Dataset,
    *,
    calling_ae: str = "TESTSCU",
    called_ae: str = "STATION",
    peer: str = "127.0.0.1",
    source: str = "scp",
    labels: Mapping[str, str] | None = None,
    paths: Iterable[Path] = (),
) -> SeriesView:
    """A series whose first header is ``dataset``: to try a rule on variants of a real
    header (``ds.SeriesDescription = "t2_tse_tra"``) without writing files.

    :param dataset: the first instance's header (the series keeps this object).
    :param calling_ae: the sender's AE title; ``""`` for a drop folder.
    :param called_ae: our AE title, as the sender called it.
    :param peer: the sender's address, or the drop folder's path.
    :param source: ``"scp"`` or ``"folder"``.
    :param labels: labels the series starts with (normally none).
    :param paths: the instances' files, when there are files.
    """
    files = tuple(paths)
    return SeriesView(
        study_uid=str(dataset.get("StudyInstanceUID", "")),
        series_uid=str(dataset.get("SeriesInstanceUID", "")),
        batch_id=0,
        calling_ae=calling_ae,
        called_ae=called_ae,
        peer=peer,
        source=source,
        instance_count=len(files) or 1,
        header=dataset,
        labels=MappingProxyType(dict(labels or {})),
        paths=files,
    )


def series_from_files(paths: Iterable[str | Path] | str | Path, **sender: Any) -> SeriesView:
    """The series the station would assemble from these DICOM files (folders: every file in
    them), as hooks and routes see it once complete: first header, instance count, files.

    :param paths: files or folders of one series.
    :param sender: ``calling_ae``, ``called_ae``, ``peer``, ``source`` and ``labels``, as
        for ``series_from_dataset``.
    :raises ValueError: a file the station would refuse, files of several series, or none.
    :raises FileNotFoundError: a path that does not exist.
    """
    files: list[Path] = []
    for path in map(Path, [paths] if isinstance(paths, str | Path) else paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    by_sop: dict[str, tuple[Path, Header]] = {}  # a SOP Instance UID twice: the later wins
    series: dict[str, int] = {}
    for file in files:
        try:
            header = identify(file)
        except RejectedInstance as exc:
            raise ValueError(f"{file}: the station would refuse it: {exc}") from None
        by_sop[header.sop_uid] = (file, header)
        series[header.series_uid] = series.get(header.series_uid, 0) + 1
    if len(series) != 1:
        found = ", ".join(f"{uid} ({n} files)" for uid, n in series.items()) or "none"
        raise ValueError(f"expected the files of one series; series found: {found}")
    kept = [file for file, _header in by_sop.values()]
    first = next(iter(by_sop.values()))[1]  # its UIDs as the station reads them
    view = series_from_dataset(read_header(kept[0]), paths=kept, **sender)
    return replace(view, study_uid=first.study_uid, series_uid=first.series_uid)


def _plugin_name(plugin: object) -> str:
    name = getattr(plugin, "__name__", type(plugin).__name__)
    return name.rpartition(".")[2].removeprefix("station_plugin_")


def load_plugins(
    plugins: PluginArgs = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    metrics: Metrics | None = None,
) -> Plugins:
    """A fresh plugin manager holding exactly ``plugins`` (no entry points), each given its
    ``options`` through ``station_configure``, as ``plugin_options`` in the config does.

    A module is named by its last dotted part (``my_pkg.mr_sequence`` -> ``mr_sequence``),
    another object by its class name, a file by its name without ``.py``; pass a mapping
    ``{name: plugin}`` to choose. ``metrics`` receives ``station_hook_duration_seconds``
    and ``station_plugin_errors_total``.

    :raises ConfigError: a plugin fails to load, or refuses its options.
    """
    named = plugins.items() if isinstance(plugins, Mapping) else ((None, p) for p in plugins)
    targets: list[str] = []
    objects: dict[str, object] = {}
    for name, plugin in named:
        if isinstance(plugin, str | Path):
            targets.append(str(plugin))
        else:
            objects[name or _plugin_name(plugin)] = plugin
    return Plugins(
        tuple(targets),
        metrics=metrics,
        entry_points=False,
        options=options,
        options_source="station.testing",
        timeout_seconds=timeout_seconds,
        objects=objects,
    )


def _routes(routes: Iterable[Route | Mapping[str, Any]] | str | Path) -> list[Route]:
    if isinstance(routes, str | Path):
        return load_routes(Path(routes))
    parsed = []
    for index, route in enumerate(routes):
        where = f"routes[{index}]"
        try:
            parsed.append(
                route
                if isinstance(route, Route)
                else Route.model_validate({**route, "source_file": where})
            )
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where)) from None
    return parsed


def run_plugins(
    series: SeriesView,
    plugins: PluginArgs = (),
    *,
    routes: Iterable[Route | Mapping[str, Any]] | str | Path = (),
    destinations: Iterable[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    metrics: Metrics | None = None,
) -> Outcome:
    """Decide for ``series`` as the station would: filter hooks, classify hooks, the routes
    in order, route hooks.

    :param series: from ``series_from_files``.
    :param plugins: see ``load_plugins``; loaded afresh for this call.
    :param routes: route mappings as in a route file, ``Route`` objects, or the path of a
        route file or folder. None by default, so only route hooks choose destinations.
    :param destinations: the configured destination names (default: those the routes
        name); a route hook naming another one quarantines the series, as in the station.
    :param options: ``{plugin name: options}``, as ``plugin_options`` in the config.
    :param timeout_seconds: the per-hook time limit (``plugin_timeout_seconds``).
    :param metrics: receives the hook metrics (see ``load_plugins``).
    :raises ConfigError: what ``station check`` would report: a plugin that fails to load
        or refuses its options, a route that is invalid or names a transform no plugin
        provides, or an unknown destination.
    """
    manager = load_plugins(plugins, options, timeout_seconds=timeout_seconds, metrics=metrics)
    chosen = _routes(routes)
    if destinations is None:
        destinations = [name for route in chosen for name in route.destinations]
    configured = dict.fromkeys(destinations)
    problems = check_references(chosen, configured, manager.transforms)
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        decision = decide(series, manager, chosen, configured)
    except PluginError as exc:
        return Outcome("quarantined", str(exc), dict(series.labels), (), exc)
    deliveries = tuple(Delivery(*delivery) for delivery in decision.deliveries)
    return Outcome(decision.state, decision.reason, decision.labels, deliveries)


def _step(step: Step) -> TransformStep:
    if isinstance(step, Mapping) and "name" in step:  # as in Delivery.transforms
        return TransformStep.model_validate(step)
    try:  # as in a route file: a name, or {name: options}
        return Route.model_validate({"name": "step", "transform": [step]}).transform[0]
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"transform step {step!r}")) from None


def apply_transforms(
    dataset: Dataset | str | Path,
    steps: Iterable[Step],
    plugins: PluginArgs = (),
    *,
    series: SeriesView | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Dataset:
    """The data set a destination would receive from a route with these transforms.

    :param dataset: a data set (copied, never changed) or the path of a DICOM file (read
        whole, pixel data included, as the dispatcher reads it).
    :param steps: as under ``transform:`` in a route file (``"name"`` or
        ``{"name": {options}}``), or ``Delivery.transforms`` from ``run_plugins``.
    :param plugins: the plugins that provide the transforms (see ``load_plugins``).
    :param series: the series handed to each transform (default: a series of this one
        instance).
    :param options: ``{plugin name: options}`` for ``station_configure``.
    :raises ConfigError: a step names a transform no plugin provides. A transform's own
        exception propagates unchanged, with a note naming the step.
    """
    manager = load_plugins(plugins, options)
    parsed = [_step(step) for step in steps]
    missing = [s.name for s in parsed if s.name not in manager.transforms]
    if missing:
        known = ", ".join(sorted(manager.transforms)) or "none"
        raise ConfigError(f"transform {missing[0]!r} is not provided by any plugin ({known})")
    if isinstance(dataset, Dataset):
        result = copy.deepcopy(dataset)
        series = series or series_from_dataset(dataset)
    else:
        result = dcmread(dataset)
        series = series or series_from_files([dataset])
    for step in parsed:
        try:
            manager.transforms[step.name](result, series, dict(step.options))
        except Exception as exc:
            exc.add_note(f"in transform step {step.name!r} with options {step.options!r}")
            raise
    return result
