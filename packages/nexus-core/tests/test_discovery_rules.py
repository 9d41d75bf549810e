"""Discovery without the network: what a resolved service becomes, and how the gateway runs
discovery sources. Real mDNS is tested in ``tests/discovery_ns`` (in a network namespace)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from nexus_core import plugins
from nexus_core.adapters import AdapterFactory, BackendStatus
from nexus_core.config import ConfigError, validate_config
from nexus_core.discovery import (
    LLM_SERVICE,
    OLLAMA_SERVICE,
    Announcement,
    MdnsDiscovery,
    backend_name,
    base_path,
    is_this_machine,
    parse_service,
    pick_address,
    same_server,
)
from nexus_core.gateway import Gateway
from nexus_core.testing import FakeBackend, FakeOllama

TYPES = plugins.backend_types()


def announce(
    addresses: list[str] | None = None,
    txt: Mapping[bytes, bytes | None] | None = None,
    *,
    service_type: str = LLM_SERVICE,
    label: str = "GPU Box",
    port: int | None = 8000,
    known: Mapping[str, AdapterFactory] = TYPES,
) -> Announcement:
    return parse_service(
        instance=f"{label}.{service_type}",
        service_type=service_type,
        addresses=["192.168.1.20"] if addresses is None else addresses,
        port=port,
        properties=txt or {},
        host_name="gpu-box.local.",
        known_types=known,
    )


# -- addresses and paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "host"),
    [
        (["fd00::20", "192.168.1.20"], "192.168.1.20"),
        (["127.0.0.1", "169.254.3.4", "10.0.0.7"], "10.0.0.7"),
        (["127.0.0.1", "169.254.3.4"], "169.254.3.4"),
        (["::1", "127.0.0.1"], "127.0.0.1"),
        (["fe80::1%2", "2001:db8::5"], "[2001:db8::5]"),
        (["192.168.1.20", "192.168.1.21"], "192.168.1.20"),
        (["fe80::1%2"], None),
        (["not an address"], None),
        ([], None),
    ],
)
def test_ipv4_is_preferred_and_ipv6_is_bracketed(addresses: list[str], host: str | None) -> None:
    assert pick_address(addresses) == host


@pytest.mark.parametrize(
    ("api_path", "url"),
    [
        (None, "http://192.168.1.20:8000"),
        (b"", "http://192.168.1.20:8000"),
        (b"/", "http://192.168.1.20:8000"),
        (b"/v1", "http://192.168.1.20:8000/v1"),
        (b"v1/", "http://192.168.1.20:8000/v1"),
        (b"/llm/v1/", "http://192.168.1.20:8000/llm/v1"),
    ],
)
def test_api_path_is_the_base_of_the_url(api_path: bytes | None, url: str) -> None:
    txt = {} if api_path is None else {b"api_path": api_path}
    assert announce(txt=txt).url == url


@pytest.mark.parametrize("bad", ["/v1 /x", "/v1?x=1", "http://elsewhere/v1", "/a#b"])
def test_an_api_path_that_is_not_a_path_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="api_path"):
        base_path(bad)


def test_unusable_services_say_why() -> None:
    with pytest.raises(ValueError, match="no usable address"):
        announce(["fe80::1%2"])
    with pytest.raises(ValueError, match="no port"):
        announce(port=0)


def test_txt_keys_are_case_insensitive_and_carry_models_and_version() -> None:
    found = announce(
        txt={b"Type": b"vLLM", b"MODELS": b"qwen, llama3 ,,", b"version": b"0.33.0", b"x": None}
    )
    assert (found.type, found.models, found.version) == ("vllm", ("qwen", "llama3"), "0.33.0")
    assert (found.label, found.host_name) == ("GPU Box", "gpu-box.local")


# -- types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service_type", "txt_type", "expected"),
    [
        (LLM_SERVICE, b"llamacpp", "llamacpp"),
        (LLM_SERVICE, b"llama.cpp", "llamacpp"),
        (OLLAMA_SERVICE, b"vllm", "vllm"),  # TXT type wins over the service type
        (OLLAMA_SERVICE, None, "ollama"),
        ("_vllm._tcp.local.", None, "vllm"),
        (LLM_SERVICE, None, None),  # probe it
        (LLM_SERVICE, b"auto", None),
        (LLM_SERVICE, b"olama", None),  # not installed: probe
        (LLM_SERVICE, b"openai", None),  # cloud types need a key and are not on the LAN
        (LLM_SERVICE, b"generic", "generic"),
    ],
)
def test_type_comes_from_txt_then_service_type_else_a_probe(
    service_type: str, txt_type: bytes | None, expected: str | None
) -> None:
    txt = {} if txt_type is None else {b"type": txt_type}
    assert announce(txt=txt, service_type=service_type).type == expected


def test_a_service_type_names_only_installed_types() -> None:
    assert announce(service_type=OLLAMA_SERVICE, known={"generic": TYPES["generic"]}).type is None


# -- names and precedence --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("GPU Box", "gpu-box"),
        ("gpu-box (2)", "gpu-box-2"),
        ("Büro Ollama", "buro-ollama"),
        ("llama.cpp on rack_3", "llama.cpp-on-rack_3"),
        ("🦙", "mdns"),
    ],
)
def test_backend_names_come_from_instance_names(label: str, name: str) -> None:
    assert backend_name(label) == name


def test_the_instance_label_keeps_dots_and_spaces() -> None:
    assert announce(label="Box 1.5").label == "Box 1.5"


def test_this_machine() -> None:
    assert is_this_machine("localhost")
    assert is_this_machine("127.0.0.1")
    assert is_this_machine("[::1]")
    assert not is_this_machine("192.0.2.1")  # TEST-NET-1: nobody's
    assert not is_this_machine("gpu-box.local")


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("http://localhost:8000", True),
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.0.0.1:8000/v1/", True),
        ("http://127.0.0.1:8001", False),
        ("http://127.0.0.1:8000/other", False),
    ],
)
def test_same_server_treats_addresses_of_this_machine_alike(url: str, same: bool) -> None:
    assert same_server(url, announce(["127.0.0.1"])) is same


def test_same_server_matches_the_advertised_host_name() -> None:
    found = announce(["192.168.1.20"], {b"api_path": b"/v1"})
    assert same_server("http://gpu-box.local:8000", found)
    assert same_server("http://192.168.1.20:8000", found)
    assert not same_server("http://other-box.local:8000", found)


# -- configuration ---------------------------------------------------------------------------


def test_service_types_get_their_final_dot_and_are_checked() -> None:
    config = validate_config({"discovery": {"service_types": ["_ollama._tcp.local"]}})
    assert config.discovery.service_types == ["_ollama._tcp.local."]
    with pytest.raises(ConfigError, match=r"discovery\.service_types.*DNS-SD service type"):
        validate_config({"discovery": {"service_types": ["ollama"]}})


def test_interfaces_are_addresses() -> None:
    config = validate_config({"discovery": {"interfaces": ["192.168.1.20", "fd00::1"]}})
    assert config.discovery.interfaces == ["192.168.1.20", "fd00::1"]
    with pytest.raises(ConfigError, match=r"discovery\.interfaces.*'eth0'"):
        validate_config({"discovery": {"interfaces": ["eth0"]}})


def test_exo_is_not_browsed_by_default() -> None:
    # exo finds its peers with its own UDP protocol, not DNS-SD: there is nothing to browse.
    assert validate_config({}).discovery.service_types == [OLLAMA_SERVICE, LLM_SERVICE]


# -- the gateway and its discovery sources -----------------------------------------------------


def test_mdns_is_a_built_in_discovery_source() -> None:
    assert plugins.discovery_sources()["mdns"] is MdnsDiscovery
    assert "builtin:mdns" in [info.name for info in plugins.plugin_report()]


class RecordingSource:
    """A discovery source that notes what the gateway does with it."""

    calls: list[str] = []

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


class BrokenSource(RecordingSource):
    async def start(self) -> None:
        raise OSError("no multicast for you")


@pytest.fixture
def calls() -> list[str]:
    RecordingSource.calls = []
    return RecordingSource.calls


def settings(enabled: bool) -> dict[str, Any]:
    return {"discovery": {"enabled": enabled}, "health_check": {"interval_seconds": 3600}}


@pytest.mark.anyio
async def test_the_gateway_starts_and_stops_its_discovery_sources(calls: list[str]) -> None:
    sources = {"recording": RecordingSource, "broken": BrokenSource}
    async with Gateway(settings(True), discovery_sources=sources) as gateway:
        assert list(gateway.discovery) == ["recording"]  # the broken one is logged and skipped
        assert calls == ["start"]
    assert calls == ["start", "stop"]
    assert gateway.discovery == {}


@pytest.mark.anyio
async def test_discovery_off_starts_no_source(calls: list[str]) -> None:
    async with Gateway(settings(False), discovery_sources={"recording": RecordingSource}) as gw:
        assert gw.discovery == {}
    assert calls == []


@pytest.mark.anyio
async def test_suspend_resume_and_reconfigure_keep_the_backend_and_its_counters() -> None:
    async with (
        FakeBackend("first", ["m"]) as first,
        FakeOllama("second", ["m"]) as second,
        Gateway(settings(False)) as gateway,
    ):
        backend = await gateway.add_backend({"name": "b", "url": first.url, "type": "generic"})
        await gateway.chat_completions({"model": "m", "messages": []})
        await gateway.suspend_backend(backend, "gone for a while")
        assert (backend.status, backend.last_error) == (BackendStatus.UNKNOWN, "gone for a while")
        await gateway.resume_backend(backend)
        assert backend.status is BackendStatus.HEALTHY
        moved = backend.config.model_copy(update={"url": second.url, "type": "ollama"})
        await gateway.reconfigure_backend(backend, moved)
        await gateway.chat_completions({"model": "m", "messages": []})
        assert gateway.registry.get("b") is backend
        assert (backend.type_name, backend.status) == ("ollama", BackendStatus.HEALTHY)
    assert backend.requests_total == 2
    assert (len(first.inference_requests), len(second.inference_requests)) == (1, 1)
