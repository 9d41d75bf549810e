"""Nexus backend type ``anthropic``: Anthropic's Messages API behind the OpenAI front door.

``url`` is the API's base, ``https://api.anthropic.com`` (a trailing ``/v1`` is accepted). The key
comes from the environment variable named by ``api_key_env`` and goes out as ``x-api-key`` with
``anthropic-version: 2023-06-01``; a client's ``Authorization`` is never forwarded, because the
adapter sends its own headers only.

Requests arrive in OpenAI's chat format and are translated by ``nexus_backend_anthropic.wire``:
``chat_request_to_anthropic`` on the way out, ``anthropic_answer_to_chat`` for an answer and
``AnthropicStreamToChat`` for a stream, which leaves here as OpenAI SSE chunks and ``[DONE]``.
Anthropic serves chat only: completions and embeddings are a client error (404).

A probe pages through ``GET /v1/models``; context window and capabilities come from the list
where it states them, else from ``models_table``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

import httpx

from nexus_backend_anthropic import models_table
from nexus_backend_anthropic.wire import (
    AnthropicStreamError,
    AnthropicStreamToChat,
    anthropic_answer_to_chat,
    chat_request_to_anthropic,
)
from nexus_core import hookimpl
from nexus_core.adapter_kit import (
    ErrorBody,
    ErrorFields,
    ErrorQuirk,
    ProbeAnswer,
    UpstreamErrors,
    dumps,
    probe_get,
    read_error,
    refused,
)
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LoadSignal,
    ModelInfo,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.anthropic_format import TranslationError
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.sse import DONE, event_data

__all__ = [
    "ANTHROPIC_VERSION",
    "ERRORS",
    "AnthropicAdapter",
    "api_root",
    "register_backends",
]

ANTHROPIC_HOST = "api.anthropic.com"
#: The API version every request names (the only stable one of the Messages API).
ANTHROPIC_VERSION = "2023-06-01"
#: ``max_tokens`` when the OpenAI request sets none (Anthropic requires one).
DEFAULT_MAX_TOKENS = 4096
#: Model-list pages read per probe at most (1000 models a page).
MAX_MODEL_PAGES = 10
_CHAT_ONLY = "Anthropic serves chat only: use /v1/chat/completions"

# Anthropic error type -> OpenAI error type, for the envelope a client receives.
_OPENAI_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "not_found_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "billing_error": "insufficient_quota",
    "rate_limit_error": "rate_limit_exceeded",
    "overloaded_error": "server_error",
    "api_error": "server_error",
    "timeout_error": "server_error",
}
# Anthropic error types of a stream's ``error`` event that say "busy, try elsewhere".
_BUSY_ERRORS = frozenset({"overloaded_error", "rate_limit_error"})


def _openai_fields(fields: ErrorFields) -> ErrorFields:
    """Anthropic's error ``type`` becomes the envelope's ``code``, and OpenAI's type for it the
    ``type``."""
    anthropic_type = fields.type or "api_error"
    openai_type = _OPENAI_ERROR_TYPES.get(anthropic_type, "invalid_request_error")
    return dataclasses.replace(fields, type=openai_type, code=anthropic_type, param=None)


#: Anthropic's errors in OpenAI's envelope; 529 ``overloaded_error`` is ``overloaded``.
ERRORS = UpstreamErrors(
    "Anthropic",
    body=ErrorBody.OPENAI,
    quirks=(ErrorQuirk(status=529, kind=ErrorKind.OVERLOADED),),
    message="Anthropic answered HTTP {status} ({code}): {message}",
    adjust=_openai_fields,
)


class AnthropicAdapter:
    """Anthropic's Messages API, spoken to in OpenAI's chat format."""

    type_name: ClassVar[str] = "anthropic"
    is_cloud: ClassVar[bool] = True
    #: Anthropic's model list has a shape of its own: more specific than OpenAI-wire types.
    detect_rank: ClassVar[int] = 20

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.clients = clients
        self.api_base = api_root(config.url) + "/v1"
        self._messages_url = self.api_base + "/messages"
        #: What every probe request sends: the API version and the key from ``api_key_env``.
        self.probe_headers = {"anthropic-version": ANTHROPIC_VERSION}
        key = config.api_key()
        if key:
            self.probe_headers["x-api-key"] = key
        self._headers = {**self.probe_headers, "content-type": "application/json"}

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Translate the chat request, POST it to ``/v1/messages``, translate the answer back."""
        if endpoint is not Endpoint.CHAT:
            raise refused(404, _CHAT_ONLY)
        try:
            request = json.loads(body)
            translated = chat_request_to_anthropic(request, default_max_tokens=DEFAULT_MAX_TOKENS)
        except TranslationError as exc:
            raise refused(400, str(exc), param=exc.param) from None
        except ValueError:
            raise refused(400, "the body is not JSON") from None
        if stream:
            translated["stream"] = True
        else:
            translated.pop("stream", None)
        try:
            response = await self.clients.transport.post(
                self._messages_url,
                dumps(translated),
                self._headers,
                stream=stream,
                timeouts=timeouts,
            )
        except BackendError as exc:
            raise ERRORS.normalise(exc) from None
        if response.events is None:
            if stream:
                await response.aclose()
                raise BackendError(ErrorKind.MALFORMED, "a stream was asked for, a body came")
            return UpstreamResponse(
                status=response.status,
                content_type="application/json",
                body=_translate_message(response.body),
                headers=response.headers,
            )
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        translator = AnthropicStreamToChat(translated["model"], include_usage=include_usage)
        return UpstreamResponse(
            status=response.status,
            content_type="text/event-stream",
            events=_translate_stream(response.events, translator),
            release=response.release,
            headers=response.headers,
        )

    async def load(self) -> LoadSignal | None:
        """A cloud API: no load to report."""
        return None

    async def probe(self) -> ProbeResult:
        """Page through ``/v1/models``; a refused key says which variable should hold it."""
        models: list[ModelInfo] = []
        after: str | None = None
        version: str | None = None
        for _ in range(MAX_MODEL_PAGES):
            params = {"limit": "1000"}
            if after is not None:
                params["after_id"] = after
            answer = await probe_get(
                self.clients, self.api_base + "/models", self.probe_headers, params=params
            )
            if answer.failure is not None:
                return answer.unreachable()
            if answer.status != 200:
                return ProbeResult(BackendStatus.UNHEALTHY, detail=self._refusal(answer))
            version = answer.headers.get("anthropic-version") or version
            try:
                payload = answer.payload
                entries = payload["data"]
                if not isinstance(entries, list):
                    raise TypeError("'data' is not a list")
                models.extend(model_info(entry) for entry in entries if isinstance(entry, dict))
            except (ValueError, TypeError, KeyError) as exc:
                return ProbeResult(BackendStatus.UNHEALTHY, detail=f"unreadable model list: {exc}")
            last_id = payload.get("last_id")
            if payload.get("has_more") is not True or not isinstance(last_id, str):
                break
            after = last_id
        return ProbeResult(BackendStatus.HEALTHY, models=tuple(models), version=version)

    def _refusal(self, answer: ProbeAnswer) -> str:
        status = answer.status
        message = read_error(answer.content).message or "no error message"
        if status in (401, 403):
            if not self.config.api_key():
                return (
                    f"HTTP {status}: no API key (the environment variable "
                    f"{self.config.api_key_env} is not set)"
                )
            return f"HTTP {status}: the API key was refused: {message}"
        return f"HTTP {status}: {message}"

    async def close(self) -> None:
        """Nothing of its own to release: the HTTP clients are shared."""

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """``api.anthropic.com`` by name; elsewhere, with a key, Anthropic's model-list shape.

        Without a key this claims nothing but Anthropic's host, and an OpenAI-wire server (whose
        list has ``object: list`` and no ``has_more``/``first_id``) is never claimed.
        """
        try:
            if httpx.URL(url).host == ANTHROPIC_HOST:
                return True
        except httpx.InvalidURL:
            return False
        if not api_key:
            return False
        headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
        answer = await probe_get(clients, api_root(url) + "/v1/models", headers)
        return answer.ok and is_model_list(answer.payload)


