"""Nexus backend type ``openai``: the OpenAI API or any OpenAI-wire cloud API (zone ``open``).

``url`` is the API's base: ``https://api.openai.com`` or ``https://api.openai.com/v1``, another
vendor's (``https://api.groq.com/openai/v1``, ``https://openrouter.ai/api/v1``...). A URL whose
path has no version segment gets ``/v1``. The key comes from the environment variable named by
``api_key_env`` and nothing else: a client's ``Authorization`` is never forwarded, because the
adapter sends its own headers only.

A probe lists ``GET /v1/models`` with the key, keeps the models Nexus can serve (chat,
completions, embeddings; not speech, transcription, images, moderation, realtime or
Responses-only models) and fills in what the list does not say (context window, vision, tools,
JSON mode, embeddings) from ``models_table``. Prices are core's (``nexus_core.pricing``).
The ``x-ratelimit-*`` headers of each answer become the backend's load signal (``load``).
It declares ``speaks_responses`` for ``api.openai.com`` only: the Responses door passes requests
through to OpenAI's own ``/v1/responses`` and translates them to chat for the other clouds
(a backend's ``native_responses`` setting says otherwise).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx

from nexus_backend_openai import models_table
from nexus_core import hookimpl
from nexus_core.adapter_kit import bearer, probe_get
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    LoadSignal,
    ModelInfo,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter

__all__ = [
    "OpenAIAdapter",
    "RateLimits",
    "cloud_api_base",
    "parse_duration",
    "register_backends",
    "serves",
]

OPENAI_HOST = "api.openai.com"
#: Response headers only OpenAI's API sends.
OPENAI_HEADERS = ("openai-organization", "openai-version", "openai-project")
#: ``owned_by`` values of OpenAI's own models.
OPENAI_OWNERS = frozenset({"openai", "system", "openai-internal"})
#: How long a rate-limit reading counts when the answer does not say when the window resets.
DEFAULT_WINDOW_SECONDS = 60.0

# Models for endpoints Nexus does not front: speech, transcription, images, moderation, realtime
# audio, and OpenAI's Responses-API-only ones (computer use, codex, deep research, o1-pro...).
_NOT_SERVED = re.compile(
    r"(?:^|[-:])(?:tts|whisper|dall-e|moderation|image|audio|realtime|transcribe|"
    r"computer-use|codex|deep-research|sora)(?:$|[-:])"
    r"|^(?:o\d+|gpt-[\d.]+)-pro(?:$|-)"
)
_VERSION_SEGMENT = re.compile(r"^v\d+[a-z0-9]*$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class OpenAIAdapter(OpenAIWireAdapter):
    """OpenAI and OpenAI-wire clouds: filtered models, a capability table, rate limits."""

    type_name: ClassVar[str] = "openai"
    is_cloud: ClassVar[bool] = True

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        self.rate_limits = RateLimits()
        #: OpenAI's own API has ``/v1/responses``; the other clouds this type fronts mostly do
        #: not (``native_responses = true`` in a backend's config says one does).
        self.speaks_responses = httpx.URL(self.api_base).host == OPENAI_HOST

    @classmethod
    def api_base_for(cls, url: str) -> str:
        """``cloud_api_base``: a vendor's versioned path is kept as it is."""
        return cloud_api_base(url)

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Forward with the configured key only; note the rate-limit headers of the answer."""
        try:
            response = await self.clients.transport.post(
                self._urls[endpoint], body, self._headers, stream=stream, timeouts=timeouts
            )
        except BackendError as exc:
            if exc.headers or exc.status == 429:
                self.rate_limits.observe(
                    exc.headers, limited=exc.status == 429, retry_after=exc.retry_after
                )
            raise
        if response.headers:
            self.rate_limits.observe(response.headers)
        return response

    async def load(self) -> LoadSignal | None:
        """How much of the rate limit the last answers said is used (None once it reset)."""
        return self.rate_limits.current()

    async def probe(self) -> ProbeResult:
        """The model list with the key; a refused key says which variable should hold it."""
        result = await super().probe()
        if result.status is BackendStatus.HEALTHY or result.detail is None:
            return result
        if result.detail.startswith(("HTTP 401", "HTTP 403")) and not self.config.api_key():
            detail = (
                f"{result.detail.split(':', 1)[0]}: no API key (the environment variable "
                f"{self.config.api_key_env} is not set)"
            )
            return ProbeResult(result.status, detail=detail)
        return result

    def parse_models(self, payload: Any) -> list[ModelInfo]:
        """The models Nexus can route to (chat, completions, embeddings)."""
        return [model for model in super().parse_models(payload) if serves(model.id)]

    def model_info(self, entry: Mapping[str, Any]) -> ModelInfo:
        """One model, completed from ``models_table`` (what the API states wins)."""
        listed = super().model_info(entry)
        spec = models_table.lookup(listed.id)
        if spec is None:
            return listed
        return ModelInfo(
            id=listed.id,
            context_length=listed.context_length or spec.context_length,
            vision=spec.vision,
            tools=spec.tools,
            json_mode=spec.json_mode,
            embeddings=spec.embeddings,
            owned_by=listed.owned_by,
        )

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """``api.openai.com`` by name; elsewhere, with a key, OpenAI's headers or model owners.

        A cloud API is normally configured, not detected: without a key this claims nothing, and
        a local server (whose model list has no OpenAI headers or owners) is never claimed.
        """
        try:
            if httpx.URL(url).host == OPENAI_HOST:
                return True
        except httpx.InvalidURL:
            return False
        if not api_key:
            return False
        answer = await probe_get(clients, cloud_api_base(url) + cls.models_path, bearer(api_key))
        entries = answer.get("data")
        if not answer.ok or not isinstance(entries, list):
            return False
        if any(name in answer.headers for name in OPENAI_HEADERS):
            return True
        return any(isinstance(e, dict) and e.get("owned_by") in OPENAI_OWNERS for e in entries)


def serves(model_id: str) -> bool:
    """False for models of endpoints Nexus does not front (speech, images, realtime...)."""
    return _NOT_SERVED.search(model_id.lower()) is None


def cloud_api_base(url: str) -> str:
    """The API base for a configured URL: kept when its path has a version segment, else +/v1."""
    url = url.rstrip("/")
    try:
        segments = httpx.URL(url).path.split("/")
    except httpx.InvalidURL:
        segments = []
    if any(_VERSION_SEGMENT.match(segment) for segment in segments):
        return url
    return url + "/v1"


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI reset duration such as ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``."""
    text = text.strip()
    if not _DURATION_FULL.fullmatch(text):
        return None
    return sum(float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION.findall(text))


