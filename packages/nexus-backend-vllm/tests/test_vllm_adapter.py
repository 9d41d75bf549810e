"""The vLLM adapter against FakeVLLM: contract, loading, LoRA, metrics, errors.

Only this package and nexusgw-core[testing] are needed (tests/test_package_isolation.py runs
these tests in such an environment); through a real Nexus: tests/test_vllm_e2e.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from nexus_backend_vllm import VLLMAdapter, load_from_metrics, normalise_error_body
from nexus_core.adapters import (
    BackendAdapter,
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    LoadSignal,
    ModelState,
    Timeouts,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.registry import busy_fraction
from nexus_core.sse import event_data
from nexus_core.testing import (
    Behaviour,
    FakeBackend,
    FakeLlamaCpp,
    FakeVLLM,
    closed_port_url,
    free_port,
)
from nexus_core.testing.contract import AdapterContract, LifecycleContract

FAST = Timeouts(connect=2.0, first_byte=5.0, idle=5.0)
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def make_adapter(url: str, clients: HttpClients, **settings: Any) -> VLLMAdapter:
    return VLLMAdapter(BackendConfig(name="v", url=url, type="vllm", **settings), clients)


def chat(model: str = "fake-model", **extra: Any) -> bytes:
    return json.dumps({"model": model, **CHAT, **extra}).encode()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# -- the contract -------------------------------------------------------------------------------


class TestVLLMContract(AdapterContract):
    adapter_class = VLLMAdapter
    fake_class = FakeVLLM

    async def test_contract_probe_of_a_dead_server_is_unhealthy(
        self, adapter: BackendAdapter, fake: FakeBackend
    ) -> None:
        """Once it has answered, a vLLM server that refuses connections is unhealthy.

        (Before its first answer a refused connection means "still loading": see below.)
        """
        assert (await adapter.probe()).status is BackendStatus.HEALTHY
        await fake.stop()
        result = await adapter.probe()
        assert result.status is BackendStatus.UNHEALTHY
        assert result.detail is not None
        assert result.detail.startswith("cannot connect")


class TestVLLMContractWithKey(TestVLLMContract):
    api_key = "sk-vllm"

    async def test_model_list_needs_the_key_but_metrics_do_not(self, fake: FakeVLLM) -> None:
        async with httpx.AsyncClient() as client:
            models = await client.get(fake.url + "/v1/models")
            metrics = await client.get(fake.url + "/metrics")
            health = await client.get(fake.url + "/health")
        assert models.status_code == 401
        assert models.json() == {"error": "Unauthorized"}
        assert (metrics.status_code, health.status_code) == (200, 200)


# -- loading: vLLM refuses connections until its model is loaded --------------------------------


async def test_refused_before_the_first_answer_is_loading_then_healthy(
    clients: HttpClients,
) -> None:
    port = free_port()
    adapter = make_adapter(f"http://127.0.0.1:{port}", clients)
    loading = await adapter.probe()
    assert loading.status is BackendStatus.LOADING
    assert loading.detail is not None
    assert "refuses connections while it loads" in loading.detail
    assert "10 min" in loading.detail
    async with FakeVLLM(port=port) as fake:
        healthy = await adapter.probe()
        assert healthy.status is BackendStatus.HEALTHY
        assert healthy.version == "0.33.0"
        await fake.stop()
        # It answered once: refusing now means it went away, not that it is loading.
        gone = await adapter.probe()
    assert gone.status is BackendStatus.UNHEALTHY


async def test_refused_for_longer_than_the_grace_is_unhealthy(
    clients: HttpClients, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = make_adapter(closed_port_url(), clients)
    assert (await adapter.probe()).status is BackendStatus.LOADING
    monkeypatch.setattr(adapter, "startup_grace_seconds", 0.0)
    result = await adapter.probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail is not None
    assert result.detail.startswith("cannot connect")


async def test_an_unresolvable_host_is_unhealthy_not_loading(clients: HttpClients) -> None:
    result = await make_adapter("http://nexus-vllm-test.invalid:8000", clients).probe()
    assert result.status is BackendStatus.UNHEALTHY


async def test_a_dead_engine_is_unhealthy(clients: HttpClients) -> None:
    async with FakeVLLM() as fake:
        fake.engine_dead = True
        result = await make_adapter(fake.url, clients).probe()
    assert result.status is BackendStatus.UNHEALTHY
    assert result.detail == "/health answered HTTP 503"


# -- models, context length, LoRA ----------------------------------------------------------------


async def test_models_carry_max_model_len_and_loras_their_parents(clients: HttpClients) -> None:
    fake = FakeVLLM(
        models=["llama-8b", {"id": "qwen-7b", "max_model_len": 32768}],
        max_model_len=8192,
        lora_modules={"sql-lora": "llama-8b", "chat-lora": "qwen-7b", "orphan-lora": "gone"},
    )
    async with fake:
        result = await make_adapter(fake.url, clients).probe()
    contexts = {model.id: model.context_length for model in result.models}
    assert contexts == {
        "llama-8b": 8192,
        "qwen-7b": 32768,
        "sql-lora": 8192,
        "chat-lora": 32768,
        "orphan-lora": None,  # its base is not served: unknown, not invented
    }
    assert all(model.owned_by == "vllm" for model in result.models)
    # vLLM's API says nothing about capabilities: they stay unknown.
    assert {(m.vision, m.tools, m.json_mode, m.embeddings) for m in result.models} == {
        (None, None, None, None)
    }


async def test_a_lora_adapter_is_a_routable_model(clients: HttpClients) -> None:
    async with FakeVLLM(models=["base"], lora_modules={"sql-lora": "base"}) as fake:
        adapter = make_adapter(fake.url, clients)
        response = await adapter.send(Endpoint.CHAT, chat("sql-lora"), stream=False, timeouts=FAST)
    assert response.body is not None
    assert json.loads(response.body)["model"] == "sql-lora"


def test_the_fake_lists_lora_cards_as_vllm_does() -> None:
    with FakeVLLM(models=["base"], lora_modules={"sql-lora": "base"}).running() as fake:
        cards = httpx.get(fake.url + "/v1/models").json()["data"]
    base, lora = cards
    assert (base["parent"], base["max_model_len"], base["owned_by"]) == (None, 8192, "vllm")
    assert (lora["id"], lora["parent"], lora["max_model_len"]) == ("sql-lora", "base", None)
    assert lora["permission"][0]["object"] == "model_permission"


# -- load from /metrics ---------------------------------------------------------------------------

METRICS = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12873.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.87
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 9.0
"""


