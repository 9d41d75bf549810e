"""Hostile web pages against a real Nexus: the admin API, the dashboard and ``/ws`` give nothing.

A page in a browser on the Nexus machine (or its network) is the most dangerous visitor: it can
send cross-site requests that carry no preflight (forms, ``text/plain`` fetches), and with DNS
rebinding it can make its own origin's name resolve to 127.0.0.1, so that the browser sends its
requests to Nexus over loopback with ``Host: evil.example``. The worst outcome before these rules:
such a page added a backend with ``"api_key_env": "OPENAI_API_KEY"`` through the loopback-trusted
admin API and received the key in the probe's ``Authorization`` header.

The first tests send what a browser would send with httpx (each header forged on purpose); the
last ones are made by a real headless chromium, whose own name resolution is told (the
``--host-resolver-rules`` flag) that ``evil.example`` is 127.0.0.1: DNS rebinding as it happens.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.testing import FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import CHROMIUM, gateway_config

SECRET = "sk-live-do-not-leak-0123456789"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """A cloud key in the server's environment, named by no configured backend."""
    monkeypatch.setenv("NEXUS_TEST_CLOUD_KEY", SECRET)
    return SECRET


@pytest.fixture
def target() -> Iterator[FakeBackend]:
    """The backend an attacker would add: it records every header it receives."""
    fake = FakeBackend("target", models=["m"])
    with fake.running():
        yield fake


@pytest.fixture
def server(target: FakeBackend) -> Iterator[RunningServer]:
    local = FakeBackend("local", models=["fake-model"])
    with local.running(), running_server(gateway_config(local)) as running:
        yield running


def with_server(backend: FakeBackend, **server: Any) -> dict[str, Any]:
    """A config for ``backend`` (running) with these ``[server]`` settings."""
    config = gateway_config(backend)
    config["server"].update(server)
    return config


def names(server: RunningServer) -> list[str]:
    """The backends the server has now (asked the right way)."""
    return [b["name"] for b in httpx.get(server.url + "/admin/backends").json()["data"]]