class RateLimits:
    """The last ``x-ratelimit-*`` reading as a load signal, valid until its window resets.

    Of the request and token limits, the one more used counts: ``busy_slots`` is what is used of
    it, ``total_slots`` the limit, so the router's busy fraction is the share of the limit spent.
    A 429 marks the limit as spent until ``Retry-After`` (or the reset) has passed.
    """

    __slots__ = ("_signal", "_until")

    def __init__(self) -> None:
        self._signal: LoadSignal | None = None
        self._until = 0.0

    def observe(
        self,
        headers: Mapping[str, str],
        *,
        limited: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """Read one answer's headers (``limited``: it was a 429)."""
        best: tuple[float, int, int, float | None] | None = None
        for unit in ("requests", "tokens"):
            limit = _count(headers.get(f"x-ratelimit-limit-{unit}"))
            remaining = _count(headers.get(f"x-ratelimit-remaining-{unit}"))
            if not limit or remaining is None:
                continue
            used = min(limit, max(0, limit - remaining))
            if best is None or used / limit > best[0]:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{unit}") or "")
                best = (used / limit, used, limit, reset)
        now = time.monotonic()
        if best is None and not limited:
            return
        _, used, limit, reset = best if best is not None else (1.0, 1, 1, None)
        window = reset if reset is not None else DEFAULT_WINDOW_SECONDS
        if limited:
            used = limit
            window = max(window if reset is not None else 0.0, retry_after or 1.0)
        self._signal = LoadSignal(busy_slots=used, total_slots=limit)
        self._until = now + window

    def current(self) -> LoadSignal | None:
        """The reading, or None once the window it describes has reset."""
        if self._signal is not None and time.monotonic() >= self._until:
            self._signal = None
        return self._signal


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``openai`` backend type."""
    register("openai", OpenAIAdapter)
