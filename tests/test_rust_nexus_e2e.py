"""Coming from the Rust Nexus: its end-to-end smoke flow, run against our ``nexus serve``.

The upstream repository (github.com/leocamello/nexus) checks a release with a bash + curl script,
``scripts/e2e-test.sh``: it writes a configuration in its own spelling, starts
``nexus serve -c FILE`` and probes every feature over HTTP. This test makes the same requests and
the same checks, in Python, against the real ``nexus serve`` process and a fake Ollama on
127.0.0.1, with the script's configuration keys (its renamed ones included) left as they are.

Two things of the script are its own bugs and are fixed here as the migration page says: its
``[routing.policies.default]`` table, which the Rust Nexus never parsed either, is written as a
``[[routing.policies]]`` entry; and its fixed three-second sleep is a wait for ``/health/ready``.
Where our answer deliberately differs from the Rust Nexus's, the check asserts our documented
behaviour, and ``docs/migrating-from-rust-nexus.md`` names the difference
(``test_every_difference_is_documented``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.adapters import BackendStatus
from nexus_core.testing import FakeBackend, closed_port_url, free_port
from nexus_core.testing.ollama import FakeOllama
from nexus_server.testing import RunningServer, running_server
from tests.conftest import NEXUS, gateway_config

DOCS = Path(__file__).resolve().parent.parent / "docs"
MIGRATING = DOCS / "migrating-from-rust-nexus.md"
MODEL = "llama3.2:latest"
EMBED_MODEL = "nomic-embed-text:latest"
CHAT = "/v1/chat/completions"


def upstream_config(port: int, backend_url: str) -> str:
    """The script's configuration, key for key, with its policy written as an array entry."""
    return f"""\
[server]
host = "127.0.0.1"
port = {port}

[discovery]
enabled = false

[health_check]
enabled = true
interval_seconds = 30
timeout_seconds = 5

[routing]
strategy = "smart"
max_retries = 2

[routing.aliases]
"gpt-4" = "{MODEL}"
"test-alias" = "{MODEL}"

[routing.fallbacks]
"nonexistent-model-xyz" = ["{MODEL}"]

[[routing.policies]]
model_pattern = "*"
privacy = "restricted"

[logging]
level = "error"
format = "pretty"

[[backends]]
name = "test-backend"
url = "{backend_url}"
type = "ollama"
priority = 1
zone = "restricted"
tier = 3

[quality]
error_rate_threshold = 0.5
ttft_threshold_ms = 2000

[queue]
enabled = true
max_size = 100
default_timeout_seconds = 30
"""


class Nexus:
    """A running ``nexus serve -c nexus.toml`` (short flag, relative path, as the script does)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log
        self.http = httpx.Client(base_url=url, timeout=10)

    def chat(
        self, model: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> httpx.Response:
        """A chat request with one user message (``extra``: more body fields)."""
        body = {"model": model, "messages": [{"role": "user", "content": "Say OK"}], **extra}
        return self.http.post(CHAT, json=body, headers=headers)


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    models = [MODEL, {"id": EMBED_MODEL, "capabilities": ["embedding"]}]
    with FakeOllama("o", models).running() as fake:
        yield fake


@pytest.fixture
def nexus(tmp_path: Path, ollama: FakeOllama) -> Iterator[Nexus]:
    port = free_port()
    (tmp_path / "nexus.toml").write_text(upstream_config(port, ollama.url), encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    # No mDNS; durable state in the test's directory, not the developer's home. The Rust
    # Nexus's level name "warn" shows the start-up warnings the file's "error" would hide.
    environment.update(
        NEXUS_DISCOVERY="false",
        NEXUS_LOG_LEVEL="warn",
        HOME=str(tmp_path),
        XDG_STATE_HOME=str(tmp_path / "state"),
    )
    log = tmp_path / "nexus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [NEXUS, "serve", "-c", "nexus.toml"],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "nexus serve did not become ready"
            time.sleep(0.05)
        server = Nexus(process, url, log)
        yield server
        server.http.close()
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(15)


def metric(text: str, name: str) -> float:
    """The value of the unlabelled series ``name`` in a Prometheus text exposition."""
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def websocket_upgrade(url: str, path: str) -> bytes:
    """The status line of the answer to a bare WebSocket handshake (as curl sends one)."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096).split(b"\r\n", 1)[0]