def port(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def leaked(target: FakeBackend) -> bool:
    """Whether any request to the target carried the secret."""
    return any(SECRET in json.dumps(r.headers) for r in target.requests)


# -- the admin API against browsers ------------------------------------------------------------


def test_a_page_of_another_origin_cannot_use_the_admin_api(
    server: RunningServer, target: FakeBackend, secret: str
) -> None:
    body = {"url": target.url, "name": "evil", "api_key_env": "NEXUS_TEST_CLOUD_KEY"}
    # What a cross-site fetch or form sends: the page's Origin, a simple content type.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json"):
        response = httpx.post(
            server.url + "/admin/backends",
            content=json.dumps(body),
            headers={"Origin": "http://evil.example", "Content-Type": content_type},
        )
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in response.headers
    assert httpx.get(server.url + "/admin/backends", headers={"Origin": "null"}).status_code == 403
    assert names(server) == ["local"]
    assert not target.requests


def test_admin_writes_take_json_only(server: RunningServer, target: FakeBackend) -> None:
    body = json.dumps({"url": target.url, "name": "t"})
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {"Content-Type": content_type} if content_type else {}
        response = httpx.post(server.url + "/admin/backends", content=body, headers=headers)
        assert response.status_code == 415, response.text
        assert response.json()["error"]["code"] == "unsupported_media_type"
    assert names(server) == ["local"]
    # The server's own page origin (and no Origin at all) with JSON is fine.
    own = httpx.post(
        server.url + "/admin/backends",
        content=body,
        headers={**JSON, "Origin": server.url},
    )
    assert own.status_code == 201, own.text
    assert names(server) == ["local", "t"]


def test_cors_never_applies_to_the_admin_api(target: FakeBackend) -> None:
    local = FakeBackend("local", models=["fake-model"])
    with local.running(), running_server(with_server(local, cors_origins=["*"])) as server:
        preflight = httpx.options(
            server.url + "/admin/backends",
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 403
        assert "access-control-allow-origin" not in preflight.headers
        listing = httpx.get(server.url + "/admin/backends")
        assert "access-control-allow-origin" not in listing.headers
        # The API itself is CORS-enabled as configured.
        models = httpx.get(server.url + "/v1/models", headers={"Origin": "http://evil.example"})
        assert models.headers["access-control-allow-origin"] == "*"


def test_admin_origins_lists_other_pages_that_may(target: FakeBackend) -> None:
    local = FakeBackend("local", models=["fake-model"])
    config = {"admin_origins": ["https://ops.example.com"]}
    with local.running(), running_server(with_server(local, **config)) as server:
        ok = httpx.get(
            server.url + "/admin/backends", headers={"Origin": "https://ops.example.com"}
        )
        assert ok.status_code == 200
        other = httpx.get(
            server.url + "/admin/backends", headers={"Origin": "https://ops.example.org"}
        )
        assert other.status_code == 403


# -- DNS rebinding -----------------------------------------------------------------------------


def test_a_foreign_host_gets_no_loopback_trust(server: RunningServer) -> None:
    rebound = {"Host": f"evil.example:{port(server)}"}
    # What a page of http://evil.example:<port> sends after its name was rebound to 127.0.0.1.
    for method, path in (("GET", "/admin/backends"), ("GET", "/"), ("GET", "/dashboard/snapshot")):
        response = httpx.request(method, server.url + path, headers=rebound)
        assert response.status_code == 421, (path, response.text)
        assert response.json()["error"]["code"] == "misdirected_request"
        assert "server.allowed_hosts" in response.json()["error"]["message"]
    added = httpx.post(
        server.url + "/admin/backends",
        json={"url": "http://127.0.0.1:1", "name": "x"},
        headers={**rebound, "Origin": f"http://evil.example:{port(server)}"},
    )
    assert added.status_code == 421
    # Listening on 127.0.0.1 only: the whole API refuses the foreign name (a page is then the
    # only way a remote party reaches it), in each door's own shape.
    chat = httpx.post(server.url + "/v1/chat/completions", json={}, headers=rebound)
    assert chat.status_code == 421
    assert chat.json()["error"]["code"] == "misdirected_request"
    tags = httpx.get(server.url + "/api/tags", headers=rebound)
    assert tags.status_code == 421
    assert isinstance(tags.json()["error"], str)
    assert names(server) == ["local"]
    # Two Host headers (one for each check, an attacker hopes): 400, as RFC 9112 says.
    with socket.create_connection(("127.0.0.1", port(server)), timeout=5) as raw:
        raw.sendall(
            b"GET /admin/backends HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"bad_host"' in answer
    # Names that are this machine are fine.
    for host in ("localhost", "127.0.0.1", "[::1]", "nexus.localhost"):
        answer = httpx.get(server.url + "/admin/backends", headers={"Host": f"{host}:1"})
        assert answer.status_code == 200, host


def test_allowed_hosts_names_the_server(target: FakeBackend) -> None:
    local = FakeBackend("local", models=["fake-model"])
    config = {"allowed_hosts": ["nexus.example.com"]}
    with local.running(), running_server(with_server(local, **config)) as server:
        ok = httpx.get(server.url + "/admin/backends", headers={"Host": "nexus.example.com"})
        assert ok.status_code == 200
        other = httpx.get(server.url + "/admin/backends", headers={"Host": "evil.example"})
        assert other.status_code == 421


# -- api_key_env ---------------------------------------------------------------------------------


def test_the_admin_api_cannot_send_any_variable_to_a_url(
    target: FakeBackend, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_ADMIN_KEY", "admin-" + SECRET)
    monkeypatch.setenv("NEXUS_TEST_USED_KEY", "used-key-value")
    local = FakeBackend("local", models=["fake-model"])
    config = gateway_config(
        {"name": "local", "url": "", "api_key_env": "NEXUS_TEST_USED_KEY"},
    )
    with local.running():
        config["backends"][0]["url"] = local.url
        config["auth"] = {
            "allowed_api_key_envs": ["NEXUS_TEST_LISTED", "NEXUS_TEST_ADMIN_KEY"],
            "keys": [{"name": "k", "key_env": "NEXUS_TEST_ADMIN_KEY"}],
        }
        with running_server(config) as server:
            for env in ("NEXUS_TEST_CLOUD_KEY", "PATH", "NEXUS_TEST_ADMIN_KEY"):
                response = httpx.post(
                    server.url + "/admin/backends",
                    json={"url": target.url, "name": "evil", "api_key_env": env},
                )
                assert response.status_code == 400, response.text
                error = response.json()["error"]
                assert error["code"] == "api_key_env_not_allowed"
                assert "auth.allowed_api_key_envs" in error["message"]
                assert SECRET not in response.text
            assert not target.requests
            # A variable a configured backend uses may be given to another backend.
            reused = httpx.post(
                server.url + "/admin/backends",
                json={"url": target.url, "name": "twin", "api_key_env": "NEXUS_TEST_USED_KEY"},
            )
            assert reused.status_code == 201, reused.text
    assert not leaked(target)
    assert target.requests[0].headers["authorization"] == "Bearer used-key-value"


def test_a_backend_planted_in_the_state_store_does_not_get_a_secret(
    target: FakeBackend, secret: str, tmp_path: Path
) -> None:
    local = FakeBackend("local", models=["fake-model"])
    with local.running():
        config = gateway_config(local)
        config["state"] = {"backend": "sqlite", "path": str(tmp_path / "state.sqlite3")}
        with running_server(config) as server:
            planted = {"name": "planted", "url": target.url, "api_key_env": "NEXUS_TEST_CLOUD_KEY"}
            server.call(
                server.gateway.accountant.store.put("backends", "planted", json.dumps(planted))
            )
        with running_server(config) as server:
            assert names(server) == ["local"]
    assert not target.requests


# -- reverse proxies -----------------------------------------------------------------------------


def test_forwarded_requests_are_not_local_unless_a_trusted_proxy_says_so(
    target: FakeBackend,
) -> None:
    local = FakeBackend("local", models=["fake-model"])
    with local.running():
        with running_server(gateway_config(local)) as server:
            plain = httpx.get(server.url + "/admin/backends")
            assert plain.status_code == 200
            # A proxy on this host that nobody declared: its clients could be anyone.
            for header in (
                {"X-Forwarded-For": "127.0.0.1"},
                {"Forwarded": "for=127.0.0.1"},
                {"X-Real-IP": "127.0.0.1"},
            ):
                response = httpx.get(server.url + "/admin/backends", headers=header)
                assert response.status_code == 403, header
                assert response.json()["error"]["code"] == "admin_loopback_only"
        with running_server(with_server(local, trusted_proxies=["127.0.0.1"])) as server:
            cases = {
                "203.0.113.9": 403,
                "127.0.0.1": 200,  # a browser on the proxy's own machine
                "127.0.0.1, 203.0.113.9": 403,  # the client claimed to be local
                "203.0.113.9, 127.0.0.1": 403,  # through two proxies: still 203.0.113.9
                "127.0.0.1, 127.0.0.1": 200,  # every hop trusted: the first is the client
            }
            for chain, status in cases.items():
                response = httpx.get(
                    server.url + "/admin/backends", headers={"X-Forwarded-For": chain}
                )
                assert response.status_code == status, chain
            rfc = httpx.get(
                server.url + "/admin/backends",
                headers={"Forwarded": 'for="[2001:db8::1]:4711";proto=https'},
            )
            assert rfc.status_code == 403
            # A trusted proxy that does not say for whom: unknown, so not local.
            assert httpx.get(server.url + "/admin/backends").status_code == 403
            # The history names the real client.
            httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]},
                headers={"X-Forwarded-For": "203.0.113.9"},
            )
            history = httpx.get(server.url + "/v1/history").json()["data"]
            assert history[0]["client"] == "203.0.113.9"


# -- the proxy doors against cross-site forms ---------------------------------------------------


def test_cross_site_forms_cannot_drive_the_proxy_doors(server: RunningServer) -> None:
    body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]})
    page = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    for path in (
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/api/chat",
        "/api/generate",
    ):
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {**page, **({"Content-Type": content_type} if content_type else {})}
            response = httpx.post(server.url + path, content=body, headers=headers)
            assert response.status_code == 415, (path, content_type, response.text)
    # Ollama's own clients and documentation use curl -d (form-encoded): accepted from a client
    # that is not a browser, on the Ollama door only.
    curl = {"Content-Type": "application/x-www-form-urlencoded"}
    ollama = httpx.post(
        server.url + "/api/chat",
        content=json.dumps({**json.loads(body), "stream": False}),
        headers=curl,
    )
    assert ollama.status_code == 200, ollama.text
    openai_door = httpx.post(server.url + "/v1/chat/completions", content=body, headers=curl)
    assert openai_door.status_code == 415
    assert openai_door.headers["x-content-type-options"] == "nosniff"


