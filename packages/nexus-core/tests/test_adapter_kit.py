"""The adapter kit: error bodies read and rewritten, quirks, the bearer header, the probe GET."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from nexus_core import (
    ErrorBody,
    ErrorQuirk,
    OpenAIWireAdapter,
    UpstreamErrors,
    bearer,
    error_envelope,
    probe_get,
    read_error,
    refused,
)
from nexus_core.adapter_kit import (
    ErrorShape,
    http_phrase,
    lifecycle_call,
    openai_error_type,
    poll_until,
)
from nexus_core.adapters import (
    NO_LIFECYCLE,
    AvailableModel,
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    ModelInventory,
    ModelState,
    ProbeResult,
    ResponseLimits,
    lifecycle_of,
    lifecycle_support,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.testing import (
    Attack,
    Behaviour,
    FakeBackend,
    HostileBackend,
    closed_port_url,
)
from nexus_core.testing.contract import FAST

pytestmark = pytest.mark.anyio


def upstream(status: int, payload: Any, **headers: str) -> BackendError:
    """What the transport raises for an error answer (``payload``: JSON, or raw bytes)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return BackendError.from_status(status, body, {"content-type": "application/json", **headers})


def envelope(error: BackendError) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(error.body)["error"]
    return value


# -- reading error bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "shape", "fields"),
    [
        (
            b'{"error":{"message":"m","type":"t","param":"p","code":"c","extra":1}}',
            ErrorShape.ENVELOPE,
            ("m", "t", "p", "c"),
        ),
        (
            b'{"error":{"message":"m","type":"NotFound","code":404}}',
            ErrorShape.ENVELOPE,
            ("m", "NotFound", None, 404),
        ),
        (b'{"error":"server busy"}', ErrorShape.TEXT_ERROR, ("server busy", None, None, None)),
        (
            b'{"object":"error","message":"bad","type":"BadRequestError","code":400}',
            ErrorShape.FLAT,
            ("bad", "BadRequestError", None, 400),
        ),
        (b'{"detail":"Not Found"}', ErrorShape.DETAIL, ("Not Found", None, None, None)),
        (
            b'{"detail":[{"loc":["body","messages",0],"msg":"Field required"},{"loc":["query"],'
            b'"msg":"x"}]}',
            ErrorShape.DETAIL,
            ("messages.0: Field required; query: x", None, "messages.0", None),
        ),
        (
            b"Internal \x1b[2J Server\r\nError",
            ErrorShape.TEXT,
            ("Internal [2J Server Error", None, None, None),
        ),
        (b"  ", ErrorShape.EMPTY, (None, None, None, None)),
        (b"[1, 2]", ErrorShape.OTHER, (None, None, None, None)),
        (b'{"error":{"code":true,"param":3}}', ErrorShape.ENVELOPE, (None, None, None, None)),
    ],
)
def test_read_error_reads_every_shape(
    body: bytes, shape: ErrorShape, fields: tuple[Any, ...]
) -> None:
    read = read_error(body)
    assert read.shape is shape
    assert (read.message, read.type, read.param, read.code) == fields


def test_the_status_types_and_phrases() -> None:
    assert [openai_error_type(s) for s in (400, 401, 403, 404, 429, 500, 503)] == [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "invalid_request_error",
        "rate_limit_error",
        "server_error",
        "server_error",
    ]
    assert (http_phrase(404), http_phrase(529)) == ("Not Found", "Error")
    assert json.loads(error_envelope("m", "t", code="c")) == {
        "error": {"message": "m", "type": "t", "param": None, "code": "c"}
    }


# -- the normaliser -------------------------------------------------------------------------------


def test_errors_that_are_not_http_answers_pass_as_they_are() -> None:
    errors = UpstreamErrors(
        "x", body=ErrorBody.OPENAI, quirks=[ErrorQuirk(kind=ErrorKind.OVERLOADED)]
    )
    for error in (
        BackendError(ErrorKind.CONNECT, "cannot connect"),
        BackendError(ErrorKind.TIMEOUT, "no response within 1 s"),
        BackendError.from_status(302, b"Found", {"location": "http://elsewhere/"}),
    ):
        assert errors.normalise(error) is error


