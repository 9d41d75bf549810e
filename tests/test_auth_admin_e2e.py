"""Gateway keys, rate limits, the admin API and the hardening rules, end to end.

The real ``openai`` SDK and raw HTTP talk to real Nexus servers (threads) in front of fakes;
shared rate limits use one real ``redis-server``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nexus_core.testing import FakeBackend, FakeOpenAI
from nexus_core.testing.redis import redis_server, redis_server_binary
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
TEAM_KEY = "nxk-team-secret-0123456789abcdef"
ADMIN_KEY = "nxk-admin-secret-fedcba9876543210"
CLOUD_KEY = "sk-cloud-secret-5555555555555555"


@pytest.fixture(autouse=True)
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_KEY_TEAM", TEAM_KEY)
    monkeypatch.setenv("NEXUS_ADMIN_KEY_TEST", ADMIN_KEY)
    monkeypatch.setenv("NEXUS_TEST_CLOUD_KEY", CLOUD_KEY)


def auth_config(*backends: Any, **key: Any) -> dict[str, Any]:
    config = gateway_config(*backends)
    config["auth"] = {
        "enabled": True,
        "admin_key_env": "NEXUS_ADMIN_KEY_TEST",
        "keys": [{"name": "team", "key_env": "NEXUS_KEY_TEAM", **key}],
    }
    return config


def client(server: RunningServer, key: str | None = TEAM_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key or "none", max_retries=0)


def admin(server: RunningServer, key: str | None = ADMIN_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend("local", models=["llama3", "secret-model"])
    with fake.running():
        yield fake


# -- keys ------------------------------------------------------------------------------------------


def test_keys_are_required_and_checked(backend: FakeBackend) -> None:
    with running_server(auth_config(backend, models=["llama*"])) as server:
        answer = client(server).chat.completions.create(model="llama3", messages=MESSAGES)
        assert answer.choices[0].message.content == "Hello from local"
        without = httpx.post(
            server.base_url + "/chat/completions", json={"model": "llama3", "messages": MESSAGES}
        )
        assert without.status_code == 401
        assert without.json()["error"]["code"] == "invalid_api_key"
        assert without.headers["www-authenticate"].startswith("Bearer")
        with pytest.raises(openai.AuthenticationError) as wrong:
            client(server, "nxk-wrong").chat.completions.create(model="llama3", messages=MESSAGES)
        assert wrong.value.status_code == 401
        assert "nxk-wrong" not in wrong.value.message
        # x-api-key works too (what Anthropic clients send).
        raw = httpx.post(
            server.url + "/v1/messages",
            headers={"x-api-key": TEAM_KEY},
            json={"model": "llama3", "max_tokens": 8, "messages": MESSAGES},
        )
        assert raw.status_code == 200
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client(server).chat.completions.create(model="secret-model", messages=MESSAGES)
        assert denied.value.status_code == 403
        assert "may not use the model" in denied.value.message
        # The listings need a key too; the key's name (never the key) is in the history.
        assert httpx.get(server.base_url + "/models").status_code == 401
        models = httpx.get(server.base_url + "/models", headers={"x-api-key": TEAM_KEY})
        assert models.status_code == 200
        history = httpx.get(
            server.base_url + "/history", headers={"authorization": f"Bearer {TEAM_KEY}"}
        ).json()["data"]
        assert {h["key"] for h in history if h["status"] in (200, 403)} == {"team"}
    assert all("nxk-" not in str(r.headers) for r in backend.inference_requests)


def test_rate_limit_is_a_429_with_retry_after(backend: FakeBackend) -> None:
    with running_server(auth_config(backend, requests_per_minute=2)) as server:
        api = client(server)
        api.chat.completions.create(model="llama3", messages=MESSAGES)
        api.chat.completions.create(model="llama3", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as limited:
            api.chat.completions.create(model="llama3", messages=MESSAGES)
        assert limited.value.status_code == 429
        retry_after = int(limited.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 30
    assert len(backend.inference_requests) == 2


def test_tokens_per_minute_are_taken_from_usage(backend: FakeBackend) -> None:
    with running_server(auth_config(backend, tokens_per_minute=1)) as server:
        api = client(server)
        api.chat.completions.create(model="llama3", messages=MESSAGES)  # uses several tokens
        refused = None
        for _ in range(20):  # the count is taken in the background, right after the answer
            try:
                api.chat.completions.create(model="llama3", messages=MESSAGES)
            except openai.RateLimitError as exc:
                refused = exc
                break
    assert refused is not None
    assert refused.code == "rate_limit_exceeded"
    assert 1 <= len(backend.inference_requests) <= 20


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if redis_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it")
        pytest.skip("redis-server is not installed")
    with redis_server(tmp_path) as url:
        yield url


def test_rate_limit_is_shared_by_two_servers_on_one_redis(
    backend: FakeBackend, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_REDIS", redis_url)
    config = auth_config(backend, requests_per_minute=3)
    config["state"] = {"backend": "redis", "redis_url_env": "NEXUS_TEST_REDIS"}
    with running_server(config) as one, running_server(config) as two:
        client(one).chat.completions.create(model="llama3", messages=MESSAGES)
        client(two).chat.completions.create(model="llama3", messages=MESSAGES)
        client(one).chat.completions.create(model="llama3", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            client(two).chat.completions.create(model="llama3", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            client(one).chat.completions.create(model="llama3", messages=MESSAGES)
    assert len(backend.inference_requests) == 3


def test_a_keys_own_monthly_budget_is_enforced() -> None:
    cloud = FakeOpenAI("cloud", ["gpt-4o"], api_key=CLOUD_KEY)
    with cloud.running():
        config = auth_config(
            {
                "name": "cloud",
                "url": cloud.url,
                "type": "openai",
                "api_key_env": "NEXUS_TEST_CLOUD_KEY",
            },
            monthly_budget_usd=0.000001,
        )
        with running_server(config) as server:
            api = client(server)
            api.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            server.call(server.gateway.accountant.drain())
            with pytest.raises(openai.RateLimitError) as spent:
                api.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert spent.value.code == "key_budget_exceeded"
            assert int(spent.value.response.headers["retry-after"]) > 0
        assert len(cloud.inference_requests) == 1
        # The cloud got its own key, never the client's.
        sent = cloud.inference_requests[0].headers
        assert sent["authorization"] == f"Bearer {CLOUD_KEY}"


def test_keys_made_through_the_admin_api(backend: FakeBackend) -> None:
    with running_server(auth_config(backend)) as server, admin(server) as api:
        made = api.post(
            "/admin/keys", json={"name": "ci", "models": ["llama*"], "requests_per_minute": 100}
        )
        assert made.status_code == 201
        key = made.json()["key"]
        assert key.startswith("nxk-")
        assert made.headers["cache-control"] == "no-store"
        answer = client(server, key).chat.completions.create(model="llama3", messages=MESSAGES)
        assert answer.choices
        listed = api.get("/admin/keys").json()["data"]
        assert {k["name"]: k["source"] for k in listed} == {"ci": "store", "team": "config"}
        assert key not in str(listed)
        assert api.post("/admin/keys", json={"name": "ci"}).status_code == 409
        assert api.delete("/admin/keys/team").status_code == 409  # lives in the config
        assert api.delete("/admin/keys/ci").json() == {"revoked": "ci"}
        with pytest.raises(openai.AuthenticationError):
            client(server, key).chat.completions.create(model="llama3", messages=MESSAGES)


# -- the admin API ---------------------------------------------------------------------------------


def test_admin_needs_the_admin_key_when_one_is_set(backend: FakeBackend) -> None:
    with running_server(auth_config(backend)) as server:
        with admin(server, None) as anonymous:
            response = anonymous.get("/admin/backends")
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_admin_key"
        with admin(server, TEAM_KEY) as team:
            assert team.get("/admin/backends").status_code == 401
        with admin(server) as api:
            backends = api.get("/admin/backends").json()["data"]
            assert [b["name"] for b in backends] == ["local"]


def test_admin_without_an_admin_key_answers_loopback_only(backend: FakeBackend) -> None:
    from nexus_server.trust import is_loopback

    with running_server(gateway_config(backend)) as server, admin(server, None) as api:
        assert api.get("/admin/backends").status_code == 200  # the test runs on loopback
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert not is_loopback("192.168.1.20")
    assert not is_loopback(None)


def test_backends_added_at_run_time_survive_a_restart(backend: FakeBackend, tmp_path: Path) -> None:
    extra = FakeBackend("extra", models=["phi3"])
    config = gateway_config(backend)
    config["state"] = {"backend": "sqlite", "path": str(tmp_path / "state.sqlite3")}
    with extra.running():
        with running_server(config) as server, admin(server) as api:
            added = api.post("/admin/backends", json={"url": extra.url, "name": "extra"})
            assert added.status_code == 201, added.text
            assert added.json()["type"] == "generic"
            assert added.json()["status"] == "healthy"
            drained = api.post("/admin/backends/local/drain", json={})
            assert drained.json()["status"] == "draining"
            assert api.post("/admin/backends/local/resume", json={}).json()["status"] == "healthy"
        with running_server(config) as server, admin(server) as api:
            names = {b["name"]: b["source"] for b in api.get("/admin/backends").json()["data"]}
            assert names == {"local": "static", "extra": "admin"}
            answer = client(server, "x").chat.completions.create(model="phi3", messages=MESSAGES)
            assert answer.choices[0].message.content == "Hello from extra"
            assert api.delete("/admin/backends/extra").json() == {"removed": "extra"}
            assert api.delete("/admin/backends/extra").status_code == 404
        with running_server(config) as server, admin(server) as api:
            assert [b["name"] for b in api.get("/admin/backends").json()["data"]] == ["local"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "http://user:pass@10.0.0.5:11434"}, "credentials_in_url"),
        ({"url": "file:///etc/passwd"}, "invalid_url"),
        ({"url": "ftp://10.0.0.5"}, "invalid_url"),
        ({"name": "no-url"}, None),
        ({"url": "http://10.0.0.5:1", "tier": 9}, None),
        ({"url": "http://10.0.0.5:1", "password": "x"}, None),
    ],
)
def test_admin_refuses_bad_backends(
    backend: FakeBackend, body: dict[str, Any], code: str | None
) -> None:
    with running_server(gateway_config(backend)) as server, admin(server, None) as api:
        response = api.post("/admin/backends", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        if code is not None:
            assert error["code"] == code
        assert "pass@" not in response.text
        assert [b["name"] for b in api.get("/admin/backends").json()["data"]] == ["local"]


# -- hardening -------------------------------------------------------------------------------------


def test_client_authorization_reaches_only_backends_that_ask_for_it() -> None:
    plain = FakeBackend("plain", models=["m1"])
    forwarding = FakeBackend("forwarding", models=["m2"])
    with plain.running(), forwarding.running():
        config = gateway_config(
            {"name": "plain", "url": plain.url},
            {"name": "forwarding", "url": forwarding.url, "forward_client_auth": True},
        )
        with running_server(config) as server:
            api = client(server, "sk-user-own-backend-key")
            api.chat.completions.create(model="m1", messages=MESSAGES)
            api.chat.completions.create(model="m2", messages=MESSAGES)
    assert "authorization" not in {k.lower() for k in plain.inference_requests[0].headers}
    assert forwarding.inference_requests[0].headers["authorization"] == (
        "Bearer sk-user-own-backend-key"
    )


def test_cors_is_off_unless_origins_are_configured(backend: FakeBackend) -> None:
    origin = {"Origin": "https://chat.example.com"}
    with running_server(gateway_config(backend)) as server:
        response = httpx.get(server.base_url + "/models", headers=origin)
        assert "access-control-allow-origin" not in response.headers
    config = gateway_config(backend)
    config["server"]["cors_origins"] = ["https://chat.example.com"]
    with running_server(config) as server:
        preflight = httpx.request(
            "OPTIONS",
            server.base_url + "/chat/completions",
            headers={**origin, "Access-Control-Request-Headers": "authorization,content-type"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://chat.example.com"
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        answer = httpx.post(
            server.base_url + "/chat/completions",
            headers=origin,
            json={"model": "llama3", "messages": MESSAGES},
        )
        assert answer.headers["access-control-allow-origin"] == "https://chat.example.com"
        assert "x-nexus-backend" in answer.headers["access-control-expose-headers"]
        other = httpx.get(server.base_url + "/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_oversized_headers_get_431(backend: FakeBackend) -> None:
    with running_server(gateway_config(backend)) as server:
        response = httpx.post(
            server.base_url + "/chat/completions",
            headers={"x-padding": "a" * 70_000},
            json={"model": "llama3", "messages": MESSAGES},
        )
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"
    assert len(backend.inference_requests) == 0


def test_no_secret_appears_in_logs_bodies_or_headers(
    backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A full workload with every kind of secret configured; scan everything that came out."""
    caplog.set_level(logging.DEBUG)
    cloud = FakeOpenAI("cloud", ["gpt-4o"], api_key=CLOUD_KEY)
    seen: list[str] = []
    with cloud.running():
        config = auth_config(
            backend,
            {
                "name": "cloud",
                "url": cloud.url,
                "type": "openai",
                "api_key_env": "NEXUS_TEST_CLOUD_KEY",
            },
        )
        with running_server(config) as server, admin(server) as api:
            calls = [
                lambda: httpx.post(
                    server.base_url + "/chat/completions",
                    headers={"authorization": f"Bearer {TEAM_KEY}"},
                    json={"model": "gpt-4o", "messages": MESSAGES},
                ),
                lambda: httpx.post(
                    server.base_url + "/chat/completions",
                    headers={"authorization": f"Bearer {TEAM_KEY}"},
                    json={"model": "llama3", "messages": MESSAGES, "stream": True},
                ),
                lambda: httpx.post(
                    server.base_url + "/chat/completions",
                    headers={"authorization": "Bearer nxk-wrong-key"},
                    json={"model": "llama3", "messages": MESSAGES},
                ),
                lambda: httpx.get(server.base_url + "/stats", headers={"x-api-key": TEAM_KEY}),
                lambda: httpx.get(server.base_url + "/history", headers={"x-api-key": TEAM_KEY}),
                lambda: httpx.get(server.url + "/metrics"),
                lambda: httpx.get(server.url + "/health"),
                lambda: api.get("/admin/backends"),
                lambda: api.get("/admin/keys"),
                lambda: api.post("/admin/backends", json={"url": "http://u:p@x:1"}),
            ]
            for call in calls:
                response = call()
                seen.append(response.text)
                seen.append(str(response.headers))
    seen.append(caplog.text)
    everything = "\n".join(seen)
    for secret in (TEAM_KEY, ADMIN_KEY, CLOUD_KEY):
        assert secret not in everything


