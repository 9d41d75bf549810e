"""The cold routes on Litestar, end to end: ``/openapi/openapi.json`` describes the admin API's
bodies and answers, the real answers match the document, bad admin bodies get a 400 in the door's
shape whose message says what is wrong, and ``/ws`` is a WebSocket route only.

The proxy doors are not in the document (they follow the OpenAI / Anthropic / Ollama specs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import response_schema_conformance
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from nexus_core.testing import FakeBackend
from nexus_server.testing import running_server
from tests.conftest import gateway_config

ADMIN_KEY = "nxk-admin-schemas-0123456789abcdef"
TEAM_KEY = "nxk-team-schemas-fedcba9876543210"


@dataclass
class Served:
    """The module's Nexus, and a fake that is no backend of it yet."""

    server: Served
    spare_url: str

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    """One Nexus (auth on: an admin key, a team key for ``llama*``) in front of a fake."""
    first = FakeBackend("first", ["llama3", "secret"])
    spare = FakeBackend("spare", ["phi3"])
    with pytest.MonkeyPatch.context() as env, first.running(), spare.running():
        env.setenv("NEXUS_SCHEMAS_ADMIN_KEY", ADMIN_KEY)
        env.setenv("NEXUS_SCHEMAS_TEAM_KEY", TEAM_KEY)
        config = gateway_config(first)
        config["auth"] = {
            "enabled": True,
            "admin_key_env": "NEXUS_SCHEMAS_ADMIN_KEY",
            "keys": [{"name": "team", "key_env": "NEXUS_SCHEMAS_TEAM_KEY", "models": ["llama*"]}],
        }
        with running_server(config) as running:
            yield Served(running, spare.url)


def admin(server: Served) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )


