"""The Ollama front door: ``/api/chat``, ``/api/generate``, ``/api/embed`` and the listings.

Ollama clients (Open WebUI, the ``ollama`` Python client, scripts) see Nexus as one big Ollama.
Every request is translated to OpenAI chat, completions or embeddings (``nexus_server.ollama_wire``)
and routed like any other, to any backend type (Ollama ones included, through their OpenAI
endpoints); answers come back in Ollama's shapes, streamed as NDJSON by default. Errors are
Ollama's ``{"error": "..."}`` with the same status codes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nexus_core.adapters import Endpoint
from nexus_core.auth import ApiKey
from nexus_core.errors import GatewayError
from nexus_core.failover import ProxyResult
from nexus_core.gateway import Gateway
from nexus_core.observability import RequestRecord
from nexus_server.ollama_wire.listings import ps_entry, show_response, tags_entry
from nexus_server.ollama_wire.to_ollama import (
    ChatStreamToOllama,
    GenerateStreamToOllama,
    error_line,
    load_response,
    ollama_error,
    openai_chat_to_ollama,
    openai_chat_to_ollama_generate,
    openai_completion_to_ollama_generate,
    openai_embeddings_to_ollama,
    openai_embeddings_to_ollama_legacy,
)
from nexus_server.ollama_wire.to_openai import (
    TranslationError,
    chat_is_load,
    chat_to_openai,
    embed_to_openai,
    generate_to_openai,
    legacy_embeddings_to_openai,
)
from nexus_server.proxy import (
    JSON,
    ProxyEndpoint,
    Send,
    StreamBroke,
    answer_data,
    end_cut_stream,
    header_list,
    openai_chunks,
    route_headers,
    send_chunk,
    send_whole,
    start_response,
)

NDJSON = b"application/x-ndjson"
#: The Ollama API version Nexus's front door follows (what ``GET /api/version`` answers).
OLLAMA_API_VERSION = "0.12.6"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class _OllamaEndpoint(ProxyEndpoint):
    """Shared by the Ollama endpoints: errors in Ollama's shape, and the proxy call."""

    front_door = "ollama"
    #: Ollama accepts ``curl -d`` bodies (form-encoded by curl), and so does this door, from
    #: clients that are not browsers.
    lenient_body_type = True

    async def send_error(self, send: Send, error: GatewayError) -> None:
        """``{"error": "..."}`` with the same status (the ``ollama`` client raises it)."""
        await send_whole(
            send, error.status, JSON, ollama_error(error.message), header_list(error.headers)
        )

    async def relay(
        self,
        send: Send,
        result: ProxyResult,
        converter: ChatStreamToOllama | GenerateStreamToOllama,
    ) -> None:
        """Stream the answer as NDJSON lines; a broken upstream ends with an error line."""
        stream = result.stream
        assert stream is not None
        try:
            await start_response(send, 200, NDJSON, route_headers(result))
            try:
                async for chunk in openai_chunks(stream):
                    lines = converter.feed(chunk)
                    if lines:
                        await send_chunk(send, lines)
            except asyncio.CancelledError:
                await end_cut_stream(send, error_line("Nexus is shutting down"))
                raise
            except StreamBroke as broke:
                await send_chunk(send, error_line(broke.message))
            else:
                if converter.finish_reason is None:
                    await send_chunk(
                        send, error_line("the upstream stream ended before the answer did")
                    )
                else:
                    await send_chunk(send, converter.finish())
            await send({"type": "http.response.body", "body": b""})
        finally:
            await stream.aclose()

    async def bad_request(self, send: Send, record: RequestRecord, exc: TranslationError) -> None:
        """A request Ollama would refuse: 400 with the reason."""
        await self.reject(send, record, GatewayError(400, str(exc), param=exc.param))


class ChatEndpoint(_OllamaEndpoint):
    """``POST /api/chat``."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway, Endpoint.CHAT)

    async def serve(
        self,
        send: Send,
        body: bytes,
        data: Any,
        flexible: bool,
        high: bool,
        record: RequestRecord,
    ) -> None:
        """Chat, streamed as NDJSON unless ``"stream": false``."""
        started = time.monotonic_ns()
        try:
            if not isinstance(data, dict):
                raise TranslationError("the request body must be a JSON object")
            chat = chat_to_openai(data)
        except TranslationError as exc:
            await self.bad_request(send, record, exc)
            return
        model = chat["model"]
        if chat_is_load(data):
            await send_whole(send, 200, JSON, _dumps(load_response(model, kind="chat")), [])
            return
        result = await self.route(send, Endpoint.CHAT, chat, flexible, high, record)
        if result is None:
            return
        if result.stream is None:
            answer = openai_chat_to_ollama(answer_data(result), model=model, started_ns=started)
            await send_whole(send, 200, JSON, _dumps(answer), route_headers(result))
            return
        await self.relay(send, result, ChatStreamToOllama(model, started_ns=started))


class GenerateEndpoint(_OllamaEndpoint):
    """``POST /api/generate``: chat for a prompt (and system), completions for raw or suffix."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway, Endpoint.COMPLETIONS)

    async def serve(
        self,
        send: Send,
        body: bytes,
        data: Any,
        flexible: bool,
        high: bool,
        record: RequestRecord,
    ) -> None:
        """Generate, streamed as NDJSON unless ``"stream": false``."""
        started = time.monotonic_ns()
        try:
            if not isinstance(data, dict):
                raise TranslationError("the request body must be a JSON object")
            kind, translated = generate_to_openai(data)
        except TranslationError as exc:
            await self.bad_request(send, record, exc)
            return
        model = str(data["model"])
        if kind == "load":
            answer = load_response(model, kind="generate")
            await send_whole(send, 200, JSON, _dumps(answer), [])
            return
        endpoint = Endpoint.CHAT if kind == "chat" else Endpoint.COMPLETIONS
        result = await self.route(send, endpoint, translated, flexible, high, record)
        if result is None:
            return
        if result.stream is None:
            convert = (
                openai_chat_to_ollama_generate
                if kind == "chat"
                else openai_completion_to_ollama_generate
            )
            answer = convert(answer_data(result), model=model, started_ns=started)
            await send_whole(send, 200, JSON, _dumps(answer), route_headers(result))
            return
        await self.relay(send, result, GenerateStreamToOllama(model, started_ns=started))


