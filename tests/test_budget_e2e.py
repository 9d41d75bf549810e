"""Budgets end to end: spend from real usage, soft and hard limits, restarts, replicas, months.

The real ``openai`` SDK talks to Nexus, which fronts a fake OpenAI (a cloud backend, priced by
the built-in table or by ``[[pricing]]``) and a local fake (free). Spend is read back from the
gateway and from its state store.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import signal
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nexus_core.accounting import NANO_PER_USD
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_core.pricing import builtin_price
from nexus_core.state import SqliteStore
from nexus_core.testing import Behaviour, FakeBackend, FakeOpenAI
from nexus_core.testing.redis import redis_server, redis_server_binary
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config, nexus_serve

KEY_ENV = "NEXUS_TEST_CLOUD_KEY"
MESSAGES: list[Any] = [{"role": "user", "content": "What does a budget do for a gateway?"}]


@pytest.fixture(autouse=True)
def cloud_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-cloud")


@pytest.fixture
def fleet() -> Iterator[tuple[FakeBackend, FakeOpenAI]]:
    """A local fake and a fake OpenAI, both serving gpt-4o."""
    local = FakeBackend("local", models=["gpt-4o", "llama3"])
    cloud = FakeOpenAI("cloud", ["gpt-4o", "gpt-4o-mini"], api_key="sk-cloud")
    with local.running(), cloud.running():
        yield local, cloud


def cloud_entry(cloud: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"name": "cloud", "url": cloud.url, "type": "openai", "api_key_env": KEY_ENV, **extra}


def local_entry(local: FakeBackend, **extra: Any) -> dict[str, Any]:
    return {"name": "local", "url": local.url, **extra}


def config_with(
    *backends: dict[str, Any],
    budget: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    pricing: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    config = gateway_config(*backends, budget=budget or {})
    config["state"] = state or {"backend": "memory"}
    if pricing is not None:
        config["pricing"] = pricing
    return config


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-client", max_retries=0)


def nano(prompt: int, completion: int, input_per_million: float, output_per_million: float) -> int:
    """The cost of a usage in nano-USD, computed independently of Nexus."""
    return round(prompt * input_per_million * 1000) + round(completion * output_per_million * 1000)


def spent(server: RunningServer) -> int:
    """The gateway's spend once every settle is written."""
    gateway = server.gateway
    server.call(gateway.accountant.drain())
    return gateway.accountant.spent


def test_spend_from_non_streaming_usage_matches_the_price_table(
    fleet: tuple[FakeBackend, FakeOpenAI],
) -> None:
    _, cloud = fleet
    price = builtin_price("gpt-4o")
    assert price is not None
    with running_server(config_with(cloud_entry(cloud))) as server:
        raw = client(server).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )
        completion = raw.parse()
        usage = completion.usage
        assert usage is not None
        expected = nano(
            usage.prompt_tokens,
            usage.completion_tokens,
            price.input_per_million,
            price.output_per_million,
        )
        assert expected > 0
        assert spent(server) == expected
        # The header is the same figure in dollars, to the micro-dollar.
        assert float(raw.headers["x-nexus-cost-estimated"]) == pytest.approx(
            expected / NANO_PER_USD, abs=1e-6
        )
        # No monthly limit: no budget headers.
        assert "x-nexus-budget-status" not in raw.headers


