"""The plugin host: hooks, loading policy (allow/deny lists, broken plugins), tracing, bundles.

Every hook has a test here named ``test_<hook>``, and a heading in docs/plugin-hooks.md; the two
tests at the end enforce both.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest

from nexus_core import hookimpl, plugins
from nexus_core.adapters import BackendAdapter
from nexus_core.config import (
    BackendConfig,
    ConfigError,
    NexusConfig,
    QualityConfig,
    RoutingConfig,
)
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.quality import QualityTracker
from nexus_core.registry import Backend, Registry
from nexus_core.routing import PriorityStrategy, Router

from .test_routing import chat, make_backend

BUNDLED_TYPES = ("ollama", "vllm", "llamacpp", "lmstudio", "exo", "openai", "localai")
# Part of the core, loaded whatever the allow- and deny-lists say.
BUILTINS = ["builtin:generic", "builtin:mdns"]
REPO_ROOT = Path(__file__).resolve().parents[3]
HOOK_DOC = REPO_ROOT / "docs" / "plugin-hooks.md"

Register = Callable[[str, Any], None]


def reset_plugins() -> None:
    """Forget every plugin and the loaded state, so the next call loads again from scratch."""
    if plugins._state.undo_trace is not None:
        plugins._state.undo_trace()
    for name, plugin in plugins.pm.list_name_plugin():
        if plugin is None:
            plugins.pm.unblock(name)
        else:
            plugins.pm.unregister(name=name)
    plugins._state.loaded = False
    plugins._state.records.clear()
    plugins._state.collected.clear()
    plugins._state.undo_trace = None


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test loads plugins from scratch, with no plugin variables from the outer shell."""
    for variable in (plugins.LOAD_ENV, plugins.DISABLE_ENV, plugins.TRACE_ENV):
        monkeypatch.delenv(variable, raising=False)
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def install_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install fake distributions (``*.dist-info`` + a module) on sys.path, as pip would."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[str] = []

    def install(distribution: str, entry_point: str, module: str, source: str) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{distribution.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n"
        )
        (info / "entry_points.txt").write_text(f"[nexus]\n{entry_point} = {module}\n")
        modules.append(module)
        importlib.invalidate_caches()

    yield install
    for module in modules:
        sys.modules.pop(module, None)


class FakeFactory(OpenAIWireAdapter):
    type_name = "throwaway"


def report_by_name() -> dict[str, plugins.PluginInfo]:
    return {info.name: info for info in plugins.plugin_report()}


# --- one test per hook ---------------------------------------------------------------------------


def test_register_backends() -> None:
    class Plugin:
        @hookimpl
        def register_backends(self, register: Register) -> None:
            register("throwaway", FakeFactory)

    plugins.register_plugin(Plugin(), "throwaway-plugin")
    try:
        types = plugins.backend_types()
        assert types["throwaway"] is FakeFactory
        assert types["generic"] is OpenAIWireAdapter
        report = plugins.plugin_report()
        # Installed plugins load first; a plugin registered at run time comes after them.
        assert report[0].name == "builtin:generic"
        assert report[-1].name == "throwaway-plugin"
        assert report[-1].backend_types == ["throwaway"]
        assert report[-1].distribution is None
        assert report[-1].module == __name__
    finally:
        plugins.unregister_plugin("throwaway-plugin")
    assert "throwaway" not in plugins.backend_types()
    assert "throwaway-plugin" not in report_by_name()


def test_register_discovery_sources() -> None:
    source = object()

    class Plugin:
        @hookimpl
        def register_discovery_sources(self, register: Register) -> None:
            register("fake_mdns", source)

    plugins.register_plugin(Plugin(), "discovery-plugin")
    try:
        assert plugins.discovery_sources()["fake_mdns"] is source
    finally:
        plugins.unregister_plugin("discovery-plugin")
    assert "fake_mdns" not in plugins.discovery_sources()


