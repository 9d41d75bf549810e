"""The adapter contract against the fake llama-cpp-python server, then what is particular to it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from nexus_backend_llamacpppython import LlamaCppPythonAdapter
from nexus_backend_llamacpppython.testing import FakeLlamaCppPython
from nexus_core.adapters import BackendError, BackendStatus, Endpoint, ErrorKind
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.plugins import backend_types
from nexus_core.testing import Behaviour, FakeBackend, closed_port_url
from nexus_core.testing.contract import FAST, AdapterContract

pytestmark = pytest.mark.anyio


class TestContract(AdapterContract):
    adapter_class = LlamaCppPythonAdapter
    fake_class = FakeLlamaCppPython


class TestContractWithApiKey(AdapterContract):
    """A server started with ``--api_key``; the adapter reads the key from ``api_key_env``."""

    adapter_class = LlamaCppPythonAdapter
    fake_class = FakeLlamaCppPython
    api_key = "sk-local"


# -- what is particular to llama-cpp-python ------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeLlamaCppPython]:
    async with FakeLlamaCppPython(n_ctx=64) as fake:
        yield fake


@pytest.fixture
def adapter(server: FakeLlamaCppPython, nexus_http_clients: HttpClients) -> LlamaCppPythonAdapter:
    config = BackendConfig(name="laptop", url=server.url, type="llamacpppython")
    return LlamaCppPythonAdapter(config, nexus_http_clients)


def chat(content: str = "Hello", **extra: object) -> bytes:
    return json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


async def test_probe_reads_the_model_list_and_invents_nothing(
    adapter: LlamaCppPythonAdapter, server: FakeLlamaCppPython, nexus_http_clients: HttpClients
) -> None:
    result = await adapter.probe()
    assert result.status is BackendStatus.HEALTHY
    [model] = result.models
    assert model.id == "tiny"
    # The card says nothing of context or capabilities: unknown, never a made-up default.
    assert {model.context_length, model.vision, model.tools, model.json_mode} == {None}
    assert [request.path for request in server.requests] == ["/v1/models"]
    health = await nexus_http_clients.probe.get(server.url + "/health")
    assert (health.status_code, health.json()) == (404, {"detail": "Not Found"})

    server.behave(Behaviour(status=503, probes=True))  # from a proxy: this server never loads
    result = await adapter.probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail is not None
    assert "503" in result.detail


async def test_streams_have_no_usage_even_when_asked(adapter: LlamaCppPythonAdapter) -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    response = await adapter.send(Endpoint.CHAT, body, stream=True, timeouts=FAST)
    assert response.events is not None
    events = [event async for event in response.events]
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # Passed through as the server sent it: no usage chunk, and none invented.
    assert all(chunk["choices"] and "usage" not in chunk for chunk in chunks)


@pytest.mark.parametrize(
    ("request_body", "server_key", "status", "kind", "error"),
    [
        (b"{not json", None, 500, ErrorKind.SERVER_ERROR, ("Internal Server Error", None)),
        (chat(), "sk-other", 401, ErrorKind.CLIENT_ERROR, ("Invalid API key", "invalid_api_key")),
        (chat("word " * 80), None, 400, ErrorKind.CLIENT_ERROR, (None, "context_length_exceeded")),
    ],
)
async def test_errors_reach_failover_classified_and_in_openai_shape(
    adapter: LlamaCppPythonAdapter,
    server: FakeLlamaCppPython,
    request_body: bytes,
    server_key: str | None,
    status: int,
    kind: ErrorKind,
    error: tuple[str | None, str | None],
) -> None:
    server.server_api_key = server_key
    with pytest.raises(BackendError) as info:
        await adapter.send(Endpoint.CHAT, request_body, stream=False, timeouts=FAST)
    assert (info.value.status, info.value.kind) == (status, kind)
    assert info.value.headers["content-type"].startswith("application/json")
    envelope = json.loads(info.value.body)["error"]
    message, code = error
    assert envelope["code"] == code
    assert message is None or envelope["message"] == message


async def test_a_prompt_too_long_streamed_is_an_error_not_an_empty_answer(
    adapter: LlamaCppPythonAdapter,
) -> None:
    # The server answers 200 with an empty body; the transport calls that malformed.
    response = await adapter.send(
        Endpoint.CHAT, chat("word " * 80, stream=True), stream=True, timeouts=FAST
    )
    assert response.events is not None
    with pytest.raises(BackendError) as info:
        await anext(response.events)
    assert info.value.kind is ErrorKind.MALFORMED
    assert not info.value.retryable


async def test_detect_claims_no_other_server(
    nexus_fake_backend: FakeBackend, nexus_http_clients: HttpClients
) -> None:
    assert not await LlamaCppPythonAdapter.detect(nexus_fake_backend.url, nexus_http_clients)
    assert not await LlamaCppPythonAdapter.detect(closed_port_url(), nexus_http_clients)


def test_installed_entry_point_registers_the_type() -> None:
    assert backend_types()["llamacpppython"] is LlamaCppPythonAdapter
