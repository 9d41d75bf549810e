"""Fixtures of the ollama adapter tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp, the hot-path client, runs on asyncio."""
    return "asyncio"
