"""The plugin contract. Each hook's docstring is the plugin author's documentation.

A plugin is a module (or object) with functions decorated with ``station.hookimpl`` and
named like the hooks below. Per-series hooks are called once per completed series batch,
through pluggy: implementations run in pluggy's order (the last registered first, unless
``tryfirst``/``trylast`` say otherwise) and hook wrappers (``wrapper=True``,
``hookwrapper=True``) see every result. One plugin raising, timing out or returning the
wrong type sends that series to quarantine (with plugin, hook and error recorded) and never
affects another series. Order that matters to routing lives in route files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from station import hookimpl as hookimpl  # the same marker, for plugins written before
from station import hookspec

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from station.series import SeriesView


Transform = Callable[["Dataset", "SeriesView", dict[str, Any]], None]


@hookspec
def station_configure(options: dict[str, Any]) -> None:
    """Receive this plugin's options. Called once at start-up, before any other hook.

    :param options: the mapping under ``plugin_options.<plugin name>`` in the station's
        config (``{}`` when there is none). The plugin name is its entry point name, or the
        file name without ``.py`` for a plugin loaded from a path.
    :raises ValueError: when an option is wrong; the message is shown to the user as a
        configuration error naming the plugin, and the station does not start.
    """


@hookspec
def station_filter_series(series: SeriesView) -> bool | None:
    """Decide whether a completed series goes on. Called once per series batch, first.

    :param series: read-only view of the series (UIDs, first header, source, labels).
    :return: ``False`` drops the series (recorded with this plugin's name in
        ``station_series_filtered_total{plugin}`` and the journal); ``True`` or ``None``
        has no objection. Any ``False`` wins.
    """


@hookspec
def station_classify_series(series: SeriesView) -> dict[str, str] | None:
    """Label a series. Called once per series batch that passed the filters.

    :param series: read-only view of the series. Every classify hook sees the same
        ``series.labels`` (those the batch already had, normally none), never another
        plugin's labels of this call.
    :return: a mapping of label name to value (both strings), merged into
        ``series.labels``; route files match them under ``match: {labels: {...}}``.
        ``None`` adds nothing. When two plugins set the same label, which value wins is
        not defined: give labels names of their own.
    """


@hookspec
def station_route_series(series: SeriesView) -> list[str] | None:
    """Send a series to more destinations than the route files choose.

    :param series: read-only view of the series, with all labels.
    :return: names of configured destinations the series goes to as well (untransformed);
        ``None`` adds nothing. An unknown name quarantines the series.
    """


@hookspec
def station_transforms() -> dict[str, Transform] | None:
    """Provide named transforms that route files can list under ``transform:``.

    Called once at start-up. A transform is called once per instance and per destination
    copy as ``transform(dataset, series, options)``: it edits ``dataset`` (a full
    ``pydicom.Dataset`` of that instance) in place; ``options`` is the mapping given in the
    route file (``- name: {options}``). A transform that raises dead-letters that copy.

    :return: mapping of transform name to callable.
    """


@hookspec
def station_destination_types() -> dict[str, type] | None:
    """Provide extra destination kinds, used in the config as ``type: <name>``.

    Called once at start-up. The class is constructed as ``cls(name, options)`` with the
    destination's config mapping (``type`` and ``retry`` included) and must provide
    ``send(instances, prepare) -> SendResult`` (see ``station.dispatch.base.Destination``):
    ``instances`` are the batch's ``station.store.journal.Instance`` records (``path`` is the
    spool file, never to be modified); ``prepare`` is None when the route has no
    transforms, else ``prepare(instance)`` returns the transformed ``Dataset`` to send.
    Raise ``station.errors.TransientSendError`` to have the whole batch retried with
    backoff; put per-instance permanent failures in ``SendResult.failed``.

    :return: mapping of type name to class.
    """


@hookspec
def station_series_delivered(series: SeriesView, destination: str) -> None:
    """Notification: a series batch reached ``destination`` (every instance confirmed)."""


@hookspec
def station_series_failed(series: SeriesView, destination: str, reason: str) -> None:
    """Notification: a series batch was dead-lettered for ``destination`` with ``reason``."""
