"""The listings, statistics and health routes: what Nexus serves and how it is doing.

- ``ListingsController``: ``/v1/models`` (OpenAI's shape, or Anthropic's for an Anthropic SDK:
  ``nexus_server.anthropic_models``), ``/v1/stats``, ``/v1/history``.
- ``OllamaListingsController``: ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/version``
  (their bodies are built by ``nexus_server.ollama``).
- ``HealthController``: ``/health``, ``/health/ready``, ``/metrics``, open to anyone.

With ``[auth]`` on, the listings pass ``key_guard``: a gateway key sees the models it may use and
its own requests, the admin key everything (``viewer``: None).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from nexus_core.accounting import usd
from nexus_core.auth import ApiKey
from nexus_core.errors import model_not_found
from nexus_core.gateway import Gateway
from nexus_server import __version__, anthropic_models, ollama
from nexus_server.guards import key_guard
from nexus_server.schemas import (
    AnthropicError,
    AnthropicModel,
    AnthropicModelPage,
    ErrorEnvelope,
    Health,
    History,
    KeyStats,
    Model,
    ModelList,
    OllamaError,
    OllamaLoadedList,
    OllamaShow,
    OllamaTags,
    OllamaVersion,
    Readiness,
    ShowRequest,
    Stats,
    answer,
    errors,
)

UNAUTHORIZED = {401: "[auth] is on and the request carries no gateway key Nexus knows."}

#: Sent by every Anthropic SDK, by no OpenAI one: the listing then takes Anthropic's shape.
AnthropicVersion = Annotated[
    str | None,
    HeaderParameter(
        name=anthropic_models.VERSION_HEADER,
        description="Sent by the Anthropic SDKs: the answer (and errors) take the shape of "
        "Anthropic's Models API.",
    ),
]
#: Anthropic's paging (only with ``anthropic-version``); checked by ``anthropic_models.page``.
Cursor = Annotated[
    str | None,
    QueryParameter(description="Anthropic shape only: the models after (or before) this id."),
]
Limit = Annotated[
    str | None,
    QueryParameter(description="Anthropic shape only: models per page, an integer from 1 to 1000."),
]


class ListingsController(Controller):
    """``/v1/models``, ``/v1/stats`` and ``/v1/history``."""

    path = "/v1"
    guards = [key_guard]
    tags = ["listings"]

    @get(
        "/models",
        responses=errors(
            ErrorEnvelope | AnthropicError,
            {**UNAUTHORIZED, 400: "Anthropic shape: a bad limit, or both cursors."},
        ),
    )
    async def list_models(
        self,
        gateway: NamedDependency[Gateway],
        viewer: NamedDependency[ApiKey | None],
        anthropic_version: AnthropicVersion = None,
        limit: Limit = None,
        after_id: Cursor = None,
        before_id: Cursor = None,
    ) -> ModelList | AnthropicModelPage:
        """The models the caller's key may use (every model with auth off or the admin key)."""
        models = gateway.list_models(viewer)
        if anthropic_version is not None:
            query = {"limit": limit, "after_id": after_id, "before_id": before_id}
            page = anthropic_models.page(models, {k: v for k, v in query.items() if v is not None})
            return answer(AnthropicModelPage, page)
        return answer(ModelList, {"object": "list", "data": models})

    @get(
        "/models/{model_id:path}",
        responses=errors(
            ErrorEnvelope | AnthropicError,
            {**UNAUTHORIZED, 404: "No model of that id the caller may use (model_not_found)."},
        ),
    )
    async def get_model(
        self,
        gateway: NamedDependency[Gateway],
        viewer: NamedDependency[ApiKey | None],
        model_id: FromPath[str],
        anthropic_version: AnthropicVersion = None,
    ) -> Model | AnthropicModel:
        """One model (ids may contain ``/``)."""
        model_id = model_id.lstrip("/")
        entry = gateway.get_model(model_id, viewer)
        if entry is None:
            raise model_not_found(model_id, gateway.model_ids(viewer))
        if anthropic_version is not None:
            return answer(AnthropicModel, anthropic_models.model_info(entry))
        return answer(Model, entry)

    @get("/stats", responses=errors(ErrorEnvelope, UNAUTHORIZED))
    async def stats(
        self, gateway: NamedDependency[Gateway], viewer: NamedDependency[ApiKey | None]
    ) -> Stats | KeyStats:
        """The fleet's figures, or for a gateway key its own."""
        if viewer is None:
            return answer(Stats, gateway.monitor.stats())
        own = gateway.monitor.key_stats(viewer.name)
        limit = viewer.monthly_budget_usd
        if limit is not None:
            accountant = gateway.accountant
            spent = usd(await accountant.track_key(viewer.name))
            own["budget"] = {
                "period": accountant.period,
                "spent_usd": round(spent, 9),
                "limit_usd": limit,
                "remaining_usd": round(max(0.0, limit - spent), 9),
                "resets_in_seconds": round(accountant.seconds_to_rollover()),
            }
        return answer(KeyStats, own)

    @get("/history", responses=errors(ErrorEnvelope, UNAUTHORIZED))
    async def history(
        self, gateway: NamedDependency[Gateway], viewer: NamedDependency[ApiKey | None]
    ) -> History:
        """The last requests, newest first (a gateway key's own)."""
        entries = gateway.monitor.history_entries(None if viewer is None else viewer.name)
        return answer(History, {"object": "list", "data": entries})


