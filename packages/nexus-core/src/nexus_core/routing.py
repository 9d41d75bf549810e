"""Routing: what a request needs, which backends can take it, and in what order to try them."""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import math
import operator
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nexus_core.adapters import BackendStatus, Endpoint, ModelInfo
from nexus_core.config import MAX_ALIAS_DEPTH, PolicyConfig, PolicyPrivacy, RoutingConfig, Zone
from nexus_core.errors import (
    GatewayError,
    bad_request,
    cannot_serve,
    model_not_found,
    no_backend,
)
from nexus_core.quality import QualityTracker
from nexus_core.registry import Backend, Registry

if TYPE_CHECKING:
    from nexus_core.accounting import Accountant

log = logging.getLogger("nexus.routing")

# Rough bytes-per-token used to estimate prompt size before the context-length check.
CHARS_PER_TOKEN = 4
#: Exclusions that no wait can lift: the request asks for what the model lacks, or a routing
#: policy keeps it off a backend. Every other reason (``unhealthy``, which covers loading and
#: draining, ``cooling_down``, ``budget``) passes.
PERMANENT_REASONS = frozenset({"missing_capability", "privacy", "tier"})


@dataclass(slots=True)
class RequestNeeds:
    """What routing needs to know about a request, parsed once."""

    model: str
    stream: bool = False
    vision: bool = False
    tools: bool = False
    json_mode: bool = False
    estimated_tokens: int = 0
    #: Tier mode from ``X-Nexus-Flexible: true`` (and no ``X-Nexus-Strict: true``).
    flexible: bool = False
    #: A stream whose client asked for ``stream_options.include_usage``.
    include_usage: bool = False
    #: An embeddings request: backends whose model says it cannot embed are skipped.
    embeddings: bool = False
    #: The request's prompt field (``messages``, ``prompt``, ``input``), named by its errors.
    prompt_param: str = "messages"


def analyze(endpoint: Endpoint, data: Any) -> RequestNeeds:
    """Read the fields routing depends on; refuse bodies the gateway cannot route."""
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter", param="model", code="missing_model")
    needs = RequestNeeds(model=model, stream=data.get("stream") is True)
    if needs.stream:
        options = data.get("stream_options")
        needs.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if endpoint is Endpoint.CHAT:
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise _field_error("messages", messages, "an array of messages")
        chars = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict):
                        continue
                    kind = part.get("type")
                    if kind == "text":
                        text = part.get("text")
                        chars += len(text) if isinstance(text, str) else 0
                    elif kind in ("image_url", "input_image", "image"):
                        needs.vision = True
        needs.estimated_tokens = chars // CHARS_PER_TOKEN
        needs.tools = bool(data.get("tools")) or bool(data.get("functions"))
        response_format = data.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") in (
            "json_object",
            "json_schema",
        ):
            needs.json_mode = True
    elif endpoint is Endpoint.COMPLETIONS:
        needs.prompt_param = "prompt"
        prompt = data.get("prompt")
        if isinstance(prompt, str):
            needs.estimated_tokens = len(prompt) // CHARS_PER_TOKEN
        elif isinstance(prompt, list):
            needs.estimated_tokens = sum(len(p) for p in prompt if isinstance(p, str)) // 4
        else:
            raise _field_error("prompt", prompt, "a string or an array")
    elif endpoint is Endpoint.EMBEDDINGS:
        needs.prompt_param = "input"
        needs.embeddings = True
        if data.get("input") is None:
            raise _field_error("input", None, "")
    return needs


def _field_error(name: str, value: Any, expected: str) -> GatewayError:
    """400 for a required field that is missing (``missing_required_parameter``, OpenAI's code)
    or of the wrong type (``invalid_type``)."""
    if value is None:
        return bad_request(
            f"Missing required parameter: '{name}'", param=name, code="missing_required_parameter"
        )
    return bad_request(
        f"Invalid type for '{name}': expected {expected}", param=name, code="invalid_type"
    )


