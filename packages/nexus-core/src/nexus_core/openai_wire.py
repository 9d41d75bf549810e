"""A base adapter for servers that speak the OpenAI wire protocol (``/v1/...``).

Per-type adapters (vLLM, llama.cpp, LM Studio, exo, LocalAI, OpenAI) subclass it and override
what their server does differently: how it is probed, where capabilities come from, how it is
recognised, and its error quirks as data (``errors``, from ``nexus_core.adapter_kit``) rather
than a ``send`` of their own. Used as it is, it is the ``generic`` backend type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from nexus_core.adapter_kit import ProbeAnswer, UpstreamErrors, bearer, lifecycle_call, probe_get
from nexus_core.adapter_kit import dumps as dumps
from nexus_core.adapters import (
    OPENAI_PATHS,
    BackendError,
    BackendStatus,
    Endpoint,
    ModelInfo,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
    clip,
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
    #: How the server's error answers are read: its quirks, and what the client sees of the
    #: body (``nexus_core.adapter_kit``). The default passes them on as classified by status.
    errors: ClassVar[UpstreamErrors] = UpstreamErrors()

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.clients = clients
        self.api_base = self.api_base_for(config.url)
        self._urls = {endpoint: self.api_base + path for endpoint, path in OPENAI_PATHS.items()}
        self._headers = self.request_headers()
        #: What every probe request sends: the request headers but the content type.
        self.probe_headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        # Decided once: whether ``send`` hands streams to ``stream_events``.
        self._rewrites_streams = type(self).stream_events is not OpenAIWireAdapter.stream_events

    @classmethod
    def api_base_for(cls, url: str) -> str:
        """The API base for a configured URL (``api_base``: ``/v1`` added when missing)."""
        return api_base(url)

    def request_headers(self) -> dict[str, str]:
        """Headers sent with every request: JSON, plus the key from ``api_key_env`` if set."""
        return {"Content-Type": "application/json", **bearer(self.config.api_key())}

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Forward the body unchanged to the server's OpenAI endpoint.

        An error answer goes through ``upstream_error``; a stream, when the class has its own
        ``stream_events``, through that.
        """
        try:
            response = await self.clients.transport.post(
                self._urls[endpoint], body, self._headers, stream=stream, timeouts=timeouts
            )
        except BackendError as exc:
            raise self.upstream_error(exc) from None
        if stream and self._rewrites_streams and response.events is not None:
            response.events = self.stream_events(response.events)
        return response

    def upstream_error(self, exc: BackendError) -> BackendError:
        """An error as the server meant it (``errors``); override for what data cannot say."""
        return self.errors.normalise(exc)

    def stream_events(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A stream's events as the client should get them; override to rewrite them (the
        default, passing them through, costs nothing: ``send`` does not call it)."""
        return events

    async def lifecycle_request(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float,  # noqa: ASYNC109 - passed on to lifecycle_call
        check: bool = True,
    ) -> ProbeAnswer:
        """One model-lifecycle request with ``probe_headers`` (``lifecycle_call``); an HTTP
        error answer raises ``answer_error`` unless ``check`` is False."""
        answer = await lifecycle_call(
            self.clients, method, url, self.probe_headers, body=body, params=params, timeout=timeout
        )
        if check and not answer.ok:
            raise self.answer_error(answer)
        return answer

    def answer_error(self, answer: ProbeAnswer) -> BackendError:
        """An error answer read as the server meant it (``upstream_error``)."""
        return self.upstream_error(
            BackendError.from_status(answer.status, answer.content, answer.headers)
        )

    async def probe_get(self, url: str, *, params: Mapping[str, str] | None = None) -> ProbeAnswer:
        """GET ``url`` with ``probe_headers`` through the bounded probe client; never raises."""
        return await probe_get(self.clients, url, self.probe_headers, params=params)

    async def probe(self) -> ProbeResult:
        """Healthy when the model list answers; 503 while loading counts as ``loading``."""
        answer = await self.probe_get(self.api_base + self.models_path)
        if answer.failure is not None:
            return answer.unreachable()
        if answer.status == 503:
            return ProbeResult(BackendStatus.LOADING, detail=clip(answer.text))
        if answer.status != 200:
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"HTTP {answer.status}: {clip(answer.text)}"
            )
        if answer.payload is None:
            return ProbeResult(BackendStatus.UNHEALTHY, detail="unreadable model list: not JSON")
        try:
            models = tuple(self.parse_models(answer.payload))
        except (ValueError, TypeError, KeyError) as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"unreadable model list: {exc}")
        return ProbeResult(BackendStatus.HEALTHY, models=models)

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
        answer = await probe_get(clients, cls.api_base_for(url) + cls.models_path, bearer(api_key))
        return answer.ok and isinstance(answer.get("data"), list)


def api_base(url: str) -> str:
    """The ``/v1`` base for a configured URL, whether or not the user wrote ``/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"