def test_stream_usage_is_asked_for_priced_and_hidden_from_a_client_that_did_not_ask(
    fleet: tuple[FakeBackend, FakeOpenAI],
) -> None:
    _, cloud = fleet
    pricing = [{"model": "gpt-4o", "input_per_million": 3.0, "output_per_million": 12.0}]
    with running_server(config_with(cloud_entry(cloud), pricing=pricing)) as server:
        chunks = list(
            client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        )
        # Nexus asked the backend for usage although the client did not ...
        sent = cloud.inference_requests[-1].json
        assert sent["stream_options"] == {"include_usage": True}
        # ... and the usage-only chunk never reached the client.
        assert chunks
        assert all(chunk.choices for chunk in chunks)
        assert all(getattr(chunk, "usage", None) is None for chunk in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text
        # The same request, non-streamed, tells the usage the fake computes for it.
        whole = client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert whole.usage is not None
        one = nano(whole.usage.prompt_tokens, whole.usage.completion_tokens, 3.0, 12.0)
        assert spent(server) == 2 * one


def test_a_client_that_asks_for_stream_usage_gets_it_and_is_charged_once(
    fleet: tuple[FakeBackend, FakeOpenAI],
) -> None:
    _, cloud = fleet
    pricing = [{"model": "gpt-4o", "input_per_million": 3.0, "output_per_million": 12.0}]
    with running_server(config_with(cloud_entry(cloud), pricing=pricing)) as server:
        chunks = list(
            client(server).chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        assert chunks[-1].choices == []
        assert spent(server) == nano(usage.prompt_tokens, usage.completion_tokens, 3.0, 12.0)


def test_local_backends_cost_nothing_unless_priced(
    fleet: tuple[FakeBackend, FakeOpenAI],
) -> None:
    local, _ = fleet
    free = config_with(local_entry(local))
    with running_server(free) as server:
        raw = client(server).chat.completions.with_raw_response.create(
            model="llama3", messages=MESSAGES
        )
        assert "x-nexus-cost-estimated" not in raw.headers
        assert spent(server) == 0
    priced = config_with(
        local_entry(local),
        pricing=[
            {"model": "*", "backends": ["local"], "input_per_million": 1, "output_per_million": 2}
        ],
    )
    with running_server(priced) as server:
        completion = client(server).chat.completions.create(model="llama3", messages=MESSAGES)
        assert completion.usage is not None
        expected = nano(completion.usage.prompt_tokens, completion.usage.completion_tokens, 1, 2)
        assert spent(server) == expected > 0


def seed(server: RunningServer, usd: float) -> None:
    """Spend ``usd`` this month, as another replica would have, and let the gateway see it."""
    gateway = server.gateway
    accountant = gateway.accountant

    async def add() -> None:
        await accountant.store.settle(
            accountant.scope, accountant.period, "seed", round(usd * NANO_PER_USD)
        )
        await accountant.refresh()

    server.call(add())


def test_soft_limit_shifts_traffic_to_local_backends(
    fleet: tuple[FakeBackend, FakeOpenAI],
) -> None:
    local, cloud = fleet
    config = config_with(
        cloud_entry(cloud, priority=1),
        local_entry(local, priority=90),
        budget={"monthly_limit_usd": 10.0, "soft_limit_percent": 50},
    )
    with running_server(config) as server:
        before = client(server).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )
        assert before.headers["x-nexus-backend"] == "cloud"
        assert before.headers["x-nexus-budget-status"] == "ok"
        seed(server, 6.0)
        after = client(server).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )
        assert after.headers["x-nexus-backend"] == "local"
        assert after.headers["x-nexus-budget-status"] == "soft_limit"
        utilization = float(after.headers["x-nexus-budget-utilization"])
        assert 60.0 <= utilization < 61.0
        remaining = float(after.headers["x-nexus-budget-remaining"])
        assert 3.9 < remaining <= 4.0
        # Local is down: the cloud still serves (soft is a preference, not a block).
        local.behave(Behaviour(status=503))
        fallback = client(server).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )
        assert fallback.headers["x-nexus-backend"] == "cloud"


