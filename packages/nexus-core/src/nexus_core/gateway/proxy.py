"""The request path: admit, analyse, route, fail over, and record one request; the in-process
OpenAI-style methods (``chat_completions``, ``completions``, ``embeddings``) on top."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, overload

from nexus_core import fastjson
from nexus_core.accounting import Accountant, usd
from nexus_core.adapters import Endpoint
from nexus_core.auth import ApiKey
from nexus_core.errors import GatewayError, model_not_found
from nexus_core.failover import NativeRequest, ProxyResult, ProxyStream
from nexus_core.gateway.catalogue import Catalogue
from nexus_core.observability import RequestRecord
from nexus_core.queueing import is_full
from nexus_core.routing import RequestNeeds, Route, analyze
from nexus_core.sse import event_data
from nexus_core.state import StateError
from nexus_core.telemetry import OPERATIONS

__all__ = ["Requests", "state_unavailable"]


class Requests(Catalogue):
    """``proxy`` (the server's doors call it for every request) and the in-process methods."""

    async def proxy(
        self,
        endpoint: Endpoint,
        body: bytes,
        *,
        data: Any = None,
        flexible: bool = False,
        priority_high: bool = False,
        record: RequestRecord | None = None,
        native: NativeRequest | None = None,
    ) -> ProxyResult:
        """Route and forward one raw request body; raise ``GatewayError`` if it cannot be served.

        ``flexible``: the tier mode; the client sent ``X-Nexus-Flexible: true`` and not
        ``X-Nexus-Strict: true``. It never admits a backend below a policy's ``min_tier``.
        ``priority_high``: ``X-Nexus-Priority: high``; served first when the request has to wait
        in the queue because every planned backend is at its ``max_concurrent``.
        ``record``: what the server knows of the request (id, front door, client); the gateway
        completes it and hands it to ``monitor`` when the request ends (a stream: at its end).
        ``native``: a front door's own request, sent instead of ``body`` to the backends that
        speak the door's API (``failover.NativeRequest``); the result says which was answered.
        """
        if record is None:
            # In-process: an id of its own, so its history entry and log lines name it.
            record = RequestRecord(request_id=os.urandom(8).hex())
        record.begin(endpoint.value)
        try:
            try:
                result = await self._proxy(
                    endpoint, body, data, flexible, priority_high, record, native
                )
            except StateError as exc:
                # A rate limit, a budget or a priced route's spend needs the store: refused,
                # never served unchecked.
                self.store_outage.failed("serve a request", exc, record.request_id)
                raise state_unavailable() from None
        except GatewayError as error:
            record.status = error.status
            record.error = error.code or error.type
            record.error_message = error.message
            record.failed_backends = error.failed_backends
            record.attempts = len(error.failed_backends)
            self.monitor.finish(record)
            raise
        except asyncio.CancelledError:
            record.status = 499
            record.error = "client_closed"
            self.monitor.finish(record)
            raise
        route = result.route
        backend = route.backend
        info = backend.models.get(route.model)
        if info is not None and info.loaded is False:
            # It answered, so the model is in memory now (servers load on demand): /api/ps
            # and routing's warm-first order know it before the next probe says so.
            self._now_loaded(backend, info)
        record.backend = backend.name
        record.served_model = route.model
        record.route_reason = result.route_reason
        record.status = result.status
        if result.attempts:
            record.failed_backends = tuple(a.backend for a in result.attempts)
        record.attempts = len(result.attempts) + 1
        if route.fallback:
            record.fallback_from = result.requested_model
        stream = result.stream
        if self.config.logging.enable_content_logging:
            record.content = (_clip(body), None if result.body is None else _clip(result.body))
        if stream is None:
            data = result.data
            usage = data.get("usage") if isinstance(data, dict) else None
            if isinstance(usage, dict):
                _tokens(record, usage)
            if record.cached_tokens is None and isinstance(data, dict):
                timings = data.get("timings")  # llama-server's, also without usage details
                if isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
                    record.cached_tokens = timings["cache_n"]
            _cost(record, result)
            self._count_tokens(record)
            self.monitor.finish(record)
        else:
            # As the client sees it: from the request's arrival to the first event (queue and
            # failed attempts included); quality keeps each backend's own.
            record.ttft = time.perf_counter() - record.started_perf
            stream.on_end = lambda ended: self._stream_ended(record, result, ended)
            record.open_stream = stream
        return result

    async def _proxy(
        self,
        endpoint: Endpoint,
        body: bytes,
        data: Any,
        flexible: bool,
        priority_high: bool,
        record: RequestRecord,
        native: NativeRequest | None = None,
    ) -> ProxyResult:
        if data is None:
            try:
                data = fastjson.loads(body)
            except (ValueError, RecursionError) as exc:
                raise GatewayError(
                    400, f"The request body is not valid JSON: {exc}", code="invalid_json"
                ) from None
        needs = analyze(endpoint, data, self.router.keyed)
        model = needs.model
        # The client names the model: a record (history, logs) keeps a bounded part of it.
        record.model = model if len(model) <= MODEL_NAME_KEPT else model[:MODEL_NAME_KEPT] + "…"
        key = record.api_key
        if key is not None:
            await self._admit(key, needs.model)
        tracing = self.tracing
        if tracing.enabled:
            record.span = tracing.start_request(
                operation=OPERATIONS[endpoint],
                model=needs.model,
                front_door=record.front_door,
                request_id=record.request_id,
                stream=needs.stream,
                request=data if isinstance(data, dict) else None,
                traceparent=record.traceparent,
            )
        accountant = self.accountant
        if accountant.blocks_all:
            raise _budget_exhausted(accountant)
        needs.flexible = flexible
        if needs.stream and endpoint is Endpoint.EMBEDDINGS:
            needs.stream = False
        record.stream = needs.stream
        try:
            routes = self.router.plan(needs)
        except GatewayError as error:
            if self.router.debug:
                self.router.explain_refusal(needs, error, record.request_id)
            if error.code == "model_not_found":
                # The models this caller could use instead: /v1/models's list, aliases included.
                raise model_not_found(model, self.model_ids(key)) from None
            raise
        if self.router.debug:
            self.router.explain(needs, routes, record.request_id)
        # Full backends are ordered last, so a first route with room means no wait (the hot path).
        if routes and is_full(routes[0].backend) and all(is_full(r.backend) for r in routes):
            routes = await self._wait_for_slot(needs, routes, priority_high)
        result = await self.failover.execute(routes, endpoint, body, needs, data, record, native)
        if accountant.limit is not None:
            result.budget_headers = accountant.headers()
        return result

    async def _admit(self, key: ApiKey, model: str) -> None:
        """The gateway key's allow-list, monthly budget and rate limits, before routing."""
        if not key.allows(model):
            raise GatewayError(
                403,
                f"The API key '{key.name}' may not use the model '{model}'",
                type="permission_error",
                param="model",
                code="model_not_allowed",
            )
        if key.monthly_budget_usd is not None:
            spent = await self.accountant.track_key(key.name)
            if spent >= round(key.monthly_budget_usd * 1e9):
                wait = math.ceil(self.accountant.seconds_to_rollover())
                raise GatewayError(
                    429,
                    f"The API key '{key.name}' has spent its monthly budget of "
                    f"${key.monthly_budget_usd:.2f}",
                    type="insufficient_quota",
                    code="key_budget_exceeded",
                    headers={"Retry-After": str(max(1, wait))},
                )
        delay = await self.keys.admit(key)
        if delay:
            raise GatewayError(
                429,
                f"The API key '{key.name}' is over its rate limit; retry in {delay:.1f} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(delay)))},
            )

    async def _wait_for_slot(
        self, needs: RequestNeeds, routes: list[Route], high: bool
    ) -> list[Route]:
        """Queue until a planned backend has a free slot; then plan again (health may change)."""
        seq: int | None = None
        deadline: float | None = None
        while True:
            backends = [r.backend for r in routes]
            seq, deadline = await self.queue.wait(backends, high=high, seq=seq, deadline=deadline)
            try:
                routes = self.router.plan(needs)
            except BaseException:
                self.queue.pass_on(backends)  # the wake-up this request got is not used
                raise
            if not routes or not all(is_full(r.backend) for r in routes):
                return routes

    def _count_tokens(self, record: RequestRecord) -> None:
        """Take the answer's tokens from its key's tokens-per-minute bucket (in the background)."""
        key = record.api_key
        if key is None or key.tokens_per_minute is None:
            return
        tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        task = asyncio.get_running_loop().create_task(
            self.keys.used_tokens(key, tokens, record.request_id)
        )
        self._token_counts.add(task)
        task.add_done_callback(self._token_counts.discard)

    def _stream_ended(
        self, record: RequestRecord, result: ProxyResult, stream: ProxyStream
    ) -> None:
        record.open_stream = None
        if stream.usage is not None:
            _tokens(record, stream.usage)
        _cost(record, result)
        if stream.error is not None:
            record.error = "stream_broken"
            record.error_message = stream.error.message
        elif not stream.completed and record.error is None:
            record.error = "client_closed"
        self._count_tokens(record)
        self.monitor.finish(record)

    @overload
    async def chat_completions(
        self, request: Mapping[str, Any], *, stream: Literal[False] = False
    ) -> dict[str, Any]: ...

    @overload
    async def chat_completions(
        self, request: Mapping[str, Any], *, stream: Literal[True]
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def chat_completions(
        self, request: Mapping[str, Any], *, stream: bool = False
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """A chat completion: the response dict, or (``stream=True``) an iterator of chunks."""
        return await self._call(Endpoint.CHAT, request, stream)

    @overload
    async def completions(
        self, request: Mapping[str, Any], *, stream: Literal[False] = False
    ) -> dict[str, Any]: ...

    @overload
    async def completions(
        self, request: Mapping[str, Any], *, stream: Literal[True]
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def completions(
        self, request: Mapping[str, Any], *, stream: bool = False
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """A legacy text completion, whole or streamed."""
        return await self._call(Endpoint.COMPLETIONS, request, stream)

    async def embeddings(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Embeddings for a string or a list of strings."""
        result = await self._call(Endpoint.EMBEDDINGS, request, False)
        assert isinstance(result, dict)
        return result

    async def _call(
        self, endpoint: Endpoint, request: Mapping[str, Any], stream: bool
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        payload = dict(request)
        if stream:
            payload["stream"] = True
        else:
            payload.pop("stream", None)
        body = json.dumps(payload, separators=(",", ":")).encode()
        result = await self.proxy(endpoint, body, data=payload)
        if result.stream is not None:
            return _chunks(result.stream)
        data = result.data if result.data is not None else fastjson.loads(result.body or b"null")
        if not isinstance(data, dict):
            raise GatewayError(502, "Backend answered something other than a JSON object")
        return data


#: Characters of a requested model's name kept in its request record (history and logs).
MODEL_NAME_KEPT = 256


#: How much of a body content logging keeps.
CONTENT_LOG_LIMIT = 4096


def _clip(body: bytes) -> str:
    text = body[:CONTENT_LOG_LIMIT].decode("utf-8", errors="replace")
    return text + ("..." if len(body) > CONTENT_LOG_LIMIT else "")


def _tokens(record: RequestRecord, usage: Mapping[str, Any]) -> None:
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if prompt is None and completion is None:
        # A Responses API answer (a backend that speaks it natively) names them so.
        prompt = usage.get("input_tokens")
        completion = usage.get("output_tokens")
    if isinstance(prompt, int):
        record.prompt_tokens = prompt
    if isinstance(completion, int):
        record.completion_tokens = completion
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    if isinstance(details, dict):
        cached = details.get("cached_tokens")
        if isinstance(cached, int) and cached >= 0:
            record.cached_tokens = cached


def _cost(record: RequestRecord, result: ProxyResult) -> None:
    charge = result.charge
    if charge is not None and charge.settled is not None:
        record.cost_usd = usd(charge.settled)


#: ``Retry-After`` of a request refused because the state store fails.
STATE_RETRY_AFTER_SECONDS = 5


def state_unavailable(
    needs: str = "a rate limit, a budget or the spend of a priced route",
) -> GatewayError:
    """503 ``state_unavailable``: the state store fails and the request ``needs`` it.

    The store's own error (its address, the file's path) goes to the log, not to the client.
    """
    return GatewayError(
        503,
        f"The gateway's state store is not answering and this request needs it ({needs}); "
        "it is refused, not served unchecked. Retry later.",
        type="service_unavailable",
        code="state_unavailable",
        headers={"Retry-After": str(STATE_RETRY_AFTER_SECONDS)},
    )


def _budget_exhausted(accountant: Accountant) -> GatewayError:
    wait = math.ceil(accountant.seconds_to_rollover())
    summary = accountant.summary()
    return GatewayError(
        503,
        f"The monthly budget of ${summary['limit_usd']:.2f} is spent "
        f"(${summary['spent_usd']:.4f}) and routing.budget.hard_limit_action is block_all: "
        "no request is served until the month rolls over (00:00 UTC on the 1st)",
        type="service_unavailable",
        code="budget_exceeded",
        details={"budget": summary},
        headers={"Retry-After": str(max(1, wait))},
    )


async def _chunks(stream: ProxyStream) -> AsyncIterator[dict[str, Any]]:
    """Decode relayed SSE events into chunk dicts; an error event raises ``GatewayError``."""
    try:
        async for event in stream:
            data = event_data(event)
            if not data or data == b"[DONE]":
                continue
            chunk = fastjson.loads(data)
            if isinstance(chunk, dict) and "error" in chunk and len(chunk) == 1:
                error = chunk["error"]
                raise GatewayError(
                    502,
                    str(error.get("message", "stream failed")),
                    type=str(error.get("type", "upstream_error")),
                    code=None if error.get("code") is None else str(error.get("code")),
                )
            yield chunk
    finally:
        await stream.aclose()
