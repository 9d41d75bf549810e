"""OpenTelemetry traces: one span per request, one child span per upstream attempt.

Attribute names follow the OpenTelemetry GenAI semantic conventions and are all defined here, as
plain strings (the conventions' own module is incubating and not imported at run time). Nexus's
own attributes live under ``nexus.``. No prompt, message or completion content is ever recorded.

Off by default, and then free: a disabled ``Tracing`` imports nothing from opentelemetry and
``start_request`` returns ``None``. Enabled, it owns its ``TracerProvider`` (the global one is
left alone, so several gateways can live in one process) and exports over OTLP/HTTP. The
attempt span being ``current`` puts its ``traceparent`` on the upstream request through
``nexus_core.http.TRACE_HEADERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nexus_core.adapters import Endpoint
from nexus_core.config import TelemetryConfig
from nexus_core.h1 import TRACE_HEADERS

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanKind, Status, Tracer

# -- GenAI semantic conventions ------------------------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K = "gen_ai.request.top_k"
GEN_AI_REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
# -- general semantic conventions ----------------------------------------------------------------
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
ERROR_TYPE = "error.type"
SERVICE_NAME = "service.name"
# -- Nexus's own ---------------------------------------------------------------------------------
NEXUS_BACKEND = "nexus.backend"
NEXUS_ROUTE_REASON = "nexus.route_reason"
NEXUS_FRONT_DOOR = "nexus.front_door"
NEXUS_REQUEST_ID = "nexus.request_id"
NEXUS_COST_USD = "nexus.cost_usd"
NEXUS_TTFT_SECONDS = "nexus.ttft_seconds"
NEXUS_ATTEMPT = "nexus.attempt"

#: GenAI operation names of the endpoints (``gen_ai.operation.name``).
OPERATIONS = {
    Endpoint.CHAT: "chat",
    Endpoint.COMPLETIONS: "text_completion",
    Endpoint.EMBEDDINGS: "embeddings",
    Endpoint.RESPONSES: "chat",
}

#: Numeric request parameters recorded on the request span: body field -> attribute.
_REQUEST_NUMBERS: tuple[tuple[str, str], ...] = (
    ("max_tokens", GEN_AI_REQUEST_MAX_TOKENS),
    ("max_completion_tokens", GEN_AI_REQUEST_MAX_TOKENS),
    ("temperature", GEN_AI_REQUEST_TEMPERATURE),
    ("top_p", GEN_AI_REQUEST_TOP_P),
    ("top_k", GEN_AI_REQUEST_TOP_K),
    ("frequency_penalty", GEN_AI_REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", GEN_AI_REQUEST_PRESENCE_PENALTY),
    ("seed", GEN_AI_REQUEST_SEED),
    ("n", GEN_AI_REQUEST_CHOICE_COUNT),
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRACES_PATH = "/v1/traces"


class TelemetryError(RuntimeError):
    """Tracing is enabled but cannot be set up (the ``otel`` extra is missing)."""


class Tracing:
    """The gateway's tracer: a provider of its own, or nothing at all when disabled."""

    enabled: bool

    def __init__(self, config: TelemetryConfig, *, exporter: SpanExporter | None = None) -> None:
        self.enabled = config.enabled or exporter is not None
        self._provider: TracerProvider | None = None
        if not self.enabled:
            return
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise TelemetryError(
                "[telemetry] enabled needs OpenTelemetry: pip install 'nexusgw-core[otel]'"
            ) from exc
        processor: SpanProcessor
        if exporter is not None:
            # Tests read spans as soon as they end.
            processor = SimpleSpanProcessor(exporter)
        else:
            processor = BatchSpanProcessor(_otlp_exporter(config))
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: config.service_name}))
        provider.add_span_processor(processor)
        self._provider = provider
        self._tracer: Tracer = provider.get_tracer("nexus_core")
        self._server: SpanKind = trace.SpanKind.SERVER
        self._client: SpanKind = trace.SpanKind.CLIENT
        self._error: Status = trace.Status(trace.StatusCode.ERROR)
        self._in_context = trace.set_span_in_context
        # An instance, not the global propagator: reads an incoming traceparent only.
        self._propagator = TraceContextTextMapPropagator()

    def start_request(
        self,
        *,
        operation: str,
        model: str,
        front_door: str,
        request_id: str,
        stream: bool,
        request: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> RequestSpan | None:
        """Open the span of one client request; ``None`` when tracing is off.

        ``traceparent``/``tracestate`` are the client's own headers: the request span then
        continues the client's trace.
        """
        if not self.enabled:
            return None
        parent: Context | None = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent}
            if tracestate is not None:
                carrier["tracestate"] = tracestate
            parent = self._propagator.extract(carrier)
        attributes: dict[str, Any] = {
            GEN_AI_OPERATION_NAME: operation,
            GEN_AI_REQUEST_MODEL: model,
            GEN_AI_REQUEST_STREAM: stream,
            NEXUS_FRONT_DOOR: front_door,
            NEXUS_REQUEST_ID: request_id,
        }
        if request is not None:
            for field, attribute in _REQUEST_NUMBERS:
                value = request.get(field)
                # JSON numbers only (bool is an int in Python); anything else is not recorded.
                if isinstance(value, int | float) and not isinstance(value, bool):
                    attributes[attribute] = value
        span = self._tracer.start_span(
            f"{operation} {model}", context=parent, kind=self._server, attributes=attributes
        )
        return RequestSpan(self, span, operation)

    def shutdown(self) -> None:
        """Export what is buffered and stop; blocks (call it off the event loop: ``aclose``)."""
        provider, self._provider = self._provider, None
        if provider is not None:
            # Requests still in flight after this get no span (rather than spans dropped later).
            self.enabled = False
            provider.shutdown()

    async def aclose(self) -> None:
        """``shutdown`` in a worker thread, so the flush does not stall the event loop."""
        if self._provider is not None:
            await asyncio.to_thread(self.shutdown)