def test_block_cloud_blocks_cloud_only(fleet: tuple[FakeBackend, FakeOpenAI]) -> None:
    local, cloud = fleet
    config = config_with(
        cloud_entry(cloud),
        local_entry(local),
        budget={"monthly_limit_usd": 1.0, "hard_limit_action": "block_cloud"},
    )
    with running_server(config) as server:
        seed(server, 1.5)
        # gpt-4o-mini is only on the cloud: refused, with the budget named and a Retry-After.
        with pytest.raises(openai.InternalServerError) as info:
            client(server).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert info.value.status_code == 503
        body = info.value.body
        assert isinstance(body, dict)
        reasons = body["details"]
        assert [(r["backend"], r["reason"]) for r in reasons] == [("cloud", "budget")]
        assert "monthly_limit_usd" in reasons[0]["fix"]
        retry_after = int(info.value.response.headers["retry-after"])
        assert 0 < retry_after <= 31 * 24 * 3600
        # gpt-4o is also local: served there, the header says the budget is exceeded.
        raw = client(server).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )
        assert raw.headers["x-nexus-backend"] == "local"
        assert raw.headers["x-nexus-budget-status"] == "exceeded"
        assert raw.headers["x-nexus-budget-remaining"] == "0.0000"
    assert len(cloud.inference_requests) == 0


def test_block_all_refuses_every_request_and_warn_refuses_none(
    fleet: tuple[FakeBackend, FakeOpenAI],
) -> None:
    local, cloud = fleet
    block_all = config_with(
        cloud_entry(cloud),
        local_entry(local),
        budget={"monthly_limit_usd": 1.0, "hard_limit_action": "block_all"},
    )
    with running_server(block_all) as server:
        seed(server, 1.0)
        response = httpx.post(
            server.base_url + "/chat/completions",
            json={"model": "llama3", "messages": MESSAGES},
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert error["details"]["budget"]["status"] == "exceeded"
        assert int(response.headers["retry-after"]) > 0
    assert len(local.inference_requests) == 0
    warn = config_with(cloud_entry(cloud), budget={"monthly_limit_usd": 1.0})
    with running_server(warn) as server:
        seed(server, 2.0)
        raw = client(server).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )
        assert raw.headers["x-nexus-backend"] == "cloud"
        assert raw.headers["x-nexus-budget-status"] == "exceeded"


def test_spend_survives_a_restart_with_sqlite(
    fleet: tuple[FakeBackend, FakeOpenAI], tmp_path: Path
) -> None:
    _, cloud = fleet
    state = {"backend": "sqlite", "path": str(tmp_path / "state.sqlite3")}
    config = config_with(cloud_entry(cloud), state=state, budget={"monthly_limit_usd": 5.0})
    with running_server(config) as server:
        client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        first = spent(server)
    assert first > 0
    with running_server(config) as server:
        assert server.gateway.accountant.spent == first
        client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert spent(server) == 2 * first


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if redis_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it")
        pytest.skip("redis-server is not installed")
    with redis_server(tmp_path) as url:
        yield url


