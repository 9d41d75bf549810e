"""Fleet control end to end: the inventory, load/unload/migrate through the admin API (httpx),
traffic through the OpenAI SDK, against the fakes of llama-server (router mode), Ollama and vLLM
(sleep mode); and how routing treats unloaded and loading models."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import openai
import pytest

from nexus_backend_llamacpp import LlamaCppAdapter
from nexus_core.adapters import NO_LIFECYCLE, ModelInventory
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.testing import (
    Behaviour,
    FakeBackend,
    FakeLlamaCpp,
    FakeLMStudio,
    FakeOllama,
    FakeVLLM,
)
from nexus_server.testing import RunningServer, running_server

GiB = 1024**3
NONE = NO_LIFECYCLE.detail
WORDS = " ".join(f"w{i}" for i in range(20))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def config(*backends: tuple[FakeBackend, str], **fleet: Any) -> dict[str, Any]:
    return {
        "server": {"first_byte_timeout_seconds": 5.0, "request_timeout_seconds": 30.0},
        "discovery": {"enabled": False},
        "health_check": {"interval_seconds": 3600},
        "backends": [
            {"name": fake.name, "url": fake.url, "type": kind, "priority": 10 * (index + 1)}
            for index, (fake, kind) in enumerate(backends)
        ],
        "fleet": fleet,
        "state": {"backend": "memory"},
    }


@contextmanager
def serving(
    *backends: tuple[FakeBackend, str], backend_types: Any = None, **fleet: Any
) -> Iterator[tuple[RunningServer, httpx.Client]]:
    """The fakes running, Nexus in front of them, and an admin client; once every backend with
    lifecycle operations has been read."""
    with ExitStack() as stack:
        for fake, _ in backends:
            stack.enter_context(fake.running())
        nexus = stack.enter_context(
            running_server(config(*backends, **fleet), backend_types=backend_types)
        )
        admin = stack.enter_context(httpx.Client(base_url=nexus.url, timeout=30))
        wait_until(
            lambda: all(
                b["checked_at"] or b["lifecycle"]["detail"] == NONE for b in fleet_of(admin)
            )
        )
        yield nexus, admin


def fleet_of(admin: httpx.Client) -> list[dict[str, Any]]:
    answer = admin.get("/admin/fleet")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


def state_of(admin: httpx.Client, backend: str, model: str) -> str | None:
    entry = next(b for b in fleet_of(admin) if b["name"] == backend)
    return next((m["state"] for m in entry["models"] if m["id"] == model), "absent")


def operation(admin: httpx.Client, path: str, body: dict[str, Any], **query: str) -> Any:
    return admin.post(f"/admin/models/{path}", json=body, params=query)


def chat(nexus: RunningServer, model: str, **extra: Any) -> Any:
    client = openai.OpenAI(base_url=nexus.url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, **extra
    )


# -- the inventory --------------------------------------------------------------------------------


def test_the_fleet_shows_every_backend_with_its_models_states_and_support() -> None:
    llama = FakeLlamaCpp("llama", ["m1", "m2"], router=True, loaded=["m1"])
    ollama = FakeOllama("ollama", ["llama3.2:latest", "qwen:latest"])
    vllm = FakeVLLM("vllm", ["big"], dev_mode=True, sleeping=True)
    plain = FakeBackend("plain")
    with serving((llama, "llamacpp"), (ollama, "ollama"), (vllm, "vllm"), (plain, "generic")) as (
        _,
        admin,
    ):
        fleet = {b["name"]: b for b in fleet_of(admin)}
        states = {
            name: {m["id"]: m["state"] for m in fleet[name]["models"]}
            for name in ("llama", "ollama", "vllm")
        }
        assert states == {
            "llama": {"m1": "loaded", "m2": "unloaded"},
            "ollama": {"llama3.2:latest": "unloaded", "qwen:latest": "unloaded"},
            "vllm": {"big": "sleeping"},
        }
        assert fleet["llama"]["lifecycle"]["load"] is True
        assert fleet["llama"]["lifecycle"]["autoload"] is True
        assert fleet["vllm"]["lifecycle"]["autoload"] is False
        # A backend type without lifecycle operations says so, and lists no state.
        assert fleet["plain"]["lifecycle"] == {
            "available_models": False,
            "load": False,
            "unload": False,
            "autoload": None,
            "detail": "this backend type has no model lifecycle operations",
        }
        assert [m["state"] for m in fleet["plain"]["models"]] == [None]
        # No built-in server reports a memory total.
        assert fleet["llama"]["memory_total_bytes"] is None


# -- load and unload on every fake ----------------------------------------------------------------


CASES = [
    pytest.param(
        lambda: FakeLlamaCpp("box", ["m", "other"], router=True), "llamacpp", "m", id="llamacpp"
    ),
    pytest.param(
        lambda: FakeOllama("box", ["m:latest"], load_seconds=0.1), "ollama", "m:latest", id="ollama"
    ),
    pytest.param(
        lambda: FakeVLLM("box", ["m"], dev_mode=True, sleeping=True, wake_seconds=0.1),
        "vllm",
        "m",
        id="vllm",
    ),
    pytest.param(
        lambda: FakeLMStudio("box", [{"id": "m", "state": "not-loaded"}], load_delay=0.1),
        "lmstudio",
        "m",
        id="lmstudio",
    ),
]


@pytest.mark.parametrize(("make", "kind", "model"), CASES)
def test_load_then_unload_through_the_admin_api(
    make: Callable[[], FakeBackend], kind: str, model: str
) -> None:
    with serving((make(), kind)) as (nexus, admin):
        wait_until(lambda: state_of(admin, "box", model) in ("unloaded", "sleeping"))
        started = operation(admin, "load", {"model": model, "backend": "box"})
        assert started.status_code == 202, started.text
        op = started.json()
        assert (op["kind"], op["model"], op["backend"], op["origin"]) == (
            "load",
            model,
            "box",
            "admin",
        )
        assert op["state"] in ("pending", "running")
        wait_until(
            lambda: admin.get(f"/admin/operations/{op['id']}").json()["state"] == "succeeded"
        )
        done = admin.get(f"/admin/operations/{op['id']}").json()
        assert done["progress"] == 1.0
        assert done["error"] is None
        assert done["finished_at"]
        wait_until(lambda: state_of(admin, "box", model) == "loaded")
        answer = chat(nexus, model)
        assert answer.headers["X-Nexus-Backend"] == "box"
        assert answer.headers["X-Nexus-Route-Reason"] == "only-candidate"

        unloaded = operation(admin, "unload", {"model": model, "backend": "box"}, wait="true")
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["state"] == "succeeded"
        wait_until(lambda: state_of(admin, "box", model) in ("unloaded", "sleeping"))
        listed = admin.get("/admin/operations").json()["data"]
        assert [o["kind"] for o in listed] == ["unload", "load"]


def test_a_failed_load_is_an_operation_that_failed_with_the_servers_reason() -> None:
    llama = FakeLlamaCpp("box", ["m"], router=True)
    llama.crash_on_load.add("m")
    with serving((llama, "llamacpp")) as (_, admin):
        done = operation(admin, "load", {"model": "m", "backend": "box"}, wait="true").json()
        assert done["state"] == "failed"
        assert done["error_code"] == "load_failed"
        assert "could not load 'm'" in done["error"]
        assert done["step"] == "loading"


def test_operations_that_cannot_start_are_refused_with_their_code() -> None:
    llama = FakeLlamaCpp("box", ["m"], router=True, load_seconds=1.0)
    plain = FakeBackend("plain")
    with serving((llama, "llamacpp"), (plain, "generic")) as (_, admin):
        refused = {
            "no backend": operation(admin, "load", {"model": "m", "backend": "nope"}),
            "no model": operation(admin, "load", {"model": "zz", "backend": "box"}),
            "no lifecycle": operation(admin, "load", {"model": "fake-model", "backend": "plain"}),
            "to itself": operation(admin, "migrate", {"model": "m", "from": "box", "to": "box"}),
            "unknown field": operation(admin, "load", {"model": "m", "backend": "box", "x": 1}),
            "no from": operation(admin, "migrate", {"model": "m", "to": "box"}),
        }
        codes = {
            name: (answer.status_code, answer.json()["error"].get("code"))
            for name, answer in refused.items()
        }
        assert codes == {
            "no backend": (404, "backend_not_found"),
            "no model": (404, "model_not_found"),
            "no lifecycle": (400, "lifecycle_not_supported"),
            "to itself": (400, "invalid_operation"),
            "unknown field": (400, None),
            "no from": (400, None),
        }
        assert "Unknown field(s) x" in refused["unknown field"].json()["error"]["message"]
        assert "from" in refused["no from"].json()["error"]["message"]
        # One load runs (it takes a second): a second one on the same model and backend is 409.
        first = operation(admin, "load", {"model": "m", "backend": "box"})
        assert first.status_code == 202
        second = operation(admin, "unload", {"model": "m", "backend": "box"})
        assert second.status_code == 409
        error = second.json()["error"]
        assert error["code"] == "operation_in_progress"
        assert error["details"] == {"operation": first.json()["id"]}
        assert admin.get("/admin/operations/op_nothing").json()["error"]["code"] == (
            "operation_not_found"
        )
        wait_until(
            lambda: (
                admin.get(f"/admin/operations/{first.json()['id']}").json()["state"] == "succeeded"
            )
        )
        # Once it has ended, the model and backend are free again.
        assert operation(admin, "unload", {"model": "m", "backend": "box"}).status_code == 202


# -- memory headroom ------------------------------------------------------------------------------


class MeasuredLlamaCpp(LlamaCppAdapter):
    """llama-server as an adapter plugin might see it: each model 3 GiB, 10 GiB in all."""

    async def available_models(self) -> ModelInventory:
        listed = await super().available_models()
        models = tuple(dataclasses.replace(m, size_bytes=3 * GiB) for m in listed.models)
        used = sum(3 * GiB for m in models if m.state.value in ("loaded", "loading"))
        return ModelInventory(models, memory_total_bytes=10 * GiB, memory_used_bytes=used)


def measured(config: BackendConfig, clients: HttpClients) -> MeasuredLlamaCpp:
    return MeasuredLlamaCpp(config, clients)


measured.is_cloud = False  # type: ignore[attr-defined]
measured.detect = LlamaCppAdapter.detect  # type: ignore[attr-defined]


@pytest.mark.parametrize(("headroom", "allowed"), [(5.0, True), (20.0, False)])
def test_a_load_past_the_memory_headroom_is_refused(headroom: float, allowed: bool) -> None:
    # Two models loaded, 6 GiB of 10: a third makes 9 GiB, which 5 % headroom allows (9.5 GiB)
    # and the default 20 % does not (8 GiB).
    llama = FakeLlamaCpp("box", ["a", "b", "c"], router=True, loaded=["a", "b"], models_max=4)
    with serving(
        (llama, "measured"), backend_types={"measured": measured}, headroom_percent=headroom
    ) as (_, admin):
        entry = fleet_of(admin)[0]
        assert (entry["memory_total_bytes"], entry["memory_used_bytes"]) == (10 * GiB, 6 * GiB)
        answer = operation(admin, "load", {"model": "c", "backend": "box"})
        if allowed:
            assert answer.status_code == 202, answer.text
            return
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == "insufficient_memory"
        assert "fleet.headroom_percent" in error["message"]
        assert error["details"]["memory_total_bytes"] == 10 * GiB
        # A loaded model needs no room: loading it again is no refusal.
        assert operation(admin, "load", {"model": "a", "backend": "box"}).status_code == 202


# -- routing of unloaded and loading models -------------------------------------------------------


def test_an_unloaded_model_is_a_cold_load_of_last_resort() -> None:
    warm = FakeLlamaCpp("warm", ["m"], router=True, loaded=["m"])
    cold = FakeLlamaCpp("cold", ["m"], router=True)
    with serving((cold, "llamacpp"), (warm, "llamacpp")) as (nexus, admin):
        # The cold backend has the better priority, the warm one still goes first.
        assert chat(nexus, "m").headers["X-Nexus-Backend"] == "warm"
        drained = admin.post("/admin/backends/warm/drain", json={})
        assert drained.status_code == 200
        answer = chat(nexus, "m")
        assert answer.headers["X-Nexus-Backend"] == "cold"
        assert answer.headers["X-Nexus-Route-Reason"] == "cold-load"
        # The server loaded it for the request: now it is warm there.
        assert cold.states["m"] == "loaded"
        assert chat(nexus, "m").headers["X-Nexus-Route-Reason"] != "cold-load"
        history = admin.get("/v1/history").json()["data"]
        assert [h["route_reason"] for h in history][1] == "cold-load"


def test_a_loading_model_is_not_routed_to_and_alone_it_is_a_503_with_retry_after() -> None:
    slow = FakeLlamaCpp("slow", ["m"], router=True, load_seconds=1.5)
    with serving((slow, "llamacpp")) as (nexus, admin):
        started = operation(admin, "load", {"model": "m", "backend": "slow"})
        assert started.status_code == 202
        with pytest.raises(openai.APIStatusError) as refused:
            chat(nexus, "m")
        assert refused.value.status_code == 503
        body = refused.value.body
        assert isinstance(body, dict)
        assert body["code"] == "model_loading"
        assert body["details"][0]["reason"] == "model_loading"
        assert refused.value.response.headers["Retry-After"] == "5"
        wait_until(
            lambda: (
                admin.get(f"/admin/operations/{started.json()['id']}").json()["state"]
                == "succeeded"
            )
        )
        assert chat(nexus, "m").headers["X-Nexus-Backend"] == "slow"


def test_an_unloaded_model_where_the_server_does_not_autoload_is_not_routed_to() -> None:
    vllm = FakeVLLM("asleep", ["m"], dev_mode=True, sleeping=True)
    with serving((vllm, "vllm")) as (nexus, admin):
        with pytest.raises(openai.APIStatusError) as refused:
            chat(nexus, "m")
        body = refused.value.body
        assert isinstance(body, dict)
        assert (refused.value.status_code, body["code"]) == (503, "no_backend_available")
        assert body["details"][0]["reason"] == "model_unloaded"
        assert "nexus models load" in body["details"][0]["fix"]
        done = operation(admin, "load", {"model": "m", "backend": "asleep"}, wait="true")
        assert done.json()["state"] == "succeeded"
        assert chat(nexus, "m").headers["X-Nexus-Backend"] == "asleep"


# -- migration with zero dropped requests ---------------------------------------------------------


class RecordingLlamaCpp(FakeLlamaCpp):
    """A llama-server fake that notes the requests in flight for each model it is told to
    unload (a real router kills the model's child process: they would be cut)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight_at_unload: list[int] = []

    async def _load_or_unload(self, body: bytes, *, unload: bool) -> Any:
        if unload:
            self.in_flight_at_unload.append(sum(self.in_flight.values()))
        return await super()._load_or_unload(body, unload=unload)


def stream_all(nexus: RunningServer, count: int, started: threading.Barrier) -> list[Any]:
    """``count`` streams at once; each one's backend and text (or its exception)."""
    results: list[Any] = [None] * count
    client = openai.OpenAI(base_url=nexus.url + "/v1", api_key="unused", max_retries=0)

    def one(index: int) -> None:
        try:
            started.wait()
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices
            )
            results[index] = (raw.headers["X-Nexus-Backend"], text)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_a_migration_under_load_drops_no_stream() -> None:
    slow = Behaviour(content=WORDS, delay_between_events=0.05)
    source = RecordingLlamaCpp("a", ["m", "n"], router=True, loaded=["m", "n"], behaviour=slow)
    target = FakeLlamaCpp("b", ["m"], router=True, load_seconds=0.3, behaviour=slow)
    with serving((source, "llamacpp"), (target, "llamacpp")) as (nexus, admin):
        start = threading.Barrier(21)
        streams: list[Any] = []
        runner = threading.Thread(target=lambda: streams.extend(stream_all(nexus, 20, start)))
        runner.start()
        start.wait()
        wait_until(lambda: source.in_flight["m"] >= 10)
        moved = operation(admin, "migrate", {"model": "m", "from": "a", "to": "b"}, wait="true")
        runner.join(60)
        done = moved.json()
        assert (done["state"], done["error"]) == ("succeeded", None), done
        assert (done["backend"], done["target"]) == ("a", "b")
        # Every stream ended whole, on the source it started on.
        assert all(isinstance(s, tuple) for s in streams), streams
        assert {text for _, text in streams} == {WORDS}
        assert {backend for backend, _ in streams} == {"a"}
        # The source was unloaded only once its streams had ended.
        assert source.in_flight_at_unload == [0]
        assert (source.states["m"], source.states["n"], target.states["m"]) == (
            "unloaded",
            "loaded",
            "loaded",
        )
        # New requests go to the target; the source still serves its other model.
        assert chat(nexus, "m").headers["X-Nexus-Backend"] == "b"
        assert chat(nexus, "n").headers["X-Nexus-Backend"] == "a"
        wait_until(lambda: state_of(admin, "a", "m") == "unloaded")
