"""Routing strategies: how the eligible backends are ordered, best first.

A strategy is any object with a ``reason`` (sent as ``X-Nexus-Route-Reason`` when it picked among
several) and ``order(candidates, model) -> list[Backend]``; the first is the pick, the rest the
failover order. ``STRATEGIES`` maps the names ``[routing] strategy`` takes to a factory called
once, when the router is built. ``order`` runs for every request: keep it a sort or a rotation.
"""

from __future__ import annotations

import itertools
import operator
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from nexus_core.config import RoutingConfig
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
    "builtin_strategies",
    "load_ratio",
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


#: The strategies ``[routing] strategy`` names, each built once when the router is. A new one: a
#: class with ``reason`` and ``order`` above, its factory here, its name in
#: ``config.RoutingStrategy``.
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
