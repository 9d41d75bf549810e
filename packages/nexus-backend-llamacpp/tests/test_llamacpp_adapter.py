"""The llama.cpp adapter against FakeLlamaCpp: contract, loading, context, capabilities, slots,
router mode, API key, errors and load-aware routing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from nexus_backend_llamacpp import LlamaCppAdapter, metrics_load, normalise_error_body
from nexus_core.adapter_kit import poll_until
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    LoadSignal,
    ModelInfo,
    ModelState,
    Timeouts,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.testing import Behaviour, FakeBackend, FakeLlamaCpp, FakeVLLM, closed_port_url
from nexus_core.testing.contract import AdapterContract, LifecycleContract

FAST = Timeouts(connect=2.0, first_byte=5.0, idle=5.0)
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def make_adapter(url: str, clients: HttpClients, **settings: Any) -> LlamaCppAdapter:
    return LlamaCppAdapter(BackendConfig(name="l", url=url, type="llamacpp", **settings), clients)


def chat(model: str = "fake-model", **extra: Any) -> bytes:
    return json.dumps({"model": model, **CHAT, **extra}).encode()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# -- the contract -------------------------------------------------------------------------------


class TestLlamaCppContract(AdapterContract):
    adapter_class = LlamaCppAdapter
    fake_class = FakeLlamaCpp


class TestLlamaCppContractWithKey(AdapterContract):
    adapter_class = LlamaCppAdapter
    fake_class = FakeLlamaCpp
    api_key = "llama-key"


# -- loading ---------------------------------------------------------------------------------------


async def test_loading_model_is_loading_and_still_recognised(clients: HttpClients) -> None:
    async with FakeLlamaCpp() as fake:
        fake.loading = True
        adapter = make_adapter(fake.url, clients)
        result = await adapter.probe()
        assert result.status is BackendStatus.LOADING
        assert result.detail == "llama-server: Loading model"
        assert await LlamaCppAdapter.detect(fake.url, clients) is True
        # Requests meanwhile get llama-server's 503: another backend should take them.
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
        assert (info.value.kind, info.value.status) == (ErrorKind.SERVER_ERROR, 503)
        fake.loading = False
        assert (await adapter.probe()).status is BackendStatus.HEALTHY


# -- context length and capabilities -------------------------------------------------------------


async def test_context_is_the_slot_context_and_capabilities_come_from_props(
    clients: HttpClients,
) -> None:
    async with FakeLlamaCpp(models=["tiny"], ctx_size=8192, parallel=4, vision=True) as fake:
        result = await make_adapter(fake.url, clients).probe()
    assert result.status is BackendStatus.HEALTHY
    assert result.models == (
        ModelInfo(
            id="tiny",
            context_length=2048,  # -c 8192 shared by -np 4: one request gets 2048
            vision=True,
            tools=True,
            json_mode=True,
            embeddings=False,  # not started with --embeddings: an empty request answered 501
            owned_by="llamacpp",
        ),
    )


async def test_a_template_without_tools_says_so(clients: HttpClients) -> None:
    async with FakeLlamaCpp(supports_tools=False) as fake:
        result = await make_adapter(fake.url, clients).probe()
    assert [(m.tools, m.vision) for m in result.models] == [(False, False)]


class OldLlamaServer(FakeLlamaCpp):
    """A build whose /v1/models ``meta`` had no ``n_ctx`` yet (only ``n_ctx_train``)."""

    def model_card(self, model: str) -> dict[str, Any]:
        card = super().model_card(model)
        del card["meta"]["n_ctx"]
        return card


async def test_context_falls_back_to_props_then_to_the_training_context(
    clients: HttpClients,
) -> None:
    async with OldLlamaServer(ctx_size=4096, parallel=1, n_ctx_train=131072) as fake:
        adapter = make_adapter(fake.url, clients)
        assert [m.context_length for m in (await adapter.probe()).models] == [4096]

    class NoProps(OldLlamaServer):
        async def route(self, request: Any, *args: Any) -> Any:
            if request.path == "/props":
                return None  # falls through to the OpenAI fake: 404
            return await super().route(request, *args)

    async with NoProps(n_ctx_train=131072) as fake:
        result = await make_adapter(fake.url, clients).probe()
    assert [m.context_length for m in result.models] == [131072]


# -- load from /slots and /metrics ---------------------------------------------------------------


async def test_load_counts_busy_slots(clients: HttpClients) -> None:
    async with FakeLlamaCpp(parallel=2) as fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.probe()
        assert await adapter.load() == LoadSignal(busy_slots=0, total_slots=2)
        fake.behave(Behaviour(delay_between_events=0.5))
        streams = [
            await adapter.send(Endpoint.CHAT, chat(stream=True), stream=True, timeouts=FAST)
            for _ in range(3)
        ]
        try:
            assert await adapter.load() == LoadSignal(busy_slots=2, total_slots=2)
        finally:
            for stream in streams:
                await stream.aclose()
    assert [r.path for r in fake.requests if r.path in ("/slots", "/metrics")] == ["/slots"] * 2


async def test_without_slots_the_load_comes_from_metrics(clients: HttpClients) -> None:
    async with FakeLlamaCpp(parallel=2, slots_endpoint=False, metrics=True) as fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.probe()
        fake.set_load(processing=2, deferred=4)
        assert await adapter.load() == LoadSignal(busy_slots=2, queue_depth=4, total_slots=2)
        assert await adapter.load() == LoadSignal(busy_slots=2, queue_depth=4, total_slots=2)
    paths = [r.path for r in fake.requests if r.path in ("/slots", "/metrics")]
    assert paths == ["/slots", "/metrics", "/metrics"]  # a 501 on /slots is remembered


async def test_without_slots_or_metrics_the_load_is_unknown(clients: HttpClients) -> None:
    async with FakeLlamaCpp(slots_endpoint=False) as fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.probe()
        assert await adapter.load() is None


METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1.23457e+06
# HELP llamacpp:prompt_seconds_total Total time spent processing prompts
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 0.008386
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 1389.27
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 4
# HELP llamacpp:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per draft position
# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 17
"""


