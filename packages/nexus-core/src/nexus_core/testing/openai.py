"""A fake OpenAI API: the reference wire format, an API key, and rate-limit headers.

Shapes follow the OpenAI API reference and openai-python (``/work/shared/reference/
backend-apis.md`` §2.6):

- Every request needs ``Authorization: Bearer <key>`` (the given ``api_key``, or any key when
  None): 401 ``invalid_api_key`` for a wrong one, 401 "You didn't provide an API key" without.
- ``GET /v1/models``: ``{"id", "object": "model", "created", "owned_by"}`` (``owned_by``
  ``system`` unless a model mapping says otherwise); nothing about context or capabilities.
- Every response carries ``openai-organization``, ``openai-project``, ``openai-version``,
  ``openai-processing-ms`` and ``x-request-id``; inference responses also carry
  ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
  ``x-ratelimit-reset-requests`` and the same three for tokens. Each request uses one request
  and its prompt plus ``max_tokens`` (default 16) tokens; when none is left the answer is 429
  ``rate_limit_exceeded`` (type ``requests`` or ``tokens``). ``refill()`` starts a new window.
- Streams honour ``stream_options.include_usage`` exactly as OpenAI documents it.
- ``POST /v1/responses`` (the Responses API): a ``response`` object, or with ``stream: true`` its
  typed events (``event:``/``data:``, ``sequence_number`` from 0, ``response.completed`` last
  with the usage; no ``[DONE]``), shapes from ``nexus_core.testing.responses_shapes``. The
  ``Behaviour`` applies as to chat: ``content``, ``tool_calls`` (``function_call`` items),
  ``finish_reason="length"`` (``incomplete``), ``status`` (an error envelope),
  ``cut_after_events`` and ``delay_between_events``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from nexus_core.testing import openai_shapes as shapes
from nexus_core.testing import responses_shapes
from nexus_core.testing.fake_backend import (
    _INFERENCE_PATHS,
    _SSE_HEADERS,
    Behaviour,
    FakeBackend,
    _drop,
    _Exchange,
    _json,
)

__all__ = ["FakeOpenAI"]

OPENAI_VERSION = "2020-10-01"
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header"
    " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from"
    " https://platform.openai.com/account/api-keys."
)


class FakeOpenAI(FakeBackend):
    """A fake OpenAI API on ``127.0.0.1`` (point ``base_url`` at ``url + "/v1"``)."""

    reports_cached_tokens = True
    #: OpenAI's prompt caching starts at 1,024 tokens.
    cache_min_prompt_tokens = 1024

    inference_paths = {**_INFERENCE_PATHS, "/v1/responses": "responses"}

    def __init__(
        self,
        name: str = "openai",
        models: Sequence[str | Mapping[str, Any]] = (
            "gpt-4o-mini",
            "gpt-4o",
            "text-embedding-3-small",
        ),
        *,
        organization: str = "org-nexusfake",
        limit_requests: int = 10_000,
        limit_tokens: int = 30_000_000,
        reset_requests: str = "6ms",
        reset_tokens: str = "0s",
        behaviour: Behaviour | None = None,
        embeddings_dim: int = 8,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(
            name,
            models,
            behaviour=behaviour,
            embeddings_dim=embeddings_dim,
            api_key=api_key,
            port=port,
        )
        #: ``openai-organization``.
        self.organization = organization
        #: Requests and tokens per window, what is left of them, and the reset durations sent.
        self.limit_requests = limit_requests
        self.limit_tokens = limit_tokens
        self.remaining_requests = limit_requests
        self.remaining_tokens = limit_tokens
        self.reset_requests = reset_requests
        self.reset_tokens = reset_tokens
        self._limits_lock = threading.Lock()
        # The rate-limit headers of the requests being answered, by id(request).
        self._limit_headers: dict[int, dict[str, str]] = {}

    def refill(self) -> None:
        """A new rate-limit window: every request and token is available again."""
        with self._limits_lock:
            self.remaining_requests = self.limit_requests
            self.remaining_tokens = self.limit_tokens

    def error_body(self, status: int) -> dict[str, Any]:
        """OpenAI's envelope (with its 401 wording for a wrong key)."""
        if status == 401:
            return shapes.error_body(
                "Incorrect API key provided. You can find your API key at"
                " https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        return shapes.default_error(status)

    def response_headers(self, request: web.Request) -> Mapping[str, str]:
        """OpenAI's headers on every answer, plus the rate limits on inference answers."""
        headers = {
            "openai-organization": self.organization,
            "openai-project": "proj_nexusfake",
            "openai-version": OPENAI_VERSION,
            "openai-processing-ms": "7",
            "x-request-id": f"req_{secrets.token_hex(16)}",
        }
        with self._limits_lock:
            limits = self._limit_headers.pop(id(request), None)
        if limits is not None:
            headers.update(limits)
        return headers

    async def _answer(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        if self.api_key is None and not request.headers.get("Authorization", "").startswith(
            "Bearer "
        ):
            return _json(shapes.error_body(_NO_KEY, "invalid_request_error"), 401)
        return await super()._answer(request, body, kind, behaviour, exchange)

    async def route(
        self,
        request: web.Request,
        body: bytes,
        kind: str | None,
        behaviour: Behaviour,
        exchange: _Exchange,
    ) -> web.StreamResponse | None:
        """The model list (``owned_by: system``) and rate limiting of inference."""
        path, method = request.path, request.method
        if kind == "responses":
            limited = self._take_from_limits(request, body)
            if limited is not None:
                return limited
            return await self._responses(request, body, behaviour, exchange)
        if kind is not None:
            return self._take_from_limits(request, body)
        if method == "GET" and path == "/v1/models":
            data = [self._card(entry) for entry in list(self.models)]
            return self._ok(behaviour, {"object": "list", "data": data}, extra=False)
        if method == "GET" and path.startswith("/v1/models/"):
            wanted = path.removeprefix("/v1/models/")
            for entry in list(self.models):
                card = self._card(entry)
                if card["id"] == wanted:
                    return self._ok(behaviour, card, extra=False)
            return _json(shapes.model_not_found(wanted), 404)
        return None

    async def _responses(
        self, request: web.Request, body: bytes, behaviour: Behaviour, exchange: _Exchange
    ) -> web.StreamResponse:
        """``POST /v1/responses``: the answer whole, or as its typed events."""
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return _json(shapes.error_body("Invalid body", "invalid_request_error"), 400)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return _json(
                shapes.error_body(
                    "Missing required parameter: 'model'.", "invalid_request_error", param="model"
                ),
                400,
            )
        if model not in self._model_ids():
            return _json(shapes.model_not_found(model), 404)
        if "input" not in payload:
            return _json(
                shapes.error_body(
                    "Missing required parameter: 'input'.", "invalid_request_error", param="input"
                ),
                400,
            )
        answer: dict[str, Any] = {
            "response_id": f"resp_{secrets.token_hex(24)}",
            "created_at": int(time.time()),
            "model": model,
            "content": behaviour.content
            if behaviour.content is not None
            else f"Hello from {self.name}",
            "tool_calls": behaviour.tool_calls,
            "incomplete": behaviour.finish_reason == "length",
        }
        if payload.get("stream") is not True:
            return self._ok(
                behaviour, responses_shapes.response_object(payload, **answer), extra=True
            )
        events = [
            responses_shapes.sse_event(event)
            for event in responses_shapes.response_events(payload, **answer)
        ]
        cut = behaviour.cut_after_events
        if cut is not None:
            events = events[:cut]
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await response.prepare(request)
        for index, event in enumerate(events):
            if index and behaviour.delay_between_events:
                await asyncio.sleep(behaviour.delay_between_events)
            await response.write(event)
        if cut is not None:
            await _drop(request, exchange, reset=False)
        await response.write_eof()
        return response

    def _take_from_limits(self, request: web.Request, body: bytes) -> web.Response | None:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        tokens = 16
        model = "the model"
        if isinstance(payload, dict):
            model = str(payload.get("model") or model)
            prompt = payload.get("messages", payload.get("input", payload.get("prompt", "")))
            budget = payload.get("max_completion_tokens", payload.get("max_tokens"))
            tokens = shapes.count_tokens(prompt) + (budget if isinstance(budget, int) else 16)
        with self._limits_lock:
            if self.remaining_requests <= 0:
                limited: str | None = "requests"
            elif self.remaining_tokens < tokens:
                limited = "tokens"
            else:
                limited = None
                self.remaining_requests -= 1
                self.remaining_tokens -= tokens
            self._limit_headers[id(request)] = {
                "x-ratelimit-limit-requests": str(self.limit_requests),
                "x-ratelimit-limit-tokens": str(self.limit_tokens),
                "x-ratelimit-remaining-requests": str(self.remaining_requests),
                "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
                "x-ratelimit-reset-requests": self.reset_requests,
                "x-ratelimit-reset-tokens": self.reset_tokens,
            }
        if limited is None:
            return None
        unit = "requests per min (RPM)" if limited == "requests" else "tokens per min (TPM)"
        limit = self.limit_requests if limited == "requests" else self.limit_tokens
        message = (
            f"Rate limit reached for {model} in organization {self.organization} on {unit}:"
            f" Limit {limit}, Used {limit}, Requested {1 if limited == 'requests' else tokens}."
            " Please try again in 6ms. Visit https://platform.openai.com/account/rate-limits to"
            " learn more."
        )
        return _json(shapes.error_body(message, limited, code="rate_limit_exceeded"), 429)

    def _card(self, entry: str | Mapping[str, Any]) -> dict[str, Any]:
        return shapes.model_card(entry, created=self._created, owned_by="system")
