"""The plugin host: one pluggy ``PluginManager`` named ``nexus``, the loading policy, typed calls.

Built-in plugins (``nexus_core.default_plugins``) are registered first, then every entry point of
the group ``nexus``, one at a time: a plugin that fails to import is logged, listed as failed in
``plugin_report()`` and skipped, never fatal. ``NEXUS_LOAD_PLUGINS`` (allow-list) and
``NEXUS_DISABLE_PLUGINS`` (deny-list) take comma-separated entry-point or distribution names;
``NEXUS_TRACE_PLUGINS=1`` prints every hook call to stderr.

Hooks run at start-up and shut-down only. The rest of the code calls the typed wrappers below
(``backend_types()``, ``call_startup()``...) and never touches ``pm.hook``. Each wrapper calls the
implementations one plugin at a time, so one broken plugin is reported by name and does not stop
the others. Call order is load order (built-ins, entry points, then plugins registered at run
time); ``@hookimpl(tryfirst=True)`` / ``trylast=True`` move an implementation to the front / back.
When two plugins register the same name, the first one called wins.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import os
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast

import pluggy

from nexus_core import hookspecs
from nexus_core.adapters import AdapterFactory
from nexus_core.config import AUTO_TYPE
from nexus_core.config.fields import REGISTERED_NAME

if TYPE_CHECKING:
    from nexus_core.config import NexusConfig
    from nexus_core.discovery import DiscoverySourceFactory

logger = logging.getLogger("nexus.plugins")

ENTRY_POINT_GROUP = "nexus"
LOAD_ENV = "NEXUS_LOAD_PLUGINS"
DISABLE_ENV = "NEXUS_DISABLE_PLUGINS"
TRACE_ENV = "NEXUS_TRACE_PLUGINS"
CORE_DISTRIBUTION = "nexusgw-core"

# Part of the core: loaded whatever the allow- and deny-lists say.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("builtin:generic", "nexus_core.default_plugins.generic"),
    ("builtin:mdns", "nexus_core.default_plugins.mdns"),
)

# The same rule the configuration applies to `[[backends]] type` and `[routing] strategy`.
_REGISTERED_NAME = REGISTERED_NAME

pm = pluggy.PluginManager("nexus")
pm.add_hookspecs(hookspecs)


@dataclass
class PluginInfo:
    """One plugin as ``nexus plugins`` shows it: its origin, what it adds, or why it failed."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    backend_types: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class _Collected:
    """What one registration hook produced across all plugins."""

    winners: dict[str, Any] = field(default_factory=dict)
    by_plugin: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class _State:
    loaded: bool = False
    records: list[PluginInfo] = field(default_factory=list)
    collected: dict[str, _Collected] = field(default_factory=dict)
    undo_trace: Callable[[], None] | None = None


_state = _State()


def load_plugins() -> None:
    """Register the built-in plugins, then the allowed entry points; a second call does nothing."""
    if _state.loaded:
        return
    _state.loaded = True  # set first: a plugin importing this module must not recurse
    if os.environ.get(TRACE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        _state.undo_trace = pm.add_hookcall_monitoring(_trace_before, _trace_after)

    core_version = _distribution_version(CORE_DISTRIBUTION)
    for name, module_name in DEFAULT_PLUGINS:
        info = PluginInfo(name, CORE_DISTRIBUTION, core_version, module_name)
        _load(info, functools.partial(importlib.import_module, module_name))

    allow = _names_from_env(LOAD_ENV)
    deny = _names_from_env(DISABLE_ENV) or set()
    known: set[str] = set()
    # Sorted so that load order, and so who wins a duplicate name, does not depend on sys.path.
    entry_points = sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (ep.name, (ep.dist.name if ep.dist is not None else None) or ""),
    )
    for entry_point in entry_points:
        distribution = entry_point.dist
        # Metadata without a Name or Version gives None at run time, whatever the stubs say.
        dist_name: str | None = distribution.name if distribution is not None else None
        dist_version: str | None = distribution.version if distribution is not None else None
        keys = {_normalize(entry_point.name)}
        if dist_name:
            keys.add(_normalize(dist_name))
        known |= keys
        if allow is not None and not keys & allow:
            logger.debug("plugin %r not loaded: not named in %s", entry_point.name, LOAD_ENV)
            continue
        if keys & deny:
            logger.info("plugin %r not loaded: disabled by %s", entry_point.name, DISABLE_ENV)
            continue
        info = PluginInfo(
            entry_point.name, dist_name or None, dist_version or None, entry_point.module
        )
        _load(info, entry_point.load)
    if allow:
        for missing in sorted(allow - known):
            logger.warning("%s names %r, which is not an installed nexus plugin", LOAD_ENV, missing)