# -- the dashboard's controls ---------------------------------------------------------------------

ADMIN_KEY = "nxa-hostile-browsers-admin-key-0123456789"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def status_of(server: RunningServer, name: str = "local", key: str | None = None) -> str:
    """A backend's status through the admin API, asked the right way."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    backends = httpx.get(server.url + "/admin/backends", headers=headers).json()["data"]
    return str(next(b["status"] for b in backends if b["name"] == name))


def operator(server: RunningServer, key: str | None = None) -> tuple[httpx.Client, str]:
    """A client holding an operator's session (signed in with ``key``, or by the loopback rule
    without one) and the session's CSRF token, as the page gives them."""
    client = httpx.Client(base_url=server.url, headers={"Origin": server.url}, timeout=30)
    if key is not None:
        signed = client.post("/dashboard/sign-in", data={"key": key})
        assert signed.status_code == 303, signed.text
    page = client.get("/", headers={"Accept": "text/html"}).text
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return client, found.group(1)


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    """A server with an admin key (the dashboard's controls need signing in with it)."""
    monkeypatch.setenv("NEXUS_TEST_ADMIN_KEY", ADMIN_KEY)
    local = FakeBackend("local", models=["fake-model"])
    with local.running():
        config = gateway_config(local)
        config["auth"] = {"admin_key_env": "NEXUS_TEST_ADMIN_KEY"}
        with running_server(config) as running:
            yield running


