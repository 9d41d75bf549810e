"""Shared fixtures for this adapter's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from nexus_core.http import HttpClients


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (aiohttp, the hot-path client, needs it)."""
    return "asyncio"


@pytest.fixture
async def clients(anyio_backend: str) -> AsyncIterator[HttpClients]:
    """The HTTP clients adapters share, closed after the test."""
    shared = HttpClients()
    yield shared
    await shared.aclose()