def plugin_report() -> list[PluginInfo]:
    """Every plugin loaded or failed, with the backend types each registers (loads if needed)."""
    load_plugins()
    backends = _collect("register_backends")
    report: list[PluginInfo] = []
    for info in _state.records:
        if info.error is not None:
            report.append(replace(info, backend_types=[]))
        else:
            report.append(
                replace(
                    info,
                    backend_types=list(backends.by_plugin.get(info.name, [])),
                    error=backends.errors.get(info.name),
                )
            )
    return report


def config_problems(config: NexusConfig, source: str) -> list[str]:
    """One line per problem only the plugins reveal: a backend type or a routing strategy no
    plugin registers, a cloud adapter's rules broken.

    A backend of a cloud adapter (``is_cloud``) needs ``api_key_env`` and may not set
    ``forward_client_auth``; lines read like other configuration errors
    (``nexus.toml: backends[1].api_key_env: ...``), ``source`` naming the file.
    """
    from nexus_core.routing.strategies import strategy_problem  # routing imports this module

    types = backend_types()
    known = sorted(types)
    problems: list[str] = []
    strategy = strategy_problem(config.routing, routing_strategies())
    if strategy is not None:
        problems.append(f"{source}: routing.strategy: {strategy}")
    unknown = strategy is not None
    for index, backend in enumerate(config.backends):
        if backend.type == AUTO_TYPE:
            continue  # known once the server answers: Gateway.add_backend checks it then
        factory = types.get(backend.type)
        if factory is None:
            unknown = True
            close = difflib.get_close_matches(backend.type, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{source}: backends[{index}].type: unknown backend type {backend.type!r}{hint} "
                f"(installed types: {', '.join(known) or 'none'})"
            )
        elif factory.is_cloud:
            problems.extend(
                f"{source}: backends[{index}].{key}: {message}"
                for key, message in backend.cloud_problems()
            )
    if unknown:
        for info in plugin_report():
            if info.error:
                problems.append(f"note: plugin {info.name!r} failed to load: {info.error}")
    return problems


def backend_types() -> dict[str, AdapterFactory]:
    """Backend type name -> adapter factory, from every plugin's ``register_backends``."""
    return cast(dict[str, AdapterFactory], dict(_collect("register_backends").winners))


def discovery_sources() -> dict[str, DiscoverySourceFactory]:
    """Discovery source name -> source factory, from ``register_discovery_sources``."""
    return cast(
        dict[str, "DiscoverySourceFactory"], dict(_collect("register_discovery_sources").winners)
    )


def routing_strategies() -> dict[str, Any]:
    """Routing strategy name -> strategy or factory, from ``register_routing_strategies``."""
    return dict(_collect("register_routing_strategies").winners)


async def call_startup(gateway: Any) -> None:
    """Run every ``startup`` implementation in load order, awaiting those that are async."""
    await _call_lifecycle("startup", gateway, reverse=False)


async def call_shutdown(gateway: Any) -> None:
    """Run every ``shutdown`` implementation in reverse load order, awaiting async ones."""
    await _call_lifecycle("shutdown", gateway, reverse=True)


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object (module, class or instance) after the installed ones."""
    load_plugins()
    _register(plugin, name)
    _state.records.append(PluginInfo(name, None, None, _module_name(plugin)))
    _state.collected.clear()


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered under ``name``; KeyError if there is none."""
    if pm.get_plugin(name) is None:
        raise KeyError(f"no plugin registered as {name!r}")
    pm.unregister(name=name)
    _state.records = [
        info for info in _state.records if info.name != name or info.error is not None
    ]
    _state.collected.clear()


def hook_names() -> list[str]:
    """The names of every hook a plugin can implement, sorted."""
    return sorted(name for name in dir(hookspecs) if pm.parse_hookspec_opts(hookspecs, name))


def _load(info: PluginInfo, load: Callable[[], object]) -> None:
    try:
        _register(load(), info.name)
    except Exception as exc:
        info.error = f"{type(exc).__name__}: {exc}"
        source = f"distribution {info.distribution!r}" if info.distribution else "no distribution"
        logger.warning(
            "plugin %r (%s) failed to load and is skipped: %s", info.name, source, info.error
        )
        logger.debug("plugin %r traceback", info.name, exc_info=True)
    _state.records.append(info)
    _state.collected.clear()


def _register(plugin: object, name: str) -> None:
    pm.register(plugin, name)
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            logger.warning(
                "plugin %r implements %r, which is not a nexus hook (known: %s)",
                name,
                caller.name,
                ", ".join(hook_names()),
            )