def test_register_routing_strategies() -> None:
    def fewest_letters(candidates: list[str]) -> str:
        return min(candidates, key=len)

    class Plugin:
        @hookimpl
        def register_routing_strategies(self, register: Register) -> None:
            register("fewest_letters", fewest_letters)

    plugins.register_plugin(Plugin(), "strategy-plugin")
    try:
        strategy = plugins.routing_strategies()["fewest_letters"]
        assert strategy(["ollama", "exo"]) == "exo"
    finally:
        plugins.unregister_plugin("strategy-plugin")
    assert "fewest_letters" not in plugins.routing_strategies()


class _LastFirst:
    """A strategy object: the candidates in reverse order."""

    reason = "last-first"

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]:
        return list(reversed(candidates))


class _ByName:
    """A strategy class, so a factory: built with ``[routing]`` and the quality tracker."""

    def __init__(self, config: RoutingConfig, quality: QualityTracker | None) -> None:
        self.reason = f"by-name-{config.max_retries}"
        self.quality = quality

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]:
        return sorted(candidates, key=lambda backend: backend.name, reverse=True)


def _strategy_plugin(**strategies: object) -> None:
    class Plugin:
        @hookimpl
        def register_routing_strategies(self, register: Register) -> None:
            for name, strategy in strategies.items():
                register(name, strategy)

    plugins.register_plugin(Plugin(), "strategy-plugin")


def _planned(router: Router) -> list[tuple[str, str]]:
    return [(route.backend.name, route.reason) for route in router.plan(chat("m"))]


def test_the_router_builds_a_plugins_strategy_object_or_factory_once() -> None:
    last_first = _LastFirst()
    _strategy_plugin(
        last_first=last_first, by_name=_ByName, by_function=lambda config, quality: last_first
    )
    registry = Registry()
    for name, priority in (("a", 1), ("b", 2), ("c", 3)):
        make_backend(registry, name, ["m"], priority=priority)
    quality = QualityTracker(QualityConfig())

    router = Router(registry, RoutingConfig(strategy="last_first"))
    assert router.strategy is last_first
    assert router.strategy_name == "last_first"
    assert _planned(router) == [("c", "last-first"), ("b", "failover"), ("a", "failover")]

    built = Router(registry, RoutingConfig(strategy="BY_NAME", max_retries=1), quality=quality)
    assert isinstance(built.strategy, _ByName)
    assert built.strategy.quality is quality
    assert _planned(built) == [("c", "by-name-1"), ("b", "failover")]
    assert Router(registry, RoutingConfig(strategy="by_function")).strategy is last_first


def test_a_built_in_name_is_not_taken_over_by_a_plugin() -> None:
    _strategy_plugin(priority_only=_LastFirst())
    router = Router(Registry(), RoutingConfig(strategy="priority_only"))
    assert isinstance(router.strategy, PriorityStrategy)


def test_an_unknown_strategy_or_one_that_is_none_is_a_config_error() -> None:
    _strategy_plugin(last_first=_LastFirst(), broken=lambda config, quality: "not a strategy")
    with pytest.raises(ConfigError) as unknown:
        Router(Registry(), RoutingConfig(strategy="last_frist"))
    assert unknown.value.errors == [
        "routing.strategy: unknown routing strategy 'last_frist'; did you mean 'last_first'? "
        "(known strategies: broken, cache_affinity, last_first, least_loaded, priority_only, "
        "random, round_robin, smart)"
    ]
    with pytest.raises(ConfigError) as broken:
        Router(Registry(), RoutingConfig(strategy="broken"))
    assert broken.value.errors == [
        "routing.strategy: the plugin strategy 'broken' is not a strategy (a 'reason' string "
        "and an 'order(candidates, model)' method) nor a factory of one: 'not a strategy'"
    ]


