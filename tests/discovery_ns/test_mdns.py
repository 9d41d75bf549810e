"""mDNS discovery with real zeroconf on loopback: advertise, discover, probe, route, withdraw.

Run by ``tests/test_discovery.py`` inside a private network namespace (skipped elsewhere). Every
zeroconf here is bound to 127.0.0.1 as well, a second guard against multicast leaving the host.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from zeroconf.asyncio import AsyncServiceInfo

from nexus_core.adapters import BackendStatus
from nexus_core.discovery import MdnsDiscovery, open_zeroconf
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_core.registry import Backend
from nexus_core.testing import FakeBackend, FakeLlamaCpp, FakeOllama, FakeVLLM, free_port
from nexus_server.advertise import Advertisement, Advertiser
from nexus_server.testing import running_server

if os.environ.get("NEXUS_IN_NETNS") != "1":
    pytest.skip(
        "real mDNS: run inside a private network namespace by tests/test_discovery.py",
        allow_module_level=True,
    )

pytestmark = pytest.mark.anyio

LOOPBACK = ["127.0.0.1"]
HELLO = [{"role": "user", "content": "Hi"}]


def config(**discovery: Any) -> dict[str, Any]:
    """Discovery on, on loopback only; probes only when discovery (or a test) asks."""
    return {
        "server": {"first_byte_timeout_seconds": 2.0, "request_timeout_seconds": 5.0},
        "discovery": {"enabled": True, "interfaces": LOOPBACK, **discovery},
        "health_check": {"interval_seconds": 3600, "timeout_seconds": 2.0},
    }


def advertiser(fake: FakeBackend, **fields: Any) -> Advertiser:
    """What ``nexus advertise`` would publish for ``fake``, on loopback."""
    return Advertiser(Advertisement(port=fake.port, **fields), interfaces=LOOPBACK)


@asynccontextmanager
async def advertising(*advertisers: Advertiser) -> AsyncIterator[None]:
    """Several advertisements at once (each spends about a second probing for its name)."""
    try:
        await asyncio.gather(*(advertiser.start() for advertiser in advertisers))
        yield
    finally:
        await asyncio.gather(*(advertiser.stop() for advertiser in advertisers))


@asynccontextmanager
async def published(*services: tuple[str, str, int, dict[str, str]]) -> AsyncIterator[None]:
    """Raw DNS-SD records ``(service type, label, port, TXT)``, as Avahi would publish them."""
    infos = [
        AsyncServiceInfo(
            service_type,
            f"{label}.{service_type}",
            port=port,
            properties=txt,
            server="elsewhere.local.",
            parsed_addresses=LOOPBACK,
        )
        for service_type, label, port, txt in services
    ]
    zeroconf = open_zeroconf(LOOPBACK)
    try:
        registered = await asyncio.gather(*(zeroconf.async_register_service(i) for i in infos))
        await asyncio.gather(*registered)
        yield
    finally:
        await zeroconf.async_close()  # sends the goodbyes


async def wait_until(condition: Callable[[], object], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)


async def healthy_backend(gateway: Gateway, name: str, within: float = 5.0) -> Backend:
    def ready() -> bool:
        backend = gateway.registry.get(name)
        return backend is not None and backend.status is BackendStatus.HEALTHY

    names = [backend.name for backend in gateway.registry]
    await wait_until(ready, within, f"backend {name!r} healthy (have {names})")
    backend = gateway.registry.get(name)
    assert backend is not None
    return backend


def mdns(gateway: Gateway) -> MdnsDiscovery:
    source = gateway.discovery["mdns"]
    assert isinstance(source, MdnsDiscovery)
    return source


async def chat(gateway: Gateway, model: str) -> str:
    reply = await gateway.chat_completions({"model": model, "messages": HELLO})
    return str(reply["choices"][0]["message"]["content"])


# -- discovery to a routed request -----------------------------------------------------------


async def test_an_advertised_ollama_serves_a_chat_through_nexus_within_5_seconds() -> None:
    async with FakeOllama("kitchen", ["llama3.2:latest"]) as fake:
        with running_server(config()) as server:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
            started = time.monotonic()
            async with advertiser(fake, type="ollama", name="Kitchen Box"):
                raw = None
                while raw is None and time.monotonic() - started < 5:
                    try:
                        raw = await client.chat.completions.with_raw_response.create(
                            model="llama3.2", messages=HELLO
                        )
                    except openai.APIStatusError:
                        await asyncio.sleep(0.05)
                elapsed = time.monotonic() - started
                assert raw is not None, "no answer within 5 s"
                (backend,) = server.gateway.backends()
            await client.close()
    assert elapsed < 5
    assert raw.headers["x-nexus-backend"] == "kitchen-box"
    assert raw.parse().choices[0].message.content == "Hello from kitchen"
    assert backend["source"] == "mdns"
    assert backend["type"] == "ollama"
    assert backend["url"] == fake.url
    assert [r.path for r in fake.inference_requests] == ["/v1/chat/completions"]


async def test_nexus_serve_discovers_an_advertised_server(tmp_path: Path) -> None:
    # The real command (uvloop, lifespan, the default local Ollama next to discovery).
    port = free_port()
    settings = tmp_path / "nexus.toml"
    settings.write_text('[discovery]\ninterfaces = ["127.0.0.1"]\n', encoding="utf-8")
    serve = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "nexus_server.cli", "serve", "--config", str(settings)),
        *("--host", "127.0.0.1", "--port", str(port)),
        # Its state file in the test's directory, never the user's ~/.local/state.
        env={"PATH": "/usr/bin:/bin", "XDG_STATE_HOME": str(tmp_path / "state")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with (
            FakeOllama("loft", ["qwen3:0.6b"]) as fake,
            advertiser(fake, type="ollama", name="Loft Box"),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            served: list[str] = []
            deadline = time.monotonic() + 15
            while not served and time.monotonic() < deadline:
                try:
                    listing = (await client.get("/v1/models")).json()["data"]
                    served = [b for model in listing for b in model["backends"]]
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            assert served == ["loft-box"]
            payload = {"model": "qwen3:0.6b", "messages": HELLO}
            response = await client.post("/v1/chat/completions", json=payload)
    finally:
        if serve.returncode is None:
            serve.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(serve.communicate(), 30))[0].decode()
    assert response.status_code == 200, output
    assert response.headers["x-nexus-backend"] == "loft-box"
    assert serve.returncode == 0, output
    assert "mDNS discovery: browsing _ollama._tcp.local., _llm._tcp.local. on 127.0.0.1" in output


# -- withdrawal, grace, reappearance ---------------------------------------------------------


async def test_a_withdrawn_service_is_unroutable_at_once_and_removed_after_the_grace() -> None:
    async with (
        FakeOllama("attic", ["llama3.2:latest"]) as fake,
        Gateway(config(grace_period_seconds=1.0)) as gateway,
    ):
        changes: list[tuple[float, str, BackendStatus]] = []
        gateway.registry.subscribe(
            lambda event, b: changes.append((time.monotonic(), event, b.status))
        )
        announcement = advertiser(fake, type="ollama", name="Attic Box")
        await announcement.start()
        backend = await healthy_backend(gateway, "attic-box")
        assert await chat(gateway, "llama3.2") == "Hello from attic"
        await announcement.stop()  # returns once the goodbye packets are sent
        await wait_until(lambda: backend.status is BackendStatus.UNKNOWN, 1.0, "unknown")
        with pytest.raises(GatewayError) as refused:
            await chat(gateway, "llama3.2")
        assert mdns(gateway).services()[0]["state"] == "withdrawn"
        await wait_until(lambda: "attic-box" not in gateway.registry, 3.0, "removed")
    assert refused.value.status == 503
    assert "withdrawn from mDNS" in str(refused.value.details)
    unknown = BackendStatus.UNKNOWN
    (unknown_at,) = [at for at, event, status in changes if (event, status) == ("status", unknown)]
    (removed_at,) = [at for at, event, _ in changes if event == "removed"]
    assert 0.95 <= removed_at - unknown_at < 1.5
    assert len(fake.inference_requests) == 1


async def test_a_service_back_within_the_grace_keeps_its_id_and_stats() -> None:
    async with (
        FakeOllama("porch", ["llama3.2:latest"]) as fake,
        Gateway(config(grace_period_seconds=30)) as gateway,
    ):
        async with advertiser(fake, type="ollama", name="Porch Box"):
            backend = await healthy_backend(gateway, "porch-box")
            await chat(gateway, "llama3.2")
            await chat(gateway, "llama3.2")
        await wait_until(lambda: backend.status is BackendStatus.UNKNOWN, 2.0, "withdrawn")
        async with advertiser(fake, type="ollama", name="Porch Box"):
            again = await healthy_backend(gateway, "porch-box")
            requests_before = again.requests_total
            await chat(gateway, "llama3.2")
            services = mdns(gateway).services()
        assert again is backend
        assert [b.name for b in gateway.registry] == ["porch-box"]
    assert requests_before == 2
    assert backend.requests_total == 3
    assert [s["state"] for s in services] == ["active"]


# -- precedence, paths, types ----------------------------------------------------------------


async def test_a_backend_configured_at_the_same_address_wins() -> None:
    async with FakeOllama("pantry", ["llama3.2:latest"]) as fake:
        settings = config()
        # localhost and the advertised 127.0.0.1 are the same server.
        static = {"name": "pantry", "url": f"http://localhost:{fake.port}", "type": "ollama"}
        settings["backends"] = [static]
        async with (
            Gateway(settings) as gateway,
            advertiser(fake, type="ollama", name="Pantry Box"),
        ):
            source = mdns(gateway)
            await wait_until(lambda: source.services(), 5.0, "the service seen")
            await wait_until(
                lambda: source.services()[0]["state"] == "shadowed", 5.0, "ignored for the static"
            )
            assert [b.name for b in gateway.registry] == ["pantry"]
            assert source.services()[0]["shadowed_by"] == "pantry"

            # Once the static backend goes, the discovered one takes its place...
            await gateway.remove_backend("pantry")
            await healthy_backend(gateway, "pantry-box")
            # ...and a backend added by hand at the same address wins again.
            await gateway.add_backend({"name": "by-hand", "url": fake.url, "type": "ollama"})
            await wait_until(lambda: "pantry-box" not in gateway.registry, 2.0, "given way")
            assert [b.name for b in gateway.registry] == ["by-hand"]
            assert source.services()[0]["shadowed_by"] == "by-hand"


async def test_txt_api_path_is_a_base_path_never_doubled() -> None:
    async with (
        FakeVLLM("rack", ["qwen"]) as vllm,
        FakeBackend("plain", ["plain-model"]) as plain,
        Gateway(config()) as gateway,
        advertising(
            advertiser(vllm, type="vllm", name="Rack vLLM", api_path="/v1"),
            advertiser(plain, type="generic", name="Rack Plain", api_path="v1/"),
        ),
    ):
        served_vllm = await healthy_backend(gateway, "rack-vllm")
        served_plain = await healthy_backend(gateway, "rack-plain")
        assert await chat(gateway, "qwen") == "Hello from rack"
        assert await chat(gateway, "plain-model") == "Hello from plain"
    assert served_vllm.config.url == f"{vllm.url}/v1"
    assert served_plain.config.url == f"{plain.url}/v1"
    paths = [r.path for r in [*vllm.requests, *plain.requests]]
    assert "/v1/models" in paths
    assert "/v1/chat/completions" in paths
    assert [p for p in paths if p.startswith("/v1/v1")] == []


async def test_without_txt_type_the_service_type_or_a_probe_decides() -> None:
    settings = config(service_types=["_llm._tcp.local.", "_vllm._tcp.local"])
    async with (
        FakeLlamaCpp("shed", ["tiny"]) as llama,
        FakeOllama("typo", ["llama3.2:latest"]) as ollama,
        FakeBackend("guess", ["m"]) as plain,
        Gateway(settings) as gateway,
        published(
            # Nothing says what it is: probing finds llama.cpp.
            ("_llm._tcp.local.", "Shed Llama", llama.port, {}),
            # A type this Nexus does not have: probing finds Ollama.
            ("_llm._tcp.local.", "Typo Box", ollama.port, {"type": "olama"}),
            # The service type names a backend type: that type, not what a probe would say.
            ("_vllm._tcp.local.", "Guess Box", plain.port, {}),
        ),
    ):
        detected = await healthy_backend(gateway, "shed-llama")
        corrected = await healthy_backend(gateway, "typo-box")
        await wait_until(lambda: "guess-box" in gateway.registry, 5.0, "guess-box added")
        inferred = gateway.registry.get("guess-box")
    assert detected.type_name == "llamacpp"
    assert corrected.type_name == "ollama"
    assert inferred is not None
    assert inferred.type_name == "vllm"


# -- the advertiser ------------------------------------------------------------------------------


async def test_nexus_advertise_is_found_and_withdraws_its_record_on_sigterm() -> None:
    async with (
        FakeOllama("garage", ["llama3.2:latest"]) as fake,
        Gateway(config(grace_period_seconds=30)) as gateway,
    ):
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "nexus_server.cli", "advertise", "--type", "ollama"),
            *("--port", str(fake.port), "--name", "Garage Box", "--models", "llama3.2, qwen3"),
            *("--interface", "127.0.0.1"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            backend = await healthy_backend(gateway, "garage-box", within=15)
            assert await chat(gateway, "llama3.2") == "Hello from garage"
            (seen,) = mdns(gateway).services()
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            output = (await asyncio.wait_for(process.communicate(), 15))[0].decode()
        await wait_until(lambda: backend.status is BackendStatus.UNKNOWN, 2.0, "withdrawn")
    assert process.returncode == 0, output
    assert backend.type_name == "ollama"
    assert backend.config.url == fake.url
    assert seen["instance"] == "Garage Box._ollama._tcp.local."
    assert seen["models"] == ["llama3.2", "qwen3"]
    assert "advertising 'Garage Box._ollama._tcp.local.' at 127.0.0.1:" in output
    assert "withdrawn 'Garage Box._ollama._tcp.local.'" in output


async def test_an_advertised_type_other_than_ollama_goes_out_as_llm() -> None:
    async with (
        FakeLlamaCpp("bench", ["tiny"]) as llama,
        Gateway(config()) as gateway,
        advertiser(llama, type="llamacpp", name="Bench", models=("tiny",), version="b4000"),
    ):
        backend = await healthy_backend(gateway, "bench")
        (seen,) = mdns(gateway).services()
    assert seen["service_type"] == "_llm._tcp.local."
    assert (seen["type"], seen["version"]) == ("llamacpp", "b4000")
    assert backend.type_name == "llamacpp"


# -- no multicast ----------------------------------------------------------------------------


async def test_without_multicast_one_warning_and_the_gateway_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with FakeOllama("static", ["llama3.2:latest"]) as fake:
        # 192.0.2.1 (TEST-NET-1) is no address of this machine: zeroconf cannot bind to it.
        settings = config(interfaces=["192.0.2.1"])
        settings["backends"] = [{"name": "static", "url": fake.url, "type": "ollama"}]
        async with Gateway(settings) as gateway:
            assert await chat(gateway, "llama3.2") == "Hello from static"
            assert mdns(gateway).services() == []
        advertise = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "nexus_server.cli", "advertise", "--type", "ollama"),
            *("--port", str(fake.port), "--interface", "192.0.2.1"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await asyncio.wait_for(advertise.communicate(), 15)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("mDNS discovery is unavailable on 192.0.2.1")
    assert advertise.returncode == 1
    assert b"cannot advertise over mDNS: 192.0.2.1: not an address" in errors


async def test_a_flood_of_announcements_is_capped_by_max_services(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Anyone on the network can answer mDNS: 60 services, each at an address of its own.
    flood = [
        ("_llm._tcp.local.", f"Flood {index}", 20000 + index, {"type": "generic"})
        for index in range(60)
    ]
    caplog.set_level(logging.WARNING, logger="nexus.discovery")
    async with (
        Gateway(config(max_services=8)) as gateway,
        published(*flood),
    ):
        source = mdns(gateway)
        await wait_until(lambda: len(source.services()) >= 8, 10.0, "8 services tracked")
        await asyncio.sleep(2.0)  # every announcement has arrived by now
        tracked = source.services()
        added = [b for b in gateway.registry if b.source == "mdns"]
    assert len(tracked) <= 8
    assert len(added) <= 8
    warnings = [
        r.getMessage() for r in caplog.records if "discovery.max_services" in r.getMessage()
    ]
    assert len(warnings) == 1