def document(server: Served) -> dict[str, Any]:
    answer = httpx.get(server.url + "/openapi/openapi.json", timeout=10)
    assert answer.status_code == 200
    doc: dict[str, Any] = answer.json()
    return doc


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its top-level ``$ref`` followed."""
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = doc["components"]["schemas"][name]
    return schema


def body_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    operation = doc["paths"][path][method]
    return resolve(doc, operation["requestBody"]["content"]["application/json"]["schema"])


def answer_schema(doc: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    operation = doc["paths"][path][method]
    return resolve(doc, operation["responses"][status]["content"]["application/json"]["schema"])


def types_of(prop: dict[str, Any]) -> set[str]:
    """The JSON types a property schema allows (``type`` or ``oneOf``)."""
    kinds = prop.get("type", [])
    found = {kinds} if isinstance(kinds, str) else set(kinds)
    for option in prop.get("oneOf", []) + prop.get("anyOf", []):
        found |= types_of(option)
    return found


# -- the document -------------------------------------------------------------------------------


def test_the_document_describes_the_admin_backend_body_and_answers(server: Served) -> None:
    doc = document(server)
    new = body_schema(doc, "/admin/backends", "post")
    assert set(new["properties"]) == {
        "url",
        "name",
        "type",
        "zone",
        "tier",
        "priority",
        "max_concurrent",
        "api_key_env",
    }
    assert new["required"] == ["url"]
    props = new["properties"]
    assert types_of(props["url"]) == {"string"}
    assert types_of(props["tier"]) == {"integer", "null"}
    assert (props["tier"]["minimum"], props["tier"]["maximum"]) == (1, 5)
    assert {"restricted", "open"} <= set(props["zone"]["enum"])
    assert props["max_concurrent"]["minimum"] == 1

    # The answers: a backend (201), the listing of them (200), errors in OpenAI's envelope.
    backend = answer_schema(doc, "/admin/backends", "post", "201")
    listing = answer_schema(doc, "/admin/backends", "get", "200")
    assert listing["properties"]["object"]["const"] == "list"
    assert resolve(doc, listing["properties"]["data"]["items"]) == backend
    for status in ("400", "401", "403", "409", "415"):
        error = answer_schema(doc, "/admin/backends", "post", status)
        detail = resolve(doc, error["properties"]["error"])
        assert set(detail["required"]) == {"message", "type", "param", "code"}

    # What the document promises is what a real answer holds, field for field.
    with admin(server) as client:
        real = client.get("/admin/backends").json()
    assert set(real) == set(listing["properties"]) == set(listing["required"])
    for entry in real["data"]:
        assert set(entry) == set(backend["properties"]) == set(backend["required"])
    model = resolve(doc, backend["properties"]["models"]["items"])
    assert set(real["data"][0]["models"][0]) == set(model["properties"])


def test_the_document_describes_the_admin_key_body_and_answers(server: Served) -> None:
    doc = document(server)
    new = body_schema(doc, "/admin/keys", "post")
    assert set(new["properties"]) == {
        "name",
        "models",
        "requests_per_minute",
        "tokens_per_minute",
        "monthly_budget_usd",
    }
    assert new["required"] == ["name"]
    assert types_of(new["properties"]["requests_per_minute"]) == {"integer", "null"}
    assert types_of(new["properties"]["monthly_budget_usd"]) == {"number", "null"}
    created = answer_schema(doc, "/admin/keys", "post", "201")
    listed = resolve(doc, answer_schema(doc, "/admin/keys", "get", "200")["properties"]["data"])
    assert set(created["properties"]) == set(resolve(doc, listed["items"])["properties"]) | {"key"}


def test_the_proxy_doors_are_not_in_the_document(server: Served) -> None:
    paths = set(document(server)["paths"])
    assert {"/admin/backends", "/v1/models", "/api/tags", "/health"} <= paths
    for door in (
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/api/chat",
        "/api/embed",
    ):
        assert door not in paths


# -- the real answers match it ------------------------------------------------------------------


def test_the_real_answers_match_the_document(server: Served) -> None:
    """Every GET, and the admin writes, called for real and checked against their schemas."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi/openapi.json")
    admin_headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    team_headers = {"Authorization": f"Bearer {TEAM_KEY}"}
    spare_url = server.spare_url
    calls: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
        ("/admin/backends", "POST", {"body": {"url": spare_url, "name": "spare"}}, admin_headers),
        ("/admin/backends", "GET", {}, admin_headers),
        ("/admin/backends/{name}/drain", "POST", {"path_parameters": {"name": "spare"}}, {}),
        ("/admin/backends/{name}/resume", "POST", {"path_parameters": {"name": "spare"}}, {}),
        ("/admin/models", "GET", {}, admin_headers),
        ("/admin/keys", "POST", {"body": {"name": "schemas", "models": ["phi*"]}}, {}),
        ("/admin/keys", "GET", {}, admin_headers),
        ("/admin/keys/{name}", "DELETE", {"path_parameters": {"name": "schemas"}}, {}),
        ("/admin/backends/{name}", "DELETE", {"path_parameters": {"name": "spare"}}, {}),
        ("/v1/models", "GET", {}, admin_headers),
        ("/v1/models", "GET", {}, {**team_headers, "anthropic-version": "2023-06-01"}),
        ("/v1/models/{model_id}", "GET", {"path_parameters": {"model_id": "llama3"}}, {}),
        ("/v1/stats", "GET", {}, admin_headers),
        ("/v1/stats", "GET", {}, team_headers),
        ("/v1/history", "GET", {}, team_headers),
        ("/v1/fleet/recommendations", "GET", {}, admin_headers),
        ("/api/tags", "GET", {}, team_headers),
        ("/api/ps", "GET", {}, team_headers),
        ("/api/show", "POST", {"body": {"model": "llama3"}}, team_headers),
        ("/api/version", "GET", {}, {}),
        ("/health", "GET", {}, {}),
        ("/health/ready", "GET", {}, {}),
        # Errors too: they are described, in their door's shape.
        ("/admin/backends/{name}", "DELETE", {"path_parameters": {"name": "nope"}}, {}),
        ("/v1/models/{model_id}", "GET", {"path_parameters": {"model_id": "secret"}}, team_headers),
        ("/api/show", "POST", {"body": {"model": "nope"}}, team_headers),
        ("/v1/fleet/recommendations", "GET", {}, team_headers),
    ]
    statuses: list[int] = []
    for path, method, parts, headers in calls:
        case = schema[path][method].Case(**parts)
        sent = {**admin_headers, **headers}
        if method == "POST":
            sent["Content-Type"] = "application/json"
        response = case.call(base_url=server.url, headers=sent, timeout=30)
        case.validate_response(response, checks=[response_schema_conformance])
        statuses.append(response.status_code)
    assert statuses == [201, 200, 200, 200, 200, 201] + [200] * 16 + [404, 404, 404, 403]


# -- bad bodies ---------------------------------------------------------------------------------

DEEP = b"[" * 5000 + b"]" * 5000
KNOWN = "known: api_key_env, max_concurrent, name, priority, tier, type, url, zone"
KNOWN_KEY = "known: models, monthly_budget_usd, name, requests_per_minute, tokens_per_minute"
A_LIMIT = "must be a whole number of at least 1, or null for no limit"
A_BUDGET = "must be a number of at least 0, or null for no budget"
BAD_TIER = "Invalid backend: tier: Input should be a valid integer"


