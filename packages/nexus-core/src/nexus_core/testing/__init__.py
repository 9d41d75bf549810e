"""Test kit for Nexus and for adapter authors: fake backends that speak the real wire protocol.

``FakeBackend`` is a real HTTP server on ``127.0.0.1`` speaking the OpenAI wire protocol; tell it
to misbehave with a ``Behaviour`` (delays, 5xx/429 with ``Retry-After``, connection reset, hang,
a stream cut after N events, malformed JSON, a missing ``[DONE]``...). ``closed_port_url`` gives
an address that refuses connections, ``blackhole_url`` one where connecting hangs.
``HostileBackend`` is a raw-socket server that attacks instead (``Attack``: endless bodies, giant
headers or events, events after ``[DONE]``, HTML, redirects, drip-fed bytes, garbage...).

    async with FakeBackend("a", ["llama3"]) as fb:
        fb.push(Behaviour(status=503, retry_after=2))
        ...  # point a client at fb.url; the first request gets a 503, the next ones succeed
        assert fb.inference_requests[0].json["model"] == "llama3"

The fakes are aiohttp servers: install the extra ``nexusgw-core[testing]``. Names are imported
on first use, so this package (and core's pytest plugin, which lives in it) imports without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexus_core.testing.anthropic import FakeAnthropic
    from nexus_core.testing.exo import FakeExo
    from nexus_core.testing.fake_backend import Behaviour, FakeBackend, RecordedRequest
    from nexus_core.testing.hostile import Attack, HostileBackend, HostileRequest
    from nexus_core.testing.llamacpp import FakeLlamaCpp
    from nexus_core.testing.lmstudio import FakeLMStudio
    from nexus_core.testing.localai import FakeLocalAI
    from nexus_core.testing.net import blackhole_url, closed_port_url, free_port
    from nexus_core.testing.ollama import FakeOllama
    from nexus_core.testing.openai import FakeOpenAI
    from nexus_core.testing.vllm import FakeVLLM

#: Each public name and the module it comes from.
_HOMES = {
    "FakeAnthropic": "anthropic",
    "FakeExo": "exo",
    "Behaviour": "fake_backend",
    "FakeBackend": "fake_backend",
    "RecordedRequest": "fake_backend",
    "Attack": "hostile",
    "HostileBackend": "hostile",
    "HostileRequest": "hostile",
    "FakeLlamaCpp": "llamacpp",
    "FakeLMStudio": "lmstudio",
    "FakeLocalAI": "localai",
    "blackhole_url": "net",
    "closed_port_url": "net",
    "free_port": "net",
    "FakeOllama": "ollama",
    "FakeOpenAI": "openai",
    "FakeVLLM": "vllm",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{home}")
    except ModuleNotFoundError as exc:
        if exc.name != "aiohttp":
            raise
        raise ModuleNotFoundError(
            f"nexus_core.testing.{name} needs aiohttp: pip install 'nexusgw-core[testing]'",
            name="aiohttp",
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "Attack",
    "Behaviour",
    "FakeAnthropic",
    "FakeBackend",
    "FakeExo",
    "FakeLMStudio",
    "FakeLlamaCpp",
    "FakeLocalAI",
    "FakeOllama",
    "FakeOpenAI",
    "FakeVLLM",
    "HostileBackend",
    "HostileRequest",
    "RecordedRequest",
    "blackhole_url",
    "closed_port_url",
    "free_port",
]