def test_load_sums_running_and_waiting_over_engines_and_takes_the_fullest_cache() -> None:
    assert load_from_metrics(METRICS) == LoadSignal(
        busy_slots=12, queue_depth=3, total_slots=None, kv_cache_usage=0.87
    )


def test_load_reads_the_kv_cache_gauge_of_servers_before_0_9() -> None:
    legacy = """\
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:num_requests_running{model_name="m"} 1.0
vllm:num_requests_waiting{model_name="m"} 0.0
"""
    assert load_from_metrics(legacy) == LoadSignal(busy_slots=1, queue_depth=0, kv_cache_usage=0.5)
    # Both served (0.9 - 0.10): the current name wins.
    both = legacy + 'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    signal = load_from_metrics(both)
    assert signal is not None
    assert signal.kv_cache_usage == 0.25


def test_load_survives_odd_exposition_lines() -> None:
    text = (
        'vllm:num_requests_running{model_name="a \\"quoted\\" name, with} brace"} 2 1732000000000\n'
        'vllm:num_requests_running{model_name="b"} NaN\n'
        "vllm:num_requests_waiting 4e+00\n"
        'vllm:kv_cache_usage_perc{engine="0",} 1.5\n'  # trailing comma; clipped to 1
        "garbage line without a value\n"
        'vllm:num_requests_waiting{broken="} 3\n'
    )
    assert load_from_metrics(text) == LoadSignal(busy_slots=2, queue_depth=4, kv_cache_usage=1.0)
    assert load_from_metrics("# nothing here\nprocess_cpu_seconds_total 3.2\n") is None


async def test_load_follows_the_requests_in_flight(clients: HttpClients) -> None:
    async with FakeVLLM(max_num_seqs=1) as fake:
        adapter = make_adapter(fake.url, clients)
        assert await adapter.load() == LoadSignal(busy_slots=0, queue_depth=0, kv_cache_usage=0.0)
        fake.behave(Behaviour(delay_between_events=0.5))
        streams = [
            await adapter.send(Endpoint.CHAT, chat(stream=True), stream=True, timeouts=FAST)
            for _ in range(3)
        ]
        try:
            assert await adapter.load() == LoadSignal(
                busy_slots=1, queue_depth=2, kv_cache_usage=1.0
            )
        finally:
            for stream in streams:
                await stream.aclose()


async def test_load_is_none_when_metrics_cannot_be_read(clients: HttpClients) -> None:
    async with FakeBackend() as plain:  # an OpenAI-wire server: /metrics is 404
        assert await make_adapter(plain.url, clients).load() is None
    assert await make_adapter(closed_port_url(), clients).load() is None


async def test_a_saturated_server_counts_as_fully_busy(clients: HttpClients) -> None:
    async with FakeVLLM() as fake:
        fake.set_load(running=256, waiting=40, kv_cache_usage=0.97)
        signal = await make_adapter(fake.url, clients).load()
    assert signal == LoadSignal(busy_slots=256, queue_depth=40, kv_cache_usage=0.97)
    # max_num_seqs is not exposed, so the router scores it by queue and KV cache.
    assert busy_fraction(signal) == 1.0