class _Registrar:
    """The ``register`` callable one plugin receives from one registration hook."""

    def __init__(self, hook_name: str, plugin_name: str) -> None:
        self.hook_name = hook_name
        self.plugin_name = plugin_name
        self.made: list[tuple[str, Any]] = []

    def __call__(self, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not _REGISTERED_NAME.match(name):
            raise ValueError(
                f"{self.hook_name}: name must be lower-case letters, digits, '_', '.', '-' "
                f"and start with a letter (got {name!r})"
            )
        if obj is None:
            raise TypeError(f"{self.hook_name}: nothing registered for {name!r}")
        if self.hook_name == "register_backends" and not callable(obj):
            raise TypeError(f"register_backends: the factory for {name!r} is not callable")
        if self.hook_name == "register_routing_strategies" and not (
            callable(obj) or callable(getattr(obj, "order", None))
        ):
            raise TypeError(
                f"register_routing_strategies: {name!r} is neither a strategy (an 'order' "
                "method) nor a factory of one"
            )
        if _state.undo_trace is not None:
            print(
                f"nexus plugin trace:   {self.plugin_name} registered {name!r} = {obj!r}",
                file=sys.stderr,
            )
        self.made.append((name, obj))

    def __repr__(self) -> str:
        return f"<register for {self.hook_name} ({self.plugin_name})>"


def _collect(hook_name: str) -> _Collected:
    load_plugins()
    cached = _state.collected.get(hook_name)
    if cached is not None:
        return cached
    collected = _Collected()
    owners: dict[str, str] = {}
    for plugin_name, caller in _callers_in_order(hook_name):
        registrar = _Registrar(hook_name, plugin_name)
        try:
            caller(register=registrar)
        except Exception as exc:
            # Nothing of a plugin that failed half-way is kept.
            collected.errors[plugin_name] = f"{hook_name} failed: {type(exc).__name__}: {exc}"
            logger.warning("plugin %r: %s", plugin_name, collected.errors[plugin_name])
            logger.debug("plugin %r traceback", plugin_name, exc_info=True)
            continue
        collected.by_plugin[plugin_name] = [name for name, _ in registrar.made]
        for name, obj in registrar.made:
            if name in collected.winners:
                if collected.winners[name] is not obj:
                    logger.warning(
                        "%s: %r from plugin %r is ignored: plugin %r registered it first",
                        hook_name,
                        name,
                        plugin_name,
                        owners[name],
                    )
                continue
            collected.winners[name] = obj
            owners[name] = plugin_name
    _state.collected[hook_name] = collected
    return collected


async def _call_lifecycle(hook_name: str, gateway: Any, *, reverse: bool) -> None:
    load_plugins()
    callers = _callers_in_order(hook_name)
    if reverse:
        callers.reverse()
    for plugin_name, caller in callers:
        try:
            for result in caller(gateway=gateway):
                if inspect.isawaitable(result):
                    await result
        except Exception:
            logger.exception("plugin %r failed in %s; carrying on", plugin_name, hook_name)


def _callers_in_order(hook_name: str) -> list[tuple[str, pluggy.HookCaller]]:
    """One hook caller per plugin implementing ``hook_name``, in call order."""
    hook: pluggy.HookCaller = getattr(pm.hook, hook_name)
    impls = sorted(
        (impl for impl in hook.get_hookimpls() if not (impl.wrapper or impl.hookwrapper)),
        key=lambda impl: 0 if impl.tryfirst else 2 if impl.trylast else 1,
    )
    plugins = pm.get_plugins()
    callers: list[tuple[str, pluggy.HookCaller]] = []
    done: list[object] = []
    for impl in impls:
        if any(impl.plugin is plugin for plugin in done):
            continue
        done.append(impl.plugin)
        others = [plugin for plugin in plugins if plugin is not impl.plugin]
        callers.append((impl.plugin_name, pm.subset_hook_caller(hook_name, others)))
    return callers


def _trace_before(
    hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]
) -> None:
    arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    print(
        f"nexus plugin trace: {_plugin_names(impls)} <- {hook_name}({arguments})",
        file=sys.stderr,
    )


def _trace_after(
    outcome: pluggy.Result[object],
    hook_name: str,
    impls: Sequence[pluggy.HookImpl],
    kwargs: Mapping[str, object],
) -> None:
    if outcome.exception is not None:
        what = f"raised {outcome.exception!r}"
    else:
        what = f"returned {outcome.get_result()!r}"
    print(f"nexus plugin trace: {_plugin_names(impls)} {hook_name} {what}", file=sys.stderr)


def _plugin_names(impls: Sequence[pluggy.HookImpl]) -> str:
    return ", ".join(impl.plugin_name for impl in impls) or "(no plugin)"


def _names_from_env(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {_normalize(name) for name in value.split(",") if name.strip()}


def _normalize(name: str) -> str:
    """Compare names the way package indexes do: case- and ``-_.``-insensitive."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _module_name(plugin: object) -> str:
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    return str(getattr(plugin, "__module__", type(plugin).__module__))