def test_the_default_keeps_every_error_as_it_is() -> None:
    error = upstream(400, {"error": "whatever"})
    assert UpstreamErrors().normalise(error) is error


def test_openai_bodies_are_rebuilt_from_what_the_server_said() -> None:
    errors = UpstreamErrors("exo", body=ErrorBody.OPENAI)
    # exo: an HTTP phrase for a type, an int code.
    exo = errors.normalise(
        upstream(400, {"error": {"message": "Bad", "type": "Bad Request", "code": 400}})
    )
    assert envelope(exo) == {
        "message": "Bad",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    # LocalAI: an empty type, a string code of its own, extra keys; and no body at all.
    loading = errors.normalise(
        upstream(
            503,
            {
                "error": {"code": "model_loading", "message": "m", "type": "model_loading"},
                "loading": {},
            },
        )
    )
    assert envelope(loading) == {
        "message": "m",
        "type": "model_loading",
        "param": None,
        "code": "model_loading",
    }
    opaque = errors.normalise(upstream(403, b""))
    assert envelope(opaque) == {
        "message": "exo answered HTTP 403 (Forbidden)",
        "type": "permission_error",
        "param": None,
        "code": None,
    }
    # FastAPI's validation list and a plain-text page.
    invalid = errors.normalise(
        upstream(422, {"detail": [{"loc": ["body", "model"], "msg": "missing"}]})
    )
    assert envelope(invalid) == {
        "message": "model: missing",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }
    text = errors.normalise(
        upstream(500, b"Internal Server Error", **{"content-type": "text/plain"})
    )
    assert envelope(text)["message"] == "Internal Server Error"
    assert (text.kind, text.status, text.message) == (
        ErrorKind.SERVER_ERROR,
        500,
        "backend answered HTTP 500",
    )


def test_an_envelope_that_is_already_openais_passes_untouched() -> None:
    body = (
        b'{"error":{"message":"too long","type":"invalid_request_error","param":"messages",'
        b'"code":"context_length_exceeded"},"x":1}'
    )
    error = upstream(400, body)
    assert UpstreamErrors(body=ErrorBody.OPENAI).normalise(error) is error


def test_a_rewritten_body_is_labelled_json_and_keeps_the_rest() -> None:
    error = BackendError.from_status(
        503,
        b'{"error":"busy"}',
        {
            "Content-Type": "text/plain",
            "Content-Length": "16",
            "retry-after": "7",
            "x-request-id": "r1",
        },
    )
    rewritten = UpstreamErrors(body=ErrorBody.OPENAI).normalise(error)
    assert rewritten is not error
    assert dict(rewritten.headers) == {
        "retry-after": "7",
        "x-request-id": "r1",
        "content-type": "application/json",
    }
    assert (rewritten.kind, rewritten.status, rewritten.retry_after) == (
        ErrorKind.SERVER_ERROR,
        503,
        7.0,
    )
    assert rewritten.retryable


def test_string_codes_keep_the_servers_object_and_fix_its_code() -> None:
    errors = UpstreamErrors("vLLM", body=ErrorBody.STRING_CODES, error_type=http_phrase)
    sent = {
        "error": {
            "message": "m",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
            "n_ctx": 512,
        },
        "top": 1,
    }
    assert json.loads(errors.rewrite(json.dumps(sent).encode(), 404)) == {
        "error": {
            "message": "m",
            "type": "NotFoundError",
            "param": "model",
            "code": "404",
            "n_ctx": 512,
        },
        "top": 1,
    }
    assert json.loads(errors.rewrite(b'{"error":"Unauthorized"}', 401)) == {
        "error": {"message": "Unauthorized", "type": "Unauthorized", "param": None, "code": "401"}
    }
    for body in (b'{"error":{"message":"m","code":"x"}}', b'{"error":{"code":null}}', b"text", b""):
        assert errors.rewrite(body, 400) is body


def test_a_quirk_reclassifies_without_touching_the_body() -> None:
    busy = ErrorQuirk(
        status=503, says="SERVER BUSY", kind=ErrorKind.OVERLOADED, message="busy: {message}"
    )
    errors = UpstreamErrors("Ollama", quirks=[busy])
    error = upstream(503, {"error": "server busy, please try again"})
    classified = errors.normalise(error)
    assert (classified.kind, classified.message) == (
        ErrorKind.OVERLOADED,
        "busy: server busy, please try again",
    )
    assert classified.body is error.body
    assert classified.headers is error.headers
    for other in (
        upstream(503, {"error": "model failed to load"}),
        upstream(500, {"error": "server busy"}),
    ):
        assert errors.normalise(other) is other


def test_a_quirk_code_fills_in_only_where_the_server_sent_no_string_code() -> None:
    errors = UpstreamErrors(
        body=ErrorBody.STRING_CODES,
        quirks=[ErrorQuirk(error_type="exceed_context_size_error", code="context_length_exceeded")],
    )
    too_long = {"error": {"message": "m", "type": "exceed_context_size_error", "code": 400}}
    assert envelope(errors.normalise(upstream(400, too_long)))["code"] == "context_length_exceeded"
    named = upstream(
        400, {"error": {"message": "m", "type": "exceed_context_size_error", "code": "own"}}
    )
    assert errors.normalise(named) is named
    localai = UpstreamErrors(
        body=ErrorBody.OPENAI, quirks=[ErrorQuirk(status=404, says="model", code="model_not_found")]
    )
    assert (
        envelope(
            localai.normalise(
                upstream(404, {"error": {"message": "model x not found", "code": 404}})
            )
        )["code"]
        == "model_not_found"
    )
    assert (
        envelope(localai.normalise(upstream(404, {"error": {"message": "no route", "code": 404}})))[
            "code"
        ]
        is None
    )


def test_adjust_and_message_say_it_the_servers_way() -> None:
    import dataclasses

    errors = UpstreamErrors(
        "Anthropic",
        body=ErrorBody.OPENAI,
        message="Anthropic answered HTTP {status} ({code}): {message}",
        adjust=lambda fields: dataclasses.replace(
            fields, type="insufficient_quota", code=fields.type
        ),
    )
    error = errors.normalise(
        upstream(400, {"type": "error", "error": {"type": "billing_error", "message": "pay"}})
    )
    assert error.message == "Anthropic answered HTTP 400 (billing_error): pay"
    assert envelope(error) == {
        "message": "pay",
        "type": "insufficient_quota",
        "param": None,
        "code": "billing_error",
    }


def test_refused_is_a_client_error_the_client_sees_as_it_is() -> None:
    error = refused(404, "chat only", param="model")
    assert (error.kind, error.status, error.retryable) == (ErrorKind.CLIENT_ERROR, 404, False)
    assert error.headers["content-type"] == "application/json"
    assert envelope(error) == {
        "message": "chat only",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }


def test_bearer_is_the_backends_own_key_or_nothing() -> None:
    assert bearer("sk-1") == {"Authorization": "Bearer sk-1"}
    assert bearer(None) == bearer("") == {}


# -- the probe GET --------------------------------------------------------------------------------


@pytest.fixture
async def clients(anyio_backend: str) -> AsyncIterator[HttpClients]:
    clients = HttpClients(limits=ResponseLimits(body=64 * 1024), probe_deadline=0.5)
    yield clients
    await clients.aclose()


async def test_probe_get_parses_json_and_sends_the_headers(clients: HttpClients) -> None:
    async with FakeBackend(models=("m1",), api_key="k") as fake:
        listed = await probe_get(clients, fake.url + "/v1/models", bearer("k"))
        refused_key = await probe_get(clients, fake.url + "/v1/models")
        missing = await probe_get(clients, fake.url + "/nowhere", bearer("k"))
    assert (listed.ok, listed.failure) == (True, None)
    assert [card["id"] for card in listed.get("data")] == ["m1"]
    assert listed.headers["content-type"].startswith("application/json")
    assert (refused_key.status, refused_key.ok) == (401, False)
    assert missing.status == 404
    assert missing.get("data") is None
    assert missing.get("error")["message"] == "Invalid URL (GET /nowhere)"


async def test_probe_get_classifies_what_never_answered(clients: HttpClients) -> None:
    dead = await probe_get(clients, closed_port_url() + "/health")
    assert (dead.status, dead.refused) == (0, True)
    assert str(dead.failure).startswith("cannot connect")
    assert dead.unreachable() == ProbeResult(BackendStatus.UNHEALTHY, detail=dead.failure)
    async with HostileBackend(drip_seconds=0.05) as hostile:
        hostile.probes = True
        hostile.attack = Attack.HTML_OK
        page = await probe_get(clients, hostile.url + "/v1/models")
        hostile.attack = Attack.DRIP
        slow = await probe_get(clients, hostile.url + "/v1/models")
        hostile.attack = Attack.ENDLESS_BODY
        flood = await probe_get(clients, hostile.url + "/v1/models")
    assert (page.status, page.payload, page.failure) == (200, None, None)
    assert page.text.startswith("<!doctype html>")
    assert (slow.failure, slow.refused) == ("probe timed out", False)
    assert "server.max_response_body_bytes" in str(flood.failure)
    invalid = await probe_get(clients, "http://[::1")
    assert str(invalid.failure).startswith("invalid URL")


# -- lifecycle calls ------------------------------------------------------------------------------


async def test_lifecycle_call_sends_json_and_answers_any_status(clients: HttpClients) -> None:
    async with FakeBackend(models=("m1",), api_key="k") as fake:
        answer = await lifecycle_call(
            clients, "POST", fake.url + "/nowhere", bearer("k"), body={"model": "m1"}, timeout=5
        )
        listed = await lifecycle_call(clients, "GET", fake.url + "/v1/models", timeout=5)
    assert answer.status == 404
    sent = fake.requests[0]
    assert (sent.json, sent.headers["authorization"]) == ({"model": "m1"}, "Bearer k")
    assert sent.headers["content-type"] == "application/json"
    assert listed.status == 401  # no key: an answer like any other, for the adapter to read


async def test_lifecycle_call_raises_what_never_answered(clients: HttpClients) -> None:
    with pytest.raises(BackendError) as dead:
        await lifecycle_call(clients, "GET", closed_port_url() + "/models", timeout=5)
    assert dead.value.kind is ErrorKind.CONNECT
    async with HostileBackend(drip_seconds=0.05) as hostile:
        hostile.probes = True
        hostile.attack = Attack.DRIP
        with pytest.raises(BackendError) as slow:
            await lifecycle_call(clients, "GET", hostile.url + "/v1/models", timeout=0.3)
        hostile.attack = Attack.ENDLESS_BODY
        with pytest.raises(BackendError) as flood:
            await lifecycle_call(clients, "GET", hostile.url + "/v1/models", timeout=30)
    assert slow.value.kind is ErrorKind.TIMEOUT
    assert "within 0.3 s" in slow.value.message
    assert flood.value.kind is ErrorKind.TOO_LARGE


async def test_poll_until_returns_the_first_answer_or_times_out() -> None:
    answers = iter([None, None, "ready"])

    async def check() -> str | None:
        return next(answers)

    assert await poll_until(check, timeout=5, what="x", interval=0.01) == "ready"

    async def never() -> str | None:
        return None

    with pytest.raises(BackendError) as info:
        await poll_until(never, timeout=0.1, what="loading 'm' on b", interval=0.01)
    assert info.value.kind is ErrorKind.TIMEOUT
    assert info.value.message == "loading 'm' on b: not done within 0.1 s"


async def test_an_adapter_without_lifecycle_operations_supports_none(
    clients: HttpClients,
) -> None:
    generic = OpenAIWireAdapter(BackendConfig(name="g", url="http://127.0.0.1:9"), clients)
    assert lifecycle_of(generic) is None
    support = await lifecycle_support(generic)
    assert support is NO_LIFECYCLE
    assert (support.available_models, support.load, support.unload) == (False, False, False)


def test_inventory_memory_and_lookups() -> None:
    inventory = ModelInventory(
        (
            AvailableModel("a", ModelState.LOADED, memory_bytes=3),
            AvailableModel("b", ModelState.SLEEPING),
        ),
        memory_total_bytes=10,
        memory_used_bytes=3,
    )
    assert inventory.memory_free_bytes == 7
    assert ModelInventory(memory_used_bytes=3).memory_free_bytes is None
    assert inventory.in_state(ModelState.SLEEPING, ModelState.LOADING) == ("b",)
    entry = inventory.get("a")
    assert entry is not None
    assert entry.loaded
    assert inventory.get("c") is None
    error = LifecycleError(LifecycleFailure.LOAD_FAILED, "no memory", status=500)
    assert (error.kind, error.retryable, error.status) == (ErrorKind.SERVER_ERROR, True, 500)
    assert LifecycleError(LifecycleFailure.UNKNOWN_MODEL, "x").kind is ErrorKind.CLIENT_ERROR


# -- the base class applies it --------------------------------------------------------------------


class BusyServerAdapter(OpenAIWireAdapter):
    """A third-party adapter that only declares its server's quirks."""

    type_name: ClassVar[str] = "busy-server"
    errors: ClassVar[UpstreamErrors] = UpstreamErrors(
        "busy-server",
        body=ErrorBody.OPENAI,
        quirks=[ErrorQuirk(status=503, says="server busy", kind=ErrorKind.OVERLOADED)],
    )


class ShoutingAdapter(OpenAIWireAdapter):
    """One that rewrites its streams."""

    type_name: ClassVar[str] = "shouting"

    def stream_events(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async def shout() -> AsyncIterator[bytes]:
            async for event in events:
                yield event.upper()

        return shout()


async def test_send_applies_the_declared_quirks(clients: HttpClients) -> None:
    async with FakeBackend() as fake:
        adapter = BusyServerAdapter(
            BackendConfig(name="b", url=fake.url, type="busy-server"), clients
        )
        fake.push(Behaviour(status=503, error_body={"error": "server busy"}))
        with pytest.raises(BackendError) as info:
            await adapter.send(
                Endpoint.CHAT, b'{"model":"fake-model","messages":[]}', stream=False, timeouts=FAST
            )
        generic = OpenAIWireAdapter(BackendConfig(name="g", url=fake.url, type="generic"), clients)
        fake.push(Behaviour(status=503, error_body={"error": "server busy"}))
        with pytest.raises(BackendError) as plain:
            await generic.send(
                Endpoint.CHAT, b'{"model":"fake-model","messages":[]}', stream=False, timeouts=FAST
            )
    assert (info.value.kind, info.value.status) == (ErrorKind.OVERLOADED, 503)
    assert envelope(info.value)["message"] == "server busy"
    assert (plain.value.kind, json.loads(plain.value.body)) == (
        ErrorKind.SERVER_ERROR,
        {"error": "server busy"},
    )


async def test_send_rewrites_streams_only_for_an_adapter_that_asks(clients: HttpClients) -> None:
    body = b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"stream":true}'
    async with FakeBackend() as fake:
        config = BackendConfig(name="s", url=fake.url, type="shouting")
        shouting = ShoutingAdapter(config, clients)
        generic = OpenAIWireAdapter(config, clients)
        assert (shouting._rewrites_streams, generic._rewrites_streams) == (True, False)
        for adapter, expected in ((shouting, b"DATA: [DONE]\n\n"), (generic, b"data: [DONE]\n\n")):
            response = await adapter.send(Endpoint.CHAT, body, stream=True, timeouts=FAST)
            assert response.events is not None
            events = [event async for event in response.events]
            assert events[-1] == expected
