"""A request no backend can ever serve is the client's 400; one that waiting can serve, a 503."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_core.adapters import BackendStatus, Endpoint, ModelInfo
from nexus_core.config import QualityConfig, RoutingConfig, Zone
from nexus_core.errors import GatewayError
from nexus_core.quality import QualityTracker
from nexus_core.registry import Registry
from nexus_core.routing import PERMANENT_REASONS, Router, analyze

from .test_routing import make_backend

LONG = "x" * 4000  # about 1,000 tokens at 4 characters a token
IMAGE = [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "x"}}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]


def refusal(router: Router, endpoint: Endpoint, body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        router.plan(analyze(endpoint, {"model": "m", **body}))
    return info.value


def two_backends(
    a: ModelInfo, b: ModelInfo, b_status: BackendStatus = BackendStatus.HEALTHY
) -> Registry:
    registry = Registry()
    make_backend(registry, "a", [a])
    make_backend(registry, "b", [b], status=b_status)
    return registry


def test_a_prompt_longer_than_every_context_is_context_length_exceeded() -> None:
    registry = two_backends(ModelInfo("m", context_length=512), ModelInfo("m", context_length=900))
    error = refusal(
        Router(registry, RoutingConfig()),
        Endpoint.CHAT,
        {"messages": [{"role": "user", "content": LONG}]},
    )
    assert (error.status, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )
    # OpenAI's wording (what LiteLLM maps to ContextWindowExceededError), Anthropic's
    # "prompt is too long: N tokens > M maximum", and the largest context that was on offer.
    assert error.message.startswith("This model's maximum context length is 900 tokens")
    assert "prompt is too long: 1000 tokens > 900 maximum" in error.message
    assert not error.headers  # no Retry-After: waiting cannot help
    assert [
        (d["backend"], d["reason"], d["missing"], d["context_length"]) for d in error.details
    ] == [
        ("a", "missing_capability", ["context_length"], 512),
        ("b", "missing_capability", ["context_length"], 900),
    ]


def test_a_completions_prompt_too_long_names_the_prompt() -> None:
    registry = two_backends(ModelInfo("m", context_length=100), ModelInfo("m", context_length=100))
    error = refusal(Router(registry, RoutingConfig()), Endpoint.COMPLETIONS, {"prompt": LONG})
    assert (error.code, error.param) == ("context_length_exceeded", "prompt")


@pytest.mark.parametrize(
    ("body", "info", "code", "param"),
    [
        ({"tools": TOOLS}, ModelInfo("m", tools=False), "tools_not_supported", "tools"),
        (
            {"messages": [{"role": "user", "content": IMAGE}]},
            ModelInfo("m", vision=False),
            "vision_not_supported",
            "messages",
        ),
        (
            {"response_format": {"type": "json_object"}},
            ModelInfo("m", json_mode=False),
            "json_mode_not_supported",
            "response_format",
        ),
    ],
    ids=["tools", "vision", "json_mode"],
)
def test_a_capability_no_backend_has_is_a_400_with_its_code(
    body: dict[str, Any], info: ModelInfo, code: str, param: str
) -> None:
    registry = two_backends(info, info)
    error = refusal(Router(registry, RoutingConfig()), Endpoint.CHAT, {"messages": [], **body})
    assert (error.status, error.code, error.param) == (400, code, param)
    assert "'m'" in error.message


def test_embeddings_to_a_model_that_cannot_embed_are_refused_and_never_routed_there() -> None:
    registry = two_backends(ModelInfo("m", embeddings=False), ModelInfo("m", embeddings=None))
    router = Router(registry, RoutingConfig())
    routes = router.plan(analyze(Endpoint.EMBEDDINGS, {"model": "m", "input": "x"}))
    assert [r.backend.name for r in routes] == ["b"]  # unknown is allowed, false is not
    registry.set_models(registry.get("b"), [ModelInfo("m", embeddings=False)])  # type: ignore[arg-type]
    error = refusal(router, Endpoint.EMBEDDINGS, {"input": "x"})
    assert (error.status, error.code, error.param) == (400, "embeddings_not_supported", "model")
    # Chat to the same model is not affected.
    assert router.plan(analyze(Endpoint.CHAT, {"model": "m", "messages": []}))


def test_the_code_names_what_every_backend_lacks() -> None:
    # a lacks tools; b lacks tools and is too small: shortening the prompt would not help.
    registry = two_backends(
        ModelInfo("m", tools=False), ModelInfo("m", tools=False, context_length=100)
    )
    body = {"messages": [{"role": "user", "content": LONG}], "tools": TOOLS}
    error = refusal(Router(registry, RoutingConfig()), Endpoint.CHAT, body)
    assert error.code == "tools_not_supported"
    # a lacks tools, b's context is too small: either change helps; the context is named.
    registry = two_backends(ModelInfo("m", tools=False), ModelInfo("m", context_length=100))
    error = refusal(Router(registry, RoutingConfig()), Endpoint.CHAT, body)
    assert error.code == "context_length_exceeded"


@pytest.mark.parametrize("passing", [BackendStatus.UNHEALTHY, BackendStatus.LOADING])
def test_a_candidate_that_may_come_back_keeps_the_503(passing: BackendStatus) -> None:
    registry = two_backends(
        ModelInfo("m", context_length=100), ModelInfo("m", context_length=100_000), passing
    )
    error = refusal(
        Router(registry, RoutingConfig()),
        Endpoint.CHAT,
        {"messages": [{"role": "user", "content": LONG}]},
    )
    assert (error.status, error.code) == (503, "no_backend_available")
    assert error.headers["Retry-After"] == "30"
    assert [d["reason"] for d in error.details] == ["missing_capability", "unhealthy"]


def test_a_cooled_down_last_candidate_is_tried_rather_than_refused() -> None:
    registry = two_backends(ModelInfo("m", tools=False), ModelInfo("m"))
    quality = QualityTracker(QualityConfig(min_requests=1, cooldown_seconds=60))
    quality.record("b", "m", False)
    assert quality.cooling("b", "m") > 0
    router = Router(registry, RoutingConfig(), quality=quality)
    # b is the only candidate that has tools: cooled down, it is still tried, never a 400.
    routes = router.plan(analyze(Endpoint.CHAT, {"model": "m", "messages": [], "tools": TOOLS}))
    assert [r.backend.name for r in routes] == ["b"]


def test_a_policy_exclusion_alone_stays_503_with_a_capability_it_is_400() -> None:
    registry = Registry()
    make_backend(registry, "cloud", [ModelInfo("m", context_length=100_000)]).zone = Zone.OPEN
    router = Router(
        registry, RoutingConfig(policies=[{"model_pattern": "m", "privacy": "restricted"}])
    )
    # Only a restricted backend may serve 'm' and there is none: the fleet must change, not
    # the request (a backend added at run time or discovered may serve it). 503.
    error = refusal(router, Endpoint.CHAT, {"messages": []})
    assert (error.status, error.code) == (503, "no_backend_available")
    assert [d["reason"] for d in error.details] == ["privacy"]
    # A restricted backend whose context is too small: the client can shorten the prompt. 400.
    make_backend(registry, "local", [ModelInfo("m", context_length=100)])
    error = refusal(router, Endpoint.CHAT, {"messages": [{"role": "user", "content": LONG}]})
    assert (error.status, error.code) == (400, "context_length_exceeded")
    assert sorted(d["reason"] for d in error.details) == ["missing_capability", "privacy"]
    assert {"missing_capability", "privacy", "tier"} == PERMANENT_REASONS
