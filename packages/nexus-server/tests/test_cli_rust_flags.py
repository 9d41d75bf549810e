"""The Rust Nexus's command lines keep working: its short flags, log level names and config keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.config import LogLevel, NexusConfig
from nexus_core.testing import FakeBackend, free_port
from nexus_server.cli import app
from nexus_server.testing import RunningServer, running_server

#: A file in the Rust Nexus's spelling: two renamed keys and one it has that we do not.
UPSTREAM_FILE = """\
[server]
port = 9000
host = "10.0.0.1"
max_concurrent_requests = 1000

[quality]
ttft_threshold_ms = 2000

[queue]
default_timeout_seconds = 12
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NEXUS_* variable from the developer's shell, and a working directory of our own."""
    for name in list(os.environ):
        if name.startswith("NEXUS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def nexus(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``nexus ARGS`` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = app(list(args), result_action="return_value")
    out, err = capsys.readouterr()
    assert isinstance(code, int)
    return code, out, err


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[NexusConfig]:
    """The configurations ``nexus serve`` would run (the server itself is not started)."""
    import nexus_server.serve

    seen: list[NexusConfig] = []

    def fake_run(config: NexusConfig, *, source: str, config_file: Path | None = None) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(nexus_server.serve, "run", fake_run)
    return seen


def test_serve_short_flags(
    capsys: pytest.CaptureFixture[str], served: list[NexusConfig], tmp_path: Path
) -> None:
    (tmp_path / "nexus.toml").write_text(UPSTREAM_FILE, encoding="utf-8")
    code, _, err = nexus(
        capsys, "serve", "-c", "nexus.toml", "-p", "9100", "-H", "127.0.0.1", "-l", "warn"
    )
    assert (code, err) == (0, "")
    config = served[-1]
    assert (config.server.host, config.server.port) == ("127.0.0.1", 9100)
    assert config.logging.level is LogLevel.WARNING
    assert config.quality.ttft_penalty_threshold_ms == 2000
    assert config.queue.max_wait_seconds == 12
    assert len(config.deprecation_warnings) == 3

    # The long forms still work, and trace is debug.
    code, _, _ = nexus(capsys, "serve", "--config", "nexus.toml", "--log-level", "TRACE")
    assert code == 0
    assert served[-1].logging.level is LogLevel.DEBUG
    assert (served[-1].server.host, served[-1].server.port) == ("10.0.0.1", 9000)


def test_serve_refuses_an_unknown_log_level(
    capsys: pytest.CaptureFixture[str], served: list[NexusConfig]
) -> None:
    code, out, err = nexus(capsys, "serve", "-l", "verbose")
    assert (code, out) == (1, "")
    assert err == (
        "command line: logging.level: must be 'debug', 'info', 'warning' or 'error' (any case) "
        "(got 'verbose')\n"
    )
    assert served == []


def test_config_check_warns_about_each_rust_nexus_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "nexus.toml").write_text(UPSTREAM_FILE, encoding="utf-8")
    code, out, err = nexus(capsys, "config", "check", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["quality"]["ttft_penalty_threshold_ms"] == 2000
    assert data["queue"]["max_wait_seconds"] == 12
    assert "max_concurrent_requests" not in data["server"]
    assert err.splitlines() == [
        "warning: nexus.toml: quality.ttft_threshold_ms is deprecated (the Rust Nexus's name): "
        "read as quality.ttft_penalty_threshold_ms; rename it",
        "warning: nexus.toml: queue.default_timeout_seconds is deprecated (the Rust Nexus's "
        "name): read as queue.max_wait_seconds; rename it",
        "warning: nexus.toml: server.max_concurrent_requests: a Rust Nexus key with no effect "
        "here (limit a backend with backends[].max_concurrent, client connections with "
        "server.max_connections); ignored, remove it",
    ]


def test_config_init_short_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "out.toml"
    target.write_text("old", encoding="utf-8")
    code, _, err = nexus(capsys, "config", "init", "-o", str(target))
    assert code == 1
    assert "--force" in err
    code, _, _ = nexus(capsys, "config", "init", "-o", str(target), "-f")
    assert code == 0
    assert target.read_text(encoding="utf-8").startswith("#")


# --- the commands that talk to a server ------------------------------------------------------


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with (
        FakeBackend("alpha", models=["fake-model", "seer"]).running() as alpha,
        FakeBackend("beta", models=["fake-model"]).running() as beta,
    ):
        backends: list[dict[str, Any]] = [
            {"name": "alpha", "url": alpha.url, "type": "generic"},
            {"name": "beta", "url": beta.url, "type": "generic"},
        ]
        config = {
            "discovery": {"enabled": False},
            "health_check": {"interval_seconds": 3600},
            "state": {"backend": "memory"},
            "backends": backends,
        }
        with running_server(config) as running:
            deadline = time.monotonic() + 10
            while running.gateway.health_summary()["status"] != "healthy":
                assert time.monotonic() < deadline, "backends never became healthy"
                time.sleep(0.02)
            yield running


def test_remote_short_flags(capsys: pytest.CaptureFixture[str], server: RunningServer) -> None:
    code, out, _ = nexus(capsys, "models", "-b", "beta", "--json", "--url", server.url)
    assert code == 0
    assert [model["id"] for model in json.loads(out)] == ["fake-model"]

    code, out, _ = nexus(capsys, "backends", "list", "-s", "healthy", "--json", "--url", server.url)
    assert code == 0
    assert [backend["name"] for backend in json.loads(out)] == ["alpha", "beta"]

    with FakeBackend("gamma").running() as gamma:
        code, _, err = nexus(
            capsys,
            *("backends", "add", gamma.url, "-n", "gamma", "-t", "generic", "-p", "5"),
            *("--url", server.url),
        )
        assert (code, err) == (0, "")
        added = server.gateway.registry.get("gamma")
        assert added is not None
        assert (added.config.type, added.config.priority) == ("generic", 5)
    with FakeBackend("delta").running() as delta:
        code, _, err = nexus(
            capsys,
            *("backends", "add", delta.url, "--name", "delta", "--backend-type", "generic"),
            *("--url", server.url),
        )
        assert (code, err) == (0, "")
        added = server.gateway.registry.get("delta")
        assert added is not None
        assert added.config.type == "generic"


# --- a real process --------------------------------------------------------------------------


def test_a_real_serve_with_the_rust_nexus_command_line(tmp_path: Path) -> None:
    """``nexus serve -c FILE -p PORT -H HOST -l warn`` serves, and names each renamed key once."""
    (tmp_path / "nexus.toml").write_text(
        UPSTREAM_FILE + '\n[discovery]\nenabled = false\n\n[state]\nbackend = "memory"\n',
        encoding="utf-8",
    )
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "nexus_server.cli", "serve", "-c", "nexus.toml"),
            *("-p", str(port), "-H", "127.0.0.1", "-l", "warn"),
        ],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "nexus serve exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nexus serve did not answer"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        log = process.communicate(timeout=10)[1]
    for key in (
        "server.max_concurrent_requests",
        "quality.ttft_threshold_ms",
        "queue.default_timeout_seconds",
    ):
        lines = [line for line in log.splitlines() if key in line]
        assert len(lines) == 1, log
        assert "WARNING" in lines[0]
    # At level warning the INFO line saying where it listens is not shown.
    assert "listening" not in log
