"""One capability check (``routing.missing``): routing's fast filter, its explained filter and the
model listing all follow it; the strategy registry covers every configurable strategy."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core import Gateway, adapters
from nexus_core.adapters import BackendStatus, ModelInfo
from nexus_core.config import BackendConfig, RoutingConfig, RoutingStrategy
from nexus_core.config.schema import ModelDeclaration
from nexus_core.errors import CAPABILITY_ERRORS
from nexus_core.registry import Registry
from nexus_core.routing import (
    CAPABILITIES,
    STRATEGIES,
    RequestNeeds,
    Router,
    missing,
)

from .test_routing import make_backend

_maybe = st.sampled_from([None, True, False])


@given(
    vision=_maybe,
    tools=_maybe,
    json_mode=_maybe,
    embeddings=_maybe,
    context=st.one_of(st.none(), st.integers(0, 50)),
    needs=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    tokens=st.integers(0, 60),
)
def test_missing_names_exactly_the_stated_lacks(
    vision: bool | None,
    tools: bool | None,
    json_mode: bool | None,
    embeddings: bool | None,
    context: int | None,
    needs: tuple[bool, bool, bool, bool],
    tokens: int,
) -> None:
    info = ModelInfo(
        "m",
        vision=vision,
        tools=tools,
        json_mode=json_mode,
        embeddings=embeddings,
        context_length=context,
    )
    request = RequestNeeds(
        "m", estimated_tokens=tokens, **dict(zip(CAPABILITIES, needs, strict=True))
    )
    expected = [
        name
        for name, needed in zip(CAPABILITIES, needs, strict=True)
        if needed and getattr(info, name) is False  # unknown (None) never excludes
    ]
    if context is not None and tokens > context:
        expected.append("context_length")
    assert list(missing(info, request)) == expected


def test_fast_and_explained_filters_agree_with_missing() -> None:
    """Every combination of what a model states and what a request needs: the hot filter and the
    filter that explains itself keep the same backends, and name what ``missing`` names."""
    registry = Registry()
    states = (None, True, False)
    infos: dict[str, ModelInfo] = {}
    for index, (vision, tools, json_mode, embeddings, context) in enumerate(
        itertools.product(states, states, states, states, (None, 10))
    ):
        name = f"b{index}"
        infos[name] = ModelInfo(
            "m",
            vision=vision,
            tools=tools,
            json_mode=json_mode,
            embeddings=embeddings,
            context_length=context,
        )
        make_backend(registry, name, [infos[name]])
    make_backend(registry, "down", ["m"], status=BackendStatus.UNHEALTHY)
    router = Router(registry, RoutingConfig())
    for flags in itertools.product((False, True), repeat=len(CAPABILITIES)):
        for tokens in (0, 20):
            needs = RequestNeeds(
                "m", estimated_tokens=tokens, **dict(zip(CAPABILITIES, flags, strict=True))
            )
            fast = [b.name for b in router.eligible("m", needs)]
            reasons: list[dict[str, object]] = []
            explained = [b.name for b in router.eligible("m", needs, reasons)]
            assert fast == explained == [n for n, i in infos.items() if not missing(i, needs)]
            lacking = {r["backend"]: r["missing"] for r in reasons if r["backend"] != "down"}
            assert lacking == {
                n: list(missing(i, needs)) for n, i in infos.items() if missing(i, needs)
            }
            assert [r["reason"] for r in reasons if r["backend"] == "down"] == ["unhealthy"]


def test_the_model_listing_shows_every_capability_routing_checks() -> None:
    gateway = Gateway({"state": {"backend": "memory"}})
    backend = make_backend(
        gateway.registry, "a", [ModelInfo("m", vision=True, tools=False, context_length=8)]
    )
    gateway.registry.set_status(backend, BackendStatus.HEALTHY)
    (entry,) = gateway.list_models()
    assert entry["capabilities"] == {
        "vision": True,
        "tools": False,
        "json_mode": None,
        "embeddings": None,
    }
    assert tuple(entry["capabilities"]) == CAPABILITIES
    assert entry["context_length"] == 8


@pytest.mark.parametrize("name", [strategy.value for strategy in RoutingStrategy])
def test_every_configurable_strategy_is_registered(name: str) -> None:
    registry = Registry()
    for backend in ("a", "b", "c"):
        make_backend(registry, backend, ["m"])
    router = Router(registry, RoutingConfig(strategy=name))
    assert router.strategy_name == name
    assert isinstance(router.strategy, type(STRATEGIES[name](RoutingConfig(), None)))
    # A conversation key, for the strategies that order by it (cache_affinity).
    routes = router.plan(RequestNeeds("m", prefix_key=1))
    assert sorted(r.backend.name for r in routes) == ["a", "b", "c"]
    assert routes[0].reason == router.strategy.reason


def test_the_registry_names_only_configurable_strategies() -> None:
    assert set(STRATEGIES) == {strategy.value for strategy in RoutingStrategy}


def test_the_fast_filter_follows_a_backend_that_lists_its_models_anew() -> None:
    """The router remembers which backends state a limit; a new model list is seen at once."""
    registry = Registry()
    backend = make_backend(registry, "a", [ModelInfo("m")])
    make_backend(registry, "b", [ModelInfo("m")])
    router = Router(registry, RoutingConfig())
    needs = RequestNeeds("m", estimated_tokens=100, tools=True)
    assert [b.name for b in router.eligible("m", needs)] == ["a", "b"]
    registry.set_models(backend, [ModelInfo("m", context_length=50)])
    assert [b.name for b in router.eligible("m", needs)] == ["b"]
    registry.set_models(backend, [ModelInfo("m", context_length=500, tools=False)])
    assert [b.name for b in router.eligible("m", needs)] == ["b"]
    registry.set_models(backend, [ModelInfo("m", context_length=500, tools=True)])
    assert [b.name for b in router.eligible("m", needs)] == ["a", "b"]
    registry.remove("b")
    assert [b.name for b in router.eligible("m", needs)] == ["a"]


def test_one_list_of_capabilities_names_the_same_fields_everywhere() -> None:
    assert CAPABILITIES is adapters.CAPABILITIES
    model_fields = {field.name for field in dataclasses.fields(ModelInfo)}
    needs_fields = {field.name for field in dataclasses.fields(RequestNeeds)}
    assert set(CAPABILITIES) <= model_fields & needs_fields & set(ModelDeclaration.model_fields)
    # Its own order is the order errors name a lack in; its keys are the same names.
    assert set(CAPABILITY_ERRORS) == {"context_length", *CAPABILITIES}


@pytest.mark.parametrize("name", CAPABILITIES)
def test_a_declared_capability_overrides_what_the_server_says(name: str) -> None:
    registry = Registry()
    backend = make_backend(registry, "a", [ModelInfo("m", **{name: True})])  # type: ignore[arg-type]
    backend.config = BackendConfig(
        name="a", url="http://127.0.0.1:9", models=[{"id": "m", name: False}]
    )
    registry.set_models(backend, [ModelInfo("m", **{name: True})])  # type: ignore[arg-type]
    assert getattr(backend.models["m"], name) is False
    assert backend.snapshot()["models"][0][name] is False
