"""Nexus backend type ``anthropic``: Anthropic's Messages API behind the OpenAI front door.

``url`` is the API's base, ``https://api.anthropic.com`` (a trailing ``/v1`` is accepted). The key
comes from the environment variable named by ``api_key_env`` and goes out as ``x-api-key`` with
``anthropic-version: 2023-06-01``; a client's ``Authorization`` is never forwarded, because the
adapter sends its own headers only.

Requests arrive in OpenAI's chat format and are translated by ``nexus_core.anthropic_wire``:
``chat_to_messages`` on the way out, ``message_to_chat`` for an answer and
``MessagesStreamToChat`` for a stream, which leaves here as OpenAI SSE chunks and ``[DONE]``.
Anthropic serves chat only: completions and embeddings are a client error (404).

A probe pages through ``GET /v1/models``; context window and capabilities come from the list
where it states them, else from ``models_table``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

import httpx

from nexus_backend_anthropic import models_table
from nexus_core import hookimpl
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
from nexus_core.anthropic_wire import (
    AnthropicStreamError,
    MessagesStreamToChat,
    TranslationError,
    chat_to_messages,
    message_to_chat,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import dumps
from nexus_core.sse import DONE, event_data

__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicAdapter",
    "api_root",
    "openai_error_body",
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
        self._probe_headers = {"anthropic-version": ANTHROPIC_VERSION}
        key = config.api_key()
        if key:
            self._probe_headers["x-api-key"] = key
        self._headers = {**self._probe_headers, "content-type": "application/json"}

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Translate the chat request, POST it to ``/v1/messages``, translate the answer back."""
        if endpoint is not Endpoint.CHAT:
            raise _client_error(404, _CHAT_ONLY, "not_found_error")
        try:
            request = json.loads(body)
            translated = chat_to_messages(request, default_max_tokens=DEFAULT_MAX_TOKENS)
        except TranslationError as exc:
            raise _client_error(400, str(exc), "invalid_request_error", exc.param) from None
        except ValueError:
            raise _client_error(400, "the body is not JSON", "invalid_request_error") from None
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
            raise anthropic_error(exc) from None
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
        translator = MessagesStreamToChat(translated["model"], include_usage=include_usage)
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
            try:
                response = await self.clients.probe.get(
                    self.api_base + "/models", headers=self._probe_headers, params=params
                )
            except httpx.TimeoutException:
                return ProbeResult(BackendStatus.UNHEALTHY, detail="probe timed out")
            except httpx.HTTPError as exc:
                return ProbeResult(BackendStatus.UNHEALTHY, detail=f"cannot connect: {exc}")
            if response.status_code != 200:
                return ProbeResult(BackendStatus.UNHEALTHY, detail=self._refusal(response))
            version = response.headers.get("anthropic-version") or version
            try:
                payload = response.json()
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

    def _refusal(self, response: httpx.Response) -> str:
        status = response.status_code
        message = _error_fields(response.content)[1]
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
            if not api_key:
                return False
            response = await clients.probe.get(
                api_root(url) + "/v1/models",
                headers={"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION},
            )
            payload = response.json()
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, TypeError):
            return False
        return response.status_code == 200 and is_model_list(payload)


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


def openai_error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> bytes:
    """An OpenAI error envelope for an Anthropic error ``type`` and message."""
    openai_type = _OPENAI_ERROR_TYPES.get(error_type, "invalid_request_error")
    return dumps({"error": {"message": message, "type": openai_type, "param": param, "code": code}})


def anthropic_error(exc: BackendError) -> BackendError:
    """An upstream error with an OpenAI body; 529 ``overloaded_error`` is ``overloaded``."""
    if exc.status is None:
        return exc
    error_type, message = _error_fields(exc.body)
    kind = ErrorKind.OVERLOADED if exc.status == 529 else exc.kind
    return BackendError(
        kind,
        f"Anthropic answered HTTP {exc.status} ({error_type}): {message}",
        status=exc.status,
        body=openai_error_body(message, error_type, code=error_type),
        headers={**exc.headers, "content-type": "application/json"},
        retry_after=exc.retry_after,
    )


def _error_fields(body: bytes) -> tuple[str, str]:
    """Anthropic's error ``type`` and message from an error body (any body, in fact)."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("type") or "api_error"), str(error.get("message") or "")
    text = " ".join(body.decode("utf-8", "replace").split())[:200]
    return "api_error", text or "no error message"


def _client_error(
    status: int, message: str, error_type: str, param: str | None = None
) -> BackendError:
    return BackendError(
        ErrorKind.CLIENT_ERROR,
        message,
        status=status,
        body=openai_error_body(message, error_type, param),
        headers={"content-type": "application/json"},
    )


def _translate_message(body: bytes | None) -> bytes:
    try:
        message = json.loads(body or b"")
        if not isinstance(message, dict) or message.get("type") != "message":
            raise ValueError("not a message")
        return dumps(message_to_chat(message))
    except (ValueError, TypeError, AttributeError):
        raise BackendError(ErrorKind.MALFORMED, "the answer is not an Anthropic message") from None


async def _translate_stream(
    events: AsyncIterator[bytes], translator: MessagesStreamToChat
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
