"""Privacy zones and capability tiers end to end: the real openai SDK -> Nexus -> fake backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from nexus_core.adapters import BackendStatus
from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
RESTRICTED = [{"model_pattern": "secret-*", "privacy": "restricted"}]


def client(server: RunningServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, **kwargs)


def mark_down(server: RunningServer, name: str) -> None:
    backend = server.gateway.registry.get(name)
    assert backend is not None
    backend.status = BackendStatus.UNHEALTHY


def entry(fake: FakeBackend, **extra: Any) -> dict[str, Any]:
    return {"name": fake.name, "url": fake.url, **extra}


@pytest.fixture
def pair() -> Iterator[tuple[FakeBackend, FakeBackend]]:
    """A local (restricted) and a cloud-like (open) fake, both serving secret-a and public-b."""
    local = FakeBackend("local", models=["secret-a", "public-b"])
    cloud = FakeBackend("cloud", models=["secret-a", "public-b"])
    with local.running(), cloud.running():
        yield local, cloud


def test_restricted_request_is_served_by_restricted_backend(
    pair: tuple[FakeBackend, FakeBackend],
) -> None:
    local, cloud = pair
    config = gateway_config(
        entry(cloud, zone="open", priority=1), entry(local, priority=90), policies=RESTRICTED
    )
    with running_server(config) as server:
        raw = client(server).chat.completions.with_raw_response.create(
            model="secret-a", messages=MESSAGES
        )
        public = client(server).chat.completions.with_raw_response.create(
            model="public-b", messages=MESSAGES
        )
    assert raw.parse().choices[0].message.content == "Hello from local"
    assert raw.headers["x-nexus-backend"] == "local"
    assert raw.headers["x-nexus-privacy-zone"] == "restricted"
    assert raw.headers["x-nexus-route-reason"] == "privacy-restricted"
    # No policy matches public-b: the preferred open backend serves it.
    assert public.headers["x-nexus-backend"] == "cloud"
    assert public.headers["x-nexus-privacy-zone"] == "open"
    assert cloud.inference_requests[0].json["model"] == "public-b"
    assert len(cloud.inference_requests) == 1


def test_only_open_backend_healthy_is_503_with_privacy_reason(
    pair: tuple[FakeBackend, FakeBackend],
) -> None:
    local, cloud = pair
    config = gateway_config(entry(cloud, zone="open"), entry(local), policies=RESTRICTED)
    with running_server(config) as server:
        mark_down(server, "local")
        with pytest.raises(openai.InternalServerError) as info:
            client(server).chat.completions.create(model="secret-a", messages=MESSAGES)
    assert info.value.status_code == 503
    body = info.value.body
    assert isinstance(body, dict)
    details = {d["backend"]: d for d in body["details"]}
    assert details["cloud"]["reason"] == "privacy"
    assert details["cloud"]["message"] == "zone open, policy for 'secret-*' is restricted"
    assert "restricted" in details["cloud"]["fix"]
    assert details["local"]["reason"] == "unhealthy"
    # Waiting can help: the local backend is probed again within the health interval.
    assert info.value.response.headers["retry-after"] == "3600"
    assert cloud.inference_requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_restricted_backend_failing_does_not_fail_over_to_open(
    pair: tuple[FakeBackend, FakeBackend], stream: bool
) -> None:
    local, cloud = pair
    local.behave(Behaviour(status=500))
    config = gateway_config(
        entry(local, priority=1), entry(cloud, zone="open", priority=2), policies=RESTRICTED
    )
    with running_server(config) as server:
        sdk = client(server)
        # Failover happens before the first byte, so even a stream fails on create().
        with pytest.raises(openai.APIStatusError) as info:
            sdk.chat.completions.create(model="secret-a", messages=MESSAGES, stream=stream)
        # Unrestricted traffic does fail over to the open backend.
        public = client(server).chat.completions.with_raw_response.create(
            model="public-b", messages=MESSAGES
        )
    assert info.value.status_code == 502
    body = info.value.body
    assert isinstance(body, dict)
    assert [d["backend"] for d in body["details"]] == ["local"]
    assert [r.json["model"] for r in cloud.inference_requests] == ["public-b"]
    assert public.headers["x-nexus-route-reason"] == "failover"


def test_fallback_to_model_only_on_open_backends_is_refused() -> None:
    local = FakeBackend("local", models=["secret-a"])
    cloud = FakeBackend("cloud", models=["public-b"])
    with local.running(), cloud.running():
        local.behave(Behaviour(status=500))
        config = gateway_config(
            entry(local),
            entry(cloud, zone="open"),
            policies=RESTRICTED,
            fallbacks={"secret-a": ["public-b"]},
        )
        with running_server(config) as server:
            with pytest.raises(openai.APIStatusError) as failed:
                client(server).chat.completions.create(model="secret-a", messages=MESSAGES)
            mark_down(server, "local")
            refused = httpx.post(
                server.base_url + "/chat/completions",
                json={"model": "secret-a", "messages": MESSAGES},
            )
    assert failed.value.status_code == 502
    assert refused.status_code == 503
    details = refused.json()["error"]["details"]
    assert [(d["backend"], d["model"], d["reason"]) for d in details] == [
        ("local", "secret-a", "unhealthy"),
        ("cloud", "public-b", "privacy"),
    ]
    assert cloud.inference_requests == []


@pytest.fixture
def tiers() -> Iterator[tuple[FakeBackend, FakeBackend]]:
    small = FakeBackend("small", models=["big-x"])
    large = FakeBackend("large", models=["big-x"])
    with small.running(), large.running():
        yield small, large


def _tier_server(small: FakeBackend, large: FakeBackend) -> dict[str, Any]:
    return gateway_config(
        entry(small, tier=1, priority=1),
        entry(large, tier=4, priority=2),
        strategy="priority_only",
        policies=[{"model_pattern": "big-*", "min_tier": 3}],
    )


@pytest.mark.parametrize(
    ("headers", "mode"),
    [
        ({}, "strict"),
        ({"X-Nexus-Strict": "true"}, "strict"),
        ({"X-Nexus-Flexible": "true"}, "flexible"),
        ({"X-Nexus-Flexible": "true", "X-Nexus-Strict": "true"}, "strict"),
    ],
)
def test_tier_modes_never_downgrade(
    tiers: tuple[FakeBackend, FakeBackend], headers: dict[str, str], mode: str
) -> None:
    small, large = tiers
    with running_server(_tier_server(small, large)) as server:
        sdk = client(server, default_headers=headers)
        raw = sdk.chat.completions.with_raw_response.create(model="big-x", messages=MESSAGES)
        mark_down(server, "large")
        with pytest.raises(openai.InternalServerError) as info:
            sdk.chat.completions.create(model="big-x", messages=MESSAGES)
    # The preferred tier-1 backend is never used: tier 4 (>= min_tier 3) serves.
    assert raw.headers["x-nexus-backend"] == "large"
    assert small.inference_requests == []
    body = info.value.body
    assert isinstance(body, dict)
    detail = next(d for d in body["details"] if d["backend"] == "small")
    assert detail["reason"] == "tier"
    assert f"({mode} mode never serves from a lower tier)" in detail["message"]
    assert "min_tier 3" in detail["message"]
