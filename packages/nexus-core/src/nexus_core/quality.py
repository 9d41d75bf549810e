"""Quality: cool down a (backend, model) whose requests keep failing, then retry it half-open.

Per (backend, model) the tracker keeps cheap counters over a tumbling window of
``window_seconds``. Once the window holds at least ``min_requests`` outcomes and the error rate
is at or above ``error_rate_threshold``, the pair is cooled down for ``cooldown_seconds``; each
consecutive cool-down doubles that, capped at ``MAX_BACKOFF_FACTOR`` times. When the cool-down
ends the pair is half-open: routable again, and its next outcome decides. A success restores
it fully (counters and back-off reset); a failure cools it down again with the doubled back-off.

Only upstream failures count (connect, timeout, 5xx, 429, malformed, a stream that breaks after
its first byte), never a client's 4xx. Recording is O(1) and allocates nothing after a pair's
first outcome.

Time to first token (of streams) is kept per pair as a moving average; a pair whose average is
above ``ttft_penalty_threshold_ms`` gets a score factor below 1 (threshold / average, at least
``MIN_TTFT_FACTOR``) that the smart strategy multiplies its score by.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nexus_core.config import QualityConfig

#: A cool-down never grows beyond this many times ``cooldown_seconds``.
MAX_BACKOFF_FACTOR = 10.0
#: The smallest score factor a slow time to first token can cost.
MIN_TTFT_FACTOR = 0.25
#: Weight of the newest sample in the TTFT moving average.
TTFT_SMOOTHING = 0.3


class _Stats:
    __slots__ = ("backoff", "errors", "requests", "start", "until")

    def __init__(self, now: float) -> None:
        self.start = now
        self.requests = 0
        self.errors = 0
        #: When the current (or last) cool-down ends; 0 when the pair was never cooled down.
        self.until = 0.0
        #: Length of the last cool-down; 0 once restored.
        self.backoff = 0.0


class QualityTracker:
    """Request outcomes per (backend, model) and the cool-downs they lead to."""

    __slots__ = ("_clock", "_stats", "_ttft", "config", "cooled", "slow")

    def __init__(
        self, config: QualityConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._stats: dict[tuple[str, str], _Stats] = {}
        #: How many pairs are cooled down or half-open; 0 lets routing skip every look-up.
        self.cooled = 0
        self._ttft: dict[tuple[str, str], float] = {}
        #: Score factors (< 1) of pairs whose TTFT is over the threshold; empty: none is slow.
        self.slow: dict[tuple[str, str], float] = {}

    def observe_ttft(self, backend: str, model: str, milliseconds: float) -> None:
        """Fold one time-to-first-token sample into the pair's moving average."""
        key = (backend, model)
        current = self._ttft.get(key)
        average = (
            milliseconds if current is None else current + TTFT_SMOOTHING * (milliseconds - current)
        )
        self._ttft[key] = average
        threshold = self.config.ttft_penalty_threshold_ms
        if threshold and average > threshold:
            self.slow[key] = max(MIN_TTFT_FACTOR, threshold / average)
        elif key in self.slow:
            del self.slow[key]

    def ttft_factor(self, backend: str, model: str) -> float:
        """What a slow TTFT does to the pair's score: 1.0 when it is not over the threshold."""
        return self.slow.get((backend, model), 1.0)

    def record(self, backend: str, model: str, ok: bool) -> None:
        """Count one outcome of a request to ``backend`` for ``model``."""
        now = self._clock()
        key = (backend, model)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = _Stats(now)
        config = self.config
        if stats.backoff:
            # Cooled down or half-open: this outcome decides.
            if ok:
                stats.backoff = 0.0
                stats.until = 0.0
                stats.requests = stats.errors = 0
                stats.start = now
                self.cooled -= 1
            elif now >= stats.until:
                cap = config.cooldown_seconds * MAX_BACKOFF_FACTOR
                stats.backoff = min(stats.backoff * 2, cap)
                stats.until = now + stats.backoff
            return
        if now - stats.start >= config.window_seconds:
            stats.start = now
            stats.requests = stats.errors = 0
        stats.requests += 1
        if not ok:
            stats.errors += 1
        if (
            stats.requests >= config.min_requests
            and stats.errors >= config.error_rate_threshold * stats.requests
        ):
            stats.backoff = config.cooldown_seconds
            stats.until = now + stats.backoff
            stats.requests = stats.errors = 0
            self.cooled += 1

    def cooling(self, backend: str, model: str) -> float:
        """Seconds left in the pair's cool-down; 0 when it is routable (half-open included)."""
        stats = self._stats.get((backend, model))
        if stats is None or not stats.backoff:
            return 0.0
        left = stats.until - self._clock()
        return left if left > 0 else 0.0