def test_a_page_of_another_origin_cannot_drive_the_dashboard_controls(
    server: RunningServer, target: FakeBackend
) -> None:
    # Even holding the session and its token (which a page of another origin cannot read), a
    # write that does not come from the dashboard's own page changes nothing.
    client, csrf = operator(server)
    drain = "/dashboard/backends/local/drain"
    add = {"csrf": csrf, "url": target.url, "name": "evil"}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://localhost:{port(server)}"},  # another origin of the same machine
        {"Origin": server.url, "Sec-Fetch-Site": "cross-site"},
        {"Origin": server.url, "Sec-Fetch-Site": "same-site"},
    ):
        for path, body in ((drain, {"csrf": csrf}), ("/dashboard/backends", add)):
            answer = client.post(path, data=body, headers={**FORM, **headers})
            assert answer.status_code == 403, (headers, answer.text)
            assert "location" not in answer.headers
    # Neither Origin nor Sec-Fetch-Site: no browser's form, refused as well.
    bare = httpx.post(server.url + drain, data={"csrf": csrf}, cookies=client.cookies, headers=FORM)
    assert bare.status_code == 403
    # The dashboard's own origin, but not a form: a JSON or text/plain body is refused.
    for content_type in ("text/plain", "application/json", "multipart/form-data; boundary=x"):
        answer = client.post(drain, content=f"csrf={csrf}", headers={"Content-Type": content_type})
        assert answer.status_code == 415, content_type
    assert status_of(server) == "healthy"
    assert names(server) == ["local"]
    assert not target.requests
    # The same write from the page itself goes through (the checks above are what refused).
    assert client.post(drain, data={"csrf": csrf}).status_code == 303
    assert status_of(server) == "draining"


def test_a_missing_or_wrong_csrf_token_is_refused_and_changes_nothing(
    server: RunningServer, target: FakeBackend
) -> None:
    client, csrf = operator(server)
    _, other_csrf = operator(server)
    assert other_csrf != csrf
    for body in (
        {},
        {"csrf": ""},
        {"csrf": csrf[:-1]},
        {"csrf": csrf + "x"},
        {"csrf": csrf.upper() if csrf.upper() != csrf else csrf.lower()},
        {"csrf": other_csrf},  # another session's token
    ):
        for path, extra in (
            ("/dashboard/backends/local/drain", {}),
            ("/dashboard/backends/local/remove", {}),
            ("/dashboard/backends", {"url": target.url, "name": "t"}),
            ("/dashboard/models/migrate", {"model": "fake-model", "from": "local", "to": "t"}),
        ):
            answer = client.post(path, data={**body, **extra}, headers=FORM)
            assert answer.status_code == 403, (body, path)
            assert "CSRF" in answer.text
    # Without the session cookie the right token is worth nothing either.
    anonymous = httpx.post(
        server.url + "/dashboard/backends/local/drain",
        data={"csrf": csrf},
        headers={"Origin": server.url},
    )
    assert anonymous.status_code == 401
    assert status_of(server) == "healthy"
    assert names(server) == ["local"]
    assert not target.requests