@pytest.mark.parametrize(
    ("body", "param", "code", "message"),
    [
        (b"{not json", None, "invalid_json", "The body is not valid JSON"),
        (b"", None, "invalid_json", "The body is not valid JSON"),
        (DEEP, None, "invalid_json", "The body is not valid JSON"),
        (b"[]", None, None, "The body must be a JSON object"),
        (b"{}", "url", None, "'url' is required"),
        (b'{"url": 5}', "url", None, "'url' is required"),
        (b'{"url": ""}', "url", None, "'url' is required"),
        (b'{"url": "ftp://h"}', "url", "invalid_url", "'ftp://h' is not an http(s) URL"),
        (b'{"url": "http://u:p@h"}', "url", "credentials_in_url", "The URL holds credentials"),
        (b'{"url": "http://h", "tiers": 2}', "tiers", None, f"Unknown field(s) tiers; {KNOWN}"),
        # Numbers are JSON numbers of the right kind: no string, boolean or fraction for an integer.
        (b'{"url": "http://h", "tier": "3"}', "tier", None, BAD_TIER),
        (b'{"url": "http://h", "tier": true}', "tier", None, BAD_TIER),
        (b'{"url": "http://h", "tier": 3.0}', "tier", None, BAD_TIER),
        (b'{"url": "http://h", "tier": 9}', "tier", None, "Invalid backend: tier: Input should be"),
        (b'{"url": "http://h", "zone": "x"}', "zone", None, "Invalid backend: zone: "),
        (b'{"url": "http://h", "name": "a b"}', None, None, "Invalid backend: name: must be 1-64"),
        (b'{"url": "http://h", "priority": -1, "tier": 0}', "priority", None,
         "Invalid backend: priority: Input should be greater than or equal to 0; tier: "),
    ],
)  # fmt: skip
def test_bad_backend_bodies_get_a_400_saying_what_is_wrong(
    server: Served, body: bytes, param: str | None, code: str | None, message: str
) -> None:
    with admin(server) as client:
        answer = client.post(
            "/admin/backends", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert (error["param"], error["code"]) == (param, code)
        assert error["message"].startswith(message), error["message"]
        # Nothing was added.
        assert [b["name"] for b in client.get("/admin/backends").json()["data"]] == ["first"]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (b"[]", "name", "'name' is required"),
        (b'{"name": 5}', "name", "'name' is required"),
        (b'{"name": "k", "rpm": 5}', "rpm", f"Unknown field(s) rpm; {KNOWN_KEY}"),
        (b'{"name": "k", "requests_per_minute": "60"}', "requests_per_minute",
         f"requests_per_minute {A_LIMIT} (got '60')"),
        (b'{"name": "k", "requests_per_minute": true}', "requests_per_minute",
         f"requests_per_minute {A_LIMIT} (got True)"),
        (b'{"name": "k", "tokens_per_minute": 1.5}', "tokens_per_minute",
         f"tokens_per_minute {A_LIMIT} (got 1.5)"),
        (b'{"name": "k", "monthly_budget_usd": 1e999}', "monthly_budget_usd",
         f"monthly_budget_usd {A_BUDGET} (got inf)"),
        (b'{"name": "k", "models": [""]}', "models", "models must be a list of non-empty globs"),
        (b'{"name": "a b"}', "name", "a key name is 1-64 letters"),
    ],
)  # fmt: skip
def test_bad_key_bodies_get_the_key_rings_own_words(
    server: Served, body: bytes, param: str, message: str
) -> None:
    with admin(server) as client:
        answer = client.post(
            "/admin/keys", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == param
        assert error["message"].startswith(message), error["message"]
        assert [k["name"] for k in client.get("/admin/keys").json()["data"]] == ["team"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "the request body is not valid JSON"),
        (b"", 400, "the request body is not valid JSON"),
        (b"[1]", 400, "the request body must be a JSON object"),
        (b"{}", 400, "model is required"),
        (b'{"model": 5}', 400, "model is required"),
        (b'{"model": "nope"}', 404, "model 'nope' not found"),
        (b'{"model": "secret"}', 404, "model 'secret' not found"),  # the key may not use it
    ],
)
def test_bad_show_bodies_get_ollamas_shape(
    server: Served, body: bytes, status: int, message: str
) -> None:
    answer = httpx.post(
        server.url + "/api/show",
        content=body,
        headers={"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json"},
    )
    assert answer.status_code == status
    assert answer.json() == {"error": message}


# -- /ws ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
def test_ws_over_plain_http_is_an_unknown_path(server: Served, method: str) -> None:
    """``/ws`` is Litestar's WebSocket route; a plain HTTP request finds nothing there (no 405
    with ``Allow: websocket``, which is no method)."""
    answer = httpx.request(method, server.url + "/ws")
    assert answer.status_code == 404
    assert "allow" not in answer.headers
    if method != "HEAD":
        assert answer.json()["error"]["code"] == "not_found"


def test_ws_serves_the_dashboard_through_litestar(server: Served) -> None:
    """The page's own origin gets every fragment; another site's page a 403 handshake."""
    url = server.url.replace("http://", "ws://") + "/ws"
    with connect(url, origin=Origin(server.url), open_timeout=5) as socket:
        first = json.loads(socket.recv(timeout=5))
    assert first["type"] == "fragments"
    assert "backends" in first["fragments"]
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin=Origin("http://evil.example"), open_timeout=5)
    assert refused.value.response.status_code == 403