def test_config_problems_name_an_unknown_strategy_and_the_known_ones() -> None:
    _strategy_plugin(last_first=_LastFirst())
    known = NexusConfig.model_validate({"routing": {"strategy": "last_first"}})
    assert plugins.config_problems(known, "nexus.toml") == []
    unknown = NexusConfig.model_validate({"routing": {"strategy": "fastest"}})
    assert plugins.config_problems(unknown, "nexus.toml") == [
        "nexus.toml: routing.strategy: unknown routing strategy 'fastest' (known strategies: "
        "cache_affinity, last_first, least_loaded, priority_only, random, round_robin, smart)"
    ]


def test_a_registered_strategy_must_be_one_or_make_one(caplog: pytest.LogCaptureFixture) -> None:
    _strategy_plugin(fine=_LastFirst(), wrong=42)
    assert plugins.routing_strategies() == {}  # nothing of a plugin that failed half-way
    assert "'wrong' is neither a strategy (an 'order' method) nor a factory of one" in caplog.text


@pytest.mark.anyio
async def test_startup(caplog: pytest.LogCaptureFixture) -> None:
    gateway = object()
    calls: list[tuple[str, object]] = []

    class Sync:
        @hookimpl
        def startup(self, gateway: object) -> None:
            calls.append(("sync", gateway))

    class Broken:
        @hookimpl
        def startup(self, gateway: object) -> None:
            raise RuntimeError("cannot start")

    class Async:
        @hookimpl
        async def startup(self, gateway: object) -> None:
            await anyio.lowlevel.checkpoint()
            calls.append(("async", gateway))

    for name, plugin in (("sync", Sync()), ("broken", Broken()), ("async", Async())):
        plugins.register_plugin(plugin, name)
    try:
        await plugins.call_startup(gateway)
    finally:
        for name in ("sync", "broken", "async"):
            plugins.unregister_plugin(name)
    # Load order, the awaitable awaited, and the broken plugin did not stop the one after it.
    assert calls == [("sync", gateway), ("async", gateway)]
    failures = [r for r in caplog.records if r.name == "nexus.plugins" and "startup" in r.message]
    assert len(failures) == 1
    assert "'broken'" in failures[0].getMessage()
    assert failures[0].exc_info is not None