def test_the_dashboard_shows_to_this_machine_and_the_admin_key_when_auth_is_on(
    backend: FakeBackend,
) -> None:
    from nexus_server.dashboard.live import viewer_allowed
    from nexus_server.trust import LOCAL_KEY

    def scope(*headers: tuple[bytes, bytes], local: bool = False) -> dict[str, Any]:
        return {"headers": list(headers), LOCAL_KEY: local}

    with running_server(auth_config(backend)) as server:
        gateway = server.gateway
        assert httpx.get(server.url + "/").status_code == 200  # the test runs on loopback
        assert viewer_allowed(gateway, scope(local=True))
        assert not viewer_allowed(gateway, scope())
        assert not viewer_allowed(gateway, scope((b"x-api-key", b"nxk-wrong")))
        # A gateway key sees its own requests only (/v1/history), not the whole dashboard.
        assert not viewer_allowed(gateway, scope((b"x-api-key", TEAM_KEY.encode())))
        assert viewer_allowed(gateway, scope((b"authorization", f"Bearer {ADMIN_KEY}".encode())))
        shown = httpx.get(server.url + "/dashboard/snapshot", headers={"x-api-key": TEAM_KEY})
        assert shown.status_code == 200  # loopback, Host 127.0.0.1: this machine
    with running_server(gateway_config(backend)) as server:
        assert viewer_allowed(server.gateway, scope())  # auth off: anyone who reaches it
