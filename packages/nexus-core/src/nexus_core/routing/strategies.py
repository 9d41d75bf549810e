"""Routing strategies: how the eligible backends are ordered, best first.

A strategy is any object with a ``reason`` (sent as ``X-Nexus-Route-Reason`` when it picked among
several) and ``order(candidates, model) -> list[Backend]``; the first is the pick, the rest the
failover order. ``STRATEGIES`` maps the built-in names ``[routing] strategy`` takes to a factory
called once, when the router is built; plugins add others (``register_routing_strategies``),
which ``build_strategy`` finds. ``order`` runs for every request: keep it a sort or a rotation.
"""

from __future__ import annotations

import difflib
import itertools
import operator
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, cast

from nexus_core.config import ConfigError, RoutingConfig
from nexus_core.quality import QualityTracker
from nexus_core.registry import Backend

__all__ = [
    "STRATEGIES",
    "LeastLoadedStrategy",
    "PriorityStrategy",
    "RandomStrategy",
    "RoundRobinStrategy",
    "SmartStrategy",
    "Strategy",
    "StrategyFactory",
    "build_strategy",
    "builtin_strategies",
    "is_strategy",
    "load_ratio",
    "strategy_problem",
]


class Strategy(Protocol):
    """Orders eligible backends best-first; the first is the pick, the rest the failover order."""

    reason: str

    def order(self, candidates: Sequence[Backend], model: str) -> list[Backend]: ...


#: Builds a strategy from ``[routing]`` (``quality``: the TTFT tracker, for strategies that use it).
StrategyFactory = Callable[[RoutingConfig, QualityTracker | None], Strategy]


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

    @classmethod
    def from_config(cls, config: RoutingConfig, quality: QualityTracker | None) -> SmartStrategy:
        """The weights of ``[routing.weights]``; TTFT penalties from ``quality``."""
        weights = config.weights
        return cls(weights.priority, weights.load, weights.latency, quality)

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


#: The built-in strategies ``[routing] strategy`` names, each built once when the router is. A new
#: one: a class with ``reason`` and ``order`` above, its factory here, its name in
#: ``config.RoutingStrategy`` (or, outside the core, a plugin: ``register_routing_strategies``).
STRATEGIES: dict[str, StrategyFactory] = {
    "smart": SmartStrategy.from_config,
    "round_robin": lambda config, quality: RoundRobinStrategy(),
    "priority_only": lambda config, quality: PriorityStrategy(),
    "random": lambda config, quality: RandomStrategy(),
    "least_loaded": lambda config, quality: LeastLoadedStrategy(),
}


def builtin_strategies(
    config: RoutingConfig, quality: QualityTracker | None = None
) -> dict[str, Strategy]:
    """Every strategy of ``STRATEGIES``, built (``quality``: TTFT penalties for smart)."""
    return {name: build(config, quality) for name, build in STRATEGIES.items()}


def is_strategy(obj: object) -> bool:
    """Whether ``obj`` follows ``Strategy``: a ``reason`` string and an ``order`` method."""
    return isinstance(getattr(obj, "reason", None), str) and callable(getattr(obj, "order", None))


def build_strategy(
    config: RoutingConfig,
    quality: QualityTracker | None = None,
    registered: Mapping[str, object] | None = None,
) -> Strategy:
    """The strategy ``[routing] strategy`` names, built once: a built-in (``STRATEGIES``, which
    win a name clash) or one a plugin registered.

    A plugin registers a ready strategy object (used as is: every router shares it) or a
    factory ``(RoutingConfig, QualityTracker | None) -> Strategy`` like ``STRATEGIES``' (a class
    counts as a factory). ``registered``: the plugins' registry, by default
    ``nexus_core.plugins.routing_strategies()``, read only for a name that is not built in.
    ``ConfigError`` (one line) for a name nothing registered or an object that is no strategy.
    """
    name = str(config.strategy)
    builtin = STRATEGIES.get(name)
    if builtin is not None:
        return builtin(config, quality)
    if registered is None:
        from nexus_core.plugins import routing_strategies  # plugins import the config, as we do

        registered = routing_strategies()
    found = registered.get(name)
    if found is None:
        raise ConfigError([f"routing.strategy: {_unknown(name, [*STRATEGIES, *registered])}"])
    if is_strategy(found) and not isinstance(found, type):
        return cast(Strategy, found)
    if not callable(found):
        raise ConfigError([f"routing.strategy: {_not_a_strategy(name, found)}"])
    try:
        built = found(config, quality)
    except Exception as exc:
        raise ConfigError(
            [f"routing.strategy: the plugin strategy {name!r} failed to build: {exc!r}"]
        ) from exc
    if not is_strategy(built):
        raise ConfigError([f"routing.strategy: {_not_a_strategy(name, built)}"])
    return cast(Strategy, built)


def strategy_problem(config: RoutingConfig, registered: Mapping[str, object]) -> str | None:
    """What is wrong with ``[routing] strategy`` given the plugins' ``registered`` strategies
    (without building one); None when nothing is."""
    name = str(config.strategy)
    if name in STRATEGIES:
        return None
    found = registered.get(name)
    if found is None:
        return _unknown(name, [*STRATEGIES, *registered])
    if not (callable(found) or is_strategy(found)):
        return _not_a_strategy(name, found)
    return None


def _unknown(name: str, known: Iterable[str]) -> str:
    names = sorted(set(known))
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown routing strategy {name!r}{hint} (known strategies: {', '.join(names)})"


def _not_a_strategy(name: str, found: object) -> str:
    return (
        f"the plugin strategy {name!r} is not a strategy (a 'reason' string and an "
        f"'order(candidates, model)' method) nor a factory of one: {found!r}"
    )