# -- errors: vLLM's int codes ---------------------------------------------------------------------


async def test_an_unknown_model_is_a_client_error_with_a_string_code(clients: HttpClients) -> None:
    async with FakeVLLM() as fake:
        with pytest.raises(BackendError) as info:
            await make_adapter(fake.url, clients).send(
                Endpoint.CHAT, chat("nope"), stream=False, timeouts=FAST
            )
    assert info.value.kind is ErrorKind.CLIENT_ERROR
    assert info.value.status == 404
    assert json.loads(info.value.body) == {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": "404",
        }
    }


@pytest.mark.parametrize(
    ("status", "body_code", "kind"),
    [
        (500, 500, ErrorKind.SERVER_ERROR),
        (503, 400, ErrorKind.SERVER_ERROR),  # the HTTP status decides, not the body
        (429, 429, ErrorKind.OVERLOADED),
        (400, 503, ErrorKind.CLIENT_ERROR),
    ],
)
async def test_errors_are_classified_by_the_http_status(
    clients: HttpClients, status: int, body_code: int, kind: ErrorKind
) -> None:
    body = {"error": {"message": "boom", "type": "X", "param": None, "code": body_code}}
    async with FakeVLLM() as fake:
        fake.push(Behaviour(status=status, error_body=body))
        with pytest.raises(BackendError) as info:
            await make_adapter(fake.url, clients).send(
                Endpoint.CHAT, chat(), stream=False, timeouts=FAST
            )
    assert (info.value.kind, info.value.status) == (kind, status)
    assert json.loads(info.value.body)["error"]["code"] == str(body_code)


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({"messages": [{"role": "user", "content": "word " * 20}]}, "input tokens"),
        ({"max_tokens": 30}, "'max_tokens' or 'max_completion_tokens' is too large"),
    ],
)
async def test_a_prompt_over_the_context_has_openais_code(
    clients: HttpClients, extra: dict[str, Any], said: str
) -> None:
    # vLLM says it with its int code 400; OpenAI clients and LiteLLM key on the string code.
    async with FakeVLLM(max_model_len=16) as fake:
        with pytest.raises(BackendError) as info:
            await make_adapter(fake.url, clients).send(
                Endpoint.CHAT, chat(**extra), stream=False, timeouts=FAST
            )
    assert (info.value.kind, info.value.status) == (ErrorKind.CLIENT_ERROR, 400)
    error = json.loads(info.value.body)["error"]
    assert (error["code"], error["type"]) == ("context_length_exceeded", "BadRequestError")
    assert "maximum context length is 16 tokens" in error["message"]
    assert said in error["message"]


def test_error_bodies_are_normalised() -> None:
    flat = {"object": "error", "message": "bad", "type": "BadRequestError", "param": None}
    assert json.loads(normalise_error_body(json.dumps({**flat, "code": 400}).encode(), 400)) == {
        "error": {"message": "bad", "type": "BadRequestError", "param": None, "code": "400"}
    }
    assert json.loads(normalise_error_body(b'{"error": "Unauthorized"}', 401)) == {
        "error": {"message": "Unauthorized", "type": "Unauthorized", "param": None, "code": "401"}
    }
    already = b'{"error":{"message":"m","type":"t","param":null,"code":"x"}}'
    assert normalise_error_body(already, 400) is already
    assert normalise_error_body(b"Internal Server Error", 500) == b"Internal Server Error"


async def test_an_error_event_before_the_first_token_fails_over(clients: HttpClients) -> None:
    async with FakeVLLM() as fake:
        adapter = make_adapter(fake.url, clients)
        fake.fail_next_stream(status=500, message="EngineCore encountered an issue")
        response = await adapter.send(Endpoint.CHAT, chat(stream=True), stream=True, timeouts=FAST)
        assert response.events is not None
        with pytest.raises(BackendError) as info:
            await anext(response.events)
        await response.aclose()
        assert info.value.kind is ErrorKind.SERVER_ERROR
        assert info.value.retryable
        assert "EngineCore encountered an issue" in info.value.message

        fake.fail_next_stream(status=400, message="bad request")
        response = await adapter.send(Endpoint.CHAT, chat(stream=True), stream=True, timeouts=FAST)
        assert response.events is not None
        with pytest.raises(BackendError) as info:
            await anext(response.events)
        await response.aclose()
    assert (info.value.kind, info.value.status) == (ErrorKind.CLIENT_ERROR, 400)
    assert json.loads(info.value.body)["error"]["code"] == "400"


