"""The ``cache_affinity`` strategy: the conversation key, rendezvous placement, bounded loads."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_core.adapters import BackendStatus, Endpoint, ModelInfo
from nexus_core.config import RoutingConfig
from nexus_core.registry import Backend, Registry
from nexus_core.routing import (
    CacheAffinityStrategy,
    RequestNeeds,
    Router,
    analyze,
    prefix_key,
)
from nexus_core.routing.analysis import PREFIX_KEY_CHARS
from nexus_core.routing.strategies import takes_needs
from nexus_core.testing.routing import routed_backend


def make_backend(registry: Registry, name: str, max_concurrent: int | None = None) -> Backend:
    return routed_backend(registry, name, max_concurrent=max_concurrent)


def fleet(*names: str, **affinity: Any) -> tuple[Registry, Router]:
    registry = Registry()
    for name in names:
        make_backend(registry, name)
    config = RoutingConfig(strategy="cache_affinity", cache_affinity=affinity)
    return registry, Router(registry, config)


def conversation(system: str, turns: int, tools: bool = False) -> list[dict[str, Any]]:
    """The body of turn ``turns`` (1-based) of a conversation with ``system`` as its prompt."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"question {turn} of {system}"})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": f"answer {turn}"})
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "lookup"}}]
    return body


def needs_for(body: dict[str, Any]) -> RequestNeeds:
    return analyze(Endpoint.CHAT, body, keyed=True)


def test_the_key_is_the_same_on_every_turn_and_differs_between_conversations() -> None:
    keys = {prefix_key(Endpoint.CHAT, conversation("alpha", turn)) for turn in range(1, 7)}
    assert len(keys) == 1
    others = {prefix_key(Endpoint.CHAT, conversation(f"prompt {i}", 3)) for i in range(50)}
    assert len(others) == 50
    assert keys.isdisjoint(others)
    # Tools count as prefix; a different first question is another conversation.
    assert prefix_key(Endpoint.CHAT, conversation("alpha", 2, tools=True)) not in keys
    other_question = conversation("alpha", 1)
    other_question["messages"][1]["content"] = "something else"
    assert prefix_key(Endpoint.CHAT, other_question) not in keys


def test_the_key_reads_text_parts_as_strings_and_is_bounded() -> None:
    as_text = {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    }
    as_parts = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ]
    }
    assert prefix_key(Endpoint.CHAT, as_text) == prefix_key(Endpoint.CHAT, as_parts)
    # Past PREFIX_KEY_CHARS of leading text nothing more is read: such prompts share a key.
    long_a = {"messages": [{"role": "system", "content": "x" * PREFIX_KEY_CHARS + "a"}]}
    long_b = {"messages": [{"role": "system", "content": "x" * PREFIX_KEY_CHARS + "b"}]}
    assert prefix_key(Endpoint.CHAT, long_a) == prefix_key(Endpoint.CHAT, long_b)
    assert prefix_key(Endpoint.COMPLETIONS, {"prompt": "once upon"}) != 0
    assert prefix_key(Endpoint.EMBEDDINGS, {"input": "x"}) == 0


def test_the_key_is_computed_only_for_a_strategy_that_takes_it() -> None:
    body = conversation("alpha", 1)
    assert analyze(Endpoint.CHAT, body).prefix_key == 0
    assert analyze(Endpoint.CHAT, body, keyed=True).prefix_key != 0
    assert fleet("a", "b")[1].keyed
    registry = Registry()
    make_backend(registry, "a")
    assert not Router(registry, RoutingConfig(strategy="least_loaded")).keyed


def test_every_turn_of_a_conversation_goes_to_the_same_backend() -> None:
    _, router = fleet("a", "b", "c")
    for index in range(12):
        system = f"system prompt {index}"
        picks = set()
        for turn in range(1, 7):
            routes = router.plan(needs_for(conversation(system, turn)))
            picks.add(routes[0].backend.name)
            # The first turn may be placed past its ring's first backend by the bound
            # (overflow); from then on it is at its place.
            if turn > 1:
                assert routes[0].reason == "cache-affinity"
        assert len(picks) == 1


def test_two_routers_with_the_same_backends_agree_without_shared_state() -> None:
    # A loose bound (epsilon 10): only the rendezvous hash places; the two see the
    # conversations in opposite orders and still agree on each.
    systems = [f"conversation {i}" for i in range(40)]
    _, first = fleet("a", "b", "c", epsilon=10)
    _, second = fleet("a", "b", "c", epsilon=10)
    one = {s: first.plan(needs_for(conversation(s, 1)))[0].backend.name for s in systems}
    two = {s: second.plan(needs_for(conversation(s, 2)))[0].backend.name for s in systems[::-1]}
    assert one == two
    assert len(set(one.values())) == 3  # and they are spread over all three