def test_metrics_give_busy_and_deferred_requests() -> None:
    assert metrics_load(METRICS, 2) == LoadSignal(busy_slots=2, queue_depth=4, total_slots=2)
    assert metrics_load(METRICS, None) == LoadSignal(busy_slots=2, queue_depth=4)
    assert metrics_load("# HELP nothing\n", 2) is None


def test_the_fake_metrics_page_parses_like_the_real_one() -> None:
    with FakeLlamaCpp(metrics=True).running() as fake:
        fake.set_load(processing=1, deferred=3)
        response = httpx.get(fake.url + "/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4"
    assert metrics_load(response.text, None) == LoadSignal(busy_slots=1, queue_depth=3)


# -- router mode --------------------------------------------------------------------------------


async def test_router_mode_lists_every_model_it_can_load(clients: HttpClients) -> None:
    models = ["alpha", "beta", "gamma"]
    async with FakeLlamaCpp(models=models, router=True, loaded=["alpha"], vision=True) as fake:
        fake.failed.add("gamma")
        fake.states["gamma"] = "unloaded"
        adapter = make_adapter(fake.url, clients)
        result = await adapter.probe()
        assert adapter.router is True
        assert adapter.running_models == ("alpha",)
        assert result.models == (
            # Running: its child server reports the slot context and its template.
            ModelInfo("alpha", 512, vision=True, tools=True, json_mode=True, owned_by="llamacpp"),
            # Stopped: a request loads it on demand; its context is unknown until then.
            ModelInfo("beta", None, vision=True, json_mode=True, owned_by="llamacpp"),
            # Crashed on its last load: still offered, as only a request makes the router retry.
            ModelInfo("gamma", None, vision=True, json_mode=True, owned_by="llamacpp"),
        )
        assert fake.states == {"alpha": "loaded", "beta": "unloaded", "gamma": "unloaded"}


async def test_router_without_autoload_offers_running_models_only(clients: HttpClients) -> None:
    fake = FakeLlamaCpp(models=["alpha", "beta"], router=True, models_autoload=False)
    async with fake:
        fake.states["beta"] = "loaded"
        result = await make_adapter(fake.url, clients).probe()
    assert [model.id for model in result.models] == ["beta"]


async def test_router_load_sums_the_slots_of_running_models_without_loading_any(
    clients: HttpClients,
) -> None:
    models = ["alpha", "beta", "gamma"]
    async with FakeLlamaCpp(models=models, router=True, loaded=["alpha", "beta"]) as fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.probe()
        fake.set_load(processing=2, model="alpha")
        fake.set_load(processing=1, model="beta")
        assert await adapter.load() == LoadSignal(busy_slots=3, total_slots=4)
        # Probing and reading the load never start a model.
        assert fake.states["gamma"] == "unloaded"
        assert all(r.query.get("autoload") == "false" for r in fake.requests if r.query)


async def test_a_request_loads_a_stopped_model_on_demand(clients: HttpClients) -> None:
    fake = FakeLlamaCpp(models=["alpha", "beta"], router=True, loaded=["alpha"], models_max=1)
    async with fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.probe()
        assert await adapter.load() == LoadSignal(busy_slots=0, total_slots=2)
        response = await adapter.send(Endpoint.CHAT, chat("beta"), stream=False, timeouts=FAST)
        assert response.body is not None
        assert json.loads(response.body)["model"] == "beta"
        assert fake.states == {"alpha": "unloaded", "beta": "loaded"}  # --models-max 1
        result = await adapter.probe()
        assert adapter.running_models == ("beta",)
        assert [(m.id, m.context_length) for m in result.models] == [
            ("alpha", None),
            ("beta", 512),
        ]
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, chat("nope"), stream=False, timeouts=FAST)
    assert (info.value.kind, info.value.status) == (ErrorKind.CLIENT_ERROR, 400)
    assert json.loads(info.value.body)["error"]["message"] == "model 'nope' not found"


