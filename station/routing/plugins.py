"""Loading plugins (pluggy) and calling their hooks so that one failure stays contained.

The manager is built in pluggy's order and owned by the service, never a module global:
``PluginManager("station")`` -> ``add_hookspecs`` -> blocked names -> the
``station.plugins`` entry points -> configured files, folders and modules -> ``check_pending()``.

Hooks are called through pluggy (``pm.hook.<name>``), so pluggy orders the implementations
(the last registered first, ``tryfirst``/``trylast`` before that), runs hook wrappers
(``wrapper=True``, ``hookwrapper=True``) around them and stops at the first result of a
``firstresult`` hook. What pluggy cannot say is which plugin raised or returned what: so
each implementation that is not a wrapper has its function wrapped, when it is registered,
in a ``_Guarded`` callable. During a call made here it notes which plugin runs, turns an
exception into a PluginError naming the plugin (a hook wrapper sees that error and may
handle it, as pluggy allows), checks the type of the result and notes who returned it.
Wrapping the functions was chosen over a ``wrapper=True`` implementation of our own or
``add_hookcall_monitoring``: both see the whole call only, never which implementation
raised or returned a value.

Every hook call runs on a daemon thread of its own and is waited for at most
``timeout_seconds``. Python cannot stop a thread: a call that overruns is abandoned (it runs
on in the background, the implementations it has not reached yet are no longer called, and
being a daemon it never holds up the station's exit); the caller gets a PluginError naming
the plugin that was running. At most ``MAX_OVERRUNNING`` abandoned calls of one plugin may
run on at a time; beyond that the hooks it implements are not called at all (each call
fails at once, without waiting) until one returns, so a plugin that hangs on every series
neither piles up threads nor holds up a routing worker.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from station import PROJECT
from station.config import DEFAULT_TIMEOUT_SECONDS
from station.errors import ConfigError, PluginError
from station.ops.metrics import Metrics
from station.routing import hookspecs
from station.routing.loading import load_target

ENTRY_POINT_GROUP = "station.plugins"
MAX_OVERRUNNING = 4
log = logging.getLogger(__name__)


def _anything(_result: Any) -> bool:
    return True


def _wrong(result: Any, expected: str) -> str:
    return f"returned {type(result).__name__} {result!r:.80}; expected {expected}"


def _wrappers(impls: list[pluggy.HookImpl]) -> str:
    """Who answers for what no implementation did: the hook's wrappers."""
    return ", ".join(i.plugin_name for i in impls if i.wrapper or i.hookwrapper) or "unknown"


@dataclass
class _Call:
    """One hook call made by ``Plugins``, as its guarded implementations see it."""

    hook: str
    check: Callable[[Any], bool]  # what a result other than None must pass
    expected: str  # says what ``check`` wants, for the error
    contain: bool = False  # a failing implementation gives None and the others still run
    running: str | None = None  # the plugin whose implementation runs now
    abandoned: bool = False  # it overran its time limit: call no more implementations
    done: list[str] = field(default_factory=list)  # plugins whose implementation ended
    results: list[tuple[str, Any]] = field(default_factory=list)  # the non-None ones
    failures: list[PluginError] = field(default_factory=list)


class _Guarded:
    """A plugin's hook implementation as pluggy calls it (see the module docstring). Called
    through ``pm.hook`` from anywhere else, it is the plugin's function alone."""

    def __init__(self, calls: threading.local, plugin: str, function: Callable[..., Any]) -> None:
        self.calls = calls
        self.plugin = plugin
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call: _Call | None = getattr(self.calls, "call", None)
        if call is None:
            return self.function(*args, **kwargs)
        if call.abandoned:
            return None
        call.running = self.plugin
        try:
            result = self.function(*args, **kwargs)
        except BaseException as exc:  # SystemExit included: a plugin never ends the station
            error = PluginError(self.plugin, call.hook, f"{type(exc).__name__}: {exc}")
            return self._fail(call, error, exc)
        finally:
            call.running = None
            call.done.append(self.plugin)
        if result is not None and not call.check(result):
            wrong = _wrong(result, call.expected)
            return self._fail(call, PluginError(self.plugin, call.hook, wrong), None)
        if result is not None:
            call.results.append((self.plugin, result))
        return result

    def _fail(self, call: _Call, error: PluginError, cause: BaseException | None) -> None:
        call.failures.append(error)
        if call.contain:
            log.warning("notification failed: %s", error)
            return
        raise error from cause


class _Manager(pluggy.PluginManager):
    """pluggy's manager, which guards every implementation registered, wrappers aside."""

    def __init__(self, calls: threading.local) -> None:
        super().__init__(PROJECT)
        self.calls = calls

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        for caller in self.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                    # Final to type checkers only: pluggy offers no other way in (see above).
                    impl.function = _Guarded(self.calls, impl.plugin_name, impl.function)  # type: ignore[misc]
        return registered


@dataclass(frozen=True)
class PluginInfo:
    name: str
    origin: str
    hooks: tuple[str, ...]