@pytest.mark.anyio
async def test_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    gateway = object()
    calls: list[str] = []

    class First:
        @hookimpl
        async def shutdown(self, gateway: object) -> None:
            calls.append("first")

    class Broken:
        @hookimpl
        async def shutdown(self, gateway: object) -> None:
            await anyio.lowlevel.checkpoint()
            raise RuntimeError("cannot stop")

    class Last:
        @hookimpl
        def shutdown(self, gateway: object) -> None:
            calls.append("last")

    for name, plugin in (("first", First()), ("broken", Broken()), ("last", Last())):
        plugins.register_plugin(plugin, name)
    try:
        await plugins.call_shutdown(gateway)
    finally:
        for name in ("first", "broken", "last"):
            plugins.unregister_plugin(name)
    # Reverse load order; the failing coroutine is logged and the next plugin still runs.
    assert calls == ["last", "first"]
    assert any("'broken'" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


# --- registration rules --------------------------------------------------------------------------


def test_duplicate_backend_type_first_wins_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Late:
        @hookimpl
        def register_backends(self, register: Register) -> None:
            register("generic", FakeFactory)

    plugins.register_plugin(Late(), "late")
    try:
        assert plugins.backend_types()["generic"] is OpenAIWireAdapter
    finally:
        plugins.unregister_plugin("late")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'late'" in m and "'builtin:generic'" in m for m in warnings), warnings


def test_tryfirst_overrides_a_backend_type() -> None:
    class Override:
        @hookimpl(tryfirst=True)
        def register_backends(self, register: Register) -> None:
            register("generic", FakeFactory)

    plugins.register_plugin(Override(), "override")
    try:
        assert plugins.backend_types()["generic"] is FakeFactory
    finally:
        plugins.unregister_plugin("override")


def test_failing_registration_keeps_nothing_of_that_plugin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class HalfBroken:
        @hookimpl
        def register_backends(self, register: Register) -> None:
            register("half", FakeFactory)
            raise RuntimeError("oops")

    class BadName:
        @hookimpl
        def register_backends(self, register: Register) -> None:
            register("Not A Name", FakeFactory)

    plugins.register_plugin(HalfBroken(), "half-broken")
    plugins.register_plugin(BadName(), "bad-name")
    try:
        types = plugins.backend_types()
        report = report_by_name()
    finally:
        plugins.unregister_plugin("half-broken")
        plugins.unregister_plugin("bad-name")
    assert "half" not in types
    assert set(BUNDLED_TYPES) <= set(types)
    assert report["half-broken"].error == "register_backends failed: RuntimeError: oops"
    assert report["half-broken"].backend_types == []
    assert report["bad-name"].error is not None
    assert "'Not A Name'" in report["bad-name"].error
    assert report["ollama"].error is None


def test_unknown_hook_name_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    class Typo:
        @hookimpl
        def register_backend(self, register: Register) -> None:  # missing "s"
            raise AssertionError("never called")

    plugins.register_plugin(Typo(), "typo")
    try:
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    finally:
        plugins.unregister_plugin("typo")
    assert any("'register_backend'" in m and "not a nexus hook" in m for m in messages)


def test_unregister_unknown_plugin_raises() -> None:
    with pytest.raises(KeyError, match="nope"):
        plugins.unregister_plugin("nope")


# --- loading -------------------------------------------------------------------------------------


def test_bundled_backend_types_are_found_through_entry_points() -> None:
    report = report_by_name()
    types = plugins.backend_types()
    for type_name in BUNDLED_TYPES:
        info = report[type_name]
        distribution = f"nexusgw-backend-{type_name}"
        assert info.distribution == distribution
        assert info.version == metadata.version(distribution)
        assert info.module == f"nexus_backend_{type_name}"
        assert info.backend_types == [type_name]
        assert info.error is None
        factory = types[type_name]
        assert factory.type_name == type_name
        assert factory.is_cloud is (type_name == "openai")
        assert issubclass(factory, OpenAIWireAdapter)  # type: ignore[arg-type]
        config = BackendConfig(
            name=f"my-{type_name}",
            url="http://127.0.0.1:9",
            type=type_name,
            api_key_env="NEXUS_TEST_KEY" if factory.is_cloud else None,
        )
        assert isinstance(factory(config, HttpClients()), BackendAdapter)
    assert report["builtin:generic"].backend_types == ["generic"]
    assert report["builtin:generic"].distribution == plugins.CORE_DISTRIBUTION


def test_load_plugins_is_idempotent() -> None:
    plugins.load_plugins()
    registered = plugins.pm.list_name_plugin()
    plugins.load_plugins()
    assert plugins.pm.list_name_plugin() == registered
    assert len(plugins.plugin_report()) == len(registered)


def test_broken_plugin_is_reported_and_skipped(
    install_fake: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    install_fake(
        "nexusgw-test-broken",
        "broken",
        "nexus_test_broken_plugin",
        'raise RuntimeError("boom at import")\n',
    )
    install_fake(
        "nexusgw-test-misfit",
        "misfit",
        "nexus_test_misfit_plugin",
        """
        from nexus_core import hookimpl

        @hookimpl
        def register_backends(register, surprise):  # not the hook's signature
            register("misfit", object)
        """,
    )
    install_fake(
        "nexusgw-test-good",
        "good",
        "nexus_test_good_plugin",
        """
        from nexus_core import hookimpl
        from nexus_core.openai_wire import OpenAIWireAdapter

        class GoodAdapter(OpenAIWireAdapter):
            type_name = "good"

        @hookimpl
        def register_backends(register):
            register("good", GoodAdapter)
        """,
    )
    report = report_by_name()
    types = plugins.backend_types()

    broken = report["broken"]
    assert broken.error == "RuntimeError: boom at import"
    assert (broken.distribution, broken.version) == ("nexusgw-test-broken", "1.0")
    assert broken.module == "nexus_test_broken_plugin"
    assert broken.backend_types == []
    assert report["misfit"].error is not None
    assert report["misfit"].error.startswith("PluginValidationError")
    assert "misfit" not in types
    # The broken ones cost nothing to the others, whatever their order.
    assert report["good"].error is None
    assert report["good"].backend_types == ["good"]
    assert types["good"].__name__ == "GoodAdapter"  # type: ignore[attr-defined]
    assert set(BUNDLED_TYPES) <= set(types)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'broken'" in m and "nexusgw-test-broken" in m and "boom" in m for m in warnings)


def test_allow_list_loads_only_named_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    # An entry-point name and a distribution name, spelled loosely: both select a plugin.
    monkeypatch.setenv(plugins.LOAD_ENV, " ollama , NEXUSGW_backend.vllm")
    assert [info.name for info in plugins.plugin_report()] == [*BUILTINS, "ollama", "vllm"]
    assert set(plugins.backend_types()) == {"generic", "ollama", "vllm"}


def test_empty_allow_list_loads_only_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.LOAD_ENV, "")
    assert [info.name for info in plugins.plugin_report()] == BUILTINS
    assert set(plugins.backend_types()) == {"generic"}


def test_allow_list_warns_about_names_not_installed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(plugins.LOAD_ENV, "ollama,olama")
    plugins.load_plugins()
    assert "ollama" in report_by_name()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'olama'" in m and plugins.LOAD_ENV in m for m in warnings)


def test_deny_list_skips_named_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.DISABLE_ENV, "ollama,nexusgw-backend-vllm")
    names = set(report_by_name())
    assert "ollama" not in names
    assert "vllm" not in names
    assert {"builtin:generic", "exo", "openai"} <= names
    assert "ollama" not in plugins.backend_types()


