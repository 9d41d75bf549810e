"""Router: request analysis, candidate filtering, strategies, aliases, fallbacks, model rewrite."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_core.adapters import BackendStatus, Endpoint, ModelInfo
from nexus_core.config import RoutingConfig
from nexus_core.errors import GatewayError
from nexus_core.registry import Backend, Registry
from nexus_core.routing import RequestNeeds, Router, analyze, replace_model, with_include_usage
from nexus_core.testing.routing import routed_backend


def make_backend(
    registry: Registry,
    name: str,
    models: list[ModelInfo | str],
    *,
    status: BackendStatus = BackendStatus.HEALTHY,
    priority: int = 50,
    max_concurrent: int | None = None,
) -> Backend:
    return routed_backend(
        registry, name, models, status=status, priority=priority, max_concurrent=max_concurrent
    )


def chat(model: str, **extra: Any) -> RequestNeeds:
    return analyze(Endpoint.CHAT, {"model": model, "messages": [], **extra})


def test_analyze_reads_only_what_routing_needs() -> None:
    needs = analyze(
        Endpoint.CHAT,
        {
            "model": "m",
            "stream": True,
            "messages": [
                {"role": "user", "content": "x" * 400},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "y" * 40},
                        {"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}},
                    ],
                },
                {"role": "assistant", "content": None, "tool_calls": []},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_object"},
        },
    )
    assert needs == RequestNeeds(
        model="m", stream=True, vision=True, tools=True, json_mode=True, estimated_tokens=110
    )


@pytest.mark.parametrize(
    ("endpoint", "body", "param", "code"),
    [
        (Endpoint.CHAT, {"messages": []}, "model", "missing_model"),
        (Endpoint.CHAT, {"model": ""}, "model", "missing_model"),
        (Endpoint.CHAT, {"model": "m"}, "messages", "missing_required_parameter"),
        (Endpoint.CHAT, {"model": "m", "messages": "hi"}, "messages", "invalid_type"),
        (Endpoint.COMPLETIONS, {"model": "m"}, "prompt", "missing_required_parameter"),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": 3}, "prompt", "invalid_type"),
        (Endpoint.EMBEDDINGS, {"model": "m"}, "input", "missing_required_parameter"),
        (Endpoint.EMBEDDINGS, {"model": "m", "input": None}, "input", "missing_required_parameter"),
    ],
)
def test_analyze_refuses_unroutable_bodies(
    endpoint: Endpoint, body: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(GatewayError) as info:
        analyze(endpoint, body)
    assert (info.value.status, info.value.type) == (400, "invalid_request_error")
    assert (info.value.param, info.value.code) == (param, code)
    assert f"'{param}'" in info.value.message or param == "model"


def test_unknown_model_is_404_listing_models() -> None:
    registry = Registry()
    make_backend(registry, "a", ["llama3", "qwen"])
    router = Router(registry, RoutingConfig())
    with pytest.raises(GatewayError) as info:
        router.plan(chat("gpt-9"))
    assert info.value.status == 404
    assert info.value.code == "model_not_found"
    assert "llama3" in info.value.message
    assert "qwen" in info.value.message


def test_no_healthy_backend_is_503_with_reasons() -> None:
    registry = Registry()
    down = make_backend(registry, "a", ["m"], status=BackendStatus.UNHEALTHY)
    down.last_error = "connection refused"
    make_backend(registry, "b", ["m"], status=BackendStatus.LOADING)
    router = Router(registry, RoutingConfig())
    with pytest.raises(GatewayError) as info:
        router.plan(chat("m"))
    assert info.value.status == 503
    assert [(d["backend"], d["reason"], d["message"]) for d in info.value.details] == [
        ("a", "unhealthy", "unhealthy: connection refused"),
        ("b", "unhealthy", "loading"),
    ]
    assert all(d["model"] == "m" and d["fix"] for d in info.value.details)


def test_round_robin_per_model_spreads_evenly() -> None:
    registry = Registry()
    for name in ("a", "b", "c"):
        make_backend(registry, name, ["m", "other"])
    router = Router(registry, RoutingConfig(strategy="round_robin"))
    picks = Counter(router.plan(chat("m"))[0].backend.name for _ in range(6))
    assert picks == {"a": 2, "b": 2, "c": 2}
    # Another model has its own rotation.
    assert router.plan(chat("other"))[0].backend.name == "a"


def test_failover_order_is_distinct_backends_capped_by_max_retries() -> None:
    registry = Registry()
    for name in ("a", "b", "c", "d"):
        make_backend(registry, name, ["m"])
    router = Router(registry, RoutingConfig(max_retries=2))
    routes = router.plan(chat("m"))
    names = [r.backend.name for r in routes]
    assert len(names) == 3
    assert len(set(names)) == 3
    assert [r.reason for r in routes] == ["highest-score", "failover", "failover"]


def test_smart_prefers_priority_then_load() -> None:
    registry = Registry()
    make_backend(registry, "low", ["m"], priority=90)
    high = make_backend(registry, "high", ["m"], priority=10, max_concurrent=2)
    router = Router(registry, RoutingConfig())
    assert router.plan(chat("m"))[0].backend is high
    high.pending = 2  # full: load score drops to 0
    assert router.plan(chat("m"))[0].backend.name == "low"


def test_priority_only_and_least_loaded() -> None:
    registry = Registry()
    a = make_backend(registry, "a", ["m"], priority=20)
    b = make_backend(registry, "b", ["m"], priority=10)
    assert Router(registry, RoutingConfig(strategy="priority_only")).plan(chat("m"))[0].backend is b
    b.pending = 5
    least = Router(registry, RoutingConfig(strategy="least_loaded"))
    assert least.plan(chat("m"))[0].backend is a


def test_random_reaches_every_candidate() -> None:
    registry = Registry()
    for name in ("a", "b", "c"):
        make_backend(registry, name, ["m"])
    router = Router(registry, RoutingConfig(strategy="random"))
    seen = {router.plan(chat("m"))[0].backend.name for _ in range(200)}
    assert seen == {"a", "b", "c"}


def test_aliases_resolve_three_levels() -> None:
    registry = Registry()
    make_backend(registry, "a", ["llama3:70b"])
    config = RoutingConfig(
        aliases={"gpt-4": "big", "big": "llama-large", "llama-large": "llama3:70b"}
    )
    route = Router(registry, config).plan(chat("gpt-4"))[0]
    assert route.model == "llama3:70b"
    assert not route.fallback


def test_fallback_model_used_when_primary_has_no_healthy_backend() -> None:
    registry = Registry()
    make_backend(registry, "a", ["big"], status=BackendStatus.UNHEALTHY)
    make_backend(registry, "b", ["small"])
    config = RoutingConfig(fallbacks={"big": ["missing", "small"]})
    routes = Router(registry, config).plan(chat("big"))
    assert [(r.backend.name, r.model, r.fallback) for r in routes] == [("b", "small", True)]


def test_fallbacks_follow_primary_candidates() -> None:
    registry = Registry()
    make_backend(registry, "a", ["big"])
    make_backend(registry, "b", ["small"])
    routes = Router(registry, RoutingConfig(fallbacks={"big": ["small"]})).plan(chat("big"))
    assert [(r.backend.name, r.model, r.reason) for r in routes] == [
        ("a", "big", "only-candidate"),
        ("b", "small", "fallback-model"),
    ]


def test_capabilities_filter_only_on_known_lacks() -> None:
    registry = Registry()
    make_backend(registry, "text", [ModelInfo("m", vision=False, context_length=100)])
    make_backend(registry, "unknown", [ModelInfo("m")])
    make_backend(registry, "vision", [ModelInfo("m", vision=True)])
    router = Router(registry, RoutingConfig(strategy="priority_only"))
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    needs = chat("m", messages=[{"role": "user", "content": [image]}])
    assert [r.backend.name for r in router.plan(needs)] == ["unknown", "vision"]
    long_prompt = chat("m", messages=[{"role": "user", "content": "x" * 1000}])
    assert "text" not in [r.backend.name for r in router.plan(long_prompt)]


@given(
    extra=st.dictionaries(
        st.text(min_size=1).filter(lambda k: k != "model"),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=5,
    ),
    model=st.text(min_size=1),
    new_model=st.text(min_size=1),
    spaced=st.booleans(),
)
def test_replace_model_changes_only_the_model(
    extra: dict[str, Any], model: str, new_model: str, spaced: bool
) -> None:
    data = {**extra, "model": model, "nested": {"model": "keep-me"}}
    separators = (", ", ": ") if spaced else (",", ":")
    body = json.dumps(data, separators=separators, ensure_ascii=False).encode()
    out = replace_model(body, new_model)
    assert json.loads(out) == {**data, "model": new_model}
    prefix = body[: body.index(b'"model"')]
    assert out.startswith(prefix)


def test_backends_where_the_model_is_loaded_come_first() -> None:
    registry = Registry()
    make_backend(registry, "cold", [ModelInfo("m", loaded=False)], priority=1)
    make_backend(registry, "warm", [ModelInfo("m", loaded=True)], priority=90)
    make_backend(registry, "unknown", [ModelInfo("m")], priority=50)
    names = [r.backend.name for r in Router(registry, RoutingConfig()).plan(chat("m"))]
    assert names == ["unknown", "warm", "cold"]


def test_untagged_name_means_latest() -> None:
    registry = Registry()
    make_backend(registry, "o", ["llama3.2:latest", "qwen:7b"])
    router = Router(registry, RoutingConfig())
    assert router.plan(chat("llama3.2"))[0].model == "llama3.2:latest"
    with pytest.raises(GatewayError):
        router.plan(chat("qwen"))  # only :latest is implied, never another tag


def test_with_include_usage_inserts_the_option_and_keeps_every_other_byte() -> None:
    body = b'{"model": "m",  "stream": true, "messages": [{"role":"user","content":"\\u00e9"}]}'
    out = with_include_usage(body)
    assert out == b'{"stream_options":{"include_usage":true},' + body[1:]
    assert json.loads(out)["stream_options"] == {"include_usage": True}


def test_with_include_usage_keeps_the_clients_other_stream_options() -> None:
    body = json.dumps(
        {"model": "m", "stream": True, "stream_options": {"include_usage": False, "x": 1}}
    ).encode()
    assert json.loads(with_include_usage(body))["stream_options"] == {
        "include_usage": True,
        "x": 1,
    }
    # "stream_options" inside a message is not the top-level option.
    quoted = json.dumps({"model": "m", "messages": [{"content": '"stream_options"'}]}).encode()
    data = json.loads(with_include_usage(quoted))
    assert data["stream_options"] == {"include_usage": True}
    assert data["messages"] == [{"content": '"stream_options"'}]


def test_analyze_notes_whether_a_stream_client_asked_for_usage() -> None:
    asked = {
        "model": "m",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert analyze(Endpoint.CHAT, asked).include_usage
    assert not analyze(Endpoint.CHAT, {"model": "m", "messages": [], "stream": True}).include_usage