def test_the_upstream_smoke_flow(nexus: Nexus, ollama: FakeOllama) -> None:
    http = nexus.http
    # The backend answers at its root, as the script's preflight asks.
    assert httpx.get(ollama.url, timeout=5).status_code == 200

    # Health: a status and the backend count.
    health = http.get("/health").json()
    assert health["status"] == "healthy"
    assert health["backends"]["total"] == 1

    # Models: a list that holds the configured model.
    models = http.get("/v1/models").json()
    assert isinstance(models["data"], list)
    assert MODEL in [entry["id"] for entry in models["data"]]

    # A whole answer, then a stream that ends with the [DONE] sentinel.
    answer = nexus.chat(MODEL, max_tokens=10)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"]
    with http.stream(
        "POST",
        CHAT,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as stream:
        assert stream.status_code == 200
        text = "".join(stream.iter_text())
    assert "data: [DONE]" in text

    # An unknown model is an OpenAI error envelope.
    unknown = nexus.chat("this-model-does-not-exist")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"]

    # An alias is resolved and answered by the backend.
    aliased = nexus.chat("gpt-4", max_tokens=5)
    assert aliased.status_code == 200
    assert aliased.json()["choices"][0]["message"]["content"]
    assert ollama.inference_requests[-1].json["model"] == MODEL

    # A fallback chain answers and names the model that served.
    fallback = nexus.chat("nonexistent-model-xyz", max_tokens=5)
    assert fallback.status_code == 200
    assert fallback.headers["x-nexus-fallback-model"] == MODEL

    # Metrics: the fleet gauge the script reads, and the request counters.
    metrics = http.get("/metrics").text
    assert metric(metrics, "nexus_backends_total") == 1
    assert metric(metrics, "nexus_backends_healthy") == 1
    assert metric(metrics, "nexus_models_available") == 2
    assert "nexus_requests_total{" in metrics

    # Stats carry the uptime; history is a list of the requests (ours in an OpenAI list object:
    # a documented difference, the Rust Nexus answers a bare array).
    stats = http.get("/v1/stats").json()
    assert stats["uptime_seconds"] >= 0
    history = http.get("/v1/history").json()
    assert history["object"] == "list"
    assert isinstance(history["data"], list)
    assert history["data"]

    # The dashboard page; its assets live under /dashboard/static/ (the Rust Nexus's /assets/
    # files are its own dashboard's: a documented difference).
    page = http.get("/")
    assert page.status_code == 200
    assert "<!doctype html>" in page.text.lower()
    for asset in ("dashboard.js", "dashboard.css"):
        assert http.get(f"/dashboard/static/{asset}").status_code == 200, asset
    for asset in ("dashboard.js", "styles.css"):
        assert http.get(f"/assets/{asset}").status_code == 404, asset
    assert websocket_upgrade(nexus.url, "/ws").startswith(b"HTTP/1.1 101")

    # The Nexus-Transparent headers on a proxied answer.
    headers = nexus.chat(MODEL, max_tokens=5).headers
    assert headers["x-nexus-backend"] == "test-backend"  # its name; the Rust Nexus sends a UUID
    assert headers["x-nexus-backend-type"] == "local"
    assert headers["x-nexus-privacy-zone"] == "restricted"
    assert headers["x-nexus-route-reason"] == "privacy-restricted"
    # A local, unpriced route carries no cost estimate (the script skips the check then).
    assert "x-nexus-cost-estimated" not in headers

    # A model no backend serves: an OpenAI error (404 model_not_found, not a 503 after 30 s in
    # the queue as the Rust Nexus's default queue does).
    missing = nexus.chat("nonexistent-cloud-model-xyz")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"

    # Budget: stats and gauges are there even without a limit.
    stats = http.get("/v1/stats").json()
    assert stats["budget"]["limit_usd"] is None
    assert "nexus_budget_spend_usd " in http.get("/metrics").text

    # Quality: per-backend stats.
    assert [backend["name"] for backend in stats["backends"]] == ["test-backend"]

    # Embeddings, one input then two, with the X-Nexus headers. The script asks the chat model;
    # Ollama says it cannot embed, so Nexus refuses it (a documented difference) and an
    # embedding model answers.
    refused = http.post("/v1/embeddings", json={"model": MODEL, "input": "Hello world"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "embeddings_not_supported"
    single = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "Hello world"})
    assert single.status_code == 200, single.text
    assert len(single.json()["data"][0]["embedding"]) > 0
    assert single.headers["x-nexus-backend"] == "test-backend"
    batch = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": ["Hello", "World"]})
    assert len(batch.json()["data"]) == 2

    # Queue: the gauge and the stats; a numeric X-Nexus-Priority is accepted (as normal).
    assert "nexus_queue_depth 0" in http.get("/metrics").text
    assert http.get("/v1/stats").json()["queue"]["depth"] == 0
    prioritised = nexus.chat(MODEL, max_tokens=5, headers={"X-Nexus-Priority": "1"})
    assert prioritised.status_code == 200
    assert prioritised.json()["choices"][0]["message"]["content"]

    # The script's renamed keys were read, each named once in the log at start.
    log = nexus.log.read_text()
    for old, new in (
        ("quality.ttft_threshold_ms", "quality.ttft_penalty_threshold_ms"),
        ("queue.default_timeout_seconds", "queue.max_wait_seconds"),
    ):
        lines = [line for line in log.splitlines() if old in line]
        assert len(lines) == 1, log
        assert "WARNING" in lines[0]
        assert new in lines[0]


def test_the_fleet_gauges_follow_health_and_models() -> None:
    """``nexus_backends_*`` count registered and healthy backends; ``nexus_models_available``
    the distinct ids on healthy backends, a shared model once, an alias never."""
    alpha = FakeBackend("alpha", models=["shared", "only-alpha"])
    beta = FakeBackend("beta", models=["shared", "only-beta"])
    with alpha.running(), beta.running():
        config = gateway_config(alpha, beta, {"name": "gamma", "url": closed_port_url()})
        config["routing"] = {"aliases": {"gpt-4": "shared"}}
        with running_server(config) as server:
            wait_for(server, lambda: _status(server, "alpha") and _status(server, "beta"))
            text = httpx.get(server.url + "/metrics", timeout=5).text
            assert metric(text, "nexus_backends_total") == 3
            assert metric(text, "nexus_backends_healthy") == 2
            assert metric(text, "nexus_models_available") == 3
            assert "# TYPE nexus_models_available gauge" in text

            set_status(server, "beta", BackendStatus.UNHEALTHY)
            text = httpx.get(server.url + "/metrics", timeout=5).text
            assert metric(text, "nexus_backends_total") == 3
            assert metric(text, "nexus_backends_healthy") == 1
            assert metric(text, "nexus_models_available") == 2  # shared, only-alpha


def _status(server: RunningServer, name: str) -> bool:
    backend = server.gateway.registry.get(name)
    return backend is not None and backend.status is BackendStatus.HEALTHY


def wait_for(server: RunningServer, condition: Any, timeout: float = 10) -> None:
    """Poll ``condition()`` until it holds (the first health probes run at start)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def set_status(server: RunningServer, name: str, status: BackendStatus) -> None:
    """Change a backend's health on the server's loop, where the registry lives."""

    async def change() -> None:
        backend = server.gateway.registry.get(name)
        assert backend is not None
        server.gateway.registry.set_status(backend, status, "set by the test")

    server.call(change())


def test_the_scripts_policy_table_is_refused_with_a_hint(tmp_path: Path) -> None:
    """As written by the script, ``[routing.policies.default]`` stops Nexus with a clear line."""
    text = upstream_config(8000, "http://127.0.0.1:11434")
    text = text.replace(
        '[[routing.policies]]\nmodel_pattern = "*"\n', "[routing.policies.default]\n"
    )
    (tmp_path / "nexus.toml").write_text(text, encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    result = subprocess.run(
        [NEXUS, "config", "check", "nexus.toml"],
        cwd=tmp_path,
        env={**environment, "NEXUS_DISCOVERY": "false"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "nexus.toml: routing.policies: must be an array of tables: write each policy as "
        '[[routing.policies]] with model_pattern = "<glob>" (a [routing.policies.<name>] table '
        "is not a policy, in the Rust Nexus either)"
    ]


def test_every_difference_is_documented() -> None:
    """What the flow above finds different from the Rust Nexus is named on the migration page."""
    page = MIGRATING.read_text(encoding="utf-8")
    quoted = set(re.findall(r"`([^`\n]+)`", page))
    for name in (
        "GET /v1/history",
        "GET /assets/dashboard.js",
        "GET /assets/styles.css",
        "/dashboard/static/",
        "X-Nexus-Backend",
        "X-Nexus-Route-Reason",
        "X-Nexus-Priority",
        "nexus_pipeline_duration_seconds",
        "nexus_reconciler_duration_seconds",
        "[routing.policies.default]",
        "-c",
        "-p",
        "-H",
        "-l",
        "NEXUS_LOG_LEVEL",
    ):
        assert name in quoted, name
    # Every key the loader accepts from the Rust Nexus is in the page's table.
    from nexus_core.config.rust_nexus import UPSTREAM_KEYS

    for entry in UPSTREAM_KEYS:
        shown = entry.path if "." in entry.path else f"[{entry.path}]"  # a whole section
        assert shown in quoted, entry.path
