"""Shared fixtures for the end-to-end tests: fake backends and a real Nexus server in a thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from nexus_core.testing import FakeBackend

# No test may start mDNS discovery on a real network.
os.environ["NEXUS_DISCOVERY"] = "false"


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio."""
    return "asyncio"


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