def test_the_session_cookie_is_no_key_for_the_admin_api(keyed: RunningServer) -> None:
    client, _ = operator(keyed, ADMIN_KEY)
    assert client.cookies.get("nexus_session")
    drain = "/admin/backends/local/drain"
    # A page of another origin, with the browser adding the cookie: refused before anything.
    cross = client.post(drain, json={}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert cross.json()["error"]["code"] == "origin_not_allowed"
    # Even from the server's own origin, the admin API takes the key, never the cookie.
    for method, path in (("POST", drain), ("GET", "/admin/backends"), ("GET", "/admin/operations")):
        answer = client.request(method, path, json={} if method == "POST" else None)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["error"]["code"] == "invalid_admin_key"
    assert status_of(keyed, key=ADMIN_KEY) == "healthy"


def test_a_wrong_admin_key_does_not_sign_in(keyed: RunningServer, target: FakeBackend) -> None:
    client = httpx.Client(base_url=keyed.url, headers={"Origin": keyed.url})
    # Near misses and nothing; the comparison is of SHA-256 digests with hmac.compare_digest
    # (constant time), as the admin API's.
    for key in ("", "x", ADMIN_KEY[:-1], ADMIN_KEY + "0", " " + ADMIN_KEY, ADMIN_KEY.upper()):
        answer = client.post("/dashboard/sign-in", data={"key": key})
        assert answer.status_code == 401, key
        assert "set-cookie" not in answer.headers
        assert ADMIN_KEY not in answer.text
    # A sign-in form posted from another site's page is refused whatever the key.
    cross = client.post(
        "/dashboard/sign-in", data={"key": ADMIN_KEY}, headers={"Origin": "http://evil.example"}
    )
    assert cross.status_code == 403
    assert "set-cookie" not in cross.headers
    # No session, no control; the page reads, and shows no operator's form.
    page = client.get("/")
    assert page.status_code == 200
    assert 'name="csrf"' not in page.text
    assert "set-cookie" not in page.headers  # this machine earns nothing with an admin key set
    answer = client.post("/dashboard/backends", data={"url": target.url, "csrf": "guess"})
    assert answer.status_code == 401
    assert not target.requests
    # The right key: a session.
    signed = client.post("/dashboard/sign-in", data={"key": ADMIN_KEY})
    assert signed.status_code == 303
    assert "nexus_session=" in signed.headers["set-cookie"]


def test_without_an_admin_key_nobody_signs_in(server: RunningServer) -> None:
    answer = httpx.post(
        server.url + "/dashboard/sign-in", data={"key": "anything"}, headers={"Origin": server.url}
    )
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_session_ids_are_random_and_end_with_sign_out(keyed: RunningServer) -> None:
    ids = set()
    for _ in range(20):
        client = httpx.Client(base_url=keyed.url, headers={"Origin": keyed.url})
        signed = client.post("/dashboard/sign-in", data={"key": ADMIN_KEY})
        header = signed.headers["set-cookie"]
        assert "HttpOnly" in header
        assert "SameSite=Strict" in header
        assert "Path=/" in header
        assert "Max-Age=28800" in header
        assert "Secure" not in header  # plain http here; over https it is Secure
        session_id = client.cookies["nexus_session"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session_id)  # 256 random bits
        ids.add(session_id)
    assert len(ids) == 20
    client, csrf = operator(keyed, ADMIN_KEY)
    old = client.cookies["nexus_session"]
    out = client.post("/dashboard/sign-out", data={"csrf": csrf})
    assert out.status_code == 303
    assert "Max-Age=0" in out.headers["set-cookie"]
    # The old id, replayed after sign-out, is nothing.
    replay = httpx.post(
        keyed.url + "/dashboard/backends/local/drain",
        data={"csrf": csrf},
        cookies={"nexus_session": old},
        headers={"Origin": keyed.url},
    )
    assert replay.status_code == 401
    # Behind a TLS proxy (the page's Origin is https), the cookie is Secure.
    secure = httpx.post(
        keyed.url + "/dashboard/sign-in",
        data={"key": ADMIN_KEY},
        headers={
            "Origin": "https://127.0.0.1:" + str(port(keyed)),
            "Host": f"127.0.0.1:{port(keyed)}",
        },
    )
    assert secure.status_code == 303, secure.text
    assert secure.headers["set-cookie"].endswith("; Secure")
    assert status_of(keyed, key=ADMIN_KEY) == "healthy"


def test_dns_rebinding_gets_no_dashboard_control(server: RunningServer) -> None:
    client, csrf = operator(server)
    rebound = {
        "Host": f"evil.example:{port(server)}",
        "Origin": f"http://evil.example:{port(server)}",
        "Sec-Fetch-Site": "same-origin",  # as it is, to the browser
    }
    for path, body in (
        ("/dashboard/sign-in", {"key": "x"}),
        ("/dashboard/sign-out", {"csrf": csrf}),
        ("/dashboard/backends/local/drain", {"csrf": csrf}),
        ("/dashboard/backends", {"csrf": csrf, "url": "http://127.0.0.1:1"}),
        ("/dashboard/models/migrate", {"csrf": csrf, "model": "m", "from": "local", "to": "x"}),
    ):
        answer = client.post(path, data=body, headers=rebound)
        assert answer.status_code == 421, path
    manage = httpx.get(server.url + "/dashboard/manage", headers={"Host": "evil.example"})
    assert manage.status_code == 421
    assert 'name="csrf"' not in manage.text
    assert status_of(server) == "healthy"


# -- in a real browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless chromium that resolves evil.example and attacker.test to 127.0.0.1."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            raise AssertionError("CI needs /usr/bin/chromium: apt-get install chromium")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--host-resolver-rules=MAP evil.example 127.0.0.1, MAP attacker.test 127.0.0.1",
                # Chromium's own local-network guard would stop some of these requests itself;
                # other browsers have none, and the point here is what Nexus does.
                "--disable-features=PrivateNetworkAccessSendPreflights,"
                "PrivateNetworkAccessRespectPreflightResults,BlockInsecurePrivateNetworkRequests,"
                "LocalNetworkAccessChecks",
            ],
        )
        try:
            yield instance
        finally:
            instance.close()