def test_deny_list_wins_over_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.LOAD_ENV, "ollama,vllm")
    monkeypatch.setenv(plugins.DISABLE_ENV, "vllm")
    assert [info.name for info in plugins.plugin_report()] == [*BUILTINS, "ollama"]


def test_trace_prints_every_hook_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(plugins.TRACE_ENV, "1")
    monkeypatch.setenv(plugins.LOAD_ENV, "ollama")
    plugins.backend_types()
    err = capsys.readouterr().err
    assert "ollama <- register_backends(register=<register for register_backends (ollama)>)" in err
    assert "ollama registered 'ollama' = <class 'nexus_backend_ollama.OllamaAdapter'>" in err
    assert "ollama register_backends returned []" in err


def test_no_trace_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    plugins.backend_types()
    assert "nexus plugin trace" not in capsys.readouterr().err


# --- every hook is tested and documented ---------------------------------------------------------


def test_plugin_hooks_have_tests() -> None:
    hooks = plugins.hook_names()
    assert {"register_backends", "startup", "shutdown"} <= set(hooks)
    source = Path(__file__).read_text()
    untested = [
        hook
        for hook in hooks
        if not re.search(rf"^(async )?def test_{hook}\(", source, flags=re.MULTILINE)
    ]
    assert untested == [], f"hooks without a test_<hook> in {Path(__file__).name}: {untested}"


def test_plugin_hooks_are_documented() -> None:
    hooks = plugins.hook_names()
    assert hooks
    headings = set(re.findall(r"^## (\w+)\s*$", HOOK_DOC.read_text(), flags=re.MULTILINE))
    undocumented = [hook for hook in hooks if hook not in headings]
    assert undocumented == [], f"hooks without a '## <hook>' heading in {HOOK_DOC}: {undocumented}"
