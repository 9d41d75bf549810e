"""Shared fixtures for the end-to-end tests: fake backends and a real Nexus server in a thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.testing import FakeBackend, free_port

#: The installed ``nexus`` console script, next to this interpreter.
NEXUS = str(Path(sys.executable).parent / "nexus")

# No test may start mDNS discovery on a real network.
os.environ["NEXUS_DISCOVERY"] = "false"


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio."""
    return "asyncio"


#: Debian's chromium, for the dashboard's browser tests (Playwright drives it headless).
CHROMIUM = Path("/usr/bin/chromium")
#: A browser test's mark: skipped when chromium is missing, except under CI (``.ci/run`` installs
#: it), where a missing browser fails the run.
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (.ci/run installs it)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module."""
    assert CHROMIUM.exists(), "CI needs /usr/bin/chromium: apt-get install chromium"
    from playwright.sync_api import sync_playwright  # only the browser tests need it

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        try:
            yield instance
        finally:
            instance.close()


def gateway_config(*backends: FakeBackend | dict[str, Any], **routing: Any) -> dict[str, Any]:
    """A config for the fakes (in priority order): fast timeouts, no discovery, state in memory."""
    entries: list[dict[str, Any]] = []
    for index, backend in enumerate(backends):
        if isinstance(backend, FakeBackend):
            entries.append({"name": backend.name, "url": backend.url, "priority": 10 * (index + 1)})
        else:
            entries.append(backend)
    return {
        "server": {
            "first_byte_timeout_seconds": 1.0,
            "idle_timeout_seconds": 2.0,
            "request_timeout_seconds": 10.0,
        },
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "routing": routing,
        "backends": entries,
        # Each test's spend starts at zero (tests that test durability set their own store).
        "state": {"backend": "memory"},
    }


@pytest.fixture
def fakes() -> Iterator[list[FakeBackend]]:
    """Three running fake backends, a/b/c, all serving ``fake-model``."""
    backends = [FakeBackend(name) for name in ("a", "b", "c")]
    contexts = [backend.running() for backend in backends]
    for context in contexts:
        context.__enter__()
    try:
        yield backends
    finally:
        for context in contexts:
            context.__exit__(None, None, None)


@contextmanager
def nexus_serve(
    config_file: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The real ``nexus serve --config`` on a free port (``args`` added), until ready.

    The process's log goes to ``config_file`` with the suffix ``.log``. Killed at the end if
    it is still alive.
    """
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environment.update({"NEXUS_DISCOVERY": "false", **(env or {})})
    # The log goes to a file: a pipe nobody reads fills up after a few hundred request lines
    # and then blocks the server's writes (and the server with them).
    log_file = config_file.with_suffix(".log")
    log = log_file.open("wb")
    process = subprocess.Popen(
        [
            NEXUS,
            "serve",
            "--config",
            str(config_file),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                stderr = log_file.read_text(errors="replace")
                raise AssertionError(f"nexus serve exited: {stderr}")
            try:
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "nexus serve did not become ready"
            time.sleep(0.05)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def toml_text(value: dict[str, Any]) -> str:
    """``value`` as TOML: enough for test configs (tables, arrays of tables, scalars, arrays)."""
    lines: list[str] = []

    def scalar(item: Any) -> str:
        return json.dumps(item)

    def table(prefix: str, data: dict[str, Any]) -> None:
        plain = {k: v for k, v in data.items() if not isinstance(v, dict | list) or _simple(v)}
        nested = {k: v for k, v in data.items() if k not in plain}
        if prefix:
            lines.append(f"[{prefix}]")
        for key, item in plain.items():
            lines.append(f"{key} = {scalar(item)}")
        for key, item in nested.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(item, dict):
                table(name, item)
            else:
                for entry in item:
                    lines.append(f"[[{name}]]")
                    for k, v in entry.items():
                        lines.append(f"{k} = {scalar(v)}")

    table("", value)
    return "\n".join(lines) + "\n"


def _simple(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, dict | list) for v in value)