def replace_model(body: bytes, model: str) -> bytes:
    """The body with only the top-level ``model`` value replaced; every other byte is kept."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    scan = json.decoder.scanstring  # type: ignore[attr-defined]
    index = _skip_ws(text, 0)
    if text[index : index + 1] != "{":
        raise ValueError("not a JSON object")
    index = _skip_ws(text, index + 1)
    while index < len(text) and text[index] == '"':
        key, index = scan(text, index + 1)
        index = _skip_ws(text, index)
        index = _skip_ws(text, index + 1)  # past ':'
        _, end = decoder.raw_decode(text, index)
        if key == "model":
            replacement = json.dumps(model, ensure_ascii=False)
            return (text[:index] + replacement + text[end:]).encode("utf-8")
        index = _skip_ws(text, end)
        if text[index : index + 1] == ",":
            index = _skip_ws(text, index + 1)
    raise ValueError("no top-level model key")


def with_include_usage(body: bytes) -> bytes:
    """The body asking for ``stream_options.include_usage`` (to price a stream from its usage).

    Without a top-level ``stream_options`` the member is inserted and every other byte kept;
    otherwise the body is re-encoded with ``include_usage`` set in the existing options.
    """
    if b'"stream_options"' not in body:
        start = body.index(b"{") + 1
        return body[:start] + b'"stream_options":{"include_usage":true},' + body[start:]
    data = json.loads(body)
    options = data.get("stream_options")
    data["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _skip_ws(text: str, index: int) -> int:
    length = len(text)
    while index < length and text[index] in " \t\r\n":
        index += 1
    return index


@dataclass(slots=True, frozen=True)
class Route:
    """One attempt: which backend, for which model, and why."""

    backend: Backend
    model: str
    reason: str
    fallback: bool = False
    #: A ``privacy = "restricted"`` policy applied to this route.
    restricted: bool = False


@dataclass(slots=True, frozen=True)
class CompiledPolicy:
    """One ``[[routing.policies]]`` entry, its glob compiled once."""

    pattern: str
    match: Callable[[str], re.Match[str] | None]
    restricted: bool
    min_tier: int | None

    @classmethod
    def compile(cls, config: PolicyConfig) -> CompiledPolicy:
        """Compile the (already validated) glob; matching is case-sensitive, like model ids."""
        return cls(
            pattern=config.model_pattern,
            match=re.compile(fnmatch.translate(config.model_pattern)).match,
            restricted=config.privacy is PolicyPrivacy.RESTRICTED,
            min_tier=config.min_tier,
        )


@dataclass(slots=True, frozen=True)
class Constraint:
    """What the policies demand of a backend: the strictest of every policy that applied."""

    restricted_by: str | None = None  # pattern of the restricted policy, if any
    min_tier: int = 0  # 0: no tier floor
    tier_by: str | None = None  # pattern that set ``min_tier``

    def stricter(self, other: Constraint | None) -> Constraint:
        """Both constraints at once: restricted if either is, the higher tier floor."""
        if other is None:
            return self
        restricted_by = self.restricted_by or other.restricted_by
        if other.min_tier > self.min_tier:
            return Constraint(restricted_by, other.min_tier, other.tier_by)
        return Constraint(restricted_by, self.min_tier, self.tier_by)


class Strategy(Protocol):
    """Orders eligible backends best-first; the first is the pick, the rest the failover order."""

    reason: str

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]: ...


def load_ratio(backend: Backend) -> float:
    """Busy fraction in [0, 1]: the larger of Nexus's own count and what the server reports.

    Nexus's count is pending over ``max_concurrent`` (pending/10 without a limit).
    """
    limit = backend.max_concurrent
    pending = backend.pending
    own = pending / limit if limit else pending / 10
    busy = own if own > backend.load_busy else backend.load_busy
    return busy if busy < 1.0 else 1.0


class SmartStrategy:
    """Weighted score of priority, current load and latency (weights from config)."""

    reason = "highest-score"

    def __init__(
        self,
        priority: float,
        load: float,
        latency: float,
        quality: QualityTracker | None = None,
    ) -> None:
        total = priority + load + latency or 1.0
        self.weights = (priority / total, load / total, latency / total)
        #: A slow time to first token for the requested model lowers a backend's score.
        self.quality = quality

    def score(self, b: Backend) -> float:
        """0..100, higher is better. Runs per request over every candidate: kept branch-light."""
        w_priority, w_load, w_latency = self.weights
        limit = b.max_concurrent
        busy = b.pending / limit if limit else b.pending / 10
        if b.load_busy > busy:
            busy = b.load_busy
        latency = b.latency_ms
        return (
            w_priority * (100.0 - (b.priority if b.priority < 100 else 100))
            + w_load * (100.0 - 100.0 * (busy if busy < 1.0 else 1.0))
            + w_latency
            * (50.0 if latency is None else 100.0 - (latency / 10.0 if latency < 1000.0 else 100.0))
        )

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]:
        """Best score first; ties keep registration order (the sort is stable).

        Backends keep their score current (``Backend.rank``) when these weights are theirs, so
        this is one C-level sort; otherwise every score is computed here.
        """
        quality = self.quality
        if not (quality is not None and quality.slow) and all(
            b.weights is self.weights for b in candidates
        ):
            return sorted(candidates, key=_RANK)
        if quality is not None and quality.slow:
            factor = quality.ttft_factor
            score = self.score
            return sorted(candidates, key=lambda b: score(b) * factor(b.name, model), reverse=True)
        return sorted(candidates, key=self.score, reverse=True)


_RANK = operator.attrgetter("rank")


class RoundRobinStrategy:
    """Each model's candidates in turn."""

    reason = "round-robin"

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]:
        """Rotate the candidate list by this model's counter."""
        counter = self._counters.get(model)
        if counter is None:
            counter = self._counters[model] = itertools.count()
        start = next(counter) % len(candidates)
        return [*candidates[start:], *candidates[:start]]


