"""Errors keep their meaning through every door, as the real ``openai``, ``anthropic`` and
``ollama`` clients see them (docs/api.md#errors, docs/routing.md).

- A backend's 4xx message reaches the client through the OpenAI, Anthropic and Ollama doors.
- Every Ollama-door error is Ollama's ``{"error": "<string>"}``.
- A request no backend can ever serve is a 400 the SDKs do not retry (one call, one request);
  one that waiting can serve stays a 503 with ``Retry-After`` (which they do retry).
- Embeddings to a llama-server without ``--embeddings``: detected, never routed there, and an
  undetected 501 is a 400 with the server's message, not a retried 502.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from nexus_core.testing import Behaviour, FakeBackend, FakeLlamaCpp
from nexus_core.testing.llamacpp import llama_error
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
#: About 1,000 tokens at 4 characters a token: more than the fakes' 512-token slots.
LONG = "word " * 800
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
IMAGE = [
    {"type": "text", "text": "What is this?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]


def history(server: RunningServer) -> list[dict[str, Any]]:
    """Every request Nexus answered (newest first): how many requests reached it."""
    data: list[dict[str, Any]] = httpx.get(server.url + "/v1/history").json()["data"]
    return data


def gpt(server: RunningServer, retries: int = 2) -> openai.OpenAI:
    """The OpenAI SDK as users run it: two retries by default."""
    return openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=retries)


def claude(server: RunningServer, retries: int = 2) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=retries)


def llama(server: RunningServer) -> ollama.Client:
    return ollama.Client(host=server.url)


def ollama_chat(client: ollama.Client, *, stream: bool) -> None:
    """A chat through the Ollama door; a stream is read to its end (where the client raises)."""
    if stream:
        list(client.chat(model="fake-model", messages=MESSAGES, stream=True))
    else:
        client.chat(model="fake-model", messages=MESSAGES, stream=False)


def chats(*fakes: FakeBackend) -> list[Any]:
    return [r for fake in fakes for r in fake.inference_requests if "chat" in r.path]


# -- a backend's 4xx message, through every door ------------------------------------------------

OPENAI_BODY = {
    "error": {
        "message": "This model's maximum context length is 4096 tokens, you sent 9000",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
OLLAMA_BODY = {"error": "registry.ollama.ai/library/gemma:2b does not support tools"}
ANTHROPIC_BODY = {
    "type": "error",
    "error": {"type": "invalid_request_error", "message": "prompt is too long: 9000 > 4096"},
}
BODIES = {
    "openai-envelope": (OPENAI_BODY, OPENAI_BODY["error"]["message"]),
    "ollama-shape": (OLLAMA_BODY, OLLAMA_BODY["error"]),
    "anthropic-shape": (ANTHROPIC_BODY, ANTHROPIC_BODY["error"]["message"]),
}


@pytest.fixture
def two(fakes: list[FakeBackend]) -> Iterator[RunningServer]:
    a, b, _ = fakes
    with running_server(gateway_config(a, b, strategy="priority_only")) as running:
        yield running


@pytest.mark.parametrize("shape", list(BODIES))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_backends_4xx_message_reaches_every_door(
    two: RunningServer, fakes: list[FakeBackend], shape: str, stream: bool
) -> None:
    a, b, _ = fakes
    body, message = BODIES[shape]
    a.behave(Behaviour(status=400, error_body=body, times=3))
    # OpenAI door: the backend's own JSON body, as it came.
    with pytest.raises(openai.BadRequestError) as openai_error:
        gpt(two).chat.completions.create(model="fake-model", messages=MESSAGES, stream=stream)
    assert openai_error.value.response.json() == body
    # Anthropic door: Anthropic's shape, the backend's message, the type from the status.
    with pytest.raises(anthropic.BadRequestError) as anthropic_error:
        claude(two).messages.create(
            model="fake-model", max_tokens=16, messages=MESSAGES, stream=stream
        )
    assert anthropic_error.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }
    # Ollama door: {"error": "<the backend's message>"}.
    with pytest.raises(ollama.ResponseError) as ollama_error:
        ollama_chat(llama(two), stream=stream)
    assert (ollama_error.value.status_code, ollama_error.value.error) == (400, message)
    # A client's mistake: never retried on another backend.
    assert chats(b) == []
    assert len(chats(a)) == 3


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (422, anthropic.UnprocessableEntityError, "invalid_request_error"),
    ],
)
def test_the_anthropic_door_keeps_the_status_and_names_its_type(
    two: RunningServer,
    fakes: list[FakeBackend],
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    fakes[0].behave(Behaviour(status=status, error_body=OLLAMA_BODY, times=1))
    with pytest.raises(error_class) as info:
        claude(two, retries=0).messages.create(model="fake-model", max_tokens=16, messages=MESSAGES)
    assert info.value.status_code == status
    assert info.value.body == {
        "type": "error",
        "error": {"type": error_type, "message": OLLAMA_BODY["error"]},
    }


# -- every Ollama-door error is {"error": "<string>"} ---------------------------------------------

KEY = "nxk-errors-e2e-key-0123456789abcdef"
ADMIN = "nxk-errors-e2e-admin-0123456789abcd"


@pytest.fixture
def keyed(fakes: list[FakeBackend], monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.setenv("NEXUS_E2E_KEY", KEY)
    monkeypatch.setenv("NEXUS_E2E_ADMIN", ADMIN)
    config = gateway_config(fakes[0])
    config["auth"] = {
        "enabled": True,
        "admin_key_env": "NEXUS_E2E_ADMIN",
        "keys": [{"name": "team", "key_env": "NEXUS_E2E_KEY", "models": ["other-*"]}],
    }
    with running_server(config) as running:
        yield running


def ollama_error(call: Any) -> ollama.ResponseError:
    with pytest.raises(ollama.ResponseError) as info:
        call()
    error = info.value
    assert isinstance(error.error, str), error.error  # never a dict: ollama-js prints it
    assert error.error
    return error


def test_unknown_ollama_paths_answer_ollamas_error(keyed: RunningServer) -> None:
    client = ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEY}"})
    calls = {
        "pull": lambda: client.pull("llama3"),
        "push": lambda: client.push("me/llama3"),
        "create": lambda: client.create("mine", from_="llama3"),
        "copy": lambda: client.copy("llama3", "mine"),
        "delete": lambda: client.delete("mine"),
    }
    for name, call in calls.items():
        error = ollama_error(call)
        assert error.status_code == 404, name
        assert f"/api/{name}" in error.error
    for method in ("GET", "POST", "DELETE"):
        for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"):
            answer = httpx.request(method, keyed.url + path, json={"model": "x"})
            assert answer.status_code == 404
            body = answer.json()
            assert list(body) == ["error"], (method, path)
            assert isinstance(body["error"], str), (method, path)


def test_ollama_listings_refuse_a_missing_or_wrong_key_in_ollamas_shape(
    keyed: RunningServer,
) -> None:
    for headers in ({}, {"Authorization": "Bearer nxk-wrong"}):
        client = ollama.Client(host=keyed.url, headers=headers)
        for call in (client.list, client.ps, lambda c=client: c.show("fake-model")):
            assert ollama_error(call).status_code == 401
    # A key may not use a model outside its globs: 403 on the doors, 404 on /api/show.
    client = ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEY}"})
    for call in (
        lambda: client.chat(model="fake-model", messages=MESSAGES, stream=False),
        lambda: client.generate(model="fake-model", prompt="Hi", stream=False),
        lambda: client.embed(model="fake-model", input="Hi"),
    ):
        assert ollama_error(call).status_code == 403
    assert "fake-model" in ollama_error(lambda: client.show("fake-model")).error


# -- a request no backend can ever serve: 400, one request per call ------------------------------


def llama_fleet(*fakes: FakeLlamaCpp) -> dict[str, Any]:
    return gateway_config(
        *({"name": f.name, "url": f.url, "type": "llamacpp"} for f in fakes),
        strategy="priority_only",
    )


@pytest.fixture
def small() -> Iterator[tuple[RunningServer, FakeLlamaCpp, FakeLlamaCpp]]:
    """Two llama-servers serving ``tiny`` with 512-token slots, no tools, no vision."""
    one = FakeLlamaCpp("one", models=["tiny"], supports_tools=False)
    two = FakeLlamaCpp("two", models=["tiny"], supports_tools=False)
    with one.running(), two.running(), running_server(llama_fleet(one, two)) as server:
        yield server, one, two


def test_a_prompt_over_every_context_is_a_400_the_sdks_do_not_retry(
    small: tuple[RunningServer, FakeLlamaCpp, FakeLlamaCpp],
) -> None:
    server, one, two = small
    before = len(history(server))
    with pytest.raises(openai.BadRequestError) as info:
        gpt(server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": LONG}]
        )
    error = info.value
    assert (error.code, error.type, error.param) == (
        "context_length_exceeded",
        "invalid_request_error",
        "messages",
    )
    # The phrase LiteLLM maps to ContextWindowExceededError (so its context-window fallbacks
    # fire), and Anthropic's "prompt is too long: N tokens > M maximum".
    assert "This model's maximum context length is 512 tokens" in error.message
    assert "prompt is too long: 1000 tokens > 512 maximum" in error.message
    assert "retry-after" not in error.response.headers
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude(server).messages.create(
            model="tiny", max_tokens=16, messages=[{"role": "user", "content": LONG}]
        )
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "prompt is too long" in refused.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(ollama.ResponseError) as ollama_refused:
        llama(server).chat(model="tiny", messages=[{"role": "user", "content": LONG}])
    assert ollama_refused.value.status_code == 400
    assert "maximum context length" in ollama_refused.value.error
    # Three calls with SDKs that retry 5xx twice: three requests reached Nexus, none a backend.
    assert [h["status"] for h in history(server)[: len(history(server)) - before]] == [400] * 3
    assert chats(one, two) == []


@pytest.mark.parametrize(
    ("extra", "code", "param"),
    [
        ({"tools": [TOOL]}, "tools_not_supported", "tools"),
        ({"messages": [{"role": "user", "content": IMAGE}]}, "vision_not_supported", "messages"),
    ],
    ids=["tools", "vision"],
)
def test_tools_or_images_no_backend_takes_are_a_400(
    small: tuple[RunningServer, FakeLlamaCpp, FakeLlamaCpp],
    extra: dict[str, Any],
    code: str,
    param: str,
) -> None:
    server, one, two = small
    before = len(history(server))
    with pytest.raises(openai.BadRequestError) as info:
        gpt(server).chat.completions.create(**{"model": "tiny", "messages": MESSAGES, **extra})
    assert (info.value.code, info.value.param) == (code, param)
    assert len(history(server)) == before + 1
    assert chats(one, two) == []


def test_a_candidate_that_is_loading_keeps_the_retryable_503() -> None:
    small = FakeLlamaCpp("small", models=["tiny"])
    restarting = FakeLlamaCpp("restarting", models=["tiny"], ctx_size=8192, parallel=1)
    with small.running(), restarting.running():
        config = llama_fleet(small, restarting)
        # Retry-After is the next health check: 1 s, so the SDK's retries are quick.
        config["health_check"]["interval_seconds"] = 1
        with running_server(config) as server:
            # The big one restarts: loading, its models still known (it will serve 'tiny').
            restarting.loading = True
            backend = server.gateway.registry.get("restarting")
            assert backend is not None
            server.call(server.gateway.health.check(backend))
            assert backend.status.value == "loading"
            before = len(history(server))
            with pytest.raises(openai.InternalServerError) as info:
                gpt(server, retries=2).chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": LONG}]
                )
            answered = history(server)[: len(history(server)) - before]
    # Waiting can help (the loading one has the context): 503 with Retry-After, which the SDK
    # retries as it should; the same count shows that a 400 is not retried.
    assert info.value.status_code == 503
    assert info.value.code == "no_backend_available"
    assert info.value.response.headers["retry-after"] == "1"
    assert [h["status"] for h in answered] == [503] * 3


# -- embeddings to a llama-server without --embeddings ---------------------------------------------


def test_embeddings_off_is_detected_listed_and_refused_without_retries() -> None:
    box = FakeLlamaCpp("box", models=["tiny"], embeddings=False)
    with box.running(), running_server(llama_fleet(box)) as server:
        entry = gpt(server).models.retrieve("tiny").model_dump()
        assert entry["capabilities"]["embeddings"] is False
        before = len(history(server))
        with pytest.raises(openai.BadRequestError) as info:
            gpt(server).embeddings.create(model="tiny", input="Hello")
        assert (info.value.code, info.value.param) == ("embeddings_not_supported", "model")
        with pytest.raises(ollama.ResponseError) as refused:
            llama(server).embed(model="tiny", input="Hello")
        assert refused.value.status_code == 400
        assert "does not serve embeddings" in refused.value.error
        assert len(history(server)) == before + 2
    # The only embeddings request the server saw is the probe's empty one.
    assert [r.json for r in box.inference_requests if r.path == "/v1/embeddings"] == [{}]


def test_embeddings_go_to_the_server_that_computes_them() -> None:
    chat_only = FakeLlamaCpp("chat-only", models=["tiny"], embeddings=False)
    embedder = FakeLlamaCpp("embedder", models=["tiny"], embeddings=True)
    with (
        chat_only.running(),
        embedder.running(),
        running_server(llama_fleet(chat_only, embedder)) as server,
    ):
        entry = gpt(server).models.retrieve("tiny").model_dump()
        embedded = gpt(server).embeddings.with_raw_response.create(model="tiny", input="Hi")
        chatted = gpt(server).chat.completions.with_raw_response.create(
            model="tiny", messages=MESSAGES, max_tokens=4
        )
    # One backend of the model embeds: the model does (the listing merges its backends).
    assert entry["capabilities"]["embeddings"] is True
    assert embedded.headers["x-nexus-backend"] == "embedder"
    assert chatted.headers["x-nexus-backend"] == "chat-only"  # chat keeps its priority order


NOT_SUPPORTED = llama_error(
    "This server does not support embeddings. Start it with `--embeddings`", "not_supported_error"
)


def test_an_undetected_501_is_a_400_with_the_servers_message_not_a_retried_502(
    fakes: list[FakeBackend],
) -> None:
    a = fakes[0]
    a.behave(Behaviour(status=501, error_body=NOT_SUPPORTED, times=1))
    with running_server(gateway_config(a)) as server:
        before = len(history(server))
        with pytest.raises(openai.BadRequestError) as info:
            gpt(server).embeddings.create(model="fake-model", input="Hello")
        assert info.value.code == "embeddings_not_supported"
        assert "Start it with `--embeddings`" in info.value.message
        assert len(history(server)) == before + 1
        a.behave(Behaviour(status=501, error_body=NOT_SUPPORTED, times=1))
        with pytest.raises(anthropic.BadRequestError) as chat_refused:
            claude(server).messages.create(model="fake-model", max_tokens=8, messages=MESSAGES)
        assert "does not support embeddings" in str(chat_refused.value.body)


def test_a_501_fails_over_without_cooling_the_backend_down(fakes: list[FakeBackend]) -> None:
    a, b, _ = fakes
    config = gateway_config(a, b, strategy="priority_only")
    config["quality"] = {"min_requests": 2, "error_rate_threshold": 0.5}
    a.behave(Behaviour(status=501, error_body=NOT_SUPPORTED, times=4))
    with running_server(config) as server:
        for _ in range(4):
            raw = gpt(server).embeddings.with_raw_response.create(model="fake-model", input="x")
            assert raw.headers["x-nexus-backend"] == "b"
        # Four 501s say nothing about a's health: chat still goes to a first.
        chatted = gpt(server).chat.completions.with_raw_response.create(
            model="fake-model", messages=MESSAGES
        )
        assert chatted.headers["x-nexus-backend"] == "a"
        assert server.gateway.quality.cooling("a", "fake-model") == 0
