"""Routing with the fleet's model states (``Registry.set_fleet_state``, ``drain_model``): held
models are never routed to, unloaded ones go last as ``cold-load``, loading alone is a 503."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core.adapters import Endpoint, ModelInfo, ModelState
from nexus_core.config import RoutingConfig
from nexus_core.errors import GatewayError
from nexus_core.registry import Backend, Registry
from nexus_core.routing import Router, analyze
from nexus_core.routing.router import COLD_LOAD
from nexus_core.testing.routing import routed_backend


def make_backend(registry: Registry, name: str, priority: int = 50) -> Backend:
    return routed_backend(registry, name, ["m", "other"], priority=priority)


CHAT = analyze(Endpoint.CHAT, {"model": "m", "messages": []})
STATES = st.sampled_from([*ModelState, None])


@given(
    st.lists(
        st.tuples(STATES, st.sampled_from([True, False, None]), st.booleans()),
        min_size=1,
        max_size=5,
    )
)
def test_held_backends_are_never_routed_to_and_cold_ones_go_last(
    fleet: list[tuple[ModelState | None, bool | None, bool]],
) -> None:
    registry = Registry()
    router = Router(registry, RoutingConfig(max_retries=10, strategy="priority_only"))
    backends = []
    for index, (state, autoload, drained) in enumerate(fleet):
        backend = make_backend(registry, f"b{index}", priority=index)
        states = {} if state is None else {"m": state}
        registry.set_fleet_state(backend, states, autoload)
        if drained:
            registry.drain_model(backend, "m")
        backends.append(backend)

    def held(state: ModelState | None, autoload: bool | None, drained: bool) -> bool:
        if drained or state in (ModelState.LOADING, ModelState.DOWNLOADING):
            return True
        return autoload is False and state in (ModelState.UNLOADED, ModelState.SLEEPING)

    expected = [b for b, spec in zip(backends, fleet, strict=True) if not held(*spec)]
    if not expected:
        with pytest.raises(GatewayError) as refused:
            router.plan(CHAT)
        loading_only = all(
            not drained and state in (ModelState.LOADING, ModelState.DOWNLOADING)
            for state, _, drained in fleet
        )
        assert refused.value.status == 503
        assert refused.value.code == ("model_loading" if loading_only else "no_backend_available")
        if loading_only:
            assert refused.value.headers["Retry-After"] == "5"
        return
    routes = router.plan(CHAT)
    assert {r.backend.name for r in routes} == {b.name for b in expected}
    # Warm (or unknown) first, then cold, each group in priority order.
    warm = [b for b in expected if b.models["m"].loaded is not False]
    cold = [b for b in expected if b.models["m"].loaded is False]
    assert [r.backend.name for r in routes] == [b.name for b in warm + cold]
    assert (routes[0].reason == COLD_LOAD) is (not warm)
    # Another model on the same backends is untouched.
    assert len(router.plan(analyze(Endpoint.CHAT, {"model": "other", "messages": []}))) == len(
        fleet
    )


def test_a_drain_ends_with_resume_and_states_follow_the_inventory() -> None:
    registry = Registry()
    router = Router(registry, RoutingConfig())
    backend = make_backend(registry, "a")
    registry.drain_model(backend, "m")
    assert registry.held_models == {"m"}
    assert backend.held == {"m": "draining"}
    registry.resume_model(backend, "m")
    assert registry.held_models == frozenset()
    assert [r.backend for r in router.plan(CHAT)] == [backend]
    registry.set_fleet_state(backend, {"m": ModelState.UNLOADED}, True)
    assert backend.models["m"].loaded is False
    # A probe's listing keeps the inventory's state.
    registry.set_models(backend, [ModelInfo("m"), ModelInfo("other")])
    assert backend.models["m"].loaded is False
    registry.set_model_state(backend, "m", ModelState.LOADED)
    assert backend.models["m"].loaded is True
    registry.remove("a")
    assert registry.held_models == frozenset()
