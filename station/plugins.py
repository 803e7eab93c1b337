"""Loading plugins (pluggy) and calling their hooks so that one failure stays contained.

The manager is built in pluggy's order and owned by the service, never a module global:
``PluginManager("station")`` -> ``add_hookspecs`` -> blocked names -> entry points
(``station.plugins``) -> configured files, folders and modules -> ``check_pending()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from station import hookspecs
from station.errors import ConfigError, PluginError
from station.metrics import Metrics

ENTRY_POINT_GROUP = "station.plugins"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    origin: str
    hooks: tuple[str, ...]


def _import_file(path: Path) -> ModuleType:
    name = f"station_plugin_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"{path}: plugin failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _load_target(target: str) -> list[tuple[ModuleType, str]]:
    path = Path(target)
    if path.is_dir():
        return [
            (_import_file(p), str(p))
            for p in sorted(path.glob("*.py"))
            if not p.name.startswith("_") and not p.name.startswith("test_")
        ]
    if path.suffix == ".py" or "/" in target:
        if not path.exists():
            raise ConfigError(f"plugins: {target}: no such file or folder")
        return [(_import_file(path), str(path))]
    try:
        module = importlib.import_module(target)
    except Exception as exc:
        raise ConfigError(
            f"plugins: module {target!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
    return [(module, f"module {target}")]


class Plugins:
    """The plugin manager of one service, with the guard around every per-series call."""

    def __init__(
        self,
        targets: tuple[str, ...] = (),
        blocked: tuple[str, ...] = (),
        metrics: Metrics | None = None,
        entry_points: bool = True,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        options_source: str = "config",
    ) -> None:
        self.metrics = metrics
        self.options_source = options_source
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        for name in blocked:
            self.pm.set_blocked(name)
        if entry_points:
            self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            for plugin, dist in self.pm.list_plugin_distinfo():
                name = self.pm.get_name(plugin)
                self.origins[name] = f"entry point of {dist.project_name} {dist.version}"
        for target in targets:
            for module, origin in _load_target(target):
                name = module.__name__.removeprefix("station_plugin_")
                if self.pm.is_blocked(name):
                    continue
                try:
                    self.pm.register(module, name=name)
                except ValueError as exc:
                    raise ConfigError(f"{origin}: {exc}") from exc
                except pluggy.PluginValidationError as exc:
                    raise ConfigError(f"{origin}: {exc}") from exc
                self.origins[name] = origin
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin)
            known = ", ".join(n for n in vars(hookspecs) if n.startswith("station_"))
            raise ConfigError(f"{self.origins.get(name, name)}: {exc} (hooks: {known})") from exc
        options = dict(options or {})
        loaded = {name for name, plugin in self.pm.list_name_plugin() if plugin is not None}
        for name in options:
            if name not in loaded:
                raise ConfigError(
                    f"{options_source}: plugin_options.{name}: no plugin of that name is loaded "
                    f"(loaded: {', '.join(sorted(loaded)) or 'none'})"
                )
        for name in loaded:
            self._configure(name, options.get(name) or {})
        self.transforms = self._collect("station_transforms")
        self.destination_types = self._collect("station_destination_types")

    def _configure(self, name: str, options: Mapping[str, Any]) -> None:
        """Hand a plugin its options; a plugin that refuses them is a configuration error."""
        for impl in self.pm.hook.station_configure.get_hookimpls():
            if impl.plugin_name != name:
                continue
            try:
                impl.function(dict(options))
            except ValueError as exc:
                raise ConfigError(f"{self.options_source}: plugin_options.{name}: {exc}") from exc
            except Exception as exc:
                raise ConfigError(
                    f"plugin {name}: station_configure raised {type(exc).__name__}: {exc}"
                ) from exc

    def register(
        self,
        plugin: object,
        name: str,
        origin: str = "registered in code",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Register a plugin object (used by tests and ``station.testing``)."""
        self.pm.register(plugin, name=name)
        self.origins[name] = origin
        self._configure(name, options or {})
        self.transforms = self._collect("station_transforms")
        self.destination_types = self._collect("station_destination_types")

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.origins.pop(name, None)
        self.transforms = self._collect("station_transforms")
        self.destination_types = self._collect("station_destination_types")

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin()):
            if plugin is None:
                continue
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or ()))
            infos.append(PluginInfo(name, self.origins.get(name, "unknown"), hooks))
        return infos

    def _collect(self, hook: str) -> dict[str, Any]:
        """Merge the mappings returned by a start-up hook; a name given twice is an error."""
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                result = impl.function()
            except Exception as exc:
                raise ConfigError(
                    f"plugin {impl.plugin_name}: {hook}() raised {type(exc).__name__}: {exc}"
                ) from exc
            if result is None:
                continue
            if not isinstance(result, dict):
                raise ConfigError(
                    f"plugin {impl.plugin_name}: {hook}() must return a dict, "
                    f"not {type(result).__name__}"
                )
            for key, value in result.items():
                if key in merged:
                    raise ConfigError(
                        f"plugin {impl.plugin_name}: {hook}() name {key!r} is already provided "
                        f"by plugin {owner[key]}"
                    )
                if not callable(value):
                    raise ConfigError(
                        f"plugin {impl.plugin_name}: {hook}()[{key!r}] is not callable"
                    )
                merged[key], owner[key] = value, impl.plugin_name
        return merged

    def call_each(
        self, hook: str, check: Callable[[Any], bool], expected: str, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook`` on its own; return (plugin, result) pairs.

        Raises PluginError naming the plugin when one raises or returns something that is
        not ``None`` and fails ``check`` (described by ``expected``).
        """
        results = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            args = [kwargs[name] for name in impl.argnames]
            started = time.perf_counter()
            try:
                result = impl.function(*args)
            except Exception as exc:
                self._count_error(impl.plugin_name, hook)
                raise PluginError(impl.plugin_name, hook, f"{type(exc).__name__}: {exc}") from exc
            finally:
                if self.metrics:
                    self.metrics.hook_duration.labels(hook).observe(time.perf_counter() - started)
            if result is not None and not check(result):
                self._count_error(impl.plugin_name, hook)
                raise PluginError(
                    impl.plugin_name,
                    hook,
                    f"returned {type(result).__name__} {result!r:.80}; expected {expected}",
                )
            results.append((impl.plugin_name, result))
        return results

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call a notification hook; a plugin that raises is counted and logged, no more."""
        try:
            self.call_each(hook, lambda _result: True, "None", **kwargs)
        except PluginError as exc:
            log.warning("notification failed: %s", exc)

    def _count_error(self, plugin: str, hook: str) -> None:
        if self.metrics:
            self.metrics.plugin_errors.labels(plugin, hook).inc()