def api_root(url: str) -> str:
    """The API's root for a configured URL, with or without a trailing ``/v1``."""
    return url.rstrip("/").removesuffix("/v1")


def is_model_list(payload: Any) -> bool:
    """True for Anthropic's model list: ``data`` of ``type: model`` entries and its cursors."""
    if not isinstance(payload, dict) or "object" in payload:
        return False
    entries = payload.get("data")
    return (
        isinstance(entries, list)
        and isinstance(payload.get("has_more"), bool)
        and "first_id" in payload
        and "last_id" in payload
        and all(
            isinstance(entry, dict)
            and entry.get("type") == "model"
            and isinstance(entry.get("display_name"), str)
            for entry in entries
        )
    )


def model_info(entry: Mapping[str, Any]) -> ModelInfo:
    """One model: what the list states, completed from ``models_table``."""
    model_id = str(entry["id"])
    spec = models_table.lookup(model_id)
    context = entry.get("max_input_tokens")
    if not isinstance(context, int) or isinstance(context, bool):
        context = spec.context_length if spec is not None else None
    vision: bool | None = spec.vision if spec is not None else None
    capabilities = entry.get("capabilities")
    if isinstance(capabilities, Mapping):
        image_input = capabilities.get("image_input")
        if isinstance(image_input, Mapping) and isinstance(image_input.get("supported"), bool):
            vision = image_input["supported"]
    return ModelInfo(
        id=model_id,
        context_length=context,
        vision=vision,
        tools=spec.tools if spec is not None else None,
        json_mode=None,
        embeddings=False,
        owned_by="anthropic",
    )


def _translate_message(body: bytes | None) -> bytes:
    try:
        message = json.loads(body or b"")
        if not isinstance(message, dict) or message.get("type") != "message":
            raise ValueError("not a message")
        return dumps(anthropic_answer_to_chat(message))
    except (ValueError, TypeError, AttributeError):
        raise BackendError(ErrorKind.MALFORMED, "the answer is not an Anthropic message") from None


async def _translate_stream(
    events: AsyncIterator[bytes], translator: AnthropicStreamToChat
) -> AsyncIterator[bytes]:
    """OpenAI chunk events from Anthropic's, ``[DONE]`` after ``message_stop``.

    The upstream is not read past ``message_stop``: the transport counts a stream as complete
    by OpenAI's markers, which Anthropic's never has.
    """
    try:
        async for event in events:
            data = event_data(event)
            if not data:
                continue
            try:
                parsed = json.loads(data)
                chunks = translator.feed(parsed)
            except AnthropicStreamError as exc:
                kind = (
                    ErrorKind.OVERLOADED
                    if exc.error_type in _BUSY_ERRORS
                    else ErrorKind.SERVER_ERROR
                )
                raise BackendError(
                    kind, f"Anthropic stream error ({exc.error_type}): {exc}"
                ) from None
            except (ValueError, TypeError, AttributeError):
                raise BackendError(ErrorKind.MALFORMED, "unreadable stream event") from None
            for chunk in chunks:
                yield b"data: " + dumps(chunk) + b"\n\n"
            if parsed.get("type") == "message_stop":
                yield DONE
                return
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()
    raise BackendError(ErrorKind.MALFORMED, "stream ended before message_stop")


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``anthropic`` backend type."""
    register("anthropic", AnthropicAdapter)
