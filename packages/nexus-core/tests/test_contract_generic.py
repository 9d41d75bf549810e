"""The built-in generic adapter passes the adapter contract against the OpenAI-wire fake."""

from __future__ import annotations

import pytest

from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.testing import FakeBackend
from nexus_core.testing.contract import AdapterContract


class TestGenericAdapter(AdapterContract):
    adapter_class = OpenAIWireAdapter


class TestGenericAdapterWithKey(AdapterContract):
    adapter_class = OpenAIWireAdapter
    api_key = "sk-contract"

    async def test_key_is_required_by_the_fake(self, fake: FakeBackend) -> None:
        import httpx

        async with httpx.AsyncClient() as client:
            response = await client.get(fake.url + "/v1/models")
        assert response.status_code == 401


def test_plugin_fixture_serves_openai_wire(nexus_fake_backend: FakeBackend) -> None:
    import httpx

    models = httpx.get(nexus_fake_backend.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["fake-model"]


pytestmark = pytest.mark.filterwarnings("error")
