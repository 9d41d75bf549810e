"""Shared fixtures for nexus_core's unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (aiohttp, the hot-path client, needs it)."""
    return "asyncio"
