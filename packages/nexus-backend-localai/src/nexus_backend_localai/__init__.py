"""Nexus backend type ``localai``: a LocalAI server (default port 8080).

A probe asks ``GET /readyz`` first: 200 is ready, 503 ``{"status": "starting"}`` is ``loading``
(start-up preload), anything else unhealthy. The models come from ``GET /v1/models/capabilities``
(LocalAI 3.x: ``capabilities`` such as ``chat``, ``embeddings``, ``vision``, ``tools``), leaving
out models that only do speech, images, reranking and the like; older servers answer 404 there
and ``GET /v1/models`` (ids only) is used. ``GET /version`` gives the version. LocalAI reports no
context length: it stays unknown.

Requests go to ``/v1/...`` unchanged. LocalAI's error bodies (``{"error": {"code": <int>,
"message", "type": ""}}``, or none at all with opaque errors) become OpenAI envelopes; a model
that is still loading answers 503 with ``Retry-After``, which fails over like any 5xx.
"""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx

from nexus_core import hookimpl
from nexus_core.adapters import (
    BackendError,
    BackendStatus,
    Endpoint,
    ModelInfo,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base, dumps

__all__ = ["LocalAIAdapter", "normalise_error", "register_backends"]

#: Capabilities of models Nexus can route to; a model with none of them is left out.
SERVED_CAPABILITIES = frozenset({"chat", "completion", "edit", "embeddings"})
_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class LocalAIAdapter(OpenAIWireAdapter):
    """LocalAI: readiness from ``/readyz``, models and capabilities from ``/v1/models[...]``."""

    type_name: ClassVar[str] = "localai"
    is_cloud: ClassVar[bool] = False
    #: LocalAI's superset of ``/models`` with capabilities (relative to the API base).
    capabilities_path: ClassVar[str] = "/models/capabilities"

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        self._root = self.api_base.removesuffix("/v1")
        self._version: str | None = None

    async def probe(self) -> ProbeResult:
        """``/readyz``, then the models (with capabilities where the server has them)."""
        # Both at once: the probe's duration counts as the backend's latency.
        ready, models = await asyncio.gather(
            _get(self.clients.probe, self._root + "/readyz", self._probe_headers()),
            self._models_with_capabilities(),
        )
        if isinstance(ready, httpx.TimeoutException):
            return ProbeResult(BackendStatus.UNHEALTHY, detail="probe timed out")
        if isinstance(ready, httpx.HTTPError):
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"cannot connect: {ready}")
        if ready.status_code != 200:
            self._version = None
            starting = _json(ready)
            if ready.status_code == 503 and starting.get("status") == "starting":
                reason = starting.get("reason") or "starting"
                return ProbeResult(BackendStatus.LOADING, detail=f"LocalAI: {reason}")
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/readyz answered HTTP {ready.status_code}"
            )
        result = (
            await super().probe()
            if models is None
            else ProbeResult(BackendStatus.HEALTHY, models=tuple(models))
        )
        if result.status is not BackendStatus.HEALTHY:
            return result
        if self._version is None:
            self._version = await self._read_version()
        return ProbeResult(result.status, models=result.models, version=self._version)

    async def _models_with_capabilities(self) -> list[ModelInfo] | None:
        """``/v1/models/capabilities``; None when the server does not have it (or it fails)."""
        try:
            response = await self.clients.probe.get(
                self.api_base + self.capabilities_path, headers=self._probe_headers()
            )
            data = response.json().get("data") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(data, list):
            return None
        models = [
            capability_info(entry)
            for entry in data
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)
        ]
        return [model for model in models if model is not None]

    async def _read_version(self) -> str | None:
        try:
            response = await self.clients.probe.get(
                self._root + "/version", headers=self._probe_headers()
            )
            version = response.json().get("version") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return version if isinstance(version, str) else None

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Forward unchanged; LocalAI's error bodies become OpenAI envelopes."""
        try:
            return await super().send(endpoint, body, stream=stream, timeouts=timeouts)
        except BackendError as exc:
            raise normalise_error(exc) from None

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/readyz`` and ``/healthz`` answer as LocalAI's do, next to a model list."""
        root = api_base(url).removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            ready = await clients.probe.get(root + "/readyz", headers=headers)
            alive = await clients.probe.get(root + "/healthz", headers=headers)
            if not _bare_ok(alive):
                return False
            if ready.status_code == 503:
                return _json(ready).get("status") == "starting"
            if not _bare_ok(ready):
                return False
            response = await clients.probe.get(root + "/v1" + cls.models_path, headers=headers)
            return response.status_code == 200 and isinstance(response.json().get("data"), list)
        except (httpx.HTTPError, ValueError, AttributeError):
            return False


def capability_info(entry: Mapping[str, Any]) -> ModelInfo | None:
    """One ``/v1/models/capabilities`` entry; None for a model Nexus cannot route to."""
    model_id = str(entry["id"])
    capabilities = entry.get("capabilities")
    if not isinstance(capabilities, list) or not capabilities:
        return ModelInfo(model_id)  # no configuration file: nothing is known
    if SERVED_CAPABILITIES.isdisjoint(capabilities):
        return None  # speech, images, rerank...: endpoints Nexus does not front
    # Only "yes" is trusted: LocalAI leaves out "tools" for models it drives through grammars.
    return ModelInfo(
        model_id,
        vision=True if "vision" in capabilities else None,
        tools=True if "tools" in capabilities else None,
        embeddings="embeddings" in capabilities,
    )


def normalise_error(exc: BackendError) -> BackendError:
    """The same error with an OpenAI envelope for LocalAI's body (or for no body at all)."""
    if exc.status is None:
        return exc
    status = exc.status
    if exc.body.strip():
        try:
            payload = json.loads(exc.body)
        except ValueError:
            return exc
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return exc
    else:  # opaque errors: status only
        error = {}
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"LocalAI answered HTTP {status} ({http.HTTPStatus(status).phrase})"
    error_type = error.get("type")
    if not isinstance(error_type, str) or not error_type:
        error_type = _TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
    code = error.get("code")
    if not isinstance(code, str):
        lowered = message.lower()
        code = "model_not_found" if status == 404 and "model" in lowered else None
    param = error.get("param")
    body = dumps(
        {
            "error": {
                "message": message,
                "type": error_type,
                "param": param if isinstance(param, str) else None,
                "code": code,
            }
        }
    )
    return BackendError(
        exc.kind,
        exc.message,
        status=status,
        body=body,
        headers={**exc.headers, "content-type": "application/json"},
        retry_after=exc.retry_after,
    )


async def _get(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str]
) -> httpx.Response | httpx.HTTPError:
    try:
        return await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return exc


def _bare_ok(response: httpx.Response) -> bool:
    # LocalAI answers its probes with no body (older, Fiber-based versions: "OK").
    return response.status_code == 200 and response.text.strip() in ("", "OK")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``localai`` backend type."""
    register("localai", LocalAIAdapter)
