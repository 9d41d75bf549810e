"""A base adapter for servers that speak the OpenAI wire protocol (``/v1/...``).

Per-type adapters (vLLM, llama.cpp, LM Studio, exo, LocalAI, OpenAI) subclass it and override
what their server does differently: how it is probed, where capabilities come from, how it is
recognised. Used as it is, it is the ``generic`` backend type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from nexus_core.adapters import (
    OPENAI_PATHS,
    BackendStatus,
    Endpoint,
    ModelInfo,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients

# Keys under which OpenAI-wire servers report a model's context window in /v1/models.
CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length")


class OpenAIWireAdapter:
    """Adapter for any OpenAI-compatible server; subclasses refine probing and capabilities."""

    type_name: ClassVar[str] = "generic"
    is_cloud: ClassVar[bool] = False
    #: Path probed (relative to the API base) to decide health and list models.
    models_path: ClassVar[str] = "/models"

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.clients = clients
        self.api_base = api_base(config.url)
        self._urls = {endpoint: self.api_base + path for endpoint, path in OPENAI_PATHS.items()}
        self._headers = self.request_headers()

    def request_headers(self) -> dict[str, str]:
        """Headers sent with every request: JSON, plus the key from ``api_key_env`` if set."""
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Forward the body unchanged to the server's OpenAI endpoint."""
        return await self.clients.transport.post(
            self._urls[endpoint], body, self._headers, stream=stream, timeouts=timeouts
        )

    async def probe(self) -> ProbeResult:
        """Healthy when the model list answers; 503 while loading counts as ``loading``."""
        try:
            response = await self.clients.probe.get(
                self.api_base + self.models_path, headers=self._probe_headers()
            )
        except httpx.TimeoutException:
            return ProbeResult(BackendStatus.UNHEALTHY, detail="probe timed out")
        except httpx.HTTPError as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"cannot connect: {exc}")
        if response.status_code == 503:
            return ProbeResult(BackendStatus.LOADING, detail=_short(response.text))
        if response.status_code != 200:
            return ProbeResult(
                BackendStatus.UNHEALTHY,
                detail=f"HTTP {response.status_code}: {_short(response.text)}",
            )
        try:
            payload = response.json()
            models = tuple(self.parse_models(payload))
        except (ValueError, TypeError, KeyError) as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"unreadable model list: {exc}")
        return ProbeResult(BackendStatus.HEALTHY, models=models)

    def _probe_headers(self) -> dict[str, str]:
        return {k: v for k, v in self._headers.items() if k != "Content-Type"}

    def parse_models(self, payload: Any) -> list[ModelInfo]:
        """Turn an OpenAI ``/v1/models`` body into ``ModelInfo`` entries."""
        entries = payload["data"]
        if not isinstance(entries, list):
            raise TypeError("'data' is not a list")
        return [self.model_info(entry) for entry in entries if isinstance(entry, dict)]

    def model_info(self, entry: Mapping[str, Any]) -> ModelInfo:
        """One model entry; capabilities the server does not state stay unknown."""
        context = next(
            (entry[key] for key in CONTEXT_KEYS if isinstance(entry.get(key), int)), None
        )
        return ModelInfo(
            id=str(entry["id"]),
            context_length=context,
            owned_by=entry.get("owned_by") if isinstance(entry.get("owned_by"), str) else None,
        )

    async def close(self) -> None:
        """Nothing of its own to release: the HTTP clients are shared."""

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``GET {url}/v1/models`` answers an OpenAI model list."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = await clients.probe.get(api_base(url) + cls.models_path, headers=headers)
            return response.status_code == 200 and isinstance(response.json().get("data"), list)
        except (httpx.HTTPError, ValueError, AttributeError):
            return False


def api_base(url: str) -> str:
    """The ``/v1`` base for a configured URL, whether or not the user wrote ``/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def dumps(value: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
