"""Loading plugins (pluggy) and calling their hooks so that one failure stays contained.

The manager is built in pluggy's order and owned by the service, never a module global:
``PluginManager("station")`` -> ``add_hookspecs`` -> blocked names -> the
``station.plugins`` entry points -> configured files, folders and modules -> ``check_pending()``.

Every hook call runs on a daemon thread of its own and is waited for at most
``timeout_seconds``. Python cannot stop a thread: a call that overruns is abandoned (it runs
on in the background, and being a daemon it never holds up the station's exit) and the
caller gets a PluginError, so the router, which decides one batch at a time, is held up by
a hung plugin for one time limit and then routes the other series. At most
``MAX_OVERRUNNING`` abandoned calls of one plugin may run on at a time; beyond that its
hooks are not called at all (each call fails at once, without waiting) until one returns,
so a plugin that hangs on every series neither piles up threads nor slows the router down.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from station.config import DEFAULT_TIMEOUT_SECONDS
from station.errors import ConfigError, PluginError
from station.ops.metrics import Metrics
from station.routing import hookspecs

ENTRY_POINT_GROUP = "station.plugins"
MAX_OVERRUNNING = 4
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
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        objects: Mapping[str, object] | None = None,
    ) -> None:
        """Load the plugins; ``objects`` are plugin objects (modules, instances) registered
        by name beside the ``targets``, before any is configured (``station.testing``)."""
        self.metrics = metrics
        self.timeout_seconds = timeout_seconds
        self._overrunning: dict[str, list[threading.Thread]] = {}
        self._overrunning_lock = threading.Lock()
        self.options_source = options_source
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        for name in blocked:
            self.pm.set_blocked(name)
        if entry_points:
            self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            for plugin, dist in self.pm.list_plugin_distinfo():
                registered = str(self.pm.get_name(plugin))
                self.origins[registered] = f"entry point of {dist.project_name} {dist.version}"
        for target in targets:
            for module, origin in _load_target(target):
                self._add(module.__name__.removeprefix("station_plugin_"), module, origin)
        for name, plugin in (objects or {}).items():
            self._add(name, plugin, "registered in code")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            failed = str(self.pm.get_name(exc.plugin))
            known = ", ".join(n for n in vars(hookspecs) if n.startswith("station_"))
            where = self.origins.get(failed, failed)
            raise ConfigError(f"{where}: {exc} (hooks: {known})") from exc
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
        self._refresh()

    def _add(self, name: str, plugin: object, origin: str) -> None:
        if self.pm.is_blocked(name):
            return
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise ConfigError(f"{origin}: {exc}") from exc
        self.origins[name] = origin

    def _configure(self, name: str, options: Mapping[str, Any]) -> None:
        """Hand a plugin its options; a plugin that refuses them is a configuration error."""
        for impl in self.pm.hook.station_configure.get_hookimpls():
            if impl.plugin_name != name:
                continue
            try:
                self._call(name, "station_configure", impl.function, (dict(options),))
            except ValueError as exc:
                raise ConfigError(f"{self.options_source}: plugin_options.{name}: {exc}") from exc
            except PluginError as exc:
                raise ConfigError(str(exc)) from exc
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
        self._refresh()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.origins.pop(name, None)
        self._refresh()

    def _refresh(self) -> None:
        """Collect what the start-up hooks provide, after the set of plugins changed."""
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
                result = self._call(impl.plugin_name, hook, impl.function, ())
            except PluginError as exc:
                raise ConfigError(str(exc)) from exc
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

        Raises PluginError naming the plugin when one raises, overruns ``timeout_seconds``
        or returns something that is not ``None`` and fails ``check`` (described by
        ``expected``).
        """
        return [
            (impl.plugin_name, self._call_checked(impl, hook, check, expected, kwargs))
            for impl in getattr(self.pm.hook, hook).get_hookimpls()
        ]

    def _call_checked(
        self,
        impl: pluggy.HookImpl,
        hook: str,
        check: Callable[[Any], bool],
        expected: str,
        kwargs: Mapping[str, Any],
    ) -> Any:
        """One implementation's result; PluginError (counted) when it fails (see call_each)."""
        args = tuple(kwargs[name] for name in impl.argnames)
        started = time.perf_counter()
        try:
            result = self._call(impl.plugin_name, hook, impl.function, args)
        except Exception as exc:
            self._count_error(impl.plugin_name, hook)
            if isinstance(exc, PluginError):
                raise
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
        return result

    def _call(
        self, plugin: str, hook: str, function: Callable[..., Any], args: tuple[Any, ...]
    ) -> Any:
        """``function(*args)`` on a daemon thread, waited for at most ``timeout_seconds``.

        Returns its result or raises its exception here; raises PluginError when it overruns
        (the thread is abandoned, see the module docstring) or when too many earlier calls
        of this plugin are still running past the limit.
        """
        limit = f"{self.timeout_seconds:g} s"
        with self._overrunning_lock:
            running = [t for t in self._overrunning.get(plugin, ()) if t.is_alive()]
            self._overrunning[plugin] = running
        if len(running) >= MAX_OVERRUNNING:
            raise PluginError(
                plugin,
                hook,
                f"not called: {len(running)} earlier calls are still running past the "
                f"{limit} time limit",
            )
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = function(*args)
            except BaseException as exc:  # handed to the caller, SystemExit included
                outcome["error"] = exc

        thread = threading.Thread(target=run, name=f"{plugin}.{hook}", daemon=True)
        thread.start()
        thread.join(self.timeout_seconds)
        if thread.is_alive():
            with self._overrunning_lock:
                self._overrunning.setdefault(plugin, []).append(thread)
            raise PluginError(plugin, hook, f"timed out after {limit}")
        error = outcome.get("error")
        if isinstance(error, Exception):
            raise error
        if error is not None:
            raise PluginError(plugin, hook, f"{type(error).__name__}: {error}") from error
        return outcome.get("result")

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call a notification hook; a plugin that fails is counted and logged, no more,
        and the other plugins are notified all the same."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                self._call_checked(impl, hook, lambda _result: True, "None", kwargs)
            except PluginError as exc:
                log.warning("notification failed: %s", exc)

    def _count_error(self, plugin: str, hook: str) -> None:
        if self.metrics:
            self.metrics.plugin_errors.labels(plugin, hook).inc()
