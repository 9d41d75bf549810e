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

The fakes are aiohttp servers: install the extra ``nexusgw-core[testing]``.
"""

try:
    import aiohttp as _aiohttp  # noqa: F401  (only to name the extra when it is missing)
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        "nexus_core.testing's fake backends need aiohttp: pip install 'nexusgw-core[testing]'",
        name="aiohttp",
    ) from exc

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
