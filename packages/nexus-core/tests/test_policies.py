"""Policies: privacy zones and capability tiers in routing, and explained rejections."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_core.adapters import BackendStatus, Endpoint, ModelInfo
from nexus_core.config import RoutingConfig, Zone
from nexus_core.errors import GatewayError
from nexus_core.failover import ProxyResult
from nexus_core.registry import Backend, Registry
from nexus_core.routing import RequestNeeds, Router, analyze
from nexus_core.testing.routing import routed_backend


def make_backend(
    registry: Registry,
    name: str,
    models: list[str],
    *,
    zone: str = "restricted",
    tier: int = 1,
    status: BackendStatus = BackendStatus.HEALTHY,
    priority: int = 50,
) -> Backend:
    return routed_backend(
        registry,
        name,
        models,
        status=status,
        cloud=zone == "open",
        zone=zone,
        tier=tier,
        priority=priority,
    )


def chat(model: str, *, flexible: bool = False) -> RequestNeeds:
    needs = analyze(Endpoint.CHAT, {"model": model, "messages": []})
    needs.flexible = flexible
    return needs


def routing(**config: Any) -> RoutingConfig:
    return RoutingConfig.model_validate(config)


def test_no_policies_no_filtering() -> None:
    registry = Registry()
    make_backend(registry, "cloud", ["m"], zone="open", priority=1)
    make_backend(registry, "local", ["m"], priority=2)
    routes = Router(registry, routing(strategy="priority_only")).plan(chat("m"))
    assert [r.backend.name for r in routes] == ["cloud", "local"]
    assert not any(r.restricted for r in routes)


def test_restricted_policy_excludes_open_backends_from_every_route() -> None:
    registry = Registry()
    make_backend(registry, "cloud", ["secret-a", "other"], zone="open", priority=1)
    make_backend(registry, "local", ["secret-a"], priority=2)
    make_backend(registry, "local-other", ["other"], priority=3)
    config = routing(
        strategy="priority_only",
        policies=[{"model_pattern": "secret-*", "privacy": "restricted"}],
        fallbacks={"secret-a": ["other"]},
    )
    routes = Router(registry, config).plan(chat("secret-a"))
    assert [(r.backend.name, r.model) for r in routes] == [
        ("local", "secret-a"),
        ("local-other", "other"),
    ]
    assert all(r.restricted for r in routes)
    result = ProxyResult(route=routes[0], requested_model="secret-a", content_type="x")
    assert result.headers()["X-Nexus-Route-Reason"] == "privacy-restricted"
    assert result.headers()["X-Nexus-Privacy-Zone"] == "restricted"


def test_only_open_backend_left_is_503_with_privacy_reason() -> None:
    registry = Registry()
    make_backend(registry, "cloud", ["secret-a"], zone="open")
    make_backend(registry, "local", ["secret-a"], status=BackendStatus.UNHEALTHY)
    config = routing(policies=[{"model_pattern": "secret-*", "privacy": "restricted"}])
    with pytest.raises(GatewayError) as info:
        Router(registry, config).plan(chat("secret-a"))
    assert info.value.status == 503
    details = {d["backend"]: d for d in info.value.details}
    assert details["cloud"] == {
        "backend": "cloud",
        "model": "secret-a",
        "reason": "privacy",
        "message": "zone open, policy for 'secret-*' is restricted",
        "fix": "add a backend in the restricted zone that serves 'secret-a'",
    }
    assert details["local"]["reason"] == "unhealthy"
    # Waiting can help: the unhealthy local backend is probed again within the health interval.
    assert details["local"]["retry_after"] == 30
    assert info.value.headers["Retry-After"] == "30"


def test_no_retry_after_when_waiting_cannot_help() -> None:
    registry = Registry()
    make_backend(registry, "cloud", ["secret-a"], zone="open")
    config = routing(policies=[{"model_pattern": "secret-*", "privacy": "restricted"}])
    with pytest.raises(GatewayError) as info:
        Router(registry, config).plan(chat("secret-a"))
    assert info.value.status == 503
    assert [d["reason"] for d in info.value.details] == ["privacy"]
    assert "Retry-After" not in info.value.headers


def test_first_matching_policy_wins() -> None:
    registry = Registry()
    make_backend(registry, "cloud", ["secret-public"], zone="open")
    config = routing(
        policies=[
            {"model_pattern": "secret-public", "privacy": "unrestricted"},
            {"model_pattern": "secret-*", "privacy": "restricted"},
        ]
    )
    router = Router(registry, config)
    assert router.plan(chat("secret-public"))[0].backend.name == "cloud"


def test_alias_to_an_unrestricted_name_stays_restricted() -> None:
    registry = Registry()
    make_backend(registry, "cloud", ["gpt-4o"], zone="open")
    config = routing(
        aliases={"secret-chat": "gpt-4o"},
        policies=[{"model_pattern": "secret-*", "privacy": "restricted"}],
    )
    router = Router(registry, config)
    with pytest.raises(GatewayError) as info:
        router.plan(chat("secret-chat"))
    assert [d["reason"] for d in info.value.details] == ["privacy"]
    assert router.plan(chat("gpt-4o"))[0].backend.name == "cloud"


def test_fallback_model_only_on_open_backends_is_refused() -> None:
    registry = Registry()
    make_backend(registry, "local", ["secret-a"], status=BackendStatus.UNHEALTHY)
    make_backend(registry, "cloud", ["public-b"], zone="open")
    config = routing(
        fallbacks={"secret-a": ["public-b"]},
        policies=[{"model_pattern": "secret-*", "privacy": "restricted"}],
    )
    with pytest.raises(GatewayError) as info:
        Router(registry, config).plan(chat("secret-a"))
    assert [(d["backend"], d["model"], d["reason"]) for d in info.value.details] == [
        ("local", "secret-a", "unhealthy"),
        ("cloud", "public-b", "privacy"),
    ]


def test_fallback_models_own_policy_applies_too() -> None:
    registry = Registry()
    make_backend(registry, "big-local", ["a"], tier=4, status=BackendStatus.UNHEALTHY)
    make_backend(registry, "small", ["b"], tier=1)
    make_backend(registry, "cloud-b", ["b"], zone="open", tier=5)
    config = routing(
        fallbacks={"a": ["b"]},
        policies=[
            {"model_pattern": "a", "min_tier": 3},
            {"model_pattern": "b", "privacy": "restricted"},
        ],
    )
    with pytest.raises(GatewayError) as info:
        Router(registry, config).plan(chat("a"))
    reasons = {d["backend"]: d["reason"] for d in info.value.details}
    assert reasons == {"big-local": "unhealthy", "small": "tier", "cloud-b": "privacy"}


@pytest.mark.parametrize("flexible", [False, True])
def test_tiers_never_downgrade(flexible: bool) -> None:
    registry = Registry()
    make_backend(registry, "t1", ["big-x"], tier=1, priority=1)
    make_backend(registry, "t3", ["big-x"], tier=3, priority=2)
    make_backend(registry, "t5", ["big-x"], tier=5, priority=3)
    config = routing(strategy="priority_only", policies=[{"model_pattern": "big-*", "min_tier": 3}])
    router = Router(registry, config)
    routes = router.plan(chat("big-x", flexible=flexible))
    assert [r.backend.name for r in routes] == ["t3", "t5"]
    assert not routes[0].restricted
    registry.get("t3").status = BackendStatus.UNHEALTHY  # type: ignore[union-attr]
    registry.get("t5").status = BackendStatus.UNHEALTHY  # type: ignore[union-attr]
    with pytest.raises(GatewayError) as info:
        router.plan(chat("big-x", flexible=flexible))
    t1 = next(d for d in info.value.details if d["backend"] == "t1")
    assert t1["reason"] == "tier"
    mode = "flexible" if flexible else "strict"
    assert f"tier 1 is below min_tier 3 of the policy for 'big-*' ({mode} mode" in t1["message"]


def test_capability_reason_has_code() -> None:
    registry = Registry()
    make_backend(registry, "a", [])
    registry.set_models(registry.get("a"), [ModelInfo("m", vision=False)])  # type: ignore[arg-type]
    needs = analyze(
        Endpoint.CHAT,
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    )
    with pytest.raises(GatewayError) as info:
        Router(registry, RoutingConfig()).plan(needs)
    assert info.value.details[0]["reason"] == "missing_capability"
    assert "lacks vision" in info.value.details[0]["message"]


# -- property: whatever the fleet, policies and failures, restricted never reaches open --------

MODELS = ["secret-a", "secret-b", "pub-a", "pub-b", "big-a"]
PATTERNS = ["secret-*", "pub-?", "*-a", "big-*", "[sp]*", "*", "pub-b"]

backend_st = st.fixed_dictionaries(
    {
        "zone": st.sampled_from(["restricted", "open"]),
        "tier": st.integers(1, 5),
        "status": st.sampled_from(list(BackendStatus)),
        "models": st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
        "priority": st.integers(0, 100),
    }
)
policy_st = st.fixed_dictionaries(
    {
        "model_pattern": st.sampled_from(PATTERNS),
        "privacy": st.sampled_from(["restricted", "unrestricted"]),
        "min_tier": st.none() | st.integers(1, 5),
    }
)


def _first(policies: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((p for p in policies if fnmatch.fnmatchcase(name, p["model_pattern"])), None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fleet=st.lists(backend_st, min_size=1, max_size=6),
    policies=st.lists(policy_st, max_size=4),
    fallbacks=st.dictionaries(
        st.sampled_from(MODELS), st.lists(st.sampled_from(MODELS), max_size=2), max_size=3
    ),
    alias=st.none() | st.tuples(st.just("alias-x"), st.sampled_from(MODELS)),
    failures=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(list(BackendStatus)))),
    requested=st.sampled_from([*MODELS, "alias-x"]),
    flexible=st.booleans(),
    strategy=st.sampled_from(
        ["smart", "round_robin", "priority_only", "random", "least_loaded", "cache_affinity"]
    ),
    conversation=st.integers(min_value=1, max_value=2**64 - 1),
)
def test_restricted_traffic_never_planned_to_open_or_lower_tier(
    fleet: list[dict[str, Any]],
    policies: list[dict[str, Any]],
    fallbacks: dict[str, list[str]],
    alias: tuple[str, str] | None,
    failures: list[tuple[int, BackendStatus]],
    requested: str,
    flexible: bool,
    strategy: str,
    conversation: int,
) -> None:
    registry = Registry()
    backends = [
        make_backend(
            registry,
            f"b{index}",
            spec["models"],
            zone=spec["zone"],
            tier=spec["tier"],
            status=spec["status"],
            priority=spec["priority"],
        )
        for index, spec in enumerate(fleet)
    ]
    aliases = dict([alias]) if alias else {}
    router = Router(
        registry,
        routing(strategy=strategy, policies=policies, fallbacks=fallbacks, aliases=aliases),
    )
    names = [requested, *([aliases[requested]] if requested in aliases else [])]
    # Random failures: health flips between plans, as the health loop and failover cause them.
    for step in [None, *failures]:
        if step is not None:
            backends[step[0] % len(backends)].status = step[1]
        try:
            needs = chat(requested, flexible=flexible)
            needs.prefix_key = conversation  # cache_affinity's key (the others ignore it)
            routes = router.plan(needs)
        except GatewayError as error:
            status = error.status
            routes = []
        else:
            status = 200
        assert status in (200, 404, 503)
        request_rules = [p for p in (_first(policies, n) for n in names) if p is not None]
        for route in routes:
            rules = list(request_rules)
            if route.fallback:
                rules += [p for p in [_first(policies, route.model)] if p is not None]
            if any(p["privacy"] == "restricted" for p in rules):
                assert route.backend.zone is Zone.RESTRICTED
                assert route.restricted
            floor = max((p["min_tier"] or 0 for p in rules), default=0)
            assert route.backend.tier >= floor
            assert route.backend.status is BackendStatus.HEALTHY
