"""``nexus backends|models|health|keys``: the real console script against a real running Nexus."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.adapters import BackendStatus
from nexus_core.testing import FakeBackend
from nexus_server import client
from nexus_server.testing import RunningServer, running_server

NEXUS = Path(sys.executable).parent / ("nexus.exe" if os.name == "nt" else "nexus")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ADMIN_KEY = "nexus-admin-test-key"


def run_nexus(
    *args: str, url: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``nexus`` script; no NEXUS_* or NO_COLOR from the developer's shell."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("NEXUS_") and k != "NO_COLOR"
    }
    environment.update(env or {})
    return subprocess.run(
        [str(NEXUS), *args, *(["--url", url] if url else [])],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


def config(*backends: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "state": {"backend": "memory"},
        "backends": list(backends),
        **extra,
    }


@pytest.fixture
def alpha() -> Iterator[FakeBackend]:
    with FakeBackend("alpha", models=["fake-model", "seer"]).running() as fake:
        yield fake


@pytest.fixture
def beta() -> Iterator[FakeBackend]:
    with FakeBackend("beta", models=["fake-model"]).running() as fake:
        yield fake


@pytest.fixture
def server(alpha: FakeBackend, beta: FakeBackend) -> Iterator[RunningServer]:
    """Nexus with two healthy generic backends; alpha declares ``seer`` with vision and tools."""
    seer = {"id": "seer", "context_length": 8192, "vision": True, "tools": True}
    backends = (
        {"name": "alpha", "url": alpha.url, "type": "generic", "priority": 10, "models": [seer]},
        {"name": "beta", "url": beta.url, "type": "generic", "priority": 20, "zone": "open"},
    )
    with running_server(config(*backends)) as running:
        yield running


def set_status(server: RunningServer, name: str, status: BackendStatus) -> None:
    """Change a backend's status on the server's loop, where the registry lives."""

    async def change() -> None:
        registry = server.gateway.registry
        backend = registry.get(name)
        assert backend is not None
        registry.set_status(backend, status, "set by the test")

    server.call(change())


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


# --- backends list ---------------------------------------------------------------------------


def test_backends_list_table(server: RunningServer, alpha: FakeBackend) -> None:
    result = run_nexus("backends", "list", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    assert "\x1b[" not in result.stdout  # not a terminal: no colour
    lines = result.stdout.splitlines()
    header = lines[0]
    assert header.split() == [
        *("NAME", "TYPE", "STATUS", "ZONE", "TIER", "PRI", "PENDING", "LATENCY", "MODELS", "URL")
    ]
    # Aligned: every column starts at the same offset in each line.
    for column in ("TYPE", "STATUS", "URL"):
        offset = header.index(column)
        assert all(line[offset - 2 : offset] == "  " for line in lines[1:]), column
    alpha_row = lines[1].split()
    assert alpha_row[:6] == ["alpha", "generic", "healthy", "restricted", "1", "10"]
    assert alpha_row[-2:] == ["2", alpha.url]
    assert lines[2].split()[:6] == ["beta", "generic", "healthy", "open", "1", "20"]
    assert len(lines) == 3


def test_backends_list_json_is_the_snapshot(server: RunningServer) -> None:
    result = run_nexus("backends", "list", "--json", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    backends = json.loads(result.stdout)
    assert [b["name"] for b in backends] == ["alpha", "beta"]
    assert backends == json.loads(json.dumps(server.gateway.backends()))
    assert {"name", "url", "type", "status", "zone", "tier", "priority", "models"} <= set(
        backends[0]
    )


def test_backends_list_status_filter(server: RunningServer) -> None:
    set_status(server, "beta", BackendStatus.UNHEALTHY)
    result = run_nexus("backends", "list", "--status", "unhealthy", url=server.url)
    assert result.returncode == 0
    assert [row[0] for row in rows(result.stdout)[1:]] == ["beta"]
    result = run_nexus("backends", "list", "--status", "healthy", "--json", url=server.url)
    assert [b["name"] for b in json.loads(result.stdout)] == ["alpha"]
    result = run_nexus("backends", "list", "--status", "draining", url=server.url)
    assert result.returncode == 0
    assert result.stdout.splitlines()[1:] == ["(no backends)"]
    result = run_nexus("backends", "list", "--status", "sick", url=server.url)
    assert result.returncode != 0
    assert "sick" in result.stderr


def test_url_from_the_environment(server: RunningServer) -> None:
    result = run_nexus("backends", "list", "--json", env={"NEXUS_URL": server.url})
    assert (result.returncode, result.stderr) == (0, "")
    assert len(json.loads(result.stdout)) == 2


# --- backends add / remove / drain -----------------------------------------------------------


def test_backends_add_with_an_explicit_type(server: RunningServer) -> None:
    with FakeBackend("gamma").running() as gamma:
        args = ["--name", "gamma", "--type", "generic", "--zone", "restricted"]
        result = run_nexus(
            "backends", "add", gamma.url, *args, "--tier", "3", "--priority", "5", url=server.url
        )
        assert (result.returncode, result.stderr) == (0, "")
        added = server.gateway.registry.get("gamma")
        assert added is not None
        assert result.stdout == f"added backend gamma (generic, {added.status}) at {gamma.url}\n"
        snapshot = added.snapshot()
        assert (snapshot["zone"], snapshot["tier"], snapshot["priority"]) == ("restricted", 3, 5)

        listed = json.loads(run_nexus("backends", "list", "--json", url=server.url).stdout)
        assert [b["name"] for b in listed] == ["alpha", "beta", "gamma"]


def test_backends_add_detects_the_type_and_prints_json(server: RunningServer) -> None:
    with FakeBackend("delta").running() as delta:
        result = run_nexus(
            "backends", "add", delta.url, "--name", "delta", "--json", url=server.url
        )
        assert (result.returncode, result.stderr) == (0, "")
        snapshot = json.loads(result.stdout)
        assert snapshot["name"] == "delta"
        assert snapshot["url"] == delta.url
        # Detection settled on a concrete type the plugins registered, never "auto".
        assert snapshot["type"] in server.gateway.backend_types
        assert snapshot["type"] != "auto"

        again = run_nexus("backends", "add", delta.url, "--name", "delta", url=server.url)
        assert again.returncode == 1
        assert again.stdout == ""
        assert again.stderr.startswith("error: ")
        assert "delta" in again.stderr
        assert len(again.stderr.splitlines()) == 1


def test_backends_add_refuses_a_url_registered_under_another_name(
    server: RunningServer, alpha: FakeBackend
) -> None:
    port = alpha.url.rsplit(":", 1)[1]
    # The same server however it is written: another loopback name, a trailing /v1 or slash.
    for same in (alpha.url, f"http://localhost:{port}/v1", f"{alpha.url}/"):
        result = run_nexus("backends", "add", same, "--name", "alpha-again", url=server.url)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            f"error: {same} is already registered as backend 'alpha' ({alpha.url}, static); "
            "remove that one first to add it under another name\n"
        )
    # Without --name the server makes one from the URL: refused all the same.
    result = run_nexus("backends", "add", alpha.url, url=server.url)
    assert result.returncode == 1
    assert "already registered as backend 'alpha'" in result.stderr
    assert [b.name for b in server.gateway.registry] == ["alpha", "beta"]


def test_the_admin_api_answers_409_naming_the_backend_at_that_url(
    server: RunningServer, alpha: FakeBackend
) -> None:
    reply = httpx.post(
        server.url + "/admin/backends", json={"url": alpha.url + "/v1", "name": "again"}
    )
    assert reply.status_code == 409
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("backend_url_exists", "url")
    assert error["details"] == {"backend": "alpha", "url": alpha.url}
    assert "'alpha'" in error["message"]


def test_a_url_held_by_a_discovered_backend_can_be_added(server: RunningServer) -> None:
    """A backend found over mDNS gives way to one added by hand (docs/discovery.md)."""
    with FakeBackend("gamma").running() as gamma:
        found = {"name": "gamma-mdns", "url": gamma.url, "type": "generic"}
        server.call(server.gateway.add_backend(found, source="mdns"))
        result = run_nexus("backends", "add", gamma.url, "--name", "gamma", url=server.url)
        assert (result.returncode, result.stderr) == (0, "")
        assert "gamma" in server.gateway.registry


def test_backends_remove(server: RunningServer) -> None:
    result = run_nexus("backends", "remove", "beta", url=server.url)
    assert (result.returncode, result.stdout, result.stderr) == (0, "removed backend beta\n", "")
    assert "beta" not in server.gateway.registry

    result = run_nexus("backends", "remove", "beta", url=server.url)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("error: ")
    assert result.stderr == "error: No backend named 'beta'\n"


def test_backends_drain(server: RunningServer) -> None:
    result = run_nexus("backends", "drain", "alpha", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "draining backend alpha (0 requests in flight)\n"
    backend = server.gateway.registry.get("alpha")
    assert backend is not None
    assert backend.status is BackendStatus.DRAINING

    result = run_nexus("backends", "list", "--status", "draining", url=server.url)
    assert [row[0] for row in rows(result.stdout)[1:]] == ["alpha"]

    result = run_nexus("backends", "drain", "beta", "--json", url=server.url)
    assert json.loads(result.stdout)["status"] == "draining"

    result = run_nexus("backends", "drain", "nope", url=server.url)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        "error: No backend named 'nope'\n",
    )


# --- models ----------------------------------------------------------------------------------


def test_models_table_and_json(server: RunningServer) -> None:
    result = run_nexus("models", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    lines = rows(result.stdout)
    assert lines[0] == ["MODEL", "CONTEXT", "CAPABILITIES", "BACKENDS"]
    assert lines[1] == ["fake-model", "-", "-", "alpha,beta"]
    assert lines[2] == ["seer", "8192", "vision,tools", "alpha"]

    result = run_nexus("models", "--json", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == json.loads(json.dumps(server.gateway.list_models()))


def test_models_for_one_backend(server: RunningServer) -> None:
    result = run_nexus("models", "--backend", "beta", url=server.url)
    assert result.returncode == 0
    assert [row[0] for row in rows(result.stdout)[1:]] == ["fake-model"]
    result = run_nexus("models", "--backend", "alpha", "--json", url=server.url)
    assert [m["id"] for m in json.loads(result.stdout)] == ["fake-model", "seer"]


def test_models_for_a_backend_that_does_not_exist_is_an_error(server: RunningServer) -> None:
    result = run_nexus("models", "--backend", "nobody", url=server.url)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: no backend named 'nobody' (backends: alpha, beta)\n"
    result = run_nexus("models", "--backend", "nobody", "--json", url=server.url)
    assert (result.returncode, result.stdout) == (1, "")


def test_models_for_a_backend_that_is_down_says_so(server: RunningServer) -> None:
    set_status(server, "beta", BackendStatus.UNHEALTHY)
    result = run_nexus("models", "--backend", "beta", url=server.url)
    assert result.returncode == 0
    assert result.stdout.splitlines()[1:] == ["(no models)"]
    assert result.stderr == "note: backend beta is unhealthy: its models are not served now\n"


# --- health ----------------------------------------------------------------------------------


def test_health_exit_codes(server: RunningServer) -> None:
    result = run_nexus("health", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"healthy  Nexus {server.gateway.health_summary()['version']} at ")
    assert lines[1:] == ["backends: 2 (2 healthy)", "models: 2"]

    set_status(server, "beta", BackendStatus.UNHEALTHY)
    result = run_nexus("health", url=server.url)
    assert result.returncode == 1
    assert result.stdout.startswith("degraded  ")
    assert "backends: 2 (1 healthy, 1 unhealthy)" in result.stdout

    set_status(server, "alpha", BackendStatus.LOADING)
    result = run_nexus("health", "--json", url=server.url)
    assert result.returncode == 2
    summary = json.loads(result.stdout)
    assert summary["status"] == "unhealthy"
    assert summary["backends"]["loading"] == 1
    assert set(summary) >= {"status", "version", "uptime_seconds", "backends", "models"}


def test_health_when_a_backend_stops_answering(server: RunningServer, beta: FakeBackend) -> None:
    from nexus_core.testing import Behaviour

    beta.behave(Behaviour(status=500, probes=True))
    # One probe is enough to see the failure; the health loop itself runs hourly in these tests.
    backend = server.gateway.registry.get("beta")
    assert backend is not None
    for _ in range(5):
        server.call(server.gateway.health.check(backend))
        if backend.status is BackendStatus.UNHEALTHY:
            break
    assert backend.status is BackendStatus.UNHEALTHY
    result = run_nexus("health", url=server.url)
    assert result.returncode == 1


# --- keys ------------------------------------------------------------------------------------


def test_keys_create_list_revoke(server: RunningServer) -> None:
    args = ["--models", "fake-*", "--models", "seer", "--rpm", "60", "--tpm", "10000"]
    result = run_nexus("keys", "create", "ci", *args, "--budget", "12.5", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    key = next(line.strip() for line in result.stdout.splitlines() if "nxk-" in line)
    assert key.startswith("nxk-")
    assert "cannot be shown again" in result.stdout

    result = run_nexus("keys", "list", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    lines = rows(result.stdout)
    assert lines[0] == ["NAME", "MODELS", "RPM", "TPM", "BUDGET", "CREATED", "SOURCE"]
    ci = next(row for row in lines[1:] if row[0] == "ci")
    assert ci[1:5] == ["fake-*,seer", "60", "10000", "$12.50"]
    assert ci[-1] == "store"
    assert key not in result.stdout

    listed = json.loads(run_nexus("keys", "list", "--json", url=server.url).stdout)
    entry = next(k for k in listed if k["name"] == "ci")
    assert entry["models"] == ["fake-*", "seer"]
    assert (entry["requests_per_minute"], entry["tokens_per_minute"]) == (60, 10000)
    assert entry["monthly_budget_usd"] == 12.5
    assert "key" not in entry

    result = run_nexus("keys", "revoke", "ci", url=server.url)
    assert (result.returncode, result.stdout, result.stderr) == (0, "revoked key ci\n", "")
    listed = json.loads(run_nexus("keys", "list", "--json", url=server.url).stdout)
    assert "ci" not in [k["name"] for k in listed]
    result = run_nexus("keys", "revoke", "ci", url=server.url)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        "error: no key named 'ci'\n",
    )


def test_keys_create_json_holds_the_key(server: RunningServer) -> None:
    result = run_nexus("keys", "create", "bot", "--json", url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
    created = json.loads(result.stdout)
    assert created["name"] == "bot"
    assert created["key"].startswith("nxk-")


# --- an unreachable server -------------------------------------------------------------------

UNREACHABLE_EXIT = [
    (("backends", "list"), 1),
    (("backends", "list", "--json"), 1),
    (("backends", "add", "http://127.0.0.1:9"), 1),
    (("backends", "remove", "alpha"), 1),
    (("backends", "drain", "alpha"), 1),
    (("models",), 1),
    (("models", "--json"), 1),
    (("health",), 2),
    (("health", "--json"), 2),
    (("keys", "create", "ci"), 1),
    (("keys", "list"), 1),
    (("keys", "revoke", "ci"), 1),
]


@pytest.mark.parametrize(("args", "code"), UNREACHABLE_EXIT, ids=lambda v: str(v))
def test_unreachable_server(args: tuple[str, ...], code: int) -> None:
    url = closed_port_url()
    result = run_nexus(*args, url=url)
    assert result.returncode == code
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot reach Nexus at {url} (")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_an_invalid_url_is_one_line() -> None:
    line = "error: not an http:// or https:// URL: 'ftp://example.invalid' (--url, $NEXUS_URL)\n"
    result = run_nexus("models", url="ftp://example.invalid")
    assert (result.returncode, result.stderr) == (1, line)
    result = run_nexus("health", url="ftp://example.invalid")
    assert (result.returncode, result.stderr) == (2, line)


def test_a_server_that_is_not_nexus(alpha: FakeBackend) -> None:
    # The fake answers /admin/backends with an OpenAI 404 envelope: one line, exit 1.
    result = run_nexus("backends", "list", url=alpha.url)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: Invalid URL (GET /admin/backends)\n"


class _BadGateway(http.server.BaseHTTPRequestHandler):
    """What a reverse proxy in front of a stopped Nexus answers."""

    def do_GET(self) -> None:
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bad_gateway() -> Iterator[str]:
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadGateway)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize(("args", "code"), [(("health",), 2), (("backends", "list"), 1)])
def test_an_answer_that_is_not_an_envelope(
    bad_gateway: str, args: tuple[str, ...], code: int
) -> None:
    result = run_nexus(*args, url=bad_gateway)
    assert (result.returncode, result.stdout) == (code, "")
    path = "/health" if args == ("health",) else "/admin/backends"
    assert result.stderr == (
        f"error: HTTP 502 from {bad_gateway}{path}: "
        "<html><body><h1>502 Bad Gateway</h1></body></html>\n"
    )


# --- colour ----------------------------------------------------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="needs a pseudo-terminal")
@pytest.mark.parametrize("no_color", [False, True])
def test_colour_only_on_a_terminal_without_no_color(server: RunningServer, no_color: bool) -> None:
    import pty

    set_status(server, "beta", BackendStatus.UNHEALTHY)
    controller, terminal = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color:
        environment["NO_COLOR"] = "1"
    with subprocess.Popen(
        [str(NEXUS), "backends", "list", "--url", server.url],
        stdout=terminal,
        stderr=subprocess.PIPE,
        env=environment,
    ) as process:
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0
    os.close(controller)
    text = output.decode().replace("\r\n", "\n")
    if no_color:
        assert "\x1b[" not in text
    else:
        assert "\x1b[32mhealthy\x1b[0m" in text
        assert "\x1b[31munhealthy\x1b[0m" in text
    # Colour never moves a column.
    plain = ANSI.sub("", text).splitlines()
    offset = plain[0].index("ZONE")
    assert [line[offset:].split()[0] for line in plain[1:]] == ["restricted", "open"]


# --- rendering (no server) -------------------------------------------------------------------


def test_table_pads_coloured_cells_by_their_visible_width() -> None:
    text = client.table(
        ("A", "STATUS", "B"),
        [("x", "healthy", "1"), ("yy", "unknown", "2")],
        colour=True,
        status_column=1,
    )
    plain = ANSI.sub("", text).splitlines()
    assert plain == ["A   STATUS   B", "x   healthy  1", "yy  unknown  2"]
    assert "\x1b[32mhealthy\x1b[0m" in text


def test_duration() -> None:
    assert [client.duration(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m 5s", "1h 1m", "1d 1h"]


# --- the admin key ---------------------------------------------------------------------------


def test_the_admin_key_comes_from_the_environment(
    alpha: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_TEST_ADMIN_KEY", ADMIN_KEY)
    backend = {"name": "alpha", "url": alpha.url, "type": "generic"}
    with running_server(config(backend, auth={"admin_key_env": "NEXUS_TEST_ADMIN_KEY"})) as nexus:
        result = run_nexus("backends", "list", url=nexus.url)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.startswith("error: The admin API needs the admin key")
        assert len(result.stderr.splitlines()) == 1

        wrong = run_nexus("keys", "list", url=nexus.url, env={"NEXUS_ADMIN_KEY": "guess"})
        assert wrong.returncode == 1
        assert wrong.stderr.startswith("error: The admin API needs the admin key")

        admin = {"NEXUS_ADMIN_KEY": ADMIN_KEY}
        result = run_nexus("backends", "list", "--json", url=nexus.url, env=admin)
        assert (result.returncode, result.stderr) == (0, "")
        assert [b["name"] for b in json.loads(result.stdout)] == ["alpha"]
        result = run_nexus("keys", "create", "ci", url=nexus.url, env=admin)
        assert (result.returncode, result.stderr) == (0, "")
        assert ADMIN_KEY not in result.stdout
