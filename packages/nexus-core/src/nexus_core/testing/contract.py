"""The adapter contract: tests every backend adapter must pass, ready to subclass.

In an adapter package's tests::

    from nexus_core.testing.contract import AdapterContract
    from my_adapter import MyAdapter, FakeMyServer

    class TestMyAdapter(AdapterContract):
        adapter_class = MyAdapter
        fake_class = FakeMyServer  # a FakeBackend subclass speaking the server's wire protocol

Each test runs the adapter against a fresh fake server on 127.0.0.1: health and model listing,
chat (whole and streamed), error classification (5xx, 429, 4xx, connection refused), prompt
cancellation of a stream, and detection of its own server type. Override ``make_fake`` or
``backend_config`` when the server needs more (an API key, another model list).

An adapter with model lifecycle operations (``nexus_core.adapters.ModelLifecycle``) also
passes ``LifecycleContract``: its fake starts with ``models`` out of memory; the tests list
them, load one (and wait until it serves), load it again (no second load request), unload it,
ask for an unknown model, time a slow load out, and meet a failing and a dead server.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from nexus_core.adapters import (
    BackendAdapter,
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    ModelLifecycle,
    ModelState,
    Timeouts,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.sse import event_data
from nexus_core.testing.fake_backend import Behaviour, FakeBackend

FAST = Timeouts(connect=2.0, first_byte=5.0, idle=5.0)


class AdapterContract:
    """Subclass and set ``adapter_class`` (and ``fake_class`` unless the server is OpenAI-wire)."""

    pytestmark = pytest.mark.anyio

    adapter_class: ClassVar[Any]
    fake_class: ClassVar[type[FakeBackend]] = FakeBackend
    model: ClassVar[str] = "contract-model"
    #: Sent as the key (through an environment variable) when the fake requires one.
    api_key: ClassVar[str | None] = None

    # -- hooks ---------------------------------------------------------------------------------

    def make_fake(self) -> FakeBackend:
        """The fake server the tests run against."""
        return self.fake_class("contract", [self.model], api_key=self.api_key)

    def backend_config(self, url: str, monkeypatch: pytest.MonkeyPatch) -> BackendConfig:
        """The config the adapter is built from."""
        key_env = None
        if self.api_key is not None:
            key_env = "NEXUS_CONTRACT_API_KEY"
            monkeypatch.setenv(key_env, self.api_key)
        return BackendConfig(
            name="contract",
            url=url,
            type=self.adapter_class.type_name,
            api_key_env=key_env,
        )

    def chat_body(self, **extra: Any) -> bytes:
        """An OpenAI chat request for the contract model."""
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 8,
            **extra,
        }
        return json.dumps(payload).encode()

    # -- fixtures ------------------------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> str:
        """aiohttp, the hot-path client, runs on asyncio."""
        return "asyncio"

    @pytest.fixture
    async def fake(self, anyio_backend: str) -> AsyncIterator[FakeBackend]:
        """A running fake server."""
        async with self.make_fake() as server:
            yield server

    @pytest.fixture
    async def clients(self, anyio_backend: str) -> AsyncIterator[HttpClients]:
        """The HTTP clients adapters share."""
        shared = HttpClients()
        yield shared
        await shared.aclose()

    @pytest.fixture
    async def adapter(
        self, fake: FakeBackend, clients: HttpClients, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[BackendAdapter]:
        """The adapter under test, pointed at the fake."""
        adapter = self.adapter_class(self.backend_config(fake.url, monkeypatch), clients)
        yield adapter
        await adapter.close()

    # -- the contract --------------------------------------------------------------------------

    def test_contract_declares_its_type(self) -> None:
        """A type name usable in config and a cloud flag."""
        assert isinstance(self.adapter_class.type_name, str)
        assert self.adapter_class.type_name
        assert isinstance(self.adapter_class.is_cloud, bool)

    async def test_contract_probe_healthy_lists_models(self, adapter: BackendAdapter) -> None:
        """A healthy server is healthy, with the model it serves."""
        result = await adapter.probe()
        assert result.status is BackendStatus.HEALTHY, result.detail
        assert self.model in [model.id for model in result.models]

    async def test_contract_probe_of_a_dead_server_is_unhealthy(
        self, adapter: BackendAdapter, fake: FakeBackend
    ) -> None:
        """A server that refuses connections is unhealthy, with a reason, and no exception."""
        await fake.stop()
        result = await adapter.probe()
        assert result.status is BackendStatus.UNHEALTHY
        assert result.detail

    async def test_contract_chat(self, adapter: BackendAdapter, fake: FakeBackend) -> None:
        """A chat completion comes back as OpenAI JSON, and the request reached the server."""
        response = await adapter.send(Endpoint.CHAT, self.chat_body(), stream=False, timeouts=FAST)
        assert response.status == 200
        assert response.body is not None
        answer = json.loads(response.body)
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert fake.inference_requests

    async def test_contract_chat_stream(self, adapter: BackendAdapter) -> None:
        """A stream comes back as complete SSE events, ending the OpenAI way."""
        response = await adapter.send(
            Endpoint.CHAT, self.chat_body(stream=True), stream=True, timeouts=FAST
        )
        assert response.events is not None
        try:
            events = [event async for event in response.events]
        finally:
            await response.aclose()
        assert all(event.endswith(b"\n\n") for event in events)
        datas = [event_data(event) for event in events]
        assert datas[-1] == b"[DONE]"
        chunks = [json.loads(data) for data in datas[:-1]]
        assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)

    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (500, ErrorKind.SERVER_ERROR),
            (503, ErrorKind.SERVER_ERROR),
            (429, ErrorKind.OVERLOADED),
            (400, ErrorKind.CLIENT_ERROR),
        ],
    )
    async def test_contract_errors_are_classified(
        self, adapter: BackendAdapter, fake: FakeBackend, status: int, kind: ErrorKind
    ) -> None:
        """Upstream errors become ``BackendError`` of the right kind, with status and body."""
        fake.push(Behaviour(status=status))
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, self.chat_body(), stream=False, timeouts=FAST)
        assert info.value.kind is kind
        assert info.value.status == status
        assert info.value.retryable is (kind is not ErrorKind.CLIENT_ERROR)
        assert info.value.body

    async def test_contract_connection_refused(
        self, adapter: BackendAdapter, fake: FakeBackend
    ) -> None:
        """A dead server is a retryable connect error."""
        await fake.stop()
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, self.chat_body(), stream=False, timeouts=FAST)
        assert info.value.kind is ErrorKind.CONNECT
        assert info.value.retryable

    async def test_contract_closing_a_stream_cancels_upstream(
        self, adapter: BackendAdapter, fake: FakeBackend
    ) -> None:
        """Closing a stream mid-way drops the upstream connection within 100 ms."""
        fake.push(Behaviour(delay_between_events=2.0))
        response = await adapter.send(
            Endpoint.CHAT, self.chat_body(stream=True), stream=True, timeouts=FAST
        )
        assert response.events is not None
        first = await anext(response.events)
        assert first.startswith(b"data:")
        closed_at = time.monotonic()
        await response.aclose()
        assert await fake.wait_for_disconnect(timeout=1.0)
        assert fake.disconnects[0] - closed_at < 0.1

    async def test_contract_detects_its_own_server(
        self, fake: FakeBackend, clients: HttpClients
    ) -> None:
        """``detect`` recognises the server type it is written for."""
        assert await self.adapter_class.detect(fake.url, clients, api_key=self.api_key)


class LifecycleContract:
    """Subclass, set ``adapter_class`` and write ``make_fake`` (a fake whose ``models`` are all
    out of memory) and ``slow_loads`` (make the fake's loads take that long)."""

    pytestmark = pytest.mark.anyio

    adapter_class: ClassVar[Any]
    #: The models the fake can serve; the tests load and unload the first.
    models: ClassVar[tuple[str, ...]] = ("alpha", "beta")
    #: The state of a model out of memory on this server (vLLM's: ``sleeping``).
    unloaded_state: ClassVar[ModelState] = ModelState.UNLOADED

    # -- hooks ---------------------------------------------------------------------------------

    def make_fake(self) -> FakeBackend:
        """The fake server, every one of ``models`` out of memory."""
        raise NotImplementedError

    def slow_loads(self, fake: FakeBackend, seconds: float) -> None:
        """Make every load on ``fake`` take ``seconds``."""
        raise NotImplementedError

    def backend_config(self, url: str) -> BackendConfig:
        """The config the adapter is built from."""
        return BackendConfig(name="lifecycle", url=url, type=self.adapter_class.type_name)

    # -- fixtures ------------------------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> str:
        """aiohttp, the hot-path client, runs on asyncio."""
        return "asyncio"

    @pytest.fixture
    async def fake(self, anyio_backend: str) -> AsyncIterator[FakeBackend]:
        """A running fake server."""
        async with self.make_fake() as server:
            yield server

    @pytest.fixture
    async def clients(self, anyio_backend: str) -> AsyncIterator[HttpClients]:
        """The HTTP clients adapters share."""
        shared = HttpClients()
        yield shared
        await shared.aclose()

    @pytest.fixture
    async def lifecycle(
        self, fake: FakeBackend, clients: HttpClients
    ) -> AsyncIterator[ModelLifecycle]:
        """The adapter under test, pointed at the fake, as a ``ModelLifecycle``."""
        adapter: BackendAdapter = self.adapter_class(self.backend_config(fake.url), clients)
        assert isinstance(adapter, ModelLifecycle)
        yield adapter
        await adapter.close()

    def load_requests(self, fake: FakeBackend) -> int:
        """How many POSTs the fake received on its lifecycle paths."""
        return sum(r.method == "POST" and r.path in fake.lifecycle_paths for r in fake.requests)

    # -- the contract --------------------------------------------------------------------------

    async def test_lifecycle_support_says_load_and_unload(self, lifecycle: ModelLifecycle) -> None:
        """The server offers the listing, loads and unloads."""
        support = await lifecycle.lifecycle_support()
        assert (support.available_models, support.load, support.unload) == (True, True, True)

    async def test_lifecycle_lists_every_model_out_of_memory(
        self, lifecycle: ModelLifecycle
    ) -> None:
        """Every model the server could serve is listed, none of them loaded."""
        inventory = await lifecycle.available_models()
        assert sorted(entry.id for entry in inventory.models) == sorted(self.models)
        assert {entry.state for entry in inventory.models} == {self.unloaded_state}

    async def test_lifecycle_load_returns_when_the_model_serves(
        self, lifecycle: ModelLifecycle, fake: FakeBackend
    ) -> None:
        """``load_model`` returns the loaded entry, the listing agrees, a chat is served."""
        self.slow_loads(fake, 0.2)
        model = self.models[0]
        entry = await lifecycle.load_model(model, timeout=10)
        assert (entry.id, entry.state) == (model, ModelState.LOADED)
        assert (await lifecycle.available_models()).in_state(ModelState.LOADED) == (model,)
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        ).encode()
        assert isinstance(lifecycle, BackendAdapter)
        response = await lifecycle.send(Endpoint.CHAT, body, stream=False, timeouts=FAST)
        assert response.status == 200

    async def test_lifecycle_loading_a_loaded_model_changes_nothing(
        self, lifecycle: ModelLifecycle, fake: FakeBackend
    ) -> None:
        """A second load of a loaded model returns it without asking the server to load."""
        await lifecycle.load_model(self.models[0], timeout=10)
        sent = self.load_requests(fake)
        entry = await lifecycle.load_model(self.models[0], timeout=10)
        assert entry.state is ModelState.LOADED
        assert self.load_requests(fake) == sent

    async def test_lifecycle_unload_returns_when_the_model_is_out(
        self, lifecycle: ModelLifecycle
    ) -> None:
        """After ``unload_model`` the model is listed out of memory; again, nothing changes."""
        model = self.models[0]
        await lifecycle.load_model(model, timeout=10)
        await lifecycle.unload_model(model, timeout=10)
        entry = (await lifecycle.available_models()).get(model)
        assert entry is not None
        assert entry.state is self.unloaded_state
        await lifecycle.unload_model(model, timeout=10)

    @pytest.mark.parametrize("operation", ["load", "unload"])
    async def test_lifecycle_unknown_model(self, lifecycle: ModelLifecycle, operation: str) -> None:
        """A model the server cannot serve is an ``unknown_model`` ``LifecycleError``."""
        call = lifecycle.load_model if operation == "load" else lifecycle.unload_model
        with pytest.raises(LifecycleError) as info:
            await call("no-such-model", timeout=10)
        assert info.value.reason is LifecycleFailure.UNKNOWN_MODEL
        assert "no-such-model" in info.value.message

    async def test_lifecycle_load_times_out(
        self, lifecycle: ModelLifecycle, fake: FakeBackend
    ) -> None:
        """A load slower than the timeout is a ``timeout`` ``BackendError``."""
        self.slow_loads(fake, 5.0)
        with pytest.raises(BackendError) as info:
            await lifecycle.load_model(self.models[0], timeout=0.3)
        assert info.value.kind is ErrorKind.TIMEOUT

    async def test_lifecycle_server_error_is_raised(
        self, lifecycle: ModelLifecycle, fake: FakeBackend
    ) -> None:
        """A 500 from the lifecycle API is an ``upstream_5xx`` ``BackendError``."""
        fake.push(Behaviour(status=500, lifecycle=True, times=10))
        with pytest.raises(BackendError) as info:
            await lifecycle.load_model(self.models[0], timeout=10)
        assert info.value.kind is ErrorKind.SERVER_ERROR
        assert info.value.status == 500

    async def test_lifecycle_dead_server(
        self, lifecycle: ModelLifecycle, fake: FakeBackend
    ) -> None:
        """A dead server: the listing and a load raise ``connect_error``;
        ``lifecycle_support`` does not raise."""
        await fake.stop()
        for call in (lifecycle.available_models(), lifecycle.load_model(self.models[0])):
            with pytest.raises(BackendError) as info:
                await call
            assert info.value.kind is ErrorKind.CONNECT
        await lifecycle.lifecycle_support()