async def test_an_idle_router_reports_no_load(clients: HttpClients) -> None:
    async with FakeLlamaCpp(models=["alpha"], router=True) as fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.probe()
        assert await adapter.load() is None


# -- API key -------------------------------------------------------------------------------------


async def test_probe_and_load_send_the_key_from_api_key_env(
    clients: HttpClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_BOX_KEY", "k1")
    async with FakeLlamaCpp(api_key="k1") as fake:
        adapter = make_adapter(fake.url, clients, api_key_env="LLAMA_BOX_KEY")
        assert (await adapter.probe()).status is BackendStatus.HEALTHY
        assert await adapter.load() == LoadSignal(busy_slots=0, total_slots=2)
        keyless = await make_adapter(fake.url, clients).probe()
    assert keyless.status is BackendStatus.UNHEALTHY
    assert keyless.detail == "/v1/models answered HTTP 401: Invalid API Key"
    guarded = [r for r in fake.requests if r.path != "/health"]
    # /v1/models, /props, /v1/embeddings (is it on?), /slots; then the keyless /v1/models.
    assert [r.headers.get("authorization") for r in guarded] == [*["Bearer k1"] * 4, None]


async def test_detect_a_keyed_server_with_or_without_the_key(clients: HttpClients) -> None:
    async with FakeLlamaCpp(api_key="k1") as fake:
        assert await LlamaCppAdapter.detect(fake.url, clients, api_key="k1") is True
        # /health is public and /props answers llama-server's own 401.
        assert await LlamaCppAdapter.detect(fake.url, clients) is True


# -- errors ----------------------------------------------------------------------------------------


async def test_errors_keep_their_status_and_get_a_string_code(clients: HttpClients) -> None:
    async with FakeLlamaCpp() as fake:
        adapter = make_adapter(fake.url, clients)
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, b"{bad", stream=False, timeouts=FAST)
        assert (info.value.kind, info.value.status) == (ErrorKind.CLIENT_ERROR, 400)
        error = json.loads(info.value.body)["error"]
        assert error["code"] == "400"
        assert error["type"] == "invalid_request_error"
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.EMBEDDINGS, b'{"input": "x"}', stream=False, timeouts=FAST)
        # Not started with --embeddings: 501, so another backend gets a chance.
        assert (info.value.kind, info.value.status) == (ErrorKind.SERVER_ERROR, 501)


# -- embeddings: on or off ----------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [False, True])
async def test_embeddings_capability_is_asked_once_per_server_start(
    clients: HttpClients, enabled: bool
) -> None:
    async with FakeLlamaCpp(models=["tiny"], embeddings=enabled) as fake:
        adapter = make_adapter(fake.url, clients)
        for _ in range(3):
            result = await adapter.probe()
            assert [m.embeddings for m in result.models] == [enabled]
        asked = [r for r in fake.requests if r.path == "/v1/embeddings"]
        # One empty request (nothing computed), not one per probe.
        assert [(r.method, json.loads(r.body)) for r in asked] == [("POST", {})]
        # A server that was down may come back with other flags: asked again once it is back.
        fake.loading = True
        assert (await adapter.probe()).status is BackendStatus.LOADING
        fake.loading = False
        fake.embeddings = not enabled
        result = await adapter.probe()
        assert [m.embeddings for m in result.models] == [not enabled]
        assert len([r for r in fake.requests if r.path == "/v1/embeddings"]) == 2


