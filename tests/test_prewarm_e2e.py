"""Pre-warming end to end: two fake Ollama servers that load and unload as Ollama does, a real
Nexus, requests through the OpenAI SDK, and ``GET /v1/fleet/recommendations``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import openai
import pytest

from nexus_core.fleet import Operation
from nexus_core.testing import Behaviour, FakeOllama
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

WANTED = "llama3.2:latest"
OTHER = "qwen3:latest"
MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
KEY = "nxk-prewarm-team-0123456789abcdef"
ADMIN_KEY = "nxk-prewarm-admin-0123456789abcdef"

T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns something truthy (a generous bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def prewarm_operations(server: RunningServer) -> list[Operation]:
    return [op for op in server.gateway.operations.list() if op.origin.value == "prewarm"]


def recommendations(server: RunningServer, **headers: str) -> httpx.Response:
    return httpx.get(
        server.url + "/v1/fleet/recommendations",
        headers={"Host": "127.0.0.1", **headers},
        timeout=10,
    )


@contextmanager
def fleet(
    *, second_max_loaded: int | None = None, **prewarm: Any
) -> Iterator[tuple[RunningServer, FakeOllama, FakeOllama]]:
    """``one`` has WANTED loaded; ``two`` could serve it but has only OTHER loaded."""
    one = FakeOllama("one", [{"id": WANTED, "loaded": True}])
    two = FakeOllama(
        "two",
        [{"id": WANTED}, {"id": OTHER, "loaded": True}],
        load_seconds=0.2,
        max_loaded=second_max_loaded,
    )
    with one.running(), two.running():
        config = gateway_config(
            {"name": "one", "url": one.url, "type": "ollama", "priority": 10},
            {"name": "two", "url": two.url, "type": "ollama", "priority": 20},
        )
        config["fleet"] = {
            "prewarm": {
                "interval_seconds": 0.2,
                "window_seconds": 600,
                "min_requests": 3,
                "backends_per_model": 2,
                "hour_lookback_days": 0,
                **prewarm,
            }
        }
        with running_server(config) as server:
            # Both inventories read (at start, as each backend turns healthy).
            eventually(
                lambda: all(server.gateway.fleet.reading(n) for n in ("one", "two")),
                "the fleet inventory read",
            )
            yield server, one, two


def ask(server: RunningServer, times: int = 3) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    for _ in range(times):
        answer = client.chat.completions.create(model=WANTED, messages=MESSAGES)
        assert answer.choices[0].message.content


def test_requests_for_a_model_get_it_loaded_on_the_second_backend() -> None:
    with fleet(enabled=True) as (server, one, two):
        assert WANTED not in two.loaded
        ask(server)
        operation = eventually(
            lambda: next(iter(prewarm_operations(server)), None), "a pre-warming operation"
        )
        assert (operation.kind.value, operation.model, operation.backend) == ("load", WANTED, "two")
        eventually(lambda: operation.finished, "the load finished")
        assert operation.state.value == "succeeded", operation.error
        assert WANTED in two.loaded
        assert OTHER in two.loaded  # nothing unloaded
        # The requests went to the backend that had it loaded; the load was pre-warming's.
        assert len(one.inference_requests) == 3
        assert two.inference_requests == []
        # Now on both: nothing more to recommend.
        body = eventually(
            lambda: (
                (b := recommendations(server).json())["models"][0]["loaded_on"] == ["one", "two"]
                and b
            ),
            "both backends read as loaded",
        )
        assert body["recommendations"] == []
        assert len(prewarm_operations(server)) == 1


def test_dry_run_only_recommends() -> None:
    with fleet(enabled=True, dry_run=True) as (server, _, two):
        ask(server)
        body = eventually(
            lambda: (
                (b := recommendations(server).json())["last_cycle"]
                and b["last_cycle"]["recommended"]
                and b
            ),
            "a dry-run cycle with a recommendation",
        )
        assert body["dry_run"] is True
        assert body["last_cycle"]["started"] == []
        assert [(r["action"], r["model"], r["backend"]) for r in body["recommendations"]] == [
            ("load", WANTED, "two")
        ]
        assert prewarm_operations(server) == []
        assert WANTED not in two.loaded


def test_off_it_still_says_what_it_would_do_with_the_numbers() -> None:
    with fleet() as (server, _, two):
        ask(server, times=4)
        answer = recommendations(server)
        assert answer.status_code == 200
        body = answer.json()
        assert body["object"] == "fleet.recommendations"
        assert body["enabled"] is False
        assert body["last_cycle"] is None
        assert body["settings"] == {
            "interval_seconds": 0.2,
            "window_seconds": 600.0,
            "min_requests": 3,
            "backends_per_model": 2,
            "max_loads_per_cycle": 1,
            "hour_lookback_days": 0,
            "headroom_percent": 20.0,
        }
        (model,) = body["models"]
        assert model == {
            "model": WANTED,
            "recent_requests": 4,
            "same_hour_requests": 0,
            "same_hour_average": 0.0,
            "in_demand": True,
            "target": 2,
            "loaded_on": ["one"],
            "loading_on": [],
            "available_on": ["one", "two"],
            "loads": ["two"],
            "skipped": [],
        }
        (load,) = body["recommendations"]
        assert (load["action"], load["model"], load["backend"]) == ("load", WANTED, "two")
        assert "4 request(s) in the window" in load["reason"]
        assert "loaded on 1 of the 2 backend(s) wanted" in load["reason"]
        backends = {b["name"]: b for b in body["backends"]}
        assert backends["two"]["loaded"] == [OTHER]
        assert backends["two"]["can_load"] is True
        assert backends["one"]["in_flight"] == {}
        # Nothing was loaded.
        assert prewarm_operations(server) == []
        assert WANTED not in two.loaded


def test_a_backend_serving_another_model_is_left_alone_until_it_is_idle() -> None:
    # ``two`` holds one model at a time: loading WANTED there would evict OTHER.
    with fleet(enabled=True, second_max_loaded=1) as (server, _, two):
        two.behave(
            Behaviour(
                content="one two three four five six seven eight nine ten", delay_between_events=0.4
            )
        )
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model=OTHER, messages=MESSAGES, stream=True)
        chunks = iter(stream)
        next(chunks)  # the stream of OTHER is open on ``two``
        two.behave(Behaviour())
        ask(server)
        body = eventually(
            lambda: (b := recommendations(server).json())["models"][0]["skipped"] and b,
            "the load on two held back",
        )
        (skip,) = body["models"][0]["skipped"]
        assert skip["backend"] == "two"
        assert skip["reason"] == "serving_other_models"
        assert f"{OTHER} (1)" in skip["detail"]
        assert body["backends"][1]["in_flight"] == {OTHER: 1}
        assert prewarm_operations(server) == []
        assert OTHER in two.loaded
        rest = list(chunks)  # the stream ends whole
        assert rest[-1].choices[0].finish_reason == "stop"
        operation = eventually(
            lambda: next(iter(prewarm_operations(server)), None), "the load once two is idle"
        )
        eventually(lambda: operation.finished, "the load finished")
        assert operation.state.value == "succeeded", operation.error
        assert WANTED in two.loaded


def test_with_auth_only_the_admin_key_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_PREWARM_KEY", KEY)
    monkeypatch.setenv("NEXUS_PREWARM_ADMIN_KEY", ADMIN_KEY)
    one = FakeOllama("one", [{"id": WANTED, "loaded": True}])
    with one.running():
        config = gateway_config({"name": "one", "url": one.url, "type": "ollama"})
        config["auth"] = {
            "enabled": True,
            "admin_key_env": "NEXUS_PREWARM_ADMIN_KEY",
            "keys": [{"name": "team", "key_env": "NEXUS_PREWARM_KEY"}],
        }
        with running_server(config) as server:
            assert recommendations(server).status_code == 401
            refused = recommendations(server, Authorization=f"Bearer {KEY}")
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "admin_key_required"
            assert refused.json()["error"]["type"] == "permission_error"
            allowed = recommendations(server, Authorization=f"Bearer {ADMIN_KEY}")
            assert allowed.status_code == 200
            assert allowed.json()["object"] == "fleet.recommendations"