class PriorityStrategy:
    """Lowest priority number first; ties keep registration order."""

    reason = "priority"

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]:
        """Sort by configured priority."""
        return sorted(candidates, key=lambda b: b.priority)


class RandomStrategy:
    """Uniformly random order."""

    reason = "random"

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]:
        """Shuffle."""
        shuffled = list(candidates)
        random.shuffle(shuffled)
        return shuffled


class LeastLoadedStrategy:
    """Fewest pending requests (relative to the limit) first, then lowest latency."""

    reason = "least-loaded"

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]:
        """Sort by load, then latency."""
        return sorted(
            candidates,
            key=lambda b: (load_ratio(b), b.latency_ms if b.latency_ms is not None else 0.0),
        )


def builtin_strategies(
    config: RoutingConfig, quality: QualityTracker | None = None
) -> dict[str, Strategy]:
    """The five strategies the config can name (``quality``: TTFT penalties for smart)."""
    weights = config.weights
    return {
        "smart": SmartStrategy(weights.priority, weights.load, weights.latency, quality),
        "round_robin": RoundRobinStrategy(),
        "priority_only": PriorityStrategy(),
        "random": RandomStrategy(),
        "least_loaded": LeastLoadedStrategy(),
    }


def _lacks(model: ModelInfo, needs: RequestNeeds) -> dict[str, Any]:
    """The ``missing_capability`` reason's fields: what is ``missing``, and a message."""
    missing = [
        name
        for name, needed, has in (
            ("vision", needs.vision, model.vision),
            ("tools", needs.tools, model.tools),
            ("json_mode", needs.json_mode, model.json_mode),
            ("embeddings", needs.embeddings, model.embeddings),
        )
        if needed and has is False
    ]
    parts = [f"model {model.id} lacks {', '.join(missing)}"] if missing else []
    fields: dict[str, Any] = {}
    if model.context_length is not None and needs.estimated_tokens > model.context_length:
        missing.append("context_length")
        fields["context_length"] = model.context_length
        parts.append(
            f"prompt of about {needs.estimated_tokens} tokens exceeds the context length "
            f"{model.context_length} of {model.id}"
        )
    return {"missing": missing, "message": "; ".join(parts), **fields}


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
        self.strategy: Strategy = (
            strategy or builtin_strategies(config, quality)[config.strategy.value]
        )
        #: The strategy's name in the debug lines: the config's, or a custom one's class.
        self.strategy_name = config.strategy.value if strategy is None else type(strategy).__name__
        if isinstance(self.strategy, SmartStrategy):
            # Backends keep their smart score current from now on (see Backend.rank).
            weights = self.strategy.weights
            registry.weights = weights
            for backend in registry:
                backend.weights = weights
                backend.rerank()
        self._aliases: Mapping[str, str] = dict(config.aliases)
        self._fallbacks: Mapping[str, list[str]] = {k: list(v) for k, v in config.fallbacks.items()}
        self.policies: tuple[CompiledPolicy, ...] = tuple(
            CompiledPolicy.compile(p) for p in config.policies
        )

    def policy_for(self, model: str) -> CompiledPolicy | None:
        """The first policy whose glob matches ``model``."""
        for policy in self.policies:
            if policy.match(model):
                return policy
        return None

    def constraint(self, names: Iterable[str]) -> Constraint | None:
        """The strictest combination of the first matching policy of each name (None: no rule)."""
        out: Constraint | None = None
        for name in names:
            policy = self.policy_for(name)
            if policy is None or not (policy.restricted or policy.min_tier):
                continue
            found = Constraint(
                policy.pattern if policy.restricted else None,
                policy.min_tier or 0,
                policy.pattern if policy.min_tier else None,
            )
            out = found if out is None else out.stricter(found)
        return out

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
        embeddings = needs.embeddings
        plain = not (
            needs.vision or needs.tools or needs.json_mode or needs.estimated_tokens or embeddings
        )
        quality = self.quality
        budget = self.budget
        blocks_cloud = budget is not None and budget.blocks_cloud
        if reasons is None and constraint is None and not blocks_cloud:
            # The hot path: comprehensions, no per-backend branches beyond what the request needs.
            found = [b for b in serving if b.status is healthy]
            if not plain:
                vision, tools, json_mode = needs.vision, needs.tools, needs.json_mode
                tokens = needs.estimated_tokens
                found = [
                    b
                    for b in found
                    if (info := b.models.get(model)) is None
                    or not (
                        (vision and info.vision is False)
                        or (tools and info.tools is False)
                        or (json_mode and info.json_mode is False)
                        or (embeddings and info.embeddings is False)
                        or (info.context_length is not None and tokens > info.context_length)
                    )
                ]
            if quality is None or not quality.cooled:
                return found
            return self._cool(found, model, None)
        out: list[Backend] = []
        vision, tools, json_mode = needs.vision, needs.tools, needs.json_mode
        tokens = needs.estimated_tokens
        restricted_by = constraint.restricted_by if constraint is not None else None
        min_tier = constraint.min_tier if constraint is not None else 0
        open_zone = Zone.OPEN
        for backend in serving:
            if restricted_by is not None and backend.zone is open_zone:
                if reasons is not None:
                    reasons.append(
                        {
                            "backend": backend.name,
                            "model": model,
                            "reason": "privacy",
                            "message": f"zone open, policy for {restricted_by!r} is restricted",
                            "fix": f"add a backend in the restricted zone that serves '{model}'",
                        }
                    )
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
                    mode = "flexible" if needs.flexible else "strict"
                    reasons.append(
                        {
                            "backend": backend.name,
                            "model": model,
                            "reason": "tier",
                            "message": f"tier {backend.tier} is below min_tier {min_tier} of the "
                            f"policy for {constraint.tier_by!r} ({mode} mode never serves from "
                            "a lower tier)",
                            "fix": f"add a backend with tier >= {min_tier} that serves "
                            f"'{model}', or lower min_tier in that policy",
                        }
                    )
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
            info = backend.models.get(model)
            if info is not None and (
                (vision and info.vision is False)
                or (tools and info.tools is False)
                or (json_mode and info.json_mode is False)
                or (embeddings and info.embeddings is False)
                or (info.context_length is not None and tokens > info.context_length)
            ):
                if reasons is not None:
                    reasons.append(
                        {
                            "backend": backend.name,
                            "model": model,
                            "reason": "missing_capability",
                            **_lacks(info, needs),
                            "fix": "use a model that supports what the request asks for, "
                            "or drop that part of the request",
                        }
                    )
                continue
            out.append(backend)
        if quality is None or not quality.cooled:
            return out
        return self._cool(out, model, reasons)

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
        base = self.constraint(self.names(requested)) if self.policies else None
        candidates = self.eligible(model, needs, None, base)
        if candidates:
            ordered = self._order(candidates, model)
            first_reason = self.strategy.reason if len(ordered) > 1 else "only-candidate"
            restricted = base is not None and base.restricted_by is not None
            for index, backend in enumerate(ordered[:limit]):
                reason = first_reason if index == 0 else "failover"
                routes.append(Route(backend, model, reason, restricted=restricted))
        for fallback in self._fallbacks.get(model, ()):
            fallback_model = self.resolve(fallback)
            constraint = self._fallback_constraint(base, fallback)
            fallback_candidates = self.eligible(fallback_model, needs, None, constraint)
            if not fallback_candidates:
                continue
            ordered = self._order(fallback_candidates, fallback_model)
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
        base = self.constraint(self.names(requested)) if self.policies else None
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
        own = self.constraint(self.names(fallback))
        return own if base is None else base.stricter(own)

    def _order(self, candidates: list[Backend], model: str) -> list[Backend]:
        """Strategy order; then backends where the model is cold, then full ones, go last."""
        if len(candidates) == 1:
            return candidates
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
                ordered.sort(key=lambda b: _demotion(b, model))  # stable: strategy order within
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
        base = self.constraint(self.names(requested)) if self.policies else None
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
        return no_backend(requested, reasons)


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