async def test_the_embeddings_probe_takes_no_behaviour_turn(clients: HttpClients) -> None:
    async with FakeLlamaCpp(models=["tiny"]) as fake:
        fake.behave(Behaviour(status=500))
        adapter = make_adapter(fake.url, clients)
        assert [m.embeddings for m in (await adapter.probe()).models] == [False]
        # The steered answer is still there for the next real request.
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, chat(), stream=False, timeouts=FAST)
        assert info.value.status == 500


def test_error_bodies_keep_llama_servers_extra_keys() -> None:
    body = (
        b'{"error":{"code":400,"message":"request (5018 tokens) exceeds the available context'
        b' size (512 tokens), try increasing it","type":"exceed_context_size_error",'
        b'"n_prompt_tokens":5018,"n_ctx":512}}'
    )
    error = json.loads(normalise_error_body(body))["error"]
    # OpenAI's code for it, so OpenAI clients recognise it; llama-server's type and keys kept.
    assert (error["code"], error["n_ctx"], error["type"]) == (
        "context_length_exceeded",
        512,
        "exceed_context_size_error",
    )
    assert normalise_error_body(b"not json") == b"not json"
    unchanged = b'{"error":{"message":"x","code":null}}'
    assert normalise_error_body(unchanged) is unchanged


async def test_any_model_name_is_served_by_the_one_model(clients: HttpClients) -> None:
    async with FakeLlamaCpp(models=["tiny"]) as fake:
        response = await make_adapter(fake.url, clients).send(
            Endpoint.CHAT, chat("whatever"), stream=False, timeouts=FAST
        )
    assert response.body is not None
    answer = json.loads(response.body)
    assert answer["model"] == "tiny"
    assert answer["system_fingerprint"] == "b0-unknown"
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert "timings" in answer


# -- detection -------------------------------------------------------------------------------------


async def test_detect_tells_llamacpp_vllm_and_plain_openai_apart(clients: HttpClients) -> None:
    async with (
        FakeLlamaCpp() as llama,
        FakeLlamaCpp(models=["a", "b"], router=True) as router,
        FakeVLLM() as vllm,
        FakeBackend() as plain,  # answers /health {"status": "ok"} too
    ):
        assert await LlamaCppAdapter.detect(llama.url, clients) is True
        assert await LlamaCppAdapter.detect(router.url, clients) is True
        assert await LlamaCppAdapter.detect(vllm.url, clients) is False
        assert await LlamaCppAdapter.detect(plain.url, clients) is False
        assert await OpenAIWireAdapter.detect(llama.url, clients) is True  # generic fits, too


# -- model lifecycle (router mode) ------------------------------------------------------------


class TestLlamaCppLifecycle(LifecycleContract):
    adapter_class = LlamaCppAdapter

    def make_fake(self) -> FakeBackend:
        return FakeLlamaCpp(models=self.models, router=True)

    def slow_loads(self, fake: FakeBackend, seconds: float) -> None:
        assert isinstance(fake, FakeLlamaCpp)
        fake.load_seconds = seconds


async def test_router_lifecycle_support_and_listing(clients: HttpClients) -> None:
    async with FakeLlamaCpp(models=["alpha", "beta"], router=True, loaded=["alpha"]) as fake:
        adapter = make_adapter(fake.url, clients)
        support = await adapter.lifecycle_support()
        assert (support.load, support.unload, support.autoload) == (True, True, True)
        assert support.detail is not None
        assert "--models-max" in support.detail
        fake.models_autoload = False
        assert (await adapter.lifecycle_support()).autoload is False
        inventory = await adapter.available_models()
        alpha, beta = inventory.get("alpha"), inventory.get("beta")
        assert alpha is not None
        assert beta is not None
        assert (alpha.state, beta.state) == (ModelState.LOADED, ModelState.UNLOADED)
        # The loaded model's meta: its size and the context it runs with; none for the other.
        assert (alpha.size_bytes, alpha.context_length) == (8_488_192, fake.slot_context())
        assert (beta.size_bytes, beta.context_length) == (None, None)
        # llama-server reports no memory figures.
        assert inventory.memory_used_bytes is None
        assert inventory.memory_free_bytes is None