def attacker_page(chromium: Any, url: str) -> Any:
    """A page whose document at ``url`` is the attacker's (served by the test, not Nexus)."""
    page = chromium.new_context().new_page()
    page.route(
        url, lambda route: route.fulfill(body="<html><body>attacker</body></html>", status=200)
    )
    page.goto(url)
    return page


def test_dns_rebinding_in_a_real_browser_gets_nothing(
    chromium: Any, server: RunningServer, target: FakeBackend, secret: str
) -> None:
    origin = f"http://evil.example:{port(server)}"
    page = attacker_page(chromium, origin + "/")
    results = page.evaluate(
        """async ([target]) => {
            const out = {};
            const body = JSON.stringify(
                {url: target, name: "evil", api_key_env: "NEXUS_TEST_CLOUD_KEY"});
            for (const [name, path, init] of [
                ["list", "/admin/backends", {}],
                ["add", "/admin/backends",
                 {method: "POST", headers: {"Content-Type": "application/json"}, body}],
                ["snapshot", "/dashboard/snapshot", {}],
                ["chat", "/v1/chat/completions",
                 {method: "POST", headers: {"Content-Type": "application/json"},
                  body: JSON.stringify({model: "fake-model", messages: []})}],
            ]) {
                const response = await fetch(path, init);
                out[name] = [response.status, await response.text()];
            }
            out.ws = await new Promise((resolve) => {
                const socket = new WebSocket(location.origin.replace("http", "ws") + "/ws");
                socket.onopen = () => resolve("open");
                socket.onerror = () => resolve("refused");
            });
            return out;
        }""",
        [target.url],
    )
    for name in ("list", "add", "snapshot", "chat"):
        assert results[name][0] == 421, (name, results[name])
    assert results["ws"] == "refused"
    assert names(server) == ["local"]
    assert not target.requests