def test_removing_a_backend_moves_only_its_conversations() -> None:
    registry = Registry()
    backends = [make_backend(registry, name) for name in ("a", "b", "c", "d")]
    strategy = CacheAffinityStrategy(epsilon=10)
    keys = [prefix_key(Endpoint.CHAT, conversation(f"c{i}", 1)) for i in range(400)]
    before = {key: strategy.ring(backends, key)[0].name for key in keys}
    after = {key: strategy.ring(backends[:2] + backends[3:], key)[0].name for key in keys}
    moved = {key for key in keys if before[key] != after[key]}
    assert moved == {key for key in keys if before[key] == "c"}
    assert 60 < len(moved) < 140  # about a quarter: the hash spreads them


def test_a_placed_conversation_stays_when_its_backend_comes_back() -> None:
    _registry, router = fleet("a", "b")
    body = conversation("sticky", 1)
    home = router.plan(needs_for(body))[0].backend
    home.status = BackendStatus.UNHEALTHY
    moved = router.plan(needs_for(conversation("sticky", 2)))
    assert moved[0].backend is not home
    assert moved[0].reason == "only-candidate"
    home.status = BackendStatus.HEALTHY
    # Only one candidate left it where it was placed; with both back it is at home again.
    assert router.plan(needs_for(conversation("sticky", 3)))[0].backend is home


def test_a_conversation_whose_backend_is_gone_is_placed_anew_and_stays() -> None:
    _registry, router = fleet("a", "b", "c")
    body = conversation("wanderer", 1)
    home = router.plan(needs_for(body))[0].backend
    home.status = BackendStatus.UNHEALTHY
    new_home = router.plan(needs_for(conversation("wanderer", 2)))[0]
    assert new_home.backend is not home
    assert new_home.reason == "cache-affinity"
    home.status = BackendStatus.HEALTHY
    # Its cache is on the new backend now: it stays there.
    assert router.plan(needs_for(conversation("wanderer", 3)))[0].backend is new_home.backend


def test_bounded_load_moves_a_request_past_the_bound_to_the_next_on_the_ring() -> None:
    _registry, router = fleet("a", "b")
    routes = router.plan(needs_for(conversation("busy", 1)))
    home, other = routes[0].backend, routes[1].backend
    home.pending = 2  # one more would be 3 in flight; the bound is ceil(1.25 x 3 / 2) = 2
    routes = router.plan(needs_for(conversation("busy", 2)))
    assert routes[0].backend is other
    assert routes[0].reason == "cache-affinity-overflow"
    assert routes[1].backend is home  # the failover order keeps the rest of the ring
    home.pending = 1  # 2 in flight there with this one: within the bound
    routes = router.plan(needs_for(conversation("busy", 3)))
    assert routes[0].backend is home
    assert routes[0].reason == "cache-affinity"


def test_a_full_backend_is_skipped_for_the_next() -> None:
    registry = Registry()
    a = make_backend(registry, "a", max_concurrent=1)
    b = make_backend(registry, "b", max_concurrent=1)
    router = Router(registry, RoutingConfig(strategy="cache_affinity"))
    home = router.plan(needs_for(conversation("full", 1)))[0].backend
    home.pending = 1
    routes = router.plan(needs_for(conversation("full", 2)))
    assert routes[0].backend is (b if home is a else a)
    assert routes[0].reason == "cache-affinity-overflow"


def test_new_conversations_are_spread_within_the_bound() -> None:
    # Whatever the hash says, two backends take four conversations two and two.
    for start in range(0, 40, 4):
        strategy = CacheAffinityStrategy()
        registry = Registry()
        backends = [make_backend(registry, "a"), make_backend(registry, "b")]
        for index in range(start, start + 4):
            key = prefix_key(Endpoint.CHAT, conversation(f"c{index}", 1))
            strategy.order(backends, "m", RequestNeeds("m", prefix_key=key))
        assert strategy.conversations == {"a": 2, "b": 2}


