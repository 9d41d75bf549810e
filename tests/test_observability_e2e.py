"""Metrics, stats, history and JSON logs after one mixed workload (ok, error, stream, failover).

The workload goes through the real ``openai`` SDK (and raw HTTP for a malformed body); ``/metrics``
is read with Prometheus's own parser; logs come from a real ``nexus serve`` process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus_core.testing import Behaviour, FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config, nexus_serve

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "log-schema.json").read_text("utf-8")
)
SECRET = "the-prompt-text-must-never-be-logged"
MESSAGES: list[Any] = [{"role": "user", "content": SECRET}]


def samples(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def workload(server: RunningServer, fakes: list[FakeBackend]) -> dict[str, Any]:
    """Five requests: two answered by a, one failed over to b, one 404, one malformed."""
    a = fakes[0]
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    ids: dict[str, Any] = {}
    raw = client.chat.completions.with_raw_response.create(model="fake-model", messages=MESSAGES)
    ids["ok"] = raw.headers["x-request-id"]
    ids["ok_usage"] = raw.parse().usage
    chunks = list(
        client.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ids["stream_usage"] = chunks[-1].usage
    a.push(Behaviour(status=500, times=1))
    raw = client.chat.completions.with_raw_response.create(model="fake-model", messages=MESSAGES)
    assert raw.headers["x-nexus-backend"] == "b"
    ids["failover"] = raw.headers["x-request-id"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="made-up-by-a-client", messages=MESSAGES)
    bad = httpx.post(
        server.base_url + "/chat/completions",
        content=b"{oops",
        headers={"content-type": "application/json", "x-request-id": "bad-1"},
    )
    assert bad.status_code == 400
    return ids


@pytest.fixture
def observed(fakes: list[FakeBackend]) -> Iterator[tuple[RunningServer, dict[str, Any]]]:
    a, b, _ = fakes
    with running_server(gateway_config(a, b, strategy="priority_only")) as server:
        yield server, workload(server, fakes)


def test_metrics_count_the_workload_exactly(
    observed: tuple[RunningServer, dict[str, Any]],
) -> None:
    server, ids = observed
    found = samples(server)
    requests = "nexus_requests_total"
    ok_a = {"model": "fake-model", "backend": "a", "status": "200", "front_door": "openai"}
    assert value(found, requests, **ok_a) == 2
    assert value(found, requests, **{**ok_a, "backend": "b"}) == 1
    # The client's invented model name is not a label.
    assert (
        value(found, requests, model="unknown", backend="", status="404", front_door="openai") == 1
    )
    assert (
        value(found, requests, model="unknown", backend="", status="400", front_door="openai") == 1
    )
    assert sum(v for (n, _), v in found.items() if n == requests) == 5
    errors = "nexus_errors_total"
    assert value(found, errors, error_type="model_not_found", model="unknown") == 1
    assert value(found, errors, error_type="invalid_json", model="unknown") == 1
    assert value(found, "nexus_failovers_total", from_backend="a", to_backend="b") == 1
    duration = "nexus_request_duration_seconds_count"
    assert value(found, duration, model="fake-model", backend="a") == 2
    assert value(found, duration, model="fake-model", backend="b") == 1
    assert (
        value(found, "nexus_time_to_first_token_seconds_count", model="fake-model", backend="a")
        == 1
    )
    ok_usage, stream_usage = ids["ok_usage"], ids["stream_usage"]
    assert value(found, "nexus_tokens_total", model="fake-model", backend="a", type="prompt") == (
        ok_usage.prompt_tokens + stream_usage.prompt_tokens
    )
    assert value(
        found, "nexus_tokens_total", model="fake-model", backend="a", type="completion"
    ) == (ok_usage.completion_tokens + stream_usage.completion_tokens)
    assert value(found, "nexus_backend_healthy", backend="a") == 1
    assert value(found, "nexus_pending_requests", backend="a") == 0
    assert ("nexus_queue_depth", ()) in found
    assert ("nexus_budget_spend_usd", ()) in found


def test_stats_and_history_match_the_workload(
    observed: tuple[RunningServer, dict[str, Any]],
) -> None:
    server, ids = observed
    stats = httpx.get(server.url + "/v1/stats").json()
    assert stats["requests"] == {"total": 5, "errors": 2}
    backends = {b["name"]: b for b in stats["backends"]}
    assert backends["a"]["requests"] == 2
    assert backends["a"]["streams"] == 1
    assert backends["a"]["upstream_errors"] == 1  # the attempt that failed over
    assert backends["b"]["requests"] == 1
    assert backends["a"]["latency_ms"]["p95"] >= backends["a"]["latency_ms"]["avg"] > 0
    assert backends["a"]["ttft_ms"]["avg"] > 0
    assert set(backends) == {"a", "b"}
    models = {m["model"]: m for m in stats["models"]}
    assert models["fake-model"]["requests"] == 3
    assert models["fake-model"]["tokens"]["completion"] > 0
    assert stats["queue"]["depth"] == 0
    assert stats["budget"]["spent_usd"] == 0
    history = httpx.get(server.url + "/v1/history").json()["data"]
    assert [h["status"] for h in history] == [400, 404, 200, 200, 200]
    assert history[0]["request_id"] == "bad-1"
    assert history[0]["error"] == "invalid_json"
    failover = history[2]
    assert failover["request_id"] == ids["failover"]
    assert (failover["backend"], failover["route_reason"], failover["retries"]) == (
        "b",
        "failover",
        1,
    )
    stream = history[3]
    assert stream["stream"] is True
    assert stream["ttft_ms"] is not None
    assert stream["completion_tokens"] == ids["stream_usage"].completion_tokens
    assert history[4]["request_id"] == ids["ok"]
    assert all(SECRET not in json.dumps(h) for h in history)


def test_streams_and_client_aborts_are_counted(fakes: list[FakeBackend]) -> None:
    a = fakes[0]
    a.behave(Behaviour(cut_after_events=2))
    with running_server(gateway_config(a)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True))
        found = samples(server)
        history = httpx.get(server.url + "/v1/history").json()["data"]
    assert value(found, "nexus_errors_total", error_type="stream_broken", model="fake-model") == 1
    assert history[0]["error"] == "stream_broken"
    assert history[0]["status"] == 200  # the headers had gone out


def test_json_logs_follow_the_schema_and_hold_no_prompt(
    fakes: list[FakeBackend], tmp_path: Path
) -> None:
    a = fakes[0]
    config = tmp_path / "nexus.toml"
    config.write_text(
        f'[[backends]]\nname = "a"\nurl = "{a.url}"\n\n[state]\nbackend = "memory"\n',
        encoding="utf-8",
    )
    with nexus_serve(config, env={"NEXUS_LOG_FORMAT": "json"}) as (process, base):
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        client.chat.completions.create(model="fake-model", messages=MESSAGES)
        list(client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True))
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=MESSAGES)
        process.terminate()
        process.wait(15)
    text = config.with_suffix(".log").read_text(encoding="utf-8")
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, text
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    requests = [line["request"] for line in lines if line["logger"] == "nexus.requests"]
    assert [(r["model"], r["status"], r["stream"]) for r in requests] == [
        ("fake-model", 200, False),
        ("fake-model", 200, True),
        ("nope", 404, False),
    ]
    assert all(line["level"] == "info" for line in lines if "request" in line)


@pytest.mark.anyio
async def test_one_span_per_request_with_a_child_per_attempt(fakes: list[FakeBackend]) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    from nexus_core.gateway import Gateway

    a, b, _ = fakes
    a.push(Behaviour(status=500, times=1))
    exporter = InMemorySpanExporter()
    config = gateway_config(a, b, strategy="priority_only")
    config["state"] = {"backend": "memory"}
    async with Gateway(config, span_exporter=exporter) as gateway:
        answer = await gateway.chat_completions(
            {"model": "fake-model", "messages": MESSAGES, "max_tokens": 20}
        )
    spans = exporter.get_finished_spans()
    request = next(s for s in spans if s.kind is SpanKind.SERVER)
    attempts = sorted(
        (s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0
    )
    assert request.name == "chat fake-model"
    assert request.attributes is not None
    assert request.attributes["gen_ai.operation.name"] == "chat"
    assert request.attributes["gen_ai.request.max_tokens"] == 20
    assert request.attributes["gen_ai.response.model"] == "fake-model"
    assert request.attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert request.attributes["nexus.backend"] == "b"
    assert request.attributes["nexus.route_reason"] == "failover"
    assert [s.attributes["nexus.backend"] for s in attempts if s.attributes] == ["a", "b"]
    assert all(
        s.parent is not None and s.parent.span_id == request.context.span_id for s in attempts
    )
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[1].status.status_code is not StatusCode.ERROR
    # The backend that answered saw the trace context of its own attempt span.
    traceparent = b.inference_requests[-1].headers["traceparent"]
    context = attempts[1].context
    assert traceparent.split("-")[1:3] == [f"{context.trace_id:032x}", f"{context.span_id:016x}"]
    assert all(SECRET not in str(s.attributes) for s in spans)


@pytest.mark.anyio
@pytest.mark.parametrize("content_logging", [False, True])
async def test_content_is_logged_only_when_asked(
    fakes: list[FakeBackend], caplog: pytest.LogCaptureFixture, content_logging: bool
) -> None:
    from nexus_core.gateway import Gateway

    config = gateway_config(fakes[0])
    config["logging"] = {"enable_content_logging": content_logging}
    caplog.set_level(logging.INFO, logger="nexus.requests")
    async with Gateway(config) as gateway:
        await gateway.chat_completions({"model": "fake-model", "messages": MESSAGES})
    lines = [r for r in caplog.records if r.name == "nexus.requests"]
    assert len(lines) == 1
    fields = lines[0].nexus  # type: ignore[attr-defined]
    jsonschema.validate(fields, SCHEMA["$defs"]["request"])
    if content_logging:
        assert SECRET in fields["prompt"]
        assert "Hello from a" in fields["answer"]
    else:
        assert "prompt" not in fields
        assert SECRET not in caplog.text
