"""Tracing: span structure and GenAI attributes, traceparent on the wire, OTLP export, and off."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from nexus_core.adapters import Timeouts
from nexus_core.config import TelemetryConfig
from nexus_core.http import TRACE_HEADERS, make_transport
from nexus_core.telemetry import RequestSpan, TelemetryError, Tracing
from nexus_core.testing import FakeBackend

HEADERS = {"Content-Type": "application/json"}
FAST = Timeouts(connect=1.0, first_byte=2.0, idle=2.0)
CHAT = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
SECRET = "the prompt must never reach a span"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    tracer = Tracing(TelemetryConfig(), exporter=exporter)
    yield tracer
    tracer.shutdown()


def start(tracing: Tracing, **fields: Any) -> RequestSpan:
    arguments: dict[str, Any] = {
        "operation": "chat",
        "model": "llama3",
        "front_door": "openai",
        "request_id": "req-1",
        "stream": False,
        **fields,
    }
    request = tracing.start_request(**arguments)
    assert request is not None
    return request


def finish(request: RequestSpan, **fields: Any) -> None:
    outcome: dict[str, Any] = {
        "status": 200,
        "backend": "b",
        "route_reason": "priority",
        "response_model": "llama3:8b",
        "input_tokens": 12,
        "output_tokens": 34,
        "finish_reasons": ["stop"],
        "error_type": None,
        "cost_usd": 0.0015,
        "ttft_seconds": 0.25,
        **fields,
    }
    request.end(**outcome)


def by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is kind]


def parse_traceparent(header: str) -> tuple[int, int, int]:
    version, trace_id, span_id, flags = header.split("-")
    assert version == "00"
    assert (len(trace_id), len(span_id), len(flags)) == (32, 16, 2)
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


# -- off ---------------------------------------------------------------------------------------


def test_disabled_imports_nothing_from_opentelemetry() -> None:
    # A fresh interpreter: this test process has imported opentelemetry already.
    code = """
import sys
from nexus_core.config import NexusConfig
from nexus_core.http import AiohttpTransport
from nexus_core.telemetry import Tracing

tracing = Tracing(NexusConfig().telemetry)
request = tracing.start_request(
    operation="chat", model="m", front_door="openai", request_id="r", stream=False
)
tracing.shutdown()
print(tracing.enabled, request, sorted(name for name in sys.modules if "opentelemetry" in name))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "None", "[]"]


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # ``None`` in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)
    with pytest.raises(TelemetryError, match=r"nexusgw-core\[otel\]"):
        Tracing(TelemetryConfig(enabled=True))


# -- spans -------------------------------------------------------------------------------------