async def test_router_load_evicts_the_least_recently_used(clients: HttpClients) -> None:
    async with FakeLlamaCpp(models=["alpha", "beta"], router=True, models_max=1) as fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.load_model("alpha", timeout=10)
        assert fake.states == {"alpha": "loaded", "beta": "unloaded"}
        entry = await adapter.load_model("beta", timeout=10)
        assert entry.state is ModelState.LOADED
        inventory = await adapter.available_models()
        assert inventory.in_state(ModelState.LOADED) == ("beta",)
        assert inventory.in_state(ModelState.UNLOADED) == ("alpha",)


async def test_router_load_is_seen_loading_while_it_loads(clients: HttpClients) -> None:
    async with FakeLlamaCpp(models=["alpha"], router=True, load_seconds=0.5) as fake:
        adapter = make_adapter(fake.url, clients)
        task = asyncio.create_task(adapter.load_model("alpha", timeout=10))

        async def loading() -> bool | None:
            return True if fake.states["alpha"] == "loading" else None

        await poll_until(loading, timeout=5, what="the fake to start loading")
        assert (await adapter.available_models()).in_state(ModelState.LOADING) == ("alpha",)
        # A second load while the first runs waits for the same load: no second request.
        second = await adapter.load_model("alpha", timeout=10)
        assert (await task).state is second.state is ModelState.LOADED
        loads = [r for r in fake.requests if r.path == "/models/load"]
        assert len(loads) == 1
        assert loads[0].json == {"model": "alpha"}


async def test_router_unload_waits_until_the_child_is_gone(clients: HttpClients) -> None:
    async with FakeLlamaCpp(
        models=["alpha"], router=True, loaded=["alpha"], unload_seconds=0.3
    ) as fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.unload_model("alpha", timeout=10)
        assert fake.states["alpha"] == "unloaded"
        assert [r.json for r in fake.requests if r.path == "/models/unload"] == [{"model": "alpha"}]


async def test_router_load_that_crashes_is_a_load_failure(clients: HttpClients) -> None:
    async with FakeLlamaCpp(models=["alpha"], router=True) as fake:
        fake.crash_on_load.add("alpha")
        adapter = make_adapter(fake.url, clients)
        with pytest.raises(LifecycleError) as info:
            await adapter.load_model("alpha", timeout=10)
        assert info.value.reason is LifecycleFailure.LOAD_FAILED
        assert info.value.kind is ErrorKind.SERVER_ERROR
        assert "exit code 1" in info.value.message
        entry = (await adapter.available_models()).get("alpha")
        assert entry is not None
        assert entry.detail == "the last load failed (exit code 1)"


async def test_a_request_for_an_unloaded_model_autoloads_it(clients: HttpClients) -> None:
    async with FakeLlamaCpp(models=["alpha", "beta"], router=True, models_max=1) as fake:
        adapter = make_adapter(fake.url, clients)
        await adapter.load_model("alpha", timeout=10)
        response = await adapter.send(Endpoint.CHAT, chat("beta"), stream=False, timeouts=FAST)
        assert response.status == 200
        inventory = await adapter.available_models()
        assert inventory.in_state(ModelState.LOADED) == ("beta",)


async def test_single_model_server_lists_its_model_and_loads_nothing(
    clients: HttpClients,
) -> None:
    async with FakeLlamaCpp(models=["tiny"]) as fake:
        adapter = make_adapter(fake.url, clients)
        support = await adapter.lifecycle_support()
        assert (support.available_models, support.load, support.unload) == (True, False, False)
        assert support.detail is not None
        assert "--models-dir" in support.detail
        inventory = await adapter.available_models()
        assert [(e.id, e.state) for e in inventory.models] == [("tiny", ModelState.LOADED)]
        for call in (adapter.load_model("tiny"), adapter.unload_model("tiny")):
            with pytest.raises(LifecycleError) as info:
                await call
            assert info.value.reason is LifecycleFailure.NOT_SUPPORTED
        assert not [r for r in fake.requests if r.method == "POST"]


async def test_lifecycle_support_of_a_dead_server_offers_nothing(clients: HttpClients) -> None:
    adapter = make_adapter(closed_port_url(), clients)
    support = await adapter.lifecycle_support()
    assert (support.available_models, support.load, support.unload) == (False, False, False)
    assert support.detail == "llama-server did not answer GET /props"