class EmbedEndpoint(_OllamaEndpoint):
    """``POST /api/embed`` (``legacy``: the older ``/api/embeddings`` with one ``prompt``)."""

    def __init__(self, gateway: Gateway, *, legacy: bool = False) -> None:
        super().__init__(gateway, Endpoint.EMBEDDINGS)
        self.legacy = legacy

    async def serve(
        self,
        send: Send,
        body: bytes,
        data: Any,
        flexible: bool,
        high: bool,
        record: RequestRecord,
    ) -> None:
        """Embeddings in Ollama's shape; an empty input needs no backend, as in Ollama."""
        try:
            if not isinstance(data, dict):
                raise TranslationError("the request body must be a JSON object")
            translated = (legacy_embeddings_to_openai if self.legacy else embed_to_openai)(data)
        except TranslationError as exc:
            await self.bad_request(send, record, exc)
            return
        model = translated["model"]
        if not translated["input"]:
            response: dict[str, Any] = {"data": []}
            headers: list[tuple[bytes, bytes]] = []
        else:
            result = await self.route(send, Endpoint.EMBEDDINGS, translated, flexible, high, record)
            if result is None:
                return
            response = answer_data(result)
            headers = route_headers(result)
        answer = (
            openai_embeddings_to_ollama_legacy(response)
            if self.legacy
            else openai_embeddings_to_ollama(response, model=model)
        )
        await send_whole(send, 200, JSON, _dumps(answer), headers)


def ollama_capabilities(capabilities: dict[str, bool | None]) -> dict[str, bool | None]:
    """What the Ollama door lists for a model: ``tools`` also when unknown.

    Ollama clients read a missing ``tools`` as "cannot call tools" (llm-ollama then refuses
    them), while routing sends tool calls to a model whose support is unknown; so unknown is
    listed, except for an embedding model. ``embeddings: true`` is listed as ``embedding``.
    """
    if capabilities.get("tools") is None and not capabilities.get("embeddings"):
        return {**capabilities, "tools": True}
    return capabilities


def tags(gateway: Gateway, key: ApiKey | None = None) -> dict[str, Any]:
    """``GET /api/tags``: every model Nexus can route (that ``key`` may use), Ollama's shape."""
    return {
        "models": [
            tags_entry(
                entry["id"],
                context_length=entry["context_length"],
                capabilities=ollama_capabilities(entry["capabilities"]),
            )
            for entry in gateway.list_models()
            if key is None or key.allows(str(entry["id"]))
        ]
    }


def show(gateway: Gateway, name: str | None, key: ApiKey | None = None) -> dict[str, Any]:
    """``POST /api/show`` of the model ``name``: Ollama's 404 for a model nobody serves, or
    that ``key`` may not use (raised as ``GatewayError``, answered in Ollama's shape)."""
    if not name:
        raise GatewayError(400, "model is required", param="model")
    entry = gateway.get_model(name) or gateway.get_model(gateway.router.resolve(name))
    if entry is None or (key is not None and not key.allows(name)):
        raise GatewayError(404, f"model '{name}' not found", param="model")
    return show_response(
        name,
        context_length=entry["context_length"],
        capabilities=ollama_capabilities(entry["capabilities"]),
    )


def ps(gateway: Gateway, key: ApiKey | None = None) -> dict[str, Any]:
    """``GET /api/ps``: models loaded on a healthy backend (that ``key`` may use).

    Loaded: its last probe said so, or a request through Nexus was answered with it since (the
    gateway marks it then: a server loads a model to answer), so a model loaded through Nexus
    shows at once; one the server unloads on its own goes at the next probe.
    """
    loaded: dict[str, int | None] = {}
    for backend in gateway.registry:
        if backend.status.value != "healthy":
            continue
        for model in backend.models.values():
            if model.loaded is True and (key is None or key.allows(model.id)):
                loaded.setdefault(model.id, model.context_length)
    return {
        "models": [
            ps_entry(model_id, context_length=context)
            for model_id, context in sorted(loaded.items())
        ]
    }
