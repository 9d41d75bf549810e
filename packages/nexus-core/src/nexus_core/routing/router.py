"""The router: which backends can take a request (``eligible``) and in what order to try them
(``plan``), or why none can (``unroutable``: 404, 400 or 503)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from nexus_core.adapters import BackendStatus
from nexus_core.config import MAX_ALIAS_DEPTH, RoutingConfig, Zone
from nexus_core.errors import (
    GatewayError,
    cannot_serve,
    model_loading,
    model_not_found,
    no_backend,
)
from nexus_core.quality import QualityTracker
from nexus_core.registry import Backend, Registry
from nexus_core.routing.analysis import RequestNeeds, missing, missing_reason
from nexus_core.routing.policies import (
    CompiledPolicy,
    Constraint,
    constraint_for,
    first_match,
    privacy_reason,
    tier_reason,
)
from nexus_core.routing.strategies import SmartStrategy, Strategy, build_strategy, takes_needs

if TYPE_CHECKING:
    from nexus_core.accounting import Accountant

__all__ = ["COLD_LOAD", "PERMANENT_REASONS", "Route", "Router", "held_reason"]

log = logging.getLogger("nexus.routing")

#: Exclusions that no wait can lift: the request asks for what the model lacks, or a routing
#: policy keeps it off a backend. Every other reason (``unhealthy``, which covers loading and
#: draining, ``cooling_down``, ``budget``) passes.
PERMANENT_REASONS = frozenset({"missing_capability", "privacy", "tier"})
#: A request that needs everything: a model ``missing`` finds nothing for never excludes anyone.
_EVERY_NEED = RequestNeeds(
    "", vision=True, tools=True, json_mode=True, embeddings=True, estimated_tokens=sys.maxsize
)


@dataclass(slots=True, frozen=True)
class Route:
    """One attempt: which backend, for which model, and why."""

    backend: Backend
    model: str
    reason: str
    fallback: bool = False
    #: A ``privacy = "restricted"`` policy applied to this route.
    restricted: bool = False


#: ``X-Nexus-Route-Reason`` of a request sent where its model is not loaded: the server loads it
#: first (every candidate where it is loaded was ordered before).
COLD_LOAD = "cold-load"
#: Seconds a client is told to wait for a model being loaded (``Retry-After``).
LOADING_RETRY_SECONDS = 5
#: What ``Backend.held`` says, as an exclusion: reason code, message, fix, and whether it passes.
_HELD = {
    "loading": (
        "model_loading",
        "the model is being loaded there",
        "wait for the load to finish",
    ),
    "downloading": (
        "model_loading",
        "the model is being downloaded there",
        "wait for the download and the load to finish",
    ),
    "draining": (
        "model_draining",
        "the model is being drained there (an unload or a migration)",
        "wait for the operation to end (GET /admin/operations)",
    ),
    "unloaded": (
        "model_unloaded",
        "the model is not loaded there and the server does not load it on demand",
        "load it: POST /admin/models/load or nexus models load",
    ),
    "sleeping": (
        "model_unloaded",
        "the model is asleep there and the server does not wake it on demand",
        "wake it: POST /admin/models/load or nexus models load",
    ),
}


def held_reason(backend: Backend, model: str, held: str) -> dict[str, Any]:
    """The exclusion of a backend that holds ``model`` back (``Backend.held``)."""
    code, message, fix = _HELD.get(held, ("model_unloaded", held, "load the model there"))
    reason: dict[str, Any] = {
        "backend": backend.name,
        "model": model,
        "reason": code,
        "message": message,
        "fix": fix,
    }
    if code != "model_unloaded":
        reason["retry_after"] = LOADING_RETRY_SECONDS
    return reason


def _demotion(backend: Backend, model: str) -> int:
    """0 for a warm backend with room, 1 when the model is not loaded there, 2 when it is full."""
    if backend.max_concurrent is not None and backend.pending >= backend.max_concurrent:
        return 2
    info = backend.models.get(model)
    return 1 if info is not None and info.loaded is False else 0


def _budget_demotion(backend: Backend, model: str) -> int:
    """Past the soft limit: warm local 0, cold local 1, cloud 2, full (any kind) 3."""
    demotion = _demotion(backend, model)
    if demotion == 2:
        return 3
    return 2 if backend.is_cloud else demotion


class Router:
    """Turns a request into an ordered list of attempts, or a clear 404/503."""

    def __init__(
        self,
        registry: Registry,
        config: RoutingConfig,
        strategy: Strategy | None = None,
        quality: QualityTracker | None = None,
        budget: Accountant | None = None,
    ) -> None:
        self.registry = registry
        #: Log each decision (``explain``): set from the ``nexus.routing`` logger's level when
        #: the gateway starts, so a request pays nothing for it while DEBUG is off.
        self.debug = False
        #: The budget's state: cloud backends go last past the soft limit, or are refused.
        self.budget = budget
        #: Seconds until an unhealthy backend is probed again (the Retry-After hint).
        self.health_interval = 30.0
        #: Cool-downs of failing backends; None: every healthy backend is routable.
        self.quality = quality
        self.config = config
        #: Built once, here: a built-in or a plugin's (``build_strategy``); ``order`` per request.
        self.strategy: Strategy = strategy or build_strategy(config, quality)
        #: The strategy's name in the debug lines: the config's, or a custom one's class.
        self.strategy_name = str(config.strategy) if strategy is None else type(strategy).__name__
        #: The strategy's ``order`` takes the request's ``needs`` (``takes_needs``): requests
        #: are analysed with their conversation key (``analyze(..., keyed=True)``).
        self.keyed = takes_needs(self.strategy)
        #: Its reason when the demotion of cold or full backends moved its pick.
        self._overflow_reason: str | None = getattr(self.strategy, "overflow_reason", None)
        if isinstance(self.strategy, SmartStrategy):
            # Backends keep their smart score current from now on (see Backend.rank).
            weights = self.strategy.weights
            registry.weights = weights
            for backend in registry:
                backend.weights = weights
                backend.rerank()
        self._aliases: Mapping[str, str] = dict(config.aliases)
        self._fallbacks: Mapping[str, list[str]] = {k: list(v) for k, v in config.fallbacks.items()}
        #: Per model: the registry's tuple it was worked out from, and ``_stating``'s answer.
        self._stated: dict[str, tuple[tuple[Backend, ...], tuple[Backend, ...]]] = {}
        self.policies: tuple[CompiledPolicy, ...] = tuple(
            CompiledPolicy.compile(p) for p in config.policies
        )

    def policy_for(self, model: str) -> CompiledPolicy | None:
        """The first policy whose glob matches ``model``."""
        return first_match(self.policies, model)

    def constraint(self, names: Iterable[str]) -> Constraint | None:
        """The strictest combination of the first matching policy of each name (None: no rule)."""
        return constraint_for(self.policies, names)

    def names(self, model: str) -> list[str]:
        """``model``, every alias hop from it, and what it finally resolves to."""
        chain = [model]
        aliases = self._aliases
        for _ in range(MAX_ALIAS_DEPTH):
            target = aliases.get(model)
            if target is None:
                break
            model = target
            chain.append(model)
        resolved = self.resolve(chain[0])
        if resolved != chain[-1]:
            chain.append(resolved)
        return chain

    def resolve(self, model: str) -> str:
        """Follow aliases (at most three hops; cycles were refused at load).

        A name without a tag that no backend lists, but whose ``:latest`` one does, means that
        one (Ollama's convention: ``llama3.2`` is ``llama3.2:latest``).
        """
        aliases = self._aliases
        for _ in range(MAX_ALIAS_DEPTH):
            target = aliases.get(model)
            if target is None:
                break
            model = target
        serving = self.registry.serving
        if ":" not in model and not serving(model) and serving(model + ":latest"):
            return model + ":latest"
        return model

    def eligible(
        self,
        model: str,
        needs: RequestNeeds,
        reasons: list[dict[str, Any]] | None = None,
        constraint: Constraint | None = None,
    ) -> list[Backend]:
        """Backends that serve ``model``, pass the policies, are healthy and can do the request.

        With ``reasons``, each excluded backend is explained there: ``backend``, ``model``,
        ``reason`` (a code: privacy, tier, unhealthy, missing_capability, cooling_down),
        ``message``, ``fix``. Cooling-down backends are kept when nothing else is left.
        """
        serving = self.registry.serving(model)
        healthy = BackendStatus.HEALTHY
        quality = self.quality
        budget = self.budget
        blocks_cloud = budget is not None and budget.blocks_cloud
        if reasons is None and constraint is None and not blocks_cloud:
            # The hot path: comprehensions, no per-backend branches beyond what the request needs.
            found = [b for b in serving if b.status is healthy]
            if model in self.registry.held_models:
                # Loading, drained or not loadable on demand somewhere (set by the fleet, not
                # per request): only then is each backend's ``held`` looked at.
                found = [b for b in found if model not in b.held]
            if (
                needs.estimated_tokens
                or needs.vision
                or needs.tools
                or needs.json_mode
                or needs.embeddings
            ):
                # Something a model can say it lacks: ask the one capability check, only about
                # the backends whose model states a limit at all (usually none: no per-backend
                # work then).
                stated = self._stating(model, serving)
                if stated:
                    lacking = {b.name for b in stated if missing(b.models[model], needs)}
                    if lacking:
                        found = [b for b in found if b.name not in lacking]
            if quality is None or not quality.cooled:
                return found
            return self._cool(found, model, None)
        out: list[Backend] = []
        restricted_by = constraint.restricted_by if constraint is not None else None
        min_tier = constraint.min_tier if constraint is not None else 0
        open_zone = Zone.OPEN
        for backend in serving:
            if restricted_by is not None and backend.zone is open_zone:
                if reasons is not None:
                    reasons.append(privacy_reason(backend, model, restricted_by))
                continue
            if blocks_cloud and backend.is_cloud:
                if reasons is not None:
                    assert budget is not None
                    reasons.append(
                        {
                            "backend": backend.name,
                            "model": model,
                            "reason": "budget",
                            "message": "the monthly budget is exhausted and "
                            "hard_limit_action is block_cloud",
                            "fix": "raise routing.budget.monthly_limit_usd, or wait for the "
                            "month to roll over (00:00 UTC on the 1st)",
                            "retry_after": math.ceil(budget.seconds_to_rollover()),
                        }
                    )
                continue
            if backend.tier < min_tier:
                if reasons is not None:
                    assert constraint is not None
                    reasons.append(tier_reason(backend, model, constraint, needs.flexible))
                continue
            status = backend.status
            if status is not healthy:
                if reasons is not None:
                    detail = f": {backend.last_error}" if backend.last_error else ""
                    reasons.append(
                        {
                            "backend": backend.name,
                            "model": model,
                            "reason": "unhealthy",
                            "message": f"{status.value}{detail}",
                            "fix": "wait for the health check to find it healthy again, "
                            "or fix the backend",
                            "retry_after": math.ceil(self.health_interval),
                        }
                    )
                continue
            held = backend.held.get(model)
            if held is not None:
                if reasons is not None:
                    reasons.append(held_reason(backend, model, held))
                continue
            info = backend.models.get(model)
            lacks = () if info is None else missing(info, needs)
            if lacks:
                assert info is not None
                if reasons is not None:
                    reasons.append(
                        {
                            "backend": backend.name,
                            "model": model,
                            "reason": "missing_capability",
                            **missing_reason(info, needs, lacks),
                            "fix": "use a model that supports what the request asks for, "
                            "or drop that part of the request",
                        }
                    )
                continue
            out.append(backend)
        if quality is None or not quality.cooled:
            return out
        return self._cool(out, model, reasons)

    def _stating(self, model: str, serving: tuple[Backend, ...]) -> tuple[Backend, ...]:
        """The backends of ``serving`` whose ``model`` states a capability it lacks or a
        context length: the only ones ``missing`` can ever exclude.

        Worked out again only when the registry's tuple for ``model`` changes (it is rebuilt
        whenever a backend serving it comes, goes or lists its models anew).
        """
        cached = self._stated.get(model)
        if cached is not None and cached[0] is serving:
            return cached[1]
        stated = tuple(
            b for b in serving if (info := b.models.get(model)) and missing(info, _EVERY_NEED)
        )
        if serving:
            self._stated[model] = (serving, stated)
        return stated

    def _cool(
        self, candidates: list[Backend], model: str, reasons: list[dict[str, Any]] | None
    ) -> list[Backend]:
        """``candidates`` without cooling-down ones, unless that would leave none."""
        assert self.quality is not None
        cooling = self.quality.cooling
        kept: list[Backend] = []
        cooled: list[tuple[Backend, float]] = []
        for backend in candidates:
            left = cooling(backend.name, model)
            if left > 0:
                cooled.append((backend, left))
            else:
                kept.append(backend)
        if not cooled:
            return candidates
        if not kept:
            return candidates  # never exclude the last candidates: try them anyway
        if reasons is not None:
            for backend, left in cooled:
                reasons.append(
                    {
                        "backend": backend.name,
                        "model": model,
                        "reason": "cooling_down",
                        "message": f"too many recent upstream failures; retried in {left:.0f} s",
                        "fix": "wait for the cool-down to end, or fix the backend",
                        "retry_after": math.ceil(left),
                    }
                )
        return kept

    def plan(self, needs: RequestNeeds) -> list[Route]:
        """Attempts in order: best backend, up to ``max_retries`` others, then fallback models."""
        requested = needs.model
        model = self.resolve(requested)
        limit = self.config.max_retries + 1
        routes: list[Route] = []
        # The requested model's policy binds every route, fallback models included.
        base = constraint_for(self.policies, self.names(requested)) if self.policies else None
        candidates = self.eligible(model, needs, None, base)
        if candidates:
            needs.route_reason = ""
            ordered = self._order(candidates, model, needs)
            if len(ordered) == 1:
                first_reason = "only-candidate"
            else:
                first_reason = needs.route_reason or self.strategy.reason
            restricted = base is not None and base.restricted_by is not None
            for index, backend in enumerate(ordered[:limit]):
                reason = first_reason if index == 0 else "failover"
                if index == 0:
                    info = backend.models.get(model)
                    if info is not None and info.loaded is False:
                        reason = COLD_LOAD  # every warm candidate went before it: none is left
                routes.append(Route(backend, model, reason, restricted=restricted))
        for fallback in self._fallbacks.get(model, ()):
            fallback_model = self.resolve(fallback)
            constraint = self._fallback_constraint(base, fallback)
            fallback_candidates = self.eligible(fallback_model, needs, None, constraint)
            if not fallback_candidates:
                continue
            ordered = self._order(fallback_candidates, fallback_model, needs)
            restricted = constraint is not None and constraint.restricted_by is not None
            for backend in ordered[:limit]:
                routes.append(
                    Route(
                        backend,
                        fallback_model,
                        "fallback-model",
                        fallback=True,
                        restricted=restricted,
                    )
                )
        if routes:
            return routes
        raise self.unroutable(requested, model, needs)

    def explain(self, needs: RequestNeeds, routes: Sequence[Route], request_id: str) -> None:
        """Log (DEBUG) the decision ``plan`` made for ``needs``: the strategy, the candidates,
        the backends left out and why, and the routes in the order they will be tried.

        Works the exclusions out again (``eligible`` with reasons): only called while DEBUG is
        on (``debug``).
        """
        requested = needs.model
        model = self.resolve(requested)
        base = constraint_for(self.policies, self.names(requested)) if self.policies else None
        excluded: list[dict[str, Any]] = []
        candidates = self.eligible(model, needs, excluded, base)
        for fallback in self._fallbacks.get(model, ()):
            constraint = self._fallback_constraint(base, fallback)
            self.eligible(self.resolve(fallback), needs, excluded, constraint)
        asked = model if model == requested else f"{model} (asked {requested})"
        log.debug(
            "%s route %s: strategy %s; candidates %s; excluded %s; order %s",
            request_id or "-",
            asked,
            self.strategy_name,
            ", ".join(b.name for b in candidates) or "none",
            _excluded_text(excluded),
            ", ".join(_route_text(route, model) for route in routes),
            extra={"request_id": request_id},
        )

    def explain_refusal(self, needs: RequestNeeds, error: GatewayError, request_id: str) -> None:
        """Log (DEBUG) why ``plan`` found no route for ``needs`` (``error``: its answer)."""
        log.debug(
            "%s route %s: none (%s %s): %s",
            request_id or "-",
            needs.model,
            error.status,
            error.code,
            error.message,
            extra={"request_id": request_id},
        )

    def _fallback_constraint(self, base: Constraint | None, fallback: str) -> Constraint | None:
        """The requested model's constraint and the fallback model's own: the stricter wins."""
        if not self.policies:
            return None
        own = constraint_for(self.policies, self.names(fallback))
        return own if base is None else base.stricter(own)

    def _order(self, candidates: list[Backend], model: str, needs: RequestNeeds) -> list[Backend]:
        """Strategy order; then backends where the model is cold, then full ones, go last."""
        if len(candidates) == 1:
            return candidates
        if self.keyed:
            ordered = cast(_KeyedStrategy, self.strategy).order(candidates, model, needs)
        else:
            ordered = self.strategy.order(candidates, model)
        budget = self.budget
        if budget is not None and budget.prefer_local:
            # Past the soft limit: local first (strategy order within), then cloud ones.
            ordered.sort(key=lambda b: _budget_demotion(b, model))
            return ordered
        # Only the first max_retries + 1 become routes: if none of them is cold or full, moving
        # cold and full backends last changes nothing that is used.
        for b in ordered[: self.config.max_retries + 1]:
            info = b.models.get(model)
            if (info is not None and info.loaded is False) or (
                b.max_concurrent is not None and b.pending >= b.max_concurrent
            ):
                pick = ordered[0]
                ordered.sort(key=lambda b: _demotion(b, model))  # stable: strategy order within
                if ordered[0] is not pick and self._overflow_reason is not None:
                    needs.route_reason = self._overflow_reason
                break
        return ordered

    def unroutable(self, requested: str, model: str, needs: RequestNeeds) -> GatewayError:
        """404 when nothing lists the model (or its fallbacks); 400 when no backend ever can
        take the request (every exclusion permanent, the request asking for what models lack);
        else 503 with the reasons, ``Retry-After`` where waiting helps."""
        chain = [model, *(self.resolve(f) for f in self._fallbacks.get(model, ()))]
        if not any(self.registry.serving(m) for m in chain):
            return model_not_found(requested, self.registry.model_ids())
        reasons: list[dict[str, Any]] = []
        base = constraint_for(self.policies, self.names(requested)) if self.policies else None
        self.eligible(model, needs, reasons, base)
        for fallback in self._fallbacks.get(model, ()):
            constraint = self._fallback_constraint(base, fallback)
            self.eligible(self.resolve(fallback), needs, reasons, constraint)
        if any(r["reason"] == "missing_capability" for r in reasons) and all(
            r["reason"] in PERMANENT_REASONS for r in reasons
        ):
            return cannot_serve(
                requested, reasons, tokens=needs.estimated_tokens, prompt=needs.prompt_param
            )
        if reasons and all(r["reason"] == "model_loading" for r in reasons):
            return model_loading(requested, reasons)
        return no_backend(requested, reasons)


class _KeyedStrategy(Protocol):
    """A strategy whose ``order`` takes the request's ``needs`` too (``takes_needs``)."""

    reason: str

    def order(
        self, candidates: Sequence[Backend], model: str, needs: RequestNeeds
    ) -> list[Backend]: ...


def _excluded_text(excluded: Sequence[Mapping[str, Any]]) -> str:
    """``b (unhealthy: connection refused), c (tier: ...)`` for the debug line of a decision."""
    if not excluded:
        return "none"
    return ", ".join(
        f"{r['backend']} for {r['model']} ({r['reason']}: {r.get('message') or '-'})"
        for r in excluded
    )


def _route_text(route: Route, model: str) -> str:
    """``a`` (``a [fallback-model m2]`` when the route is for another model)."""
    if route.model == model:
        return f"{route.backend.name} [{route.reason}]"
    return f"{route.backend.name} [{route.reason} {route.model}]"
