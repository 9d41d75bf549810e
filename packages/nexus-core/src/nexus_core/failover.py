"""Failover: try the planned routes in order until one answers, before any byte reaches the client.

After the first byte has gone out nothing can be retried; a stream that breaks then ends with one
``data: {"error": ...}`` event and no ``[DONE]``, so a truncated answer never looks complete. A
stream ends at ``[DONE]``: nothing the backend sends after it is read.

What a backend sends is never passed on as active content: a whole answer must be JSON (else the
attempt fails, ``malformed_response``), and a 4xx body is passed through only when it is JSON;
otherwise the client gets the front door's own error envelope with a clipped excerpt. Either way
the backend's own message (``errors.backend_message``) is the error's message, so the Anthropic
and Ollama doors, which answer in their own shapes, pass it on too.

A 501 (llama-server without ``--embeddings``, an Ollama chat model asked for embeddings) says
that this backend cannot do this kind of request: another may, so failover goes on, and the
backend is not held responsible (no cool-down). When every backend tried answered 501 the client
gets a 400 with the backend's message rather than a 502 that SDKs retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nexus_core import fastjson
from nexus_core.accounting import (
    Accountant,
    Charge,
    StreamMeter,
    completion_estimate,
    usd,
)
from nexus_core.adapters import (
    BackendError,
    Endpoint,
    ErrorKind,
    Timeouts,
    UpstreamResponse,
    clip,
)
from nexus_core.clamping import clamp, requested_limit, room
from nexus_core.errors import GatewayError, backend_message
from nexus_core.h1 import TRACE_HEADERS
from nexus_core.pricing import estimate_nano_usd
from nexus_core.quality import QualityTracker
from nexus_core.queueing import CapacityQueue, release
from nexus_core.registry import Backend
from nexus_core.routing import RequestNeeds, Route, replace_model, with_include_usage
from nexus_core.sse import DONE_PREFIXES, error_event, event_data
from nexus_core.telemetry import AttemptSpan, RequestSpan

if TYPE_CHECKING:
    from nexus_core.observability import RequestRecord
    from nexus_core.pricing import Price

__all__ = [
    "Attempt",
    "Failover",
    "NativeRequest",
    "ProxyResult",
    "ProxyStream",
    "client_error",
    "is_json",
]

log = logging.getLogger("nexus.failover")


@dataclass(slots=True)
class Attempt:
    """One failed try, kept for the error message and logs."""

    backend: str
    kind: str
    message: str
    status: int | None = None


@dataclass(slots=True)
class ProxyResult:
    """A 2xx answer chosen by failover: a whole body, or a stream ready to relay."""

    route: Route
    requested_model: str
    content_type: str
    body: bytes | None = None
    stream: ProxyStream | None = None
    attempts: list[Attempt] = field(default_factory=list)
    status: int = 200
    data: Any = None
    #: The cost of this answer, when its route is priced.
    charge: Charge | None = None
    #: ``X-Nexus-Budget-*`` headers, when a monthly budget is set.
    budget_headers: dict[str, str] | None = None
    #: Seconds from sending to the stream's first event (streams only).
    ttft: float | None = None
    #: The answer limit sent to the backend when the request's ``max_tokens`` did not fit its
    #: context (``nexus_core.clamping``).
    max_tokens_clamped: int | None = None
    #: The backend was sent the door's own request (``NativeRequest``) and answered in the
    #: door's API, not in OpenAI chat.
    native: bool = False

    @property
    def route_reason(self) -> str:
        """What ``X-Nexus-Route-Reason`` says; a restricted policy is named before anything else."""
        if self.route.restricted:
            return "privacy-restricted"
        if self.route.fallback:
            return "fallback-model"
        return "failover" if self.attempts else self.route.reason

    def headers(self) -> dict[str, str]:
        """The ``X-Nexus-*`` response headers for this answer."""
        backend = self.route.backend
        out = {
            "X-Nexus-Backend": backend.name,
            "X-Nexus-Backend-Type": backend.kind,
            "X-Nexus-Route-Reason": self.route_reason,
            "X-Nexus-Privacy-Zone": backend.zone.value,
        }
        if self.route.fallback:
            out["X-Nexus-Fallback-Model"] = self.route.model
        charge = self.charge
        if charge is not None:
            # A whole answer's actual cost; a stream's headers leave before it is known.
            cost = charge.settled if charge.settled is not None else charge.estimate
            out["X-Nexus-Cost-Estimated"] = f"{usd(cost):.6f}"
        if self.budget_headers:
            out.update(self.budget_headers)
        if self.max_tokens_clamped is not None:
            out["X-Nexus-Max-Tokens-Clamped"] = str(self.max_tokens_clamped)
        return out


#: How a complete JSON object or array ends.
JSON_ENDS = (b"}", b"]")


class ProxyStream:
    """Relays upstream SSE events up to ``[DONE]``; releases the backend exactly once, however
    it ends.

    On the way it counts the events and reads the ``usage`` a stream reports (hiding the
    usage-only chunk when Nexus asked for it and the client did not). When it ends, its outcome
    goes to ``quality`` (a break after the first byte counts as a failure), ``meter`` settles a
    priced stream's cost, and ``on_end`` (the gateway's request record) is called.
    """

    __slots__ = (
        "_backend",
        "_done",
        "_first",
        "_hide_usage",
        "_meter",
        "_model",
        "_quality",
        "_queue",
        "_upstream",
        "chunks",
        "completed",
        "error",
        "on_end",
        "request_id",
        "usage",
    )

    def __init__(
        self,
        backend: Backend,
        upstream: UpstreamResponse,
        first: bytes,
        queue: CapacityQueue | None = None,
        *,
        model: str = "",
        quality: QualityTracker | None = None,
        meter: StreamMeter | None = None,
        hide_usage: bool = False,
        request_id: str = "",
    ) -> None:
        self._backend = backend
        self._upstream = upstream
        self._first = first
        self._done = False
        self._queue = queue
        self._model = model
        self._quality = quality
        self._meter = meter
        self._hide_usage = hide_usage
        #: Events relayed so far.
        self.chunks = 0
        #: The upstream ended cleanly (not broken, not abandoned by the client).
        self.completed = False
        self.error: BackendError | None = None
        #: The ``usage`` the stream reported, if it did.
        self.usage: dict[str, Any] | None = None
        self.on_end: Callable[[ProxyStream], None] | None = None
        #: The request's id, for the log line of a stream that breaks.
        self.request_id = request_id

    def _usage_event(self, event: bytes) -> bool:
        """Read a chunk with a ``usage``; True when it must not reach the client."""
        try:
            payload = fastjson.loads(event_data(event))
        except ValueError:
            return False
        if not isinstance(payload, dict):
            return False
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            # A Responses API stream reports it in its last event's response object.
            response = payload.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
            if not isinstance(usage, dict):
                return False
            self.usage = usage
            if self._meter is not None:
                self._meter.usage(usage)
            return False  # the event that ends the answer: never hidden
        self.usage = usage
        if self._meter is not None:
            self._meter.usage(usage)
        return self._hide_usage and not payload.get("choices")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        events = self._upstream.events
        try:
            first = self._first
            if first.startswith(DONE_PREFIXES):
                self.completed = True
                yield first
                return
            if not (first.find(b'"usage"') >= 0 and self._usage_event(first)):
                self.chunks += 1
                yield first
            if events is None:
                self.completed = True
                return
            try:
                async for event in events:
                    if len(event) < 16 and event.startswith(DONE_PREFIXES):  # [DONE]: 13-14 B
                        # The answer is whole: the stream ends here, whatever the backend says
                        # next (it is not read; the upstream is released as the stream closes).
                        self.completed = True
                        yield event
                        return
                    # A data event whose JSON was cut off cannot end in } or ]: end the stream
                    # with an error event rather than relay what the client cannot parse (two
                    # byte checks, no parsing).
                    # (Events end in a blank line: the byte before it decides, most of the time.)
                    if (
                        event[:5] == b"data:"
                        and event[-3:-2] not in JSON_ENDS
                        and event.rstrip()[-1:] not in JSON_ENDS
                    ):
                        raise BackendError(
                            ErrorKind.MALFORMED, "the backend sent a stream event that is not JSON"
                        )
                    # A cheap test first: most chunks carry no usage, or "usage": null. (find,
                    # not ``in``: see nexus_core.sse.)
                    if (
                        event.find(b'"usage"') >= 0
                        and event.find(b'"usage":null') < 0
                        and event.find(b'"usage": null') < 0
                        and self._usage_event(event)
                    ):
                        continue
                    self.chunks += 1
                    yield event
                self.completed = True
            except BackendError as exc:
                self.error = exc
                self._backend.errors_total += 1
                log.warning(
                    "%s stream from %s broke: %s",
                    self.request_id or "-",
                    self._backend.name,
                    exc.message,
                    extra={"request_id": self.request_id},
                )
                yield error_event(
                    f"The upstream stream from backend '{self._backend.name}' broke: {exc.message}",
                    kind="upstream_error",
                    code=exc.kind.value,
                )
        finally:
            await self.aclose()

    def ready(self) -> bool:
        """Whether the next event (or the end) can be had without waiting for the backend.

        False when the transport cannot tell; the relay then writes each event on its own.
        """
        ready = self._upstream.ready
        return ready is not None and ready()

    async def aclose(self) -> None:
        """Close the upstream, settle the cost and release the pending slot (idempotent)."""
        if self._done:
            return
        self._done = True
        release(self._backend, self._queue, self._model)
        if self._meter is not None:
            self._meter.finish(self.chunks)
        quality = self._quality
        if quality is not None:
            if self.error is not None:
                quality.record(self._backend.name, self._model, False)
            elif self.completed:
                quality.record(self._backend.name, self._model, True)
            # Ended by the client: says nothing about the backend.
        try:
            close = getattr(self._upstream.events, "aclose", None)
            if close is not None:
                # Ended early ([DONE], the client gone): end the transport's reader now rather
                # than when the collector finds it (which would take a task).
                with contextlib.suppress(RuntimeError):
                    await close()
            await self._upstream.aclose()
        finally:
            on_end, self.on_end = self.on_end, None
            # Dropping the callback also breaks the cycle through it (it usually holds the
            # result that holds this stream), so the request's objects are freed at once rather
            # than by the garbage collector.
            if on_end is not None:
                on_end(self)


class NativeRequest:
    """A front door's own request, for the backends that speak the door's API natively.

    Failover chooses the body per attempt: a backend that ``accepts`` gets this one (at
    ``endpoint``, its ``model`` replaced by the route's, never clamped), any other the translated
    body as usual. The body is serialised only when a native backend is tried.

    ``refusal``: the request has no translation (it uses what only the door's API has); the
    other backends are passed over, and it is the client's error when no backend was tried.
    """

    __slots__ = ("_body", "accepts", "data", "endpoint", "refusal")

    def __init__(
        self,
        endpoint: Endpoint,
        data: dict[str, Any],
        accepts: Callable[[Backend], bool],
        refusal: GatewayError | None = None,
    ) -> None:
        self.endpoint = endpoint
        #: The body to send, as a dict (serialised on first use).
        self.data = data
        #: Whether a backend speaks the door's API (asked once per attempt).
        self.accepts = accepts
        self.refusal = refusal
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        """The body as sent (serialised once)."""
        body = self._body
        if body is None:
            body = self._body = fastjson.dumps(self.data)
        return body


@dataclass(slots=True, frozen=True)
class Failover:
    """How a gateway tries each request's routes: its limits and collaborators, built once.

    ``timeouts`` bound each attempt, ``deadline_seconds`` the whole request. Every slot taken is
    given back through ``queue`` (``release`` wakes a waiter). Each attempt's outcome goes to
    ``quality`` (a client's 4xx is not the backend's fault). An attempt on a priced route
    reserves its estimated cost with ``accountant`` first and settles the actual cost from the
    answer's ``usage``. With ``debug`` (the ``nexus.failover`` logger at DEBUG when the gateway
    started) each attempt and its outcome is logged.
    """

    timeouts: Timeouts
    deadline_seconds: float
    queue: CapacityQueue | None = None
    quality: QualityTracker | None = None
    accountant: Accountant | None = None
    debug: bool = False

    async def execute(
        self,
        routes: list[Route],
        endpoint: Endpoint,
        body: bytes,
        needs: RequestNeeds,
        data: Any,
        record: RequestRecord,
        native: NativeRequest | None = None,
    ) -> ProxyResult:
        """Try ``routes`` in order within one overall deadline; return the first 2xx answer.

        ``data``: the parsed request body. ``record``: the request's id (on every log line), its
        gateway key (whose own spend counts the cost too), the client's Authorization (passed
        only to backends that set ``forward_client_auth``) and its span (tracing on: each
        attempt is a child span whose ``traceparent`` the upstream request carries).
        ``native``: the front door's own request, sent instead to a backend that speaks it.
        """
        request = _Request(self, endpoint, body, needs, data, record, native)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_seconds
        last = len(routes) - 1
        for route in routes:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            result = await request.attempt(route, remaining, len(request.attempts) == last)
            if result is not None:
                return result
        attempts = request.attempts
        if not attempts and native is not None and native.refusal is not None:
            raise native.refusal  # no backend that speaks the door's API was on the routes
        raise _failed(
            _exhausted(request.last_error, attempts, self.deadline_seconds, endpoint),
            attempts,
        )


class _Request:
    """One request's failover: what its attempts share, and what the failed ones left."""

    __slots__ = (
        "attempts",
        "body",
        "clampable",
        "data",
        "endpoint",
        "failover",
        "last_error",
        "limit",
        "native",
        "needs",
        "record",
    )

    def __init__(
        self,
        failover: Failover,
        endpoint: Endpoint,
        body: bytes,
        needs: RequestNeeds,
        data: Any,
        record: RequestRecord,
        native: NativeRequest | None = None,
    ) -> None:
        self.failover = failover
        self.endpoint = endpoint
        self.body = body
        self.needs = needs
        self.data = data
        self.record = record
        self.attempts: list[Attempt] = []
        self.last_error: BackendError | None = None
        #: The request's answer limit, looked up only once a backend states its context (most
        #: say nothing); None until then.
        self.limit: int | None = None
        self.clampable = not needs.vision and endpoint is not Endpoint.EMBEDDINGS
        self.native = native

    async def attempt(self, route: Route, remaining: float, last: bool) -> ProxyResult | None:
        """One try at ``route``: its 2xx answer, or None after a failure another route may not
        have; a failure that no other backend can change raises the client's error.

        ``remaining``: seconds left of the request's deadline; ``last``: no route comes after.
        """
        failover = self.failover
        needs = self.needs
        backend = route.backend
        endpoint = self.endpoint
        native = self.native
        if native is None or not native.accepts(backend):
            if native is not None and native.refusal is not None:
                return None  # it would need the translation this request cannot have
            payload = (
                self.body if route.model == needs.model else replace_model(self.body, route.model)
            )
            is_native = False
        else:
            # This backend speaks the door's own API: its request as the client sent it.
            endpoint = native.endpoint
            body = native.body
            payload = body if route.model == needs.model else replace_model(body, route.model)
            is_native = True
        clamped = None
        if self.clampable and not is_native:
            # This backend's context for this model, when it says: a few reads per attempt.
            info = backend.models.get(route.model)
            if info is not None and info.context_length is not None:
                limit = self.limit
                if limit is None:
                    limit = self.limit = (
                        requested_limit(self.endpoint, self.data, needs.vision) or 0
                    )
                left = room(info.context_length, payload) if limit else 0
                if 0 < left < limit:
                    payload = clamp(payload, left)
                    clamped = left
        charge: Charge | None = None
        accountant = failover.accountant
        if accountant is not None:
            price = accountant.price(backend, route.model)
            if price is not None:
                charge = await self._open_charge(accountant, price)
                if needs.stream and not needs.include_usage and not is_native:
                    payload = with_include_usage(payload)
        timeouts = failover.timeouts
        if remaining < timeouts.first_byte:
            timeouts = Timeouts(timeouts.connect, remaining, timeouts.idle)
        record = self.record
        backend.pending += 1
        in_flight = backend.in_flight
        in_flight[route.model] = in_flight.get(route.model, 0) + 1
        backend.requests_total += 1
        started = time.perf_counter()
        released = False
        span = None if record.span is None else _attempt_span(record.span, route)
        client_auth = record.client_auth
        forward = client_auth if client_auth and backend.config.forward_client_auth else None
        if failover.debug:
            self._debug(
                "attempt %d: backend %s, model %s (%s)",
                len(self.attempts) + 1,
                backend.name,
                route.model,
                route.reason,
            )
        try:
            if span is None and forward is None:
                upstream = await backend.adapter.send(
                    endpoint, payload, stream=needs.stream, timeouts=timeouts
                )
            else:
                upstream = await _send_with_context(
                    backend, endpoint, payload, needs.stream, timeouts, span, forward
                )
            if upstream.events is None:
                result = self._answered(route, upstream, started, span, charge, clamped)
                result.native = is_native
                return result
            try:
                async with asyncio.timeout(timeouts.first_byte):
                    first = await anext(upstream.events)
            except StopAsyncIteration:
                await upstream.aclose()
                raise BackendError(
                    ErrorKind.MALFORMED, "stream ended before its first event"
                ) from None
            except TimeoutError:
                await upstream.aclose()
                raise BackendError(
                    ErrorKind.TIMEOUT, f"no first event within {timeouts.first_byte:g} s"
                ) from None
            except BaseException:
                await upstream.aclose()
                raise
            released = True  # the stream releases the slot (and settles) when it ends
            result = self._streams(route, upstream, first, started, span, charge, clamped)
            result.native = is_native
            return result
        except BackendError as exc:
            error = self._failed(exc, route, span, charge, last)
            if error is not None:
                # Raised straight from here: an exception held in a local of this frame would
                # form a cycle with its own traceback (freed only by the collector).
                raise error from None
            return None
        finally:
            if span is not None:
                span.end(error_type="cancelled")  # a no-op when it was ended above
            if not released:
                release(backend, failover.queue, route.model)
                if charge is not None and charge.settled is None:
                    _settle_cancelled(charge, needs)

    async def _open_charge(self, accountant: Accountant, price: Price) -> Charge:
        """Reserve the attempt's estimated cost (the key's spend counts it too)."""
        data = self.data
        key = self.record.api_key
        return await accountant.open_charge(
            price,
            self.needs.estimated_tokens,
            completion_estimate(data) if isinstance(data, dict) else 0,
            None if key is None else key.name,
            self.record.request_id,
        )

    def _streams(
        self,
        route: Route,
        upstream: UpstreamResponse,
        first: bytes,
        started: float,
        span: AttemptSpan | None,
        charge: Charge | None,
        clamped: int | None,
    ) -> ProxyResult:
        """The answer of a stream whose first event came: relayed by a ``ProxyStream``."""
        failover = self.failover
        needs = self.needs
        backend = route.backend
        elapsed = (time.perf_counter() - started) * 1000
        backend.observe_latency(elapsed)
        quality = failover.quality
        if quality is not None:
            quality.observe_ttft(backend.name, route.model, elapsed)
        if span is not None:
            span.end(status=200)
        if failover.debug:
            self._debug(
                "attempt %d: backend %s streams (first event after %.1f ms)",
                len(self.attempts) + 1,
                backend.name,
                elapsed,
            )
        return ProxyResult(
            route=route,
            requested_model=needs.model,
            content_type=upstream.content_type,
            stream=ProxyStream(
                backend,
                upstream,
                first,
                queue=failover.queue,
                model=route.model,
                quality=quality,
                meter=None
                if charge is None
                else StreamMeter(charge, prompt_tokens=needs.estimated_tokens),
                # Nexus asked for usage to price the stream; the client did not.
                hide_usage=charge is not None and not needs.include_usage,
                request_id=self.record.request_id,
            ),
            attempts=self.attempts,
            charge=charge,
            ttft=elapsed / 1000,
            max_tokens_clamped=clamped,
        )

    def _answered(
        self,
        route: Route,
        upstream: UpstreamResponse,
        started: float,
        span: AttemptSpan | None,
        charge: Charge | None,
        clamped: int | None,
    ) -> ProxyResult:
        """A whole answer, once it is known to be JSON (else ``BackendError``, malformed)."""
        backend = route.backend
        endpoint = self.endpoint
        elapsed = (time.perf_counter() - started) * 1000
        backend.observe_latency(elapsed)
        content_type = upstream.content_type
        if not (content_type == JSON or is_json(content_type)):
            raise BackendError(
                ErrorKind.MALFORMED,
                f"the backend answered HTTP {upstream.status} with content type "
                f"'{clip(content_type, 100)}', not JSON",
            )
        parsed = None
        if upstream.body is not None and (
            endpoint is not Endpoint.EMBEDDINGS or charge is not None
        ):
            try:
                parsed = fastjson.loads(upstream.body)
            except ValueError:
                raise BackendError(ErrorKind.MALFORMED, "the body is not JSON") from None
        quality = self.failover.quality
        if quality is not None:
            quality.record(backend.name, route.model, True)
        if span is not None:
            span.end(status=upstream.status)
        if charge is not None:
            _settle_answer(charge, parsed)
        if self.failover.debug:
            self._debug(
                "attempt %d: backend %s answered HTTP %d in %.1f ms",
                len(self.attempts) + 1,
                backend.name,
                upstream.status,
                elapsed,
            )
        return ProxyResult(
            route=route,
            requested_model=self.needs.model,
            content_type=content_type,
            body=upstream.body,
            attempts=self.attempts,
            data=None if endpoint is Endpoint.EMBEDDINGS else parsed,
            charge=charge,
            max_tokens_clamped=clamped,
        )

    def _failed(
        self,
        exc: BackendError,
        route: Route,
        span: AttemptSpan | None,
        charge: Charge | None,
        last: bool,
    ) -> GatewayError | None:
        """Account for a failed attempt; the client's error when no other route can help."""
        backend = route.backend
        backend.errors_total += 1
        if span is not None:
            span.end(status=exc.status, error_type=exc.kind.value)
        if charge is not None:
            charge.settle(0)  # providers do not bill a request that failed
        quality = self.failover.quality
        if (
            quality is not None
            and exc.kind is not ErrorKind.CLIENT_ERROR
            and exc.status != NOT_IMPLEMENTED
        ):
            # A client's mistake, or a kind of request this backend does not do at all
            # (501), says nothing about the backend's health.
            quality.record(backend.name, route.model, False)
        attempts = self.attempts
        attempts.append(Attempt(backend.name, exc.kind.value, exc.message, exc.status))
        request_id = self.record.request_id
        if not exc.retryable:
            if self.failover.debug:
                self._debug(
                    "attempt %d: backend %s failed (%s: %s); not retried",
                    len(attempts),
                    backend.name,
                    exc.kind,
                    exc.message,
                )
            return _failed(_as_gateway_error(exc, backend, attempts), attempts)
        log.info(
            "%s backend %s failed (%s: %s); %s",
            request_id or "-",
            backend.name,
            exc.kind,
            exc.message,
            "no other backend to try" if last else "trying the next",
            extra={"request_id": request_id},
        )
        self.last_error = exc.with_traceback(None)  # its traceback holds the attempt's frame
        return None

    def _debug(self, message: str, *args: object) -> None:
        """One DEBUG line about this request's failover (only while ``debug`` is on)."""
        request_id = self.record.request_id
        log.debug("%s " + message, request_id or "-", *args, extra={"request_id": request_id})


