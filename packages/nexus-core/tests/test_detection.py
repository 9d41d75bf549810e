"""Type detection: Gateway.add_backend with type auto (or a bare URL) picks the specific type."""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import pytest

from nexus_core.adapters import BackendStatus
from nexus_core.gateway import Gateway
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.testing import FakeBackend

pytestmark = pytest.mark.anyio


class _Claims(OpenAIWireAdapter):
    """A type that recognises servers whose model cards are owned by ``owner``."""

    owner: ClassVar[str] = ""

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        response = await clients.probe.get(url + "/v1/models")
        return any(card.get("owned_by") == cls.owner for card in response.json()["data"])


class Alpha(_Claims):
    type_name: ClassVar[str] = "alpha"
    owner = "alpha-server"


class Broad(_Claims):
    """Claims the same servers as Alpha, but is declared less specific."""

    type_name: ClassVar[str] = "broad"
    owner = "alpha-server"
    detect_rank: ClassVar[int] = 90


class Raises(OpenAIWireAdapter):
    type_name: ClassVar[str] = "raises"

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        raise RuntimeError("broken detector")


TYPES: dict[str, Any] = {
    "generic": OpenAIWireAdapter,
    "alpha": Alpha,
    "broad": Broad,
    "raises": Raises,
}


def gateway() -> Gateway:
    config = {"discovery": {"enabled": False}, "health_check": {"interval_seconds": 3600}}
    return Gateway(config, backend_types=TYPES)


async def test_most_specific_type_wins() -> None:
    async with FakeBackend("alpha-server", ["m"]) as fake, gateway() as gw:
        assert await gw.detect_type(fake.url) == "alpha"
        backend = await gw.add_backend({"name": "a", "url": fake.url})
        assert backend.type_name == "alpha"
        assert isinstance(backend.adapter, Alpha)
        assert backend.status is BackendStatus.HEALTHY


async def test_plain_openai_server_is_generic_and_bare_url_names_itself() -> None:
    async with FakeBackend("other", ["m"]) as fake, gateway() as gw:
        backend = await gw.add_backend(fake.url)
        assert backend.type_name == "generic"
        assert backend.name == f"127.0.0.1-{fake.port}"


async def test_unreachable_server_is_generic_until_it_answers() -> None:
    fake = FakeBackend("alpha-server", ["m"])
    await fake.start()
    await fake.stop()  # the port is known, nothing listens
    async with gateway() as gw:
        assert await gw.detect_type(fake.url) is None
        backend = await gw.add_backend({"name": "late", "url": fake.url})
        assert backend.type_name == "generic"
        assert backend.status is BackendStatus.UNHEALTHY
        await fake.start()
        try:
            for _ in range(3):  # recovery threshold: two good probes
                await gw.health.check(backend)
            for _ in range(100):
                if backend.type_name == "alpha":
                    break
                await anyio.sleep(0.01)
            assert backend.type_name == "alpha"
            assert isinstance(backend.adapter, Alpha)
            assert backend.status is BackendStatus.HEALTHY
        finally:
            await fake.stop()