class Plugins:
    """The plugin manager of one service, with the guard around every hook call."""

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
        self._calls = threading.local()
        self.options_source = options_source
        self.pm = _Manager(self._calls)
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
            for module, origin in load_target(target):
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
        others = [p for n, p in self.pm.list_name_plugin() if n != name and p is not None]
        caller = self.pm.subset_hook_caller("station_configure", others)
        try:
            self._call_hook(
                caller, _Call("station_configure", _anything, "None"), options=dict(options)
            )
        except PluginError as exc:
            if isinstance(exc.__cause__, ValueError):
                raise ConfigError(
                    f"{self.options_source}: plugin_options.{name}: {exc.__cause__}"
                ) from exc.__cause__
            raise ConfigError(str(exc)) from exc

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

    def trace(self, write: Callable[[str], None]) -> None:
        """Hand every hook call, with its arguments, and its result to ``write`` (pluggy's
        tracing: ``station run --trace-hooks``)."""
        self.pm.trace.root.setwriter(write)
        self.pm.enable_tracing()

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
        try:
            provided = self.call_each(hook, lambda r: isinstance(r, dict), "dict or None")
        except PluginError as exc:
            raise ConfigError(str(exc)) from exc
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for plugin, result in provided:
            for key, value in result.items():
                if key in merged:
                    raise ConfigError(
                        f"plugin {plugin}: {hook}() name {key!r} is already provided "
                        f"by plugin {owner[key]}"
                    )
                if not callable(value):
                    raise ConfigError(f"plugin {plugin}: {hook}()[{key!r}] is not callable")
                merged[key], owner[key] = value, plugin
        return merged

    def call_each(
        self, hook: str, check: Callable[[Any], bool], expected: str, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Call ``hook`` through pluggy; return (plugin, result) for each result of the
        call that is not None, in pluggy's order.

        Raises PluginError naming the plugin when one raises, overruns ``timeout_seconds``
        or returns something that is not ``None`` and fails ``check`` (described by
        ``expected``).
        """
        return self._call_hook(getattr(self.pm.hook, hook), _Call(hook, check, expected), **kwargs)

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call a notification hook; a plugin that fails is counted and logged, no more,
        and the other plugins are notified all the same: after one that overran its time
        limit (or is not called), through a subset of the hook without it and without those
        already called."""
        caller = getattr(self.pm.hook, hook)
        impls = [i for i in caller.get_hookimpls() if not (i.wrapper or i.hookwrapper)]
        left = {impl.plugin_name for impl in impls}
        while left:  # each pass ends with at least one plugin more notified or given up on
            gone = [impl.plugin for impl in impls if impl.plugin_name not in left]
            call = _Call(hook, _anything, "None", contain=True)
            try:
                self._call_hook(self.pm.subset_hook_caller(hook, gone), call, **kwargs)
                return
            except PluginError as exc:
                log.warning("notification failed: %s", exc)
                ended = left & {*call.done, exc.plugin}
                if not ended:
                    return
                left -= ended

    def _call_hook(
        self, caller: pluggy.HookCaller, call: _Call, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """``caller(**kwargs)`` on a daemon thread, waited for at most ``timeout_seconds``;
        (plugin, result) pairs of its result (see ``_owned``).

        Raises PluginError: the first failure of an implementation (as ``_Guarded`` raised
        it), an overrun (the thread is abandoned, see the module docstring), too many
        earlier calls of one of the plugins still running past the limit, or an exception of
        a hook wrapper. Every failure is counted.
        """
        limit = f"{self.timeout_seconds:g} s"
        impls = caller.get_hookimpls()
        with self._overrunning_lock:
            for impl in impls:
                running = [t for t in self._overrunning.get(impl.plugin_name, ()) if t.is_alive()]
                self._overrunning[impl.plugin_name] = running
                if len(running) >= MAX_OVERRUNNING:
                    self._count_error(impl.plugin_name, call.hook)
                    raise PluginError(
                        impl.plugin_name,
                        call.hook,
                        f"not called: {len(running)} earlier calls are still running past the "
                        f"{limit} time limit",
                    )
        outcome: dict[str, Any] = {}

        def run() -> None:
            self._calls.call = call
            try:
                outcome["result"] = caller(**kwargs)
            except BaseException as exc:  # handed to the caller, SystemExit included
                outcome["error"] = exc

        thread = threading.Thread(target=run, name=f"hook {call.hook}", daemon=True)
        started = time.perf_counter()
        thread.start()
        thread.join(self.timeout_seconds)
        if self.metrics:
            self.metrics.hook_duration.labels(call.hook).observe(time.perf_counter() - started)
        for failure in list(call.failures):
            self._count_error(failure.plugin, call.hook)
        if thread.is_alive():
            call.abandoned = True
            blamed = call.running or _wrappers(impls)
            with self._overrunning_lock:
                self._overrunning.setdefault(blamed, []).append(thread)
            self._count_error(blamed, call.hook)
            raise PluginError(blamed, call.hook, f"timed out after {limit}")
        error = outcome.get("error")
        if isinstance(error, PluginError):
            raise error
        if error is not None:  # implementations raise PluginErrors: a wrapper raised this
            self._count_error(_wrappers(impls), call.hook)
            raise PluginError(
                _wrappers(impls), call.hook, f"{type(error).__name__}: {error}"
            ) from error
        return self._owned(call, caller, outcome.get("result"))

    def _owned(self, call: _Call, caller: pluggy.HookCaller, result: Any) -> list[tuple[str, Any]]:
        """(plugin, value) for each value of a call's result: as the implementations
        returned them or, when a hook wrapper changed the result, each value owned by the
        wrapper(s) and type-checked here."""
        if caller.spec is not None and caller.spec.opts["firstresult"]:
            values = [] if result is None else [result]
        elif isinstance(result, list):
            values = result
        else:
            values = [[]]  # not even a list: fails the check below
        returned = [value for _plugin, value in call.results]
        if len(values) == len(returned) and all(map(operator.is_, values, returned)):
            return list(call.results)
        owner = _wrappers(caller.get_hookimpls())
        for value in values:
            if value is not None and not call.check(value):
                self._count_error(owner, call.hook)
                raise PluginError(owner, call.hook, _wrong(value, call.expected))
        return [(owner, value) for value in values if value is not None]

    def _count_error(self, plugin: str, hook: str) -> None:
        if self.metrics:
            self.metrics.plugin_errors.labels(plugin, hook).inc()