def _attempt_span(span: RequestSpan, route: Route) -> AttemptSpan:
    """The child span of one attempt at ``route``."""
    backend = route.backend
    return span.attempt(
        backend=backend.name,
        backend_type=backend.type_name,
        url=backend.config.url,
        model=route.model,
    )


def _settle_answer(charge: Charge, answer: Any) -> None:
    """Settle a whole answer's cost from its ``usage`` (the estimate when it has none)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    cost = charge.cost_of(usage)
    charge.settle(charge.estimate if cost is None else cost)


def _settle_cancelled(charge: Charge, needs: RequestNeeds) -> None:
    """Settle an attempt cancelled on the way: the prompt may have been processed (and billed)."""
    charge.settle(estimate_nano_usd(charge.price, needs.estimated_tokens, 0))


def _failed(error: GatewayError, attempts: list[Attempt]) -> GatewayError:
    """``error`` with the backends that failed on the way."""
    error.failed_backends = tuple(a.backend for a in attempts)
    return error


async def _send_with_context(
    backend: Backend,
    endpoint: Endpoint,
    payload: bytes,
    stream: bool,
    timeouts: Timeouts,
    attempt: AttemptSpan | None,
    authorization: str | None,
) -> UpstreamResponse:
    """``adapter.send`` with the attempt's ``traceparent`` and/or the client's Authorization."""
    with attempt if attempt is not None else contextlib.nullcontext():
        token = None
        if authorization is not None:
            token = TRACE_HEADERS.set(
                (*(TRACE_HEADERS.get() or ()), ("Authorization", authorization))
            )
        try:
            return await backend.adapter.send(endpoint, payload, stream=stream, timeouts=timeouts)
        finally:
            if token is not None:
                TRACE_HEADERS.reset(token)


JSON = "application/json"
#: The status of a backend that does not do this kind of request at all.
NOT_IMPLEMENTED = 501


def is_json(content_type: str) -> bool:
    """Whether a ``Content-Type`` is JSON: ``application/json`` or ``application/*+json``."""
    media = content_type.partition(";")[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


def _as_gateway_error(exc: BackendError, backend: Backend, attempts: list[Attempt]) -> GatewayError:
    if exc.kind is ErrorKind.CLIENT_ERROR and exc.status is not None:
        return client_error(exc, backend.name)
    return GatewayError(
        502,
        f"Backend '{backend.name}' sent an invalid response: {exc.message}",
        type="upstream_error",
        code="bad_gateway",
        details=[_attempt_detail(a) for a in attempts],
    )


def client_error(exc: BackendError, backend: str) -> GatewayError:
    """An upstream 4xx for the client: the backend's body when it is JSON, else an envelope.

    A JSON body (by its content type, and it parses) is the client's own mistake as the backend
    described it: passed through with its status, as ``application/json``, on the OpenAI door;
    its message (``error.message``, Ollama's ``error``...) is the error's message, which the
    Anthropic and Ollama doors put in their own shapes. Anything else (an HTML page, text) is
    never relayed as such: the front door's error envelope says "backend answered HTTP 4xx" with
    a short excerpt free of control characters.
    """
    status = exc.status or 400
    body = exc.body
    if body and is_json(str(exc.headers.get("content-type", ""))):
        try:
            fastjson.loads(body)
        except (ValueError, RecursionError):
            pass
        else:
            message = backend_message(body) or f"Backend '{backend}' answered HTTP {status}"
            return GatewayError(
                status, message, raw_body=body, headers={"X-Nexus-Backend": backend}
            )
    excerpt = clip(body[:1024].decode("utf-8", "replace")) if body else ""
    return GatewayError(
        status,
        f"Backend '{backend}' answered HTTP {status}" + (f": {excerpt}" if excerpt else ""),
        type="invalid_request_error",
        code="upstream_client_error",
        headers={"X-Nexus-Backend": backend},
    )


def _exhausted(
    last: BackendError | None,
    attempts: list[Attempt],
    deadline: float,
    endpoint: Endpoint,
) -> GatewayError:
    details = [_attempt_detail(a) for a in attempts]
    summary = "; ".join(f"{a.backend}: {a.message}" for a in attempts)
    if last is not None and all(a.status == NOT_IMPLEMENTED for a in attempts):
        # No backend tried does this kind of request: waiting or retrying cannot help.
        said = (backend_message(last.body) if last.body else None) or last.message
        embeddings = endpoint is Endpoint.EMBEDDINGS
        return GatewayError(
            400,
            f"No backend tried can serve this request ({attempts[-1].backend}: {said})",
            param="model" if embeddings else None,
            code="embeddings_not_supported" if embeddings else "not_supported",
            details=details,
        )
    if last is None:
        return GatewayError(
            504,
            f"No backend answered within the request timeout of {deadline:g} s"
            + (f" ({summary})" if summary else ""),
            type="timeout_error",
            code="upstream_timeout",
            details=details,
        )
    if last.kind is ErrorKind.OVERLOADED and last.status is not None:
        headers = {"Retry-After": f"{last.retry_after:g}"} if last.retry_after is not None else {}
        return GatewayError(
            429,
            f"Every backend is rate limiting or overloaded ({summary})",
            type="rate_limit_error",
            code="upstream_overloaded",
            details=details,
            headers=headers,
        )
    if last.kind is ErrorKind.TIMEOUT and all(a.kind == ErrorKind.TIMEOUT.value for a in attempts):
        return GatewayError(
            504,
            f"Every backend tried timed out ({summary})",
            type="timeout_error",
            code="upstream_timeout",
            details=details,
        )
    return GatewayError(
        502,
        f"Every backend tried failed ({summary})",
        type="upstream_error",
        code="bad_gateway",
        details=details,
    )


def _attempt_detail(attempt: Attempt) -> dict[str, object]:
    detail: dict[str, object] = {
        "backend": attempt.backend,
        "error": attempt.kind,
        "message": attempt.message,
    }
    if attempt.status is not None:
        detail["status"] = attempt.status
    return detail
