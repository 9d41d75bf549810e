"""How an upstream answer is classified, and what of it may reach a client."""

from __future__ import annotations

import json

import pytest

from nexus_core.adapters import RETRYABLE_KINDS, BackendError, ErrorKind, ResponseLimits, clip
from nexus_core.errors import MESSAGE_CHARS, backend_message
from nexus_core.failover import client_error, is_json


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (301, ErrorKind.REDIRECT),
        (302, ErrorKind.REDIRECT),
        (307, ErrorKind.REDIRECT),
        (308, ErrorKind.REDIRECT),
        (304, ErrorKind.REDIRECT),
        (400, ErrorKind.CLIENT_ERROR),
        (404, ErrorKind.CLIENT_ERROR),
        (429, ErrorKind.OVERLOADED),
        (500, ErrorKind.SERVER_ERROR),
        (599, ErrorKind.SERVER_ERROR),
        (101, ErrorKind.MALFORMED),
        (200, ErrorKind.MALFORMED),
    ],
)
def test_from_status_kinds(status: int, kind: ErrorKind) -> None:
    error = BackendError.from_status(status, b"")
    assert (error.kind, error.status) == (kind, status)
    assert error.message.startswith(f"backend answered HTTP {status}")


def test_too_large_and_redirect_fail_over() -> None:
    assert {ErrorKind.TOO_LARGE, ErrorKind.REDIRECT} <= RETRYABLE_KINDS
    assert ErrorKind.TOO_LARGE.value == "response_too_large"
    assert ErrorKind.REDIRECT.value == "redirect"


def test_a_redirect_names_its_location_clipped_and_without_control_characters() -> None:
    location = "http://evil.example/\x1b[2J\r\nX-Injected: 1/" + "a" * 500
    error = BackendError.from_status(302, b"Found", {"location": location})
    assert error.kind is ErrorKind.REDIRECT
    assert "a redirect to 'http://evil.example/ [2J X-Injected: 1/aaa" in error.message
    assert "does not follow redirects" in error.message
    assert not any(ord(c) < 32 or c == "\x7f" for c in error.message)
    assert len(error.message) < 320
    without = BackendError.from_status(307, b"")
    assert (
        without.message == "backend answered HTTP 307, a redirect (Nexus does not follow redirects)"
    )


def test_clip() -> None:
    assert clip("  a\r\nb\tc\x1b[31m  d\u2028e\x9b2J\udc9bf ") == "a b c [31m d e 2J f"
    assert clip("x" * 300) == "x" * 200 + "..."
    assert clip("x" * 30, 10) == "x" * 10 + "..."
    assert clip("") == ""


def test_limit_errors_name_their_setting() -> None:
    limits = ResponseLimits(body=100, headers=200, event=300)
    assert limits.body_error().kind is ErrorKind.TOO_LARGE
    assert "100 bytes (server.max_response_body_bytes)" in limits.body_error().message
    assert "200 bytes (server.max_response_header_bytes)" in limits.headers_error().message
    assert "300 bytes (server.max_stream_event_bytes)" in limits.event_error().message
    defaults = ResponseLimits()
    assert (defaults.body, defaults.headers, defaults.event) == (128 << 20, 64 << 10, 16 << 20)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/problem+json", True),
        ("application/vnd.api+json; charset=utf-8", True),
        ("text/html", False),
        ("text/html; charset=utf-8", False),
        ("text/plain", False),
        ("application/jsonp", False),
        ("text/event-stream", False),
        ("", False),
    ],
)
def test_is_json(content_type: str, expected: bool) -> None:
    assert is_json(content_type) is expected


def test_a_json_4xx_is_passed_through_with_its_status_as_json() -> None:
    body = b'{"error":{"message":"context length exceeded","code":"context_length_exceeded"}}'
    exc = BackendError.from_status(
        400, body, {"content-type": "application/problem+json; charset=utf-8"}
    )
    error = client_error(exc, "gpu")
    assert error.status == 400
    assert error.body() == body
    assert error.content_type == "application/json"  # Nexus's own, not the backend's
    assert error.headers["X-Nexus-Backend"] == "gpu"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><script>alert(1)</script>\x1b[31m\r\nX-Injected: 1</html>", "text/html"),
        (b'{"error": "looks like json"}', "text/html"),  # the type says HTML: not passed on
        (b"{not json", "application/json"),  # the type says JSON, the body is not
        (b"", "application/json"),
    ],
    ids=["html", "json-as-html", "broken-json", "empty"],
)
def test_any_other_4xx_becomes_the_doors_envelope_with_a_clean_excerpt(
    body: bytes, content_type: str
) -> None:
    exc = BackendError.from_status(403, body, {"content-type": content_type})
    error = client_error(exc, "gpu")
    assert error.status == 403
    assert error.raw_body is None
    assert error.content_type == "application/json"
    envelope = json.loads(error.body())
    message = envelope["error"]["message"]
    assert message.startswith("Backend 'gpu' answered HTTP 403")
    assert envelope["error"]["code"] == "upstream_client_error"
    assert not any(ord(c) < 32 for c in message)
    if body:
        assert clip(body.decode()) in message
    else:
        assert message == "Backend 'gpu' answered HTTP 403"


def test_a_long_4xx_excerpt_is_clipped() -> None:
    exc = BackendError.from_status(404, b"Not found " * 1000, {"content-type": "text/plain"})
    message = client_error(exc, "gpu").message
    assert len(message) <= len("Backend 'gpu' answered HTTP 404: ") + 203
    assert message.endswith("...")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # OpenAI's envelope (vLLM, llama-server, LM Studio, OpenAI itself)
        (
            b'{"error":{"message":"maximum context length is 4096","code":"400"}}',
            "maximum context length is 4096",
        ),
        # Ollama's own shape
        (b'{"error":"model requires more system memory"}', "model requires more system memory"),
        # Anthropic's shape
        (
            b'{"type":"error","error":{"type":"invalid_request_error",'
            b'"message":"prompt is too long"}}',
            "prompt is too long",
        ),
        # vLLM's older shape, FastAPI's validation error
        (b'{"object":"error","message":"bad temperature","code":400}', "bad temperature"),
        (b'{"detail":"Not authenticated"}', "Not authenticated"),
        # Text, with control characters that must not reach a log or a terminal
        (b"Bad Request: \x1b[31mno\r\nX-Injected: 1", "Bad Request: [31mno X-Injected: 1"),
        # Nothing to say
        (b'{"error":{"code":400}}', None),
        (b"[1,2]", None),
        (b"", None),
    ],
    ids=[
        "openai",
        "ollama",
        "anthropic",
        "vllm-old",
        "fastapi",
        "text",
        "no-message",
        "list",
        "empty",
    ],
)
def test_backend_message_reads_every_wire(body: bytes, message: str | None) -> None:
    assert backend_message(body) == message


def test_backend_message_is_clipped() -> None:
    message = backend_message(json.dumps({"error": {"message": "y" * 5000}}).encode())
    assert message is not None
    assert len(message) == MESSAGE_CHARS + 3
    assert message.endswith("...")


def test_a_json_4xx_carries_the_backends_message_for_the_other_doors() -> None:
    body = b'{"error":"this model does not support tools"}'
    exc = BackendError.from_status(400, body, {"content-type": "application/json"})
    error = client_error(exc, "box")
    assert error.body() == body  # the OpenAI door passes the body on
    assert error.message == "this model does not support tools"  # the others get its message
    silent = client_error(
        BackendError.from_status(422, b"{}", {"content-type": "application/json"}), "box"
    )
    assert silent.message == "Backend 'box' answered HTTP 422"