def _otlp_exporter(config: TelemetryConfig) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise TelemetryError(
            "[telemetry] enabled needs the OTLP exporter: pip install 'nexusgw-core[otel]'"
        ) from exc
    if config.otlp_endpoint is None:
        # The exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT.
        return OTLPSpanExporter()
    endpoint = str(config.otlp_endpoint).rstrip("/")
    if not endpoint.endswith(_TRACES_PATH):
        endpoint += _TRACES_PATH
    return OTLPSpanExporter(endpoint=endpoint)


class RequestSpan:
    """The span of one client request (kind SERVER), parent of its attempts."""

    def __init__(self, tracing: Tracing, span: Span, operation: str) -> None:
        self._tracing = tracing
        self.span = span
        self._operation = operation
        self._attempts: list[AttemptSpan] = []
        self._ended = False

    def attempt(self, *, backend: str, backend_type: str, url: str, model: str) -> AttemptSpan:
        """Open a child span (kind CLIENT) for one try at one backend."""
        tracing = self._tracing
        attributes: dict[str, Any] = {
            GEN_AI_OPERATION_NAME: self._operation,
            GEN_AI_PROVIDER_NAME: backend_type,
            GEN_AI_REQUEST_MODEL: model,
            NEXUS_BACKEND: backend,
            NEXUS_ATTEMPT: len(self._attempts) + 1,
        }
        parts = urlsplit(url)
        if parts.hostname:
            attributes[SERVER_ADDRESS] = parts.hostname
            try:
                port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
            except ValueError:
                port = None
            if port is not None:
                attributes[SERVER_PORT] = port
        span = tracing._tracer.start_span(
            f"{self._operation} {model}",
            context=tracing._in_context(self.span),
            kind=tracing._client,
            attributes=attributes,
        )
        attempt = AttemptSpan(tracing, span)
        self._attempts.append(attempt)
        return attempt

    def end(
        self,
        *,
        status: int,
        backend: str | None,
        route_reason: str | None,
        response_model: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        finish_reasons: Sequence[str] | None,
        error_type: str | None,
        cost_usd: float | None,
        ttft_seconds: float | None,
    ) -> None:
        """Record the outcome and end the span (and any attempt left open); once only."""
        if self._ended:
            return
        self._ended = True
        for attempt in self._attempts:
            attempt.end()
        span = self.span
        attributes: dict[str, Any] = {HTTP_RESPONSE_STATUS_CODE: status}
        if backend is not None:
            attributes[NEXUS_BACKEND] = backend
        if route_reason is not None:
            attributes[NEXUS_ROUTE_REASON] = route_reason
        if response_model is not None:
            attributes[GEN_AI_RESPONSE_MODEL] = response_model
        if input_tokens is not None:
            attributes[GEN_AI_USAGE_INPUT_TOKENS] = input_tokens
        if output_tokens is not None:
            attributes[GEN_AI_USAGE_OUTPUT_TOKENS] = output_tokens
        if finish_reasons:
            attributes[GEN_AI_RESPONSE_FINISH_REASONS] = tuple(finish_reasons)
        if cost_usd is not None:
            attributes[NEXUS_COST_USD] = cost_usd
        if ttft_seconds is not None:
            attributes[NEXUS_TTFT_SECONDS] = ttft_seconds
            attributes[GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttft_seconds
        # A server span is in error for 5xx, not for the client's own 4xx mistakes, unless the
        # caller names an error.
        if error_type is None and status >= 500:
            error_type = str(status)
        if error_type is not None:
            attributes[ERROR_TYPE] = error_type
            span.set_status(self._tracing._error)
        span.set_attributes(attributes)
        span.end()


class AttemptSpan:
    """The span of one upstream attempt; ``with attempt:`` puts its traceparent on requests."""

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self._tracing = tracing
        self.span = span
        context = span.get_span_context()
        headers: tuple[tuple[str, str], ...] = (
            (
                "traceparent",
                f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}",
            ),
        )
        tracestate = context.trace_state.to_header()
        if tracestate:
            headers += (("tracestate", tracestate),)
        self.headers = headers
        self._token: contextvars.Token[tuple[tuple[str, str], ...] | None] | None = None
        self._ended = False

    def activate(self) -> None:
        """Make this attempt current: upstream requests in this context carry its traceparent."""
        self._token = TRACE_HEADERS.set(self.headers)

    def deactivate(self) -> None:
        """Undo ``activate``."""
        token, self._token = self._token, None
        if token is not None:
            # Activated in another context (another task): nothing of ours is set in this one.
            with contextlib.suppress(ValueError):
                TRACE_HEADERS.reset(token)

    def __enter__(self) -> AttemptSpan:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.deactivate()

    def end(self, *, status: int | None = None, error_type: str | None = None) -> None:
        """Record the upstream status and end the span; once only."""
        if self._ended:
            return
        self._ended = True
        span = self.span
        if status is not None:
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
            # A client span is in error for any 4xx or 5xx answer.
            if error_type is None and status >= 400:
                error_type = str(status)
        if error_type is not None:
            span.set_attribute(ERROR_TYPE, error_type)
            span.set_status(self._tracing._error)
        span.end()