def test_request_and_attempt_spans(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    body = {
        "model": "llama3",
        "messages": [{"role": "user", "content": SECRET}],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": True,  # not a number: not recorded
        "seed": 7,
    }
    request = start(tracing, request=body, stream=True)
    first = request.attempt(
        backend="a", backend_type="vllm", url="http://10.0.0.5:8000/v1", model="llama3"
    )
    first.end(status=503, error_type="backend_unavailable")
    second = request.attempt(
        backend="b", backend_type="openai", url="https://api.example.com/v1", model="llama3"
    )
    second.end(status=200)
    finish(request)

    [server] = by_kind(exporter, SpanKind.SERVER)
    attempts = by_kind(exporter, SpanKind.CLIENT)
    assert len(attempts) == 2
    assert server.name == "chat llama3"
    assert server.parent is None
    assert server.status.status_code is StatusCode.UNSET
    assert dict(server.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "llama3",
        "gen_ai.request.stream": True,
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.seed": 7,
        "nexus.front_door": "openai",
        "nexus.request_id": "req-1",
        "http.response.status_code": 200,
        "nexus.backend": "b",
        "nexus.route_reason": "priority",
        "gen_ai.response.model": "llama3:8b",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "gen_ai.response.finish_reasons": ("stop",),
        "nexus.cost_usd": 0.0015,
        "nexus.ttft_seconds": 0.25,
        "gen_ai.response.time_to_first_chunk": 0.25,
    }
    assert server.context is not None
    for attempt in attempts:
        assert attempt.name == "chat llama3"
        assert attempt.parent is not None
        assert attempt.parent.span_id == server.context.span_id
        assert attempt.context is not None
        assert attempt.context.trace_id == server.context.trace_id

    first_span, second_span = sorted(attempts, key=lambda span: span.start_time or 0)
    assert dict(first_span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "vllm",
        "gen_ai.request.model": "llama3",
        "nexus.backend": "a",
        "nexus.attempt": 1,
        "server.address": "10.0.0.5",
        "server.port": 8000,
        "http.response.status_code": 503,
        "error.type": "backend_unavailable",
    }
    assert first_span.status.status_code is StatusCode.ERROR
    assert second_span.attributes is not None
    assert second_span.attributes["server.address"] == "api.example.com"
    assert second_span.attributes["server.port"] == 443
    assert second_span.attributes["nexus.attempt"] == 2
    assert "error.type" not in second_span.attributes
    assert second_span.status.status_code is StatusCode.UNSET

    everything = repr([dict(span.attributes or {}) for span in exporter.get_finished_spans()])
    assert SECRET not in everything


def test_failed_request_is_an_error(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    request = start(tracing, operation="embeddings", model="nomic")
    finish(request, status=502, error_type=None, backend=None, response_model=None)
    [server] = exporter.get_finished_spans()
    assert server.name == "embeddings nomic"
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["error.type"] == "502"
    assert "nexus.backend" not in server.attributes


def test_client_error_named_by_the_caller_is_an_error(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    request = start(tracing)
    finish(request, status=429, error_type="rate_limited")
    [server] = exporter.get_finished_spans()
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["error.type"] == "rate_limited"


def test_plain_client_error_is_not_a_server_error(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    request = start(tracing)
    finish(request, status=404)
    [server] = exporter.get_finished_spans()
    assert server.status.status_code is StatusCode.UNSET
    assert server.attributes is not None
    assert "error.type" not in server.attributes


def test_end_is_idempotent_and_closes_open_attempts(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    request = start(tracing)
    attempt = request.attempt(backend="a", backend_type="ollama", url="http://h:1", model="m")
    finish(request, status=200)
    finish(request, status=500, error_type="late")
    attempt.end(status=500)
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    [server] = by_kind(exporter, SpanKind.SERVER)
    [client] = by_kind(exporter, SpanKind.CLIENT)
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.status.status_code is StatusCode.UNSET
    assert client.attributes is not None
    assert "http.response.status_code" not in client.attributes


def test_incoming_traceparent_is_continued(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    trace_id, span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    request = start(
        tracing, traceparent=f"00-{trace_id:032x}-{span_id:016x}-01", tracestate="vendor=abc"
    )
    attempt = request.attempt(backend="a", backend_type="vllm", url="http://h:1", model="m")
    assert dict(attempt.headers)["tracestate"] == "vendor=abc"
    attempt.end(status=200)
    finish(request)
    [server] = by_kind(exporter, SpanKind.SERVER)
    assert server.context is not None
    assert server.context.trace_id == trace_id
    assert server.parent is not None
    assert server.parent.span_id == span_id
    assert server.parent.is_remote


def test_a_malformed_incoming_traceparent_starts_a_new_trace(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    finish(start(tracing, traceparent="00-not-a-trace-01"))
    [server] = exporter.get_finished_spans()
    assert server.parent is None


def test_gateways_do_not_share_providers(exporter: InMemorySpanExporter) -> None:
    other_exporter = InMemorySpanExporter()
    one = Tracing(TelemetryConfig(), exporter=exporter)
    other = Tracing(TelemetryConfig(), exporter=other_exporter)
    finish(start(one, request_id="one"))
    finish(start(other, request_id="other"))
    [first] = exporter.get_finished_spans()
    [second] = other_exporter.get_finished_spans()
    assert first.attributes is not None
    assert second.attributes is not None
    assert (first.attributes["nexus.request_id"], second.attributes["nexus.request_id"]) == (
        "one",
        "other",
    )
    # The process-wide provider is left alone.
    assert not hasattr(trace.get_tracer_provider(), "add_span_processor")
    one.shutdown()
    other.shutdown()


# -- traceparent on the wire -------------------------------------------------------------------


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[FakeBackend]:
    async with FakeBackend("a") as backend:
        yield backend


@pytest.mark.anyio
@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
async def test_traceparent_reaches_the_backend(
    client: str, fake: FakeBackend, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    transport = make_transport(client)
    url = fake.url + "/v1/chat/completions"
    try:
        await transport.post(url, CHAT, HEADERS, stream=False, timeouts=FAST)
        request = start(tracing)
        attempt = request.attempt(backend="a", backend_type="vllm", url=url, model="fake-model")
        with attempt:
            await transport.post(url, CHAT, HEADERS, stream=False, timeouts=FAST)
        assert TRACE_HEADERS.get() is None
        await transport.post(url, CHAT, HEADERS, stream=False, timeouts=FAST)
        attempt.end(status=200)
        finish(request)
    finally:
        await transport.aclose()

    before, during, after = fake.inference_requests
    assert "traceparent" not in before.headers
    assert "traceparent" not in after.headers
    assert "tracestate" not in during.headers
    [client_span] = by_kind(exporter, SpanKind.CLIENT)
    assert client_span.context is not None
    trace_id, span_id, flags = parse_traceparent(during.headers["traceparent"])
    assert (trace_id, span_id) == (client_span.context.trace_id, client_span.context.span_id)
    assert flags & 0x01  # sampled (newer SDKs also set 0x02, "random trace id")
    # The caller's own headers are still sent.
    assert during.headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_activate_and_deactivate(tracing: Tracing) -> None:
    attempt = start(tracing).attempt(backend="a", backend_type="vllm", url="http://h:1", model="m")
    attempt.activate()
    assert TRACE_HEADERS.get() == attempt.headers
    attempt.deactivate()
    attempt.deactivate()
    assert TRACE_HEADERS.get() is None


# -- OTLP/HTTP export --------------------------------------------------------------------------


class Collector:
    """A stand-in OTLP/HTTP collector on 127.0.0.1 that keeps what is posted to it."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, bytes]] = []
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        self.posts.append((request.path, request.content_type, await request.read()))
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")


@pytest.fixture
async def collector(anyio_backend: str) -> AsyncIterator[Collector]:
    collector = Collector()
    app = web.Application()
    app.router.add_post("/{path:.*}", collector.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    collector.url = f"http://{host}:{port}"
    try:
        yield collector
    finally:
        await runner.cleanup()


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy and no OTLP settings from the environment running the tests."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_TRACES_SAMPLER",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.anyio
@pytest.mark.parametrize("configured_by", ["config", "environment"])
async def test_spans_are_exported_over_otlp_http(
    configured_by: str, collector: Collector, otel_env: pytest.MonkeyPatch
) -> None:
    if configured_by == "config":
        config = TelemetryConfig.model_validate(
            {"enabled": True, "otlp_endpoint": collector.url, "service_name": "nexus-test"}
        )
    else:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        config = TelemetryConfig(enabled=True, service_name="nexus-test")
    tracing = Tracing(config)
    request = start(tracing)
    request.attempt(backend="a", backend_type="vllm", url="http://h:1", model="m").end(status=200)
    finish(request)
    # The exporter posts from a thread with a blocking client; the collector runs on this loop.
    await tracing.aclose()
    await tracing.aclose()

    [(path, content_type, body)] = collector.posts
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    export = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "nexus-test"
    names = sorted(span.name for scope in resource_spans.scope_spans for span in scope.spans)
    assert names == ["chat llama3", "chat m"]