def test_cross_site_requests_in_a_real_browser_get_nothing(
    chromium: Any, server: RunningServer, target: FakeBackend, secret: str
) -> None:
    page = attacker_page(chromium, f"http://attacker.test:{port(server) + 1}/")
    statuses: dict[str, list[int]] = {}
    page.on(
        "response",
        lambda response: statuses.setdefault(
            f"{response.request.method} {response.url.split(':', 2)[2].split('/', 1)[1]}", []
        ).append(response.status),
    )
    page.evaluate(
        """async ([nexus, target]) => {
            const body = JSON.stringify(
                {url: target, name: "evil", api_key_env: "NEXUS_TEST_CLOUD_KEY"});
            // Simple requests: no preflight, the browser sends them as they are.
            await fetch(nexus + "/admin/backends",
                {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body});
            await fetch(nexus + "/v1/chat/completions",
                {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                 body: JSON.stringify({model: "fake-model", messages: [
                     {role: "user", content: "spend the owner's money"}]})});
            // Needs a preflight, which Nexus refuses on /admin.
            try {
                await fetch(nexus + "/admin/backends",
                    {method: "POST", headers: {"Content-Type": "application/json"}, body});
            } catch (error) {}
        }""",
        [server.url, target.url],
    )
    # And a classic form post, as any page can make.
    page.set_content(
        f"""<form method="post" action="{server.url}/admin/backends" enctype="text/plain">
        <input name='{{"url":"{target.url}","name":"form","x":"' value='"}}'></form>"""
    )
    with page.expect_response(lambda response: "/admin/backends" in response.url) as answer:
        page.evaluate("document.forms[0].submit()")
    assert answer.value.status == 403
    # The no-cors fetch and the form; the JSON post needed a preflight, which Nexus refused, so
    # the browser never sent it.
    assert statuses["POST admin/backends"] == [403, 403]
    assert statuses["POST v1/chat/completions"] == [415]
    assert names(server) == ["local"]
    assert not target.requests
    history = httpx.get(server.url + "/v1/history").json()["data"]
    assert [entry["status"] for entry in history] == [415]


def test_dashboard_controls_from_another_site_in_a_real_browser_get_nothing(
    chromium: Any, server: RunningServer, target: FakeBackend
) -> None:
    context = chromium.new_context()
    # The victim's browser has the dashboard open: it holds an operator's session cookie (this
    # machine, no admin key).
    victim = context.new_page()
    victim.goto(server.url + "/")
    assert [c for c in context.cookies() if c["name"] == "nexus_session"]
    page = context.new_page()
    origin = f"http://attacker.test:{port(server) + 1}/"
    page.route(origin, lambda route: route.fulfill(body="<html><body>attacker</body></html>"))
    page.goto(origin)
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/dashboard/" in r.url else None)
    page.evaluate(
        """async ([nexus, target]) => {
            const form = "application/x-www-form-urlencoded";
            await fetch(nexus + "/dashboard/backends/local/drain", {method: "POST",
                mode: "no-cors", credentials: "include", headers: {"Content-Type": form},
                body: "csrf=guess"});
            await fetch(nexus + "/dashboard/backends", {method: "POST", mode: "no-cors",
                credentials: "include", headers: {"Content-Type": form},
                body: "csrf=guess&name=evil&url=" + encodeURIComponent(target)});
        }""",
        [server.url, target.url],
    )
    # A classic form, as any page can post; and the page framed to trick a click
    # (clickjacking): the dashboard refuses to be framed (frame-ancestors 'none').
    page.set_content(
        f"""<form method="post" action="{server.url}/dashboard/backends/local/remove">
        <input name="csrf" value="guess"></form>
        <iframe src="{server.url}/"></iframe>"""
    )
    frame = page.frames[-1]
    assert frame is not page.main_frame
    # The frame's navigation may end after the page's load event on a busy machine.
    for _ in range(100):
        if frame.url:
            break
        page.wait_for_timeout(100)
    assert frame.url.startswith("chrome-error:")  # the browser refused to show it
    assert 'name="csrf"' not in frame.content()
    with page.expect_response(lambda response: "/remove" in response.url) as answer:
        page.evaluate("document.forms[0].submit()")
    assert answer.value.status == 403
    assert statuses[:2] == [403, 403]
    assert status_of(server) == "healthy"
    assert names(server) == ["local"]
    assert not target.requests
    context.close()