def test_idle_conversations_are_forgotten_and_memory_is_bounded() -> None:
    now = [0.0]
    strategy = CacheAffinityStrategy(idle_seconds=60, max_conversations=5, clock=lambda: now[0])
    registry = Registry()
    backends = [make_backend(registry, "a"), make_backend(registry, "b")]
    for index in range(20):
        key = prefix_key(Endpoint.CHAT, conversation(f"c{index}", 1))
        strategy.order(backends, "m", RequestNeeds("m", prefix_key=key))
    assert sum(strategy.conversations.values()) <= 5
    now[0] = 61.0
    key = prefix_key(Endpoint.CHAT, conversation("late", 1))
    strategy.order(backends, "m", RequestNeeds("m", prefix_key=key))
    assert sum(strategy.conversations.values()) == 1


def test_a_request_without_a_key_is_ordered_by_load() -> None:
    registry, router = fleet("a", "b")
    registry.get("a").pending = 3  # type: ignore[union-attr]
    routes = router.plan(analyze(Endpoint.EMBEDDINGS, {"model": "m", "input": "x"}, keyed=True))
    assert routes[0].backend.name == "b"
    assert routes[0].reason == "least-loaded"


def test_a_cold_home_gives_way_to_a_warm_backend_as_overflow() -> None:
    registry, router = fleet("a", "b")
    home = router.plan(needs_for(conversation("cold", 1)))[0].backend
    registry.set_models(home, [ModelInfo("m", loaded=False)])
    routes = router.plan(needs_for(conversation("cold", 2)))
    assert routes[0].backend is not home
    assert routes[0].reason == "cache-affinity-overflow"


class TwoArgumentStrategy:
    """A plugin strategy written before ``needs`` existed: ``order`` takes exactly two."""

    reason = "two-arguments"

    def __init__(self) -> None:
        self.calls = 0

    def order(self, candidates: list[Backend], model: str) -> list[Backend]:
        self.calls += 1
        return sorted(candidates, key=lambda b: b.name, reverse=True)


class NeedsStrategy:
    """A plugin strategy that takes ``needs``: it sees the conversation key."""

    reason = "keyed"

    def __init__(self) -> None:
        self.keys: list[int] = []

    def order(self, candidates: list[Backend], model: str, needs: RequestNeeds) -> list[Backend]:
        self.keys.append(needs.prefix_key)
        return list(candidates)


def test_plugin_strategies_with_the_two_argument_order_still_work() -> None:
    registry = Registry()
    make_backend(registry, "a")
    make_backend(registry, "b")
    old = TwoArgumentStrategy()
    router = Router(registry, RoutingConfig(), strategy=old)
    assert not router.keyed
    assert not takes_needs(old)
    routes = router.plan(analyze(Endpoint.CHAT, conversation("x", 1), router.keyed))
    assert [r.backend.name for r in routes] == ["b", "a"]
    assert routes[0].reason == "two-arguments"
    assert old.calls == 1
    new = NeedsStrategy()
    router = Router(registry, RoutingConfig(), strategy=new)
    assert router.keyed
    routes = router.plan(analyze(Endpoint.CHAT, conversation("x", 1), router.keyed))
    assert new.keys == [prefix_key(Endpoint.CHAT, conversation("x", 1))]
    assert routes[0].reason == "keyed"


@settings(max_examples=150, deadline=None)
@given(
    backends=st.integers(min_value=2, max_value=6),
    epsilon=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=30), st.booleans()), min_size=1, max_size=80
    ),
)
def test_no_backend_takes_more_than_the_bound(
    backends: int, epsilon: float, events: list[tuple[int, bool]]
) -> None:
    """Requests of 31 conversations arrive (and some finish) in any order: each goes to a
    backend that, with it, has at most ceil((1 + epsilon) x the average) in flight, and no
    backend has more placed conversations than (1 + epsilon) x their average, plus one."""
    registry = Registry()
    fleet_ = [make_backend(registry, f"b{i}") for i in range(backends)]
    strategy = CacheAffinityStrategy(epsilon=epsilon)
    in_flight: list[Backend] = []
    for conversation_index, finishes in events:
        if finishes and in_flight:
            in_flight.pop(0).pending -= 1
            continue
        key = prefix_key(Endpoint.CHAT, conversation(f"c{conversation_index}", 1))
        chosen = strategy.order(fleet_, "m", RequestNeeds("m", prefix_key=key))[0]
        chosen.pending += 1
        in_flight.append(chosen)
        total = sum(b.pending for b in fleet_)
        assert chosen.pending <= math.ceil((1 + epsilon) * total / backends)
        placed = sum(strategy.conversations.values())
        bound = (1 + epsilon) * placed / backends + 1
        assert max(strategy.conversations.values()) <= bound