async def test_a_later_error_event_is_relayed_with_a_string_code(clients: HttpClients) -> None:
    async with FakeVLLM() as fake:
        fake.fail_next_stream(after_events=2, status=500, message="oops")
        adapter = make_adapter(fake.url, clients)
        response = await adapter.send(Endpoint.CHAT, chat(stream=True), stream=True, timeouts=FAST)
        assert response.events is not None
        try:
            datas = [event_data(event) async for event in response.events]
        finally:
            await response.aclose()
    assert datas[-1] == b"[DONE]"
    error = json.loads(datas[-2])["error"]
    assert (error["message"], error["type"], error["code"]) == (
        "oops",
        "InternalServerError",
        "500",
    )


# -- detection ------------------------------------------------------------------------------------


async def test_detect_tells_vllm_llamacpp_and_plain_openai_apart(clients: HttpClients) -> None:
    async with FakeVLLM() as vllm, FakeLlamaCpp() as llama, FakeBackend() as plain:
        assert await VLLMAdapter.detect(vllm.url, clients) is True
        assert await VLLMAdapter.detect(llama.url, clients) is False
        assert await VLLMAdapter.detect(plain.url, clients) is False
        assert await OpenAIWireAdapter.detect(vllm.url, clients) is True  # generic fits, too


async def test_detect_a_keyed_vllm_with_or_without_the_key(clients: HttpClients) -> None:
    async with FakeVLLM(api_key="k") as fake, FakeBackend(api_key="k") as plain:
        assert await VLLMAdapter.detect(fake.url, clients, api_key="k") is True
        # Without the key: /health (empty 200) and /version are public and tell it apart.
        assert await VLLMAdapter.detect(fake.url, clients) is True
        assert await VLLMAdapter.detect(plain.url, clients) is False


# -- model lifecycle (sleep mode) ---------------------------------------------------------------


class TestVLLMLifecycle(LifecycleContract):
    adapter_class = VLLMAdapter
    models = ("alpha",)  # vLLM serves one model; its engine sleeps and wakes as a whole
    unloaded_state = ModelState.SLEEPING

    def make_fake(self) -> FakeBackend:
        return FakeVLLM(models=self.models, dev_mode=True, sleeping=True)

    def slow_loads(self, fake: FakeBackend, seconds: float) -> None:
        assert isinstance(fake, FakeVLLM)
        fake.wake_seconds = seconds


@pytest.mark.anyio
async def test_sleep_and_wake_up_with_lora_adapters(clients: HttpClients) -> None:
    async with FakeVLLM(
        models=["base"], lora_modules={"sql": "base"}, dev_mode=True, max_model_len=4096
    ) as fake:
        adapter = make_adapter(fake.url, clients)
        support = await adapter.lifecycle_support()
        assert (support.load, support.unload, support.autoload) == (True, True, False)
        assert support.detail is not None
        assert "sleep" in support.detail
        inventory = await adapter.available_models()
        assert [(e.id, e.state, e.context_length) for e in inventory.models] == [
            ("base", ModelState.LOADED, 4096),
            ("sql", ModelState.LOADED, 4096),
        ]
        # Unloading the LoRA adapter puts the whole engine to sleep, at level 1.
        await adapter.unload_model("sql", timeout=10)
        assert (fake.sleeping, fake.sleep_level) == (True, 1)
        assert [r.query for r in fake.requests if r.path == "/sleep"] == [{"level": "1"}]
        inventory = await adapter.available_models()
        assert inventory.in_state(ModelState.SLEEPING) == ("base", "sql")
        # A sleeping engine refuses requests (it does not wake by itself).
        with pytest.raises(BackendError) as info:
            await adapter.send(Endpoint.CHAT, chat("base"), stream=False, timeouts=FAST)
        assert info.value.status == 503
        entry = await adapter.load_model("base", timeout=10)
        assert entry.state is ModelState.LOADED
        assert fake.sleeping is False
        response = await adapter.send(Endpoint.CHAT, chat("base"), stream=False, timeouts=FAST)
        assert response.status == 200


@pytest.mark.anyio
async def test_without_dev_mode_it_lists_and_says_why_it_cannot_unload(
    clients: HttpClients,
) -> None:
    async with FakeVLLM(models=["base"]) as fake:
        adapter = make_adapter(fake.url, clients)
        support = await adapter.lifecycle_support()
        assert (support.available_models, support.load, support.unload) == (True, False, False)
        assert support.detail is not None
        assert "VLLM_SERVER_DEV_MODE=1" in support.detail
        inventory = await adapter.available_models()
        assert inventory.in_state(ModelState.LOADED) == ("base",)
        # Its one model is loaded: a load is nothing to do; an unload cannot be done.
        assert (await adapter.load_model("base", timeout=10)).state is ModelState.LOADED
        with pytest.raises(LifecycleError) as info:
            await adapter.unload_model("base", timeout=10)
        assert info.value.reason is LifecycleFailure.NOT_SUPPORTED
        assert not [r for r in fake.requests if r.method == "POST"]
