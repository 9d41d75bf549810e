"""The listings agree with each other and answer each client in its own shape.

Through the real ``openai``, ``anthropic`` and ``ollama`` clients against a real Nexus (a
thread): aliases appear the same way in ``/v1/models``, ``/v1/models/{id}``, ``/api/tags`` and
the "available models" of every door's 404; a gateway key's 404 offers only its own models;
``/api/ps`` shows a model loaded through Nexus at once; the Anthropic SDK's ``models.list`` and
``models.retrieve`` get Anthropic's shape and paging while the OpenAI SDK keeps OpenAI's; ``HEAD``
answers as ``GET`` does, without a body; ``/metrics`` names its charset once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from nexus_core.testing import FakeBackend, FakeOllama
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
KEY = "nxk-listing-test-0123456789abcdef"
ADMIN_KEY = "nxk-listing-admin-0123456789abcdef"
ALIASES = {
    "gpt-4": "fake-model",  # an alias of a listed model
    "claude-opus-4-8": "gpt-4",  # an alias of an alias
    "old-name": "nowhere",  # its target is not served: not listed, although a backend lists it
}
#: What /v1/models lists, in order.
LISTED = ["claude-opus-4-8", "fake-model", "gpt-4", "other-model"]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    backend = FakeBackend("a", ["fake-model", "other-model", "old-name"])
    with backend.running():
        config = gateway_config(backend, aliases=ALIASES)
        with running_server(config) as running:
            yield running


def listed_ids(server: RunningServer) -> list[str]:
    return [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]


def test_aliases_are_the_same_in_the_listing_the_entry_and_every_404(
    server: RunningServer,
) -> None:
    assert listed_ids(server) == LISTED
    assert httpx.get(server.url + "/health").json()["models"] == len(LISTED)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    by_id = {m.id: m for m in client.models.list()}
    assert by_id["claude-opus-4-8"].model_extra["alias_of"] == "fake-model"  # type: ignore[index]
    entry = client.models.retrieve("claude-opus-4-8")
    assert entry.model_dump() == by_id["claude-opus-4-8"].model_dump()
    # A name routing sends elsewhere is not offered, nor found.
    with pytest.raises(openai.NotFoundError) as entry_404:
        client.models.retrieve("old-name")
    with pytest.raises(openai.NotFoundError) as chat_404:
        client.chat.completions.create(model="old-name", messages=MESSAGES)
    for error in (entry_404.value, chat_404.value):
        body: Any = error.body
        assert body["code"] == "model_not_found"
        assert body["details"]["available_models"] == LISTED
        assert "Available models: " + ", ".join(LISTED) + "." in body["message"]
    # The aliases answer, as the listing says.
    answer = client.chat.completions.with_raw_response.create(
        model="claude-opus-4-8", messages=MESSAGES
    )
    assert answer.headers["x-nexus-backend"] == "a"
    # The Anthropic door's 404 names the same models.
    claude = anthropic.Anthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as messages_404:
        claude.messages.create(model="no-such-model", max_tokens=16, messages=MESSAGES)
    assert "Available models: " + ", ".join(LISTED) + "." in str(messages_404.value)
    # The Ollama door: /api/tags lists them, /api/chat's 404 names them.
    llama = ollama.Client(host=server.url)
    assert [m.model for m in llama.list().models] == LISTED
    with pytest.raises(ollama.ResponseError) as ollama_404:
        llama.chat(model="no-such-model", messages=MESSAGES, stream=False)
    assert ollama_404.value.status_code == 404
    assert "Available models: " + ", ".join(LISTED) + "." in ollama_404.value.error


def test_a_key_s_404_offers_only_the_models_it_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_LISTING_KEY", KEY)
    backend = FakeBackend("a", ["fake-model", "other-model", "secret-model"])
    with backend.running():
        config = gateway_config(backend, aliases={"gpt-4": "fake-model"})
        config["auth"] = {
            "enabled": True,
            "keys": [
                {"name": "team", "key_env": "NEXUS_LISTING_KEY", "models": ["fake*", "gpt-*"]}
            ],
        }
        with running_server(config) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
            assert [m.id for m in client.models.list()] == ["fake-model", "gpt-4"]
            with pytest.raises(openai.NotFoundError) as chat_404:
                client.chat.completions.create(model="fake-but-missing", messages=MESSAGES)
            with pytest.raises(openai.NotFoundError) as entry_404:
                client.models.retrieve("fake-but-missing")
            for error in (chat_404.value, entry_404.value):
                body: Any = error.body
                assert body["details"]["available_models"] == ["fake-model", "gpt-4"]
                assert "secret-model" not in body["message"]


def test_api_ps_shows_a_model_loaded_through_nexus_at_once() -> None:
    box = FakeOllama("box", ["llama3.2:latest", "qwen3:latest"])  # nothing loaded yet
    with box.running():
        config = gateway_config({"name": "box", "url": box.url, "type": "ollama"})
        # Probed once, at start (the next probe is an hour away).
        with running_server(config) as server:
            client = ollama.Client(host=server.url)
            assert client.ps().models == []
            client.chat(model="llama3.2", messages=MESSAGES, stream=False)
            assert box.loaded == {"llama3.2:latest": box.loaded["llama3.2:latest"]}
            assert [m.model for m in client.ps().models] == ["llama3.2:latest"]
            # Loaded is loaded: routing no longer counts it as cold either.
            backend = server.gateway.registry.get("box")
            assert backend is not None
            assert backend.models["llama3.2:latest"].loaded is True
            assert backend.models["qwen3:latest"].loaded is False


# -- The Anthropic SDK's models API -------------------------------------------------------------


def claude(server: RunningServer, key: str = "sk-ant-test") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def test_anthropic_models_list_and_retrieve_have_anthropic_s_shape(server: RunningServer) -> None:
    client = claude(server)
    page = client.models.list()
    assert [m.id for m in page.data] == LISTED
    assert page.has_more is False
    assert (page.first_id, page.last_id) == (LISTED[0], LISTED[-1])
    started = datetime.fromtimestamp(int(server.gateway.started_at), UTC)
    for model in page.data:
        assert model.type == "model"
        assert model.created_at == started
        assert model.lifecycle == "active"
    by_id = {m.id: m for m in page.data}
    assert by_id["fake-model"].display_name == "fake-model"
    assert by_id["gpt-4"].display_name == "gpt-4 (alias of fake-model)"
    one = client.models.retrieve("claude-opus-4-8")
    assert one.model_dump() == by_id["claude-opus-4-8"].model_dump()
    raw = httpx.get(
        server.url + "/v1/models/gpt-4", headers={"anthropic-version": "2023-06-01"}
    ).json()
    assert set(raw) == {
        "type",
        "id",
        "display_name",
        "created_at",
        "lifecycle",
        "max_input_tokens",
    }
    assert raw["created_at"].endswith("Z")  # RFC 3339, as Anthropic writes it
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.models.retrieve("old-name")
    body = missing.value.response.json()
    assert list(body) == ["type", "error"]
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "Available models: " + ", ".join(LISTED) + "." in body["error"]["message"]


def test_anthropic_models_pages_both_ways(server: RunningServer) -> None:
    client = claude(server)
    first = client.models.list(limit=1)
    assert [m.id for m in first.data] == LISTED[:1]
    assert first.has_more is True
    # The SDK's auto-paging follows after_id to the end.
    assert [m.id for m in client.models.list(limit=1)] == LISTED
    second = client.models.list(limit=2, after_id=LISTED[0])
    assert [m.id for m in second.data] == LISTED[1:3]
    assert second.has_more is True
    before = client.models.list(limit=2, before_id=LISTED[-1])
    assert [m.id for m in before.data] == LISTED[1:3]
    assert before.has_more is True
    # A cursor need not be listed any more: ids are compared.
    assert [m.id for m in client.models.list(after_id="fake-model-gone").data] == LISTED[2:]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.models.list(limit=0)
    assert bad.value.response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        client.models.list(after_id="a", before_id="z")


def test_the_openai_sdk_keeps_openai_s_shape(server: RunningServer) -> None:
    raw = httpx.get(server.url + "/v1/models").json()
    assert raw["object"] == "list"
    assert {"id", "object", "created", "owned_by", "backends"} <= set(raw["data"][0])
    one = httpx.get(server.url + "/v1/models/fake-model").json()
    assert one["object"] == "model"


def test_anthropic_listing_with_auth_uses_x_api_key_and_anthropic_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEXUS_LISTING_KEY", KEY)
    backend = FakeBackend("a", ["fake-model", "secret-model"])
    with backend.running():
        config = gateway_config(backend)
        config["auth"] = {
            "enabled": True,
            "keys": [{"name": "team", "key_env": "NEXUS_LISTING_KEY", "models": ["fake*"]}],
        }
        with running_server(config) as server:
            assert [m.id for m in claude(server, KEY).models.list()] == ["fake-model"]
            with pytest.raises(anthropic.NotFoundError):
                claude(server, KEY).models.retrieve("secret-model")
            with pytest.raises(anthropic.AuthenticationError) as refused:
                claude(server, "nxk-wrong").models.list()
            assert refused.value.response.json()["type"] == "error"
            assert refused.value.response.json()["error"]["type"] == "authentication_error"


# -- HEAD and /metrics --------------------------------------------------------------------------

#: Headers that differ between any two answers.
PER_ANSWER = {"date", "x-request-id"}
#: Answers whose body changes from one moment to the next (an uptime; the dashboard's live state,
#: such as a backend's latency after a health check), so its length too.
CHANGING = {"/", "/health", "/health/ready", "/metrics"}


@pytest.mark.parametrize(
    "path",
    ["/", "/health", "/health/ready", "/v1/models", "/api/tags", "/api/version", "/metrics"],
)
def test_head_answers_as_get_does_without_a_body(server: RunningServer, path: str) -> None:
    got = httpx.get(server.url + path)
    head = httpx.head(server.url + path)
    assert got.status_code == 200
    assert head.status_code == got.status_code
    assert head.content == b""
    differ = PER_ANSWER | ({"content-length"} if path in CHANGING else set())
    assert {k: v for k, v in head.headers.items() if k not in differ} == {
        k: v for k, v in got.headers.items() if k not in differ
    }
    if path in CHANGING:
        assert int(head.headers["content-length"]) > 0
    else:
        assert head.headers["content-length"] == str(len(got.content))


def test_head_on_a_post_only_door_is_refused_as_get_is(server: RunningServer) -> None:
    got = httpx.get(server.url + "/v1/chat/completions")
    head = httpx.head(server.url + "/v1/chat/completions")
    assert (got.status_code, head.status_code) == (405, 405)
    assert head.content == b""
    assert head.headers["allow"] == got.headers["allow"] == "POST"


def test_head_on_an_unknown_path_is_a_404(server: RunningServer) -> None:
    head = httpx.head(server.url + "/no/such/path")
    assert head.status_code == 404
    assert head.content == b""


def test_metrics_names_its_charset_once(server: RunningServer) -> None:
    response = httpx.get(server.url + "/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
