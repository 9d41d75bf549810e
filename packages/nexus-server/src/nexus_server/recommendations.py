"""``GET /v1/fleet/recommendations``: what pre-warming would load, where, and why.

The answer is the pre-warming planner's (``nexus_core.fleet.prewarm``) on the fleet as it is
now, whether pre-warming is on or not. Its figures are fleet-wide, like ``/v1/stats``'s: with
``[auth]`` off anyone who may call ``/v1`` reads them; with it on only the admin key does (a
gateway key has no view of its own here: 403 ``admin_key_required``).
"""

from __future__ import annotations

from typing import Literal

from litestar import Controller, get
from litestar.di import NamedDependency

from nexus_core.auth import ApiKey
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_server.guards import key_guard
from nexus_server.schemas import Answer, ErrorEnvelope, answer, errors

__all__ = ["FleetController", "Recommendations"]


class PrewarmSettings(Answer):
    """The ``[fleet.prewarm]`` settings the plan used, and ``fleet.headroom_percent``."""

    interval_seconds: float
    window_seconds: float
    min_requests: int
    backends_per_model: int
    max_loads_per_cycle: int
    hour_lookback_days: int
    headroom_percent: float


class Recommendation(Answer):
    """One recommended action (pre-warming only loads)."""

    action: Literal["load"]
    model: str
    backend: str
    reason: str
    model_bytes: int | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None


class Skipped(Answer):
    """A backend that lists a model in demand and gets no load, and why."""

    backend: str
    reason: str
    detail: str


class ModelDemandPlan(Answer):
    """One model asked for in the window or at this hour on previous days."""

    model: str
    recent_requests: int
    same_hour_requests: int
    same_hour_average: float
    in_demand: bool
    target: int
    loaded_on: list[str]
    loading_on: list[str]
    available_on: list[str]
    loads: list[str]
    skipped: list[Skipped]


class BackendPlan(Answer):
    """One backend whose inventory Nexus reads."""

    name: str
    healthy: bool
    can_load: bool
    loaded: list[str]
    loading: list[str]
    in_flight: dict[str, int]
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    memory_allowed_bytes: int | None


class SkippedStart(Answer):
    """A recommended load the last cycle could not start (``error``: the refusal's code)."""

    model: str
    backend: str
    error: str


class Cycle(Answer):
    """What the last pre-warming cycle did."""

    at: float
    dry_run: bool
    recommended: int
    started: list[str]
    skipped: list[SkippedStart]


class Recommendations(Answer):
    """``GET /v1/fleet/recommendations``."""

    object: Literal["fleet.recommendations"]
    enabled: bool
    dry_run: bool
    generated_at: float
    settings: PrewarmSettings
    recommendations: list[Recommendation]
    models: list[ModelDemandPlan]
    backends: list[BackendPlan]
    last_cycle: Cycle | None


class FleetController(Controller):
    """``/v1/fleet/recommendations``."""

    path = "/v1/fleet"
    guards = [key_guard]
    tags = ["fleet"]

    @get(
        "/recommendations",
        responses=errors(
            ErrorEnvelope,
            {
                401: "[auth] is on and the request carries no key Nexus knows.",
                403: "[auth] is on and the key is a gateway key: only the admin key reads the "
                "fleet's figures (admin_key_required).",
            },
        ),
    )
    async def recommendations(
        self, gateway: NamedDependency[Gateway], viewer: NamedDependency[ApiKey | None]
    ) -> Recommendations:
        """What pre-warming would load now and why, with the demand and the fleet's figures."""
        if viewer is not None:
            raise GatewayError(
                403,
                "The fleet's recommendations are fleet-wide figures: with [auth] on, only the "
                "admin key reads them",
                type="permission_error",
                code="admin_key_required",
            )
        return answer(Recommendations, gateway.prewarmer.recommendations())
