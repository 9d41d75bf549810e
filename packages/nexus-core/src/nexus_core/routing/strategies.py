"""Routing strategies: how the eligible backends are ordered, best first.

A strategy is any object with a ``reason`` (sent as ``X-Nexus-Route-Reason`` when it picked among
several) and ``order(candidates, model) -> list[Backend]``; the first is the pick, the rest the
failover order. A strategy whose ``order`` also has a parameter named ``needs`` is called
``order(candidates, model, needs)`` with the request's ``RequestNeeds`` (its conversation key,
``prefix_key``, is then computed; it may set ``needs.route_reason``); strategies with the
two-argument ``order`` are called as before. ``STRATEGIES`` maps the built-in names
``[routing] strategy`` takes to a factory called once, when the router is built; plugins add
others (``register_routing_strategies``), which ``build_strategy`` finds. ``order`` runs for
every request: keep it a sort or a rotation.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
import operator
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import Protocol, cast

from nexus_core.config import ConfigError, RoutingConfig
from nexus_core.quality import QualityTracker
from nexus_core.registry import Backend
from nexus_core.routing.analysis import RequestNeeds

__all__ = [
    "STRATEGIES",
    "CacheAffinityStrategy",
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
    "takes_needs",
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


_MASK64 = (1 << 64) - 1


def _mix(value: int) -> int:
    """SplitMix64's finaliser: spreads a 64-bit value over all 64 bits (cheap, stable)."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class CacheAffinityStrategy:
    """Each conversation to the backend that holds its prompt cache: rendezvous hashing of the
    conversation's key (``RequestNeeds.prefix_key``) with bounded loads.

    The ring of a conversation is the candidates ordered by rendezvous (highest random weight)
    hashing of its key and each backend's name: every Nexus process with the same backends
    computes the same ring, and removing a backend moves only the conversations it had. A new
    conversation is placed on the first backend of its ring whose placed conversations would
    stay within ``(1 + epsilon)`` times the average (the least loaded when none would) and stays
    there (remembered per model, at most ``max_conversations``, for ``idle_seconds`` after its
    last request). Each request then goes to its conversation's backend unless that one is
    full (``max_concurrent``) or past ``ceil((1 + epsilon) x`` the average requests in flight
    ``)``: then to the next on the ring within the bound (``cache-affinity-overflow``). The rest
    of the ring is the failover order. A request without a key (embeddings) is ordered by load.
    """

    reason = "cache-affinity"
    #: Route reason when the bounded load sent a request elsewhere than its conversation's place.
    overflow_reason = "cache-affinity-overflow"

    def __init__(
        self,
        epsilon: float = 0.25,
        idle_seconds: float = 600.0,
        max_conversations: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.factor = 1.0 + epsilon
        self.idle_seconds = idle_seconds
        self.max_conversations = max_conversations
        self.clock = clock
        #: (key, model) -> (backend name, last request); least recent first.
        self._placed: OrderedDict[tuple[int, str], tuple[str, float]] = OrderedDict()
        #: Backend name -> conversations placed there (that ``_placed`` remembers).
        self.conversations: dict[str, int] = {}
        self._seeds: dict[str, int] = {}
        self._by_load = LeastLoadedStrategy()

    @classmethod
    def from_config(
        cls, config: RoutingConfig, quality: QualityTracker | None
    ) -> CacheAffinityStrategy:
        """The bounds of ``[routing.cache_affinity]``."""
        settings = config.cache_affinity
        return cls(settings.epsilon, settings.idle_seconds, settings.max_conversations)

    def _seed(self, name: str) -> int:
        seed = self._seeds.get(name)
        if seed is None:
            digest = blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            seed = self._seeds[name] = int.from_bytes(digest, "big")
        return seed

    def ring(self, candidates: Sequence[Backend], key: int) -> list[Backend]:
        """``candidates`` in rendezvous order for ``key``: highest weight first."""
        seed = self._seed
        return sorted(candidates, key=lambda b: _mix(seed(b.name) ^ key), reverse=True)

    def order(
        self, candidates: Sequence[Backend], model: str, needs: RequestNeeds | None = None
    ) -> list[Backend]:
        """The conversation's backend first (or the next within the bound), then its ring."""
        key = needs.prefix_key if needs is not None else 0
        if not key:
            if needs is not None:
                needs.route_reason = self._by_load.reason
            return self._by_load.order(candidates, model)
        ring = self.ring(candidates, key)
        now = self.clock()
        self._forget(now)
        counts = self.conversations
        placed = self._placed
        slot = (key, model)
        found = placed.get(slot)
        home: Backend | None = None
        if found is not None:
            name = found[0]
            for backend in ring:
                if backend.name == name:
                    home = backend
                    break
            if home is None:  # its backend is gone or cannot take it: place it anew
                counts[name] -= 1
        moved = False
        if home is None:
            home = self._place(ring)
            counts[home.name] = counts.get(home.name, 0) + 1
            moved = home is not ring[0]
        placed[slot] = (home.name, now)
        placed.move_to_end(slot)
        if home is not ring[0]:
            ring.remove(home)
            ring.insert(0, home)
        # One more request in flight on a backend may not pass ceil((1 + epsilon) x average).
        bound = math.ceil(self.factor * (sum(b.pending for b in ring) + 1) / len(ring))
        if _over(home, bound):
            for index in range(1, len(ring)):
                other = ring[index]
                if not _over(other, bound):
                    del ring[index]
                    ring.insert(0, other)
                    moved = True
                    break
        if needs is not None:
            needs.route_reason = self.overflow_reason if moved else self.reason
        return ring

    def _place(self, ring: list[Backend]) -> Backend:
        """A new conversation's backend: the first of its ring within the bound."""
        counts = self.conversations
        limit = self.factor * (sum(counts.get(b.name, 0) for b in ring) + 1) / len(ring)
        for backend in ring:
            if counts.get(backend.name, 0) + 1 <= limit:
                return backend
        return min(ring, key=lambda b: counts.get(b.name, 0))  # the first of the least loaded

    def _forget(self, now: float) -> None:
        """Drop conversations idle past ``idle_seconds``, and the oldest past the maximum."""
        placed = self._placed
        horizon = now - self.idle_seconds
        counts = self.conversations
        while placed:
            slot, (name, seen) = next(iter(placed.items()))
            if seen > horizon and len(placed) < self.max_conversations:
                return
            del placed[slot]
            counts[name] -= 1


def _over(backend: Backend, bound: int) -> bool:
    """Full, or one more request would put it past ``bound`` requests in flight."""
    limit = backend.max_concurrent
    pending = backend.pending
    return (limit is not None and pending >= limit) or pending + 1 > bound


#: The built-in strategies ``[routing] strategy`` names, each built once when the router is. A new
#: one: a class with ``reason`` and ``order`` above, its factory here, its name in
#: ``config.RoutingStrategy`` (or, outside the core, a plugin: ``register_routing_strategies``).
STRATEGIES: dict[str, StrategyFactory] = {
    "smart": SmartStrategy.from_config,
    "round_robin": lambda config, quality: RoundRobinStrategy(),
    "priority_only": lambda config, quality: PriorityStrategy(),
    "random": lambda config, quality: RandomStrategy(),
    "least_loaded": lambda config, quality: LeastLoadedStrategy(),
    "cache_affinity": CacheAffinityStrategy.from_config,
}


def builtin_strategies(
    config: RoutingConfig, quality: QualityTracker | None = None
) -> dict[str, Strategy]:
    """Every strategy of ``STRATEGIES``, built (``quality``: TTFT penalties for smart)."""
    return {name: build(config, quality) for name, build in STRATEGIES.items()}


def takes_needs(strategy: object) -> bool:
    """Whether ``strategy.order`` takes the request's ``needs`` (a parameter of that name).

    Asked once, when the router is built: plugin strategies with the two-argument ``order``
    keep being called with two.
    """
    try:
        parameters = inspect.signature(getattr(strategy, "order")).parameters  # noqa: B009
    except (TypeError, ValueError, AttributeError):
        return False
    return "needs" in parameters


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
