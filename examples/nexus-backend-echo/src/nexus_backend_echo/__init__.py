"""Nexus backend type ``echo``: answers chat completions locally by echoing the last user message.

A complete third-party adapter in one module. It implements the ``BackendAdapter`` protocol of
``nexus_core.adapters`` without subclassing anything, and registers itself through the
``register_backends`` hook; the entry point in ``pyproject.toml`` is how Nexus finds it.
Answers are OpenAI chat-completion JSON, or an OpenAI SSE stream when the request says
``"stream": true``. Token counts are whitespace-separated words: an example, not a tokenizer.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from nexus_core import hookimpl
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ModelInfo,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients

if TYPE_CHECKING:
    from nexus_core.adapters import BackendAdapter

__all__ = ["EchoAdapter", "register_backends"]

DEFAULT_MODEL = "echo"


class EchoAdapter:
    """A backend that needs no server: it repeats what the user said."""

    type_name: ClassVar[str] = "echo"
    is_cloud: ClassVar[bool] = False

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        self.name = config.name
        self.url = config.url
        # `models = [...]` in the backend's config names the models it answers for.
        self.models = tuple(config.models) or (DEFAULT_MODEL,)

    async def probe(self) -> ProbeResult:
        """Always healthy; the models are the configured ones (default ``echo``)."""
        return ProbeResult(
            BackendStatus.HEALTHY,
            models=tuple(
                ModelInfo(id=model, vision=False, tools=False, json_mode=False, embeddings=False)
                for model in self.models
            ),
            version="echo",
        )

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Answer a chat completion; anything else is a 404 in the OpenAI error shape."""
        if endpoint is not Endpoint.CHAT:
            raise BackendError.from_status(404, error_body(f"echo does not serve {endpoint}"))
        try:
            request = json.loads(body)
            messages = request["messages"]
            if not isinstance(messages, list):
                raise TypeError("'messages' must be an array")
        except (ValueError, TypeError, KeyError) as exc:
            raise BackendError.from_status(400, error_body(f"invalid request: {exc}")) from None
        model = str(request.get("model") or self.models[0])
        answer = last_user_text(messages)
        usage = {
            "prompt_tokens": sum(len(message_text(m).split()) for m in messages),
            "completion_tokens": len(answer.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if stream:
            options = request.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return UpstreamResponse(
                status=200,
                content_type="text/event-stream",
                events=stream_events(model, answer, usage if include_usage else None),
            )
        completion = {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return UpstreamResponse(status=200, content_type="application/json", body=dumps(completion))

    async def close(self) -> None:
        """Nothing to release."""

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """Never: there is no echo server on the network to recognise."""
        return False


async def stream_events(
    model: str, answer: str, usage: dict[str, int] | None
) -> AsyncIterator[bytes]:
    """The answer as OpenAI ``chat.completion.chunk`` SSE events, one word per event."""
    base = {
        "id": completion_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    # With include_usage, OpenAI puts `"usage": null` on every chunk but the last.
    extra: dict[str, Any] = {"usage": None} if usage is not None else {}

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return sse({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    for word in re.findall(r"\s*\S+", answer):
        yield chunk({"content": word})
    yield chunk({}, "stop")
    if usage is not None:
        yield sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def last_user_text(messages: list[Any]) -> str:
    """The text of the last ``user`` message, or an empty string."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def message_text(message: Any) -> str:
    """A message's text: a string ``content`` or the ``text`` parts of a content array."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def error_body(message: str) -> bytes:
    """An OpenAI error envelope."""
    return dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    )


def completion_id() -> str:
    return f"chatcmpl-echo-{uuid.uuid4().hex[:12]}"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``echo`` backend type."""
    register("echo", EchoAdapter)


if TYPE_CHECKING:
    # A type checker verifies here that instances match the adapter protocol.
    def _adapter(config: BackendConfig, clients: HttpClients) -> BackendAdapter:
        return EchoAdapter(config, clients)