class OllamaListingsController(Controller):
    """The Ollama door's listings: ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/version``."""

    path = "/api"
    tags = ["ollama"]

    @get("/tags", guards=[key_guard], responses=errors(OllamaError, UNAUTHORIZED))
    async def list_tags(
        self, gateway: NamedDependency[Gateway], viewer: NamedDependency[ApiKey | None]
    ) -> OllamaTags:
        """Every model Nexus can route (that the key may use)."""
        return answer(OllamaTags, ollama.tags(gateway, viewer))

    @get("/ps", guards=[key_guard], responses=errors(OllamaError, UNAUTHORIZED))
    async def list_loaded(
        self, gateway: NamedDependency[Gateway], viewer: NamedDependency[ApiKey | None]
    ) -> OllamaLoadedList:
        """The models loaded on a healthy backend (that the key may use)."""
        return answer(OllamaLoadedList, ollama.ps(gateway, viewer))

    @post(
        "/show",
        status_code=200,
        guards=[key_guard],
        responses=errors(
            OllamaError,
            {
                **UNAUTHORIZED,
                400: "The body is not JSON, not an object, or names no model.",
                404: "No such model, or one the key may not use.",
                413: "The body is larger than server.max_body_bytes.",
                415: "A browser's body not sent as application/json.",
            },
        ),
    )
    async def show(
        self,
        gateway: NamedDependency[Gateway],
        viewer: NamedDependency[ApiKey | None],
        data: JSONBody[ShowRequest],
    ) -> OllamaShow:
        """One model's details."""
        return answer(OllamaShow, ollama.show(gateway, data.model or data.name, viewer))

    @get("/version")
    async def version(self) -> OllamaVersion:
        """The Ollama API version this door follows; Nexus's own is in ``/health``."""
        return OllamaVersion(version=ollama.OLLAMA_API_VERSION, nexus_version=__version__)


class HealthController(Controller):
    """``/health``, ``/health/ready`` and ``/metrics``: for anyone, load balancers included."""

    path = "/"
    tags = ["health"]

    @get("/health")
    async def health(self, gateway: NamedDependency[Gateway]) -> Health:
        """Always 200 while the process serves; ``status`` says how the backends are."""
        return answer(Health, gateway.health_summary())

    @get(
        "/health/ready",
        responses={
            503: errors(Readiness, {503: "No backend is healthy."})[503],
        },
    )
    async def ready(self, gateway: NamedDependency[Gateway]) -> Response[Readiness]:
        """200 when at least one backend is healthy, else 503."""
        summary: dict[str, Any] = gateway.health_summary()
        ok = summary["backends"]["healthy"] > 0
        return Response(answer(Readiness, {"ready": ok, **summary}), status_code=200 if ok else 503)

    # Litestar adds "; charset=utf-8" to a text type itself: named here, it would be said twice.
    @get("/metrics", media_type="text/plain; version=0.0.4")
    async def metrics(self, gateway: NamedDependency[Gateway]) -> str:
        """Prometheus's text format."""
        return gateway.monitor.render_prometheus()