@pytest.mark.anyio
async def test_two_gateways_share_spend_through_one_redis(
    fleet: tuple[FakeBackend, FakeOpenAI], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, cloud = fleet
    monkeypatch.setenv("NEXUS_TEST_REDIS", redis_url)
    state = {"backend": "redis", "redis_url_env": "NEXUS_TEST_REDIS", "key_prefix": "t1:"}
    config = config_with(cloud_entry(cloud), state=state, budget={"monthly_limit_usd": 5.0})
    request = {"model": "gpt-4o", "messages": MESSAGES}
    async with Gateway(config) as one, Gateway(config) as two:
        answer = await one.chat_completions(request)
        await two.chat_completions(request)
        await one.accountant.drain()
        await two.accountant.drain()
        price = builtin_price("gpt-4o")
        assert price is not None
        usage = answer["usage"]
        each = nano(
            usage["prompt_tokens"],
            usage["completion_tokens"],
            price.input_per_million,
            price.output_per_million,
        )
        # Each replica sees both requests' spend within a second (it re-reads every 0.5 s).
        for _ in range(20):
            if one.accountant.spent == two.accountant.spent == 2 * each:
                break
            await asyncio.sleep(0.05)  # 20 x 50 ms: one second at most
        assert one.accountant.spent == 2 * each
        assert two.accountant.spent == 2 * each
        assert await one.accountant.store.total("global", one.accountant.period) == 2 * each


@pytest.mark.anyio
async def test_month_rolls_over_at_midnight_utc_on_the_first(
    fleet: tuple[FakeBackend, FakeOpenAI],
) -> None:
    _, cloud = fleet
    now = [float(calendar.timegm((2026, 11, 30, 23, 59, 58)))]
    config = config_with(
        cloud_entry(cloud),
        budget={"monthly_limit_usd": 0.000001, "hard_limit_action": "block_cloud"},
    )
    request = {"model": "gpt-4o", "messages": MESSAGES}
    async with Gateway(config, clock=lambda: now[0]) as gateway:
        accountant = gateway.accountant
        await gateway.chat_completions(request)
        await accountant.drain()
        assert accountant.period == "2026-11"
        assert accountant.blocks_cloud
        with pytest.raises(GatewayError) as info:
            await gateway.chat_completions(request)
        assert info.value.status == 503
        assert info.value.details == [
            {**info.value.details[0], "backend": "cloud", "reason": "budget"}  # type: ignore[index]
        ]
        now[0] += 1.0  # 23:59:59: still November
        accountant.roll()
        assert accountant.blocks_cloud
        now[0] += 1.0  # 00:00:00 on 1 December
        accountant.roll()
        assert accountant.period == "2026-12"
        assert accountant.spent == 0
        assert not accountant.blocks_cloud
        assert accountant.seconds_to_rollover() == 31 * 24 * 3600
        await gateway.chat_completions(request)
        await accountant.drain()
        assert await accountant.store.total("global", "2026-12") == accountant.spent > 0
        assert await accountant.store.total("global", "2026-11") > 0


def test_spend_is_neither_lost_nor_doubled_when_the_process_is_killed(
    tmp_path: Path,
) -> None:
    """SIGKILL a real ``nexus serve`` mid-stream: its reservation stays counted, once."""
    cloud = FakeOpenAI("cloud", ["gpt-4o"], api_key="sk-cloud")
    state_file = tmp_path / "state.sqlite3"
    config_file = tmp_path / "nexus.toml"
    with cloud.running():
        config_file.write_text(
            f"""
[server]
first_byte_timeout_seconds = 5

[discovery]
enabled = false

[[backends]]
name = "cloud"
url = "{cloud.url}"
type = "openai"
api_key_env = "{KEY_ENV}"

[[pricing]]
model = "gpt-4o"
input_per_million = 1000.0
output_per_million = 1000.0

[state]
backend = "sqlite"
path = "{state_file}"
""",
            encoding="utf-8",
        )
        # The stream sends its first chunk, then hangs: the process dies with the request open.
        cloud.behave(Behaviour(delay_between_events=60))
        with (
            nexus_serve(config_file, env={KEY_ENV: "sk-cloud"}) as (process, base),
            httpx.stream(
                "POST",
                base + "/v1/chat/completions",
                json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 100, "stream": True},
                timeout=10,
            ) as response,
        ):
            assert response.status_code == 200
            # Keep the iterator: a dropped one closes httpx's connection, and the server would
            # then see the client leave (and settle) before the kill.
            chunks = response.iter_bytes()
            next(chunks)
            process.send_signal(signal.SIGKILL)
            process.wait(10)

        async def total() -> int:
            store = SqliteStore(str(state_file))
            await store.open()
            try:
                return await store.total("global", time.strftime("%Y-%m", time.gmtime()))
            finally:
                await store.close()

        reserved = asyncio.run(total())
        # The reservation: 9 prompt tokens (38 characters / 4) + max_tokens 100, at $1000 / M.
        prompt_estimate = len(MESSAGES[0]["content"]) // 4
        assert reserved == (prompt_estimate + 100) * 1000 * 1000
        # Restarted on the same file: the reservation is still counted, and only once; a new
        # request adds exactly its own cost.
        cloud.reset()
        config = tomllib.loads(config_file.read_text(encoding="utf-8"))
        with running_server(config) as server:
            assert server.gateway.accountant.spent == reserved
            completion = client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert completion.usage is not None
            cost = nano(
                completion.usage.prompt_tokens, completion.usage.completion_tokens, 1e3, 1e3
            )
            assert spent(server) == reserved + cost
        assert asyncio.run(total()) == reserved + cost
