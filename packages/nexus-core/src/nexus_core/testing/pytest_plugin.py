"""pytest plugin (entry point ``pytest11``): fixtures for adapter authors.

Installed with nexusgw-core, so any project that tests an adapter gets (the fake backends need
the extra ``nexusgw-core[testing]``; this module imports them only when a fixture is used, so
pytest starts in any environment that has nexusgw-core):

- ``nexus_fake_backend``: a running ``FakeBackend`` (OpenAI wire) on 127.0.0.1, reset per test;
- ``nexus_http_clients``: the ``HttpClients`` adapters are built with, closed after the test.

The contract suite is a class to subclass: ``nexus_core.testing.contract.AdapterContract``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from nexus_core.http import HttpClients

if TYPE_CHECKING:
    from nexus_core.testing.fake_backend import FakeBackend


@pytest.fixture
def nexus_fake_backend() -> Iterator[FakeBackend]:
    """An OpenAI-wire fake server (its own thread), serving ``fake-model``."""
    from nexus_core.testing.fake_backend import FakeBackend

    with FakeBackend("fake").running() as backend:
        yield backend


@pytest.fixture
async def nexus_http_clients() -> AsyncIterator[HttpClients]:
    """Shared HTTP clients for adapters under test (use inside async tests)."""
    clients = HttpClients()
    yield clients
    await clients.aclose()
