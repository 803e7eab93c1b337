"""Deciding, once per completed series batch, where it goes: hooks, then route files.

Order: filter hooks (any ``False`` drops), classify hooks (labels), route files in order
(``final`` stops), route hooks (extra destinations). Each decision is journaled with the
deliveries it creates in one transaction, after its hooks have returned: a batch is marked
routed only then, so one left complete by a crash is routed again at the next start. A
plugin failure quarantines this batch only. ``Router.route`` is called by the routing
workers (``station.routing.workers``), several batches at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from station.errors import PluginError
from station.ops.logs import series_fields
from station.ops.metrics import Metrics
from station.routing.plugins import Plugins
from station.routing.routes import Route
from station.series import SeriesView
from station.store.journal import Journal
from station.store.states import BatchState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    state: BatchState  # routed, filtered, unrouted or quarantined
    reason: str | None
    labels: dict[str, str]
    deliveries: list[tuple[str, tuple[str, ...], tuple[dict[str, Any], ...]]]
    hooks: tuple[str, ...] = ()  # what each plugin decided, for the audit trail


def _is_label_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _is_name_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def decide(
    series: SeriesView, plugins: Plugins, routes: list[Route], destinations: Mapping[str, Any]
) -> Decision:
    """Run hooks and routes for one series; raises PluginError when a plugin misbehaves."""
    hooks: list[str] = []
    for plugin, verdict in plugins.call_each(
        "station_filter_series", lambda r: isinstance(r, bool), "bool or None", series=series
    ):
        if verdict is not None:
            hooks.append(f"station_filter_series: {plugin} {'kept' if verdict else 'dropped'} it")
        if verdict is False:
            reason = f"filtered by plugin {plugin}"
            return Decision(BatchState.FILTERED, reason, dict(series.labels), [], tuple(hooks))
    labels = dict(series.labels)
    for plugin, extra in plugins.call_each(
        "station_classify_series",
        _is_label_map,
        "dict[str, str] or None",
        series=series.with_labels(labels),
    ):
        if extra:
            hooks.append(f"station_classify_series: {plugin} labelled it {_labels(extra)}")
        labels.update(extra or {})
    series = series.with_labels(labels)

    chosen: dict[tuple[str, str], tuple[list[str], tuple[dict[str, Any], ...]]] = {}
    for route in routes:
        if not route.matches(series):
            continue
        steps = tuple(step.model_dump() for step in route.transform)
        for name in route.destinations:
            key = (name, json.dumps(steps, sort_keys=True))
            chosen.setdefault(key, ([], steps))[0].append(route.name)
        if route.final:
            break
    for plugin, extra in plugins.call_each(
        "station_route_series", _is_name_list, "list[str] or None", series=series
    ):
        for name in extra or ():
            if name not in destinations:
                raise PluginError(
                    plugin, "station_route_series", f"destination {name!r} is not configured"
                )
            chosen.setdefault((name, "[]"), ([], ()))[0].append(f"plugin:{plugin}")
        if extra:
            hooks.append(f"station_route_series: {plugin} added {', '.join(extra)}")
    if not chosen:
        return Decision(BatchState.UNROUTED, "no route matched", labels, [], tuple(hooks))
    deliveries = [(name, tuple(names), steps) for (name, _), (names, steps) in chosen.items()]
    summary = "; ".join(f"{d} via {', '.join(r)}" for d, r, _ in deliveries)
    return Decision(BatchState.ROUTED, summary, labels, deliveries, tuple(hooks))


def _labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Router:
    """Applies ``decide`` to completed batches and journals the outcome."""

    def __init__(
        self,
        journal: Journal,
        plugins: Plugins,
        routes: list[Route],
        destinations: Mapping[str, Any],
        metrics: Metrics,
    ) -> None:
        self.journal = journal
        self.destinations = destinations
        self.metrics = metrics
        self.use(plugins, routes)

    def use(self, plugins: Plugins, routes: list[Route]) -> None:
        """Route later batches with these plugins and routes (a batch being routed keeps
        the pair it started with)."""
        self._rules = (plugins, routes)

    def route(self, batch_id: int) -> Decision | None:
        """Decide for a complete batch and journal it; None when the batch is no longer
        complete (decided meanwhile: the assembler hands a batch on until it is)."""
        batch = self.journal.batch(batch_id)
        if batch.state != BatchState.COMPLETE:
            return None
        paths = [i.path for i in self.journal.instances(batch_id)]
        sender = batch.calling_ae or batch.source
        context = f"study {batch.study_uid} series {batch.series_uid} from {sender} ({batch.peer})"
        fields = series_fields(batch.study_uid, batch.series_uid, batch.calling_ae)
        plugins, routes = self._rules
        try:
            series = SeriesView.from_batch(batch, paths)
            decision = decide(series, plugins, routes, self.destinations)
        except PluginError as exc:
            decision = Decision(BatchState.QUARANTINED, str(exc), dict(batch.labels), [])
            self.metrics.series_quarantined.labels("plugin_error").inc()
            log.error("quarantined %s: %s", context, exc, extra=fields)
        except Exception as exc:
            decision = Decision(
                BatchState.QUARANTINED,
                f"routing failed: {type(exc).__name__}: {exc}",
                dict(batch.labels),
                [],
            )
            self.metrics.series_quarantined.labels("routing_error").inc()
            log.exception("quarantined %s", context, extra=fields)
        self.journal.finish_batch(
            batch_id,
            decision.state,
            decision.reason,
            decision.labels,
            decision.deliveries,
            decision.hooks,
        )
        if decision.state == BatchState.FILTERED:
            plugin = (decision.reason or "").removeprefix("filtered by plugin ")
            self.metrics.series_filtered.labels(plugin).inc()
        elif decision.state == BatchState.UNROUTED:
            self.metrics.series_unrouted.inc()
        log.info(
            "%s: %d instances %s: %s",
            context,
            len(paths),
            decision.state,
            decision.reason,
            extra=fields,
        )
        return decision
