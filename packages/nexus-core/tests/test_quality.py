"""Quality: cool-downs of failing backends, half-open retries, and routing around them."""

from __future__ import annotations

from typing import Any

from nexus_core.adapters import Endpoint
from nexus_core.config import QualityConfig, RoutingConfig
from nexus_core.quality import MAX_BACKOFF_FACTOR, QualityTracker
from nexus_core.registry import Backend, Registry
from nexus_core.routing import Router, analyze
from nexus_core.testing.routing import routed_backend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(**overrides: Any) -> tuple[QualityTracker, Clock]:
    values: dict[str, Any] = {
        "error_rate_threshold": 0.5,
        "window_seconds": 60.0,
        "min_requests": 4,
        "cooldown_seconds": 10.0,
    }
    values.update(overrides)
    clock = Clock()
    return QualityTracker(QualityConfig(**values), clock=clock), clock


def test_needs_min_requests_before_cooling() -> None:
    quality, _ = tracker()
    for _ in range(3):
        quality.record("a", "m", False)
    assert quality.cooling("a", "m") == 0
    quality.record("a", "m", False)
    assert quality.cooling("a", "m") == 10.0
    assert quality.cooling("a", "other") == 0
    assert quality.cooled == 1


def test_below_threshold_stays_routable() -> None:
    quality, _ = tracker(min_requests=4, error_rate_threshold=0.75)
    for ok in (True, False, True, False, True, False):
        quality.record("a", "m", ok)
    assert quality.cooling("a", "m") == 0


def test_window_forgets_old_outcomes() -> None:
    quality, clock = tracker()
    for _ in range(3):
        quality.record("a", "m", False)
    clock.now += 61
    quality.record("a", "m", False)
    assert quality.cooling("a", "m") == 0


def test_half_open_success_restores() -> None:
    quality, clock = tracker()
    for _ in range(4):
        quality.record("a", "m", False)
    clock.now += 4
    assert quality.cooling("a", "m") == 6.0
    clock.now += 6
    assert quality.cooling("a", "m") == 0  # half-open: routable
    quality.record("a", "m", True)
    assert quality.cooled == 0
    # Fully restored: it takes min_requests new failures to cool it down again.
    for _ in range(3):
        quality.record("a", "m", False)
    assert quality.cooling("a", "m") == 0


def test_half_open_failure_doubles_backoff_up_to_cap() -> None:
    quality, clock = tracker()
    for _ in range(4):
        quality.record("a", "m", False)
    expected = 10.0
    for _ in range(6):
        clock.now += expected
        assert quality.cooling("a", "m") == 0
        quality.record("a", "m", False)
        expected = min(expected * 2, 10.0 * MAX_BACKOFF_FACTOR)
        assert quality.cooling("a", "m") == expected
    assert expected == 100.0
    assert quality.cooled == 1
    clock.now += expected
    quality.record("a", "m", True)
    assert quality.cooled == 0
    for _ in range(4):
        quality.record("a", "m", False)
    assert quality.cooling("a", "m") == 10.0  # the back-off was reset by the success


def test_failure_while_cooling_does_not_extend() -> None:
    quality, clock = tracker()
    for _ in range(5):
        quality.record("a", "m", False)
    clock.now += 3
    quality.record("a", "m", False)
    assert quality.cooling("a", "m") == 7.0


def make_backend(registry: Registry, name: str, priority: int) -> Backend:
    return routed_backend(registry, name, priority=priority)


def test_router_skips_cooling_backend_and_explains() -> None:
    registry = Registry()
    make_backend(registry, "a", 10)
    make_backend(registry, "b", 20)
    quality, _ = tracker()
    router = Router(registry, RoutingConfig(strategy="priority_only"), quality=quality)
    needs = analyze(Endpoint.CHAT, {"model": "m", "messages": []})
    assert [r.backend.name for r in router.plan(needs)] == ["a", "b"]
    for _ in range(4):
        quality.record("a", "m", False)
    assert [r.backend.name for r in router.plan(needs)] == ["b"]
    reasons: list[dict[str, str]] = []
    assert [b.name for b in router.eligible("m", needs, reasons)] == ["b"]
    assert reasons[0]["backend"] == "a"
    assert reasons[0]["reason"] == "cooling_down"
    assert "10 s" in reasons[0]["message"]


def test_router_keeps_last_candidates_when_all_cool() -> None:
    registry = Registry()
    make_backend(registry, "a", 10)
    make_backend(registry, "b", 20)
    quality, _ = tracker()
    router = Router(registry, RoutingConfig(strategy="priority_only"), quality=quality)
    needs = analyze(Endpoint.CHAT, {"model": "m", "messages": []})
    for name in ("a", "b"):
        for _ in range(4):
            quality.record(name, "m", False)
    assert [r.backend.name for r in router.plan(needs)] == ["a", "b"]
    reasons: list[dict[str, str]] = []
    assert len(router.eligible("m", needs, reasons)) == 2
    assert reasons == []


def test_slow_time_to_first_token_lowers_the_score_factor() -> None:
    quality, _ = tracker(ttft_penalty_threshold_ms=1000.0)
    quality.observe_ttft("a", "m", 500.0)
    assert quality.ttft_factor("a", "m") == 1.0
    assert not quality.slow
    quality.observe_ttft("b", "m", 2000.0)
    assert quality.ttft_factor("b", "m") == 0.5
    assert quality.ttft_factor("b", "other") == 1.0
    quality.observe_ttft("c", "m", 100_000.0)
    assert quality.ttft_factor("c", "m") == 0.25  # never below MIN_TTFT_FACTOR
    # The moving average comes down with fast samples, and the penalty goes away.
    for _ in range(10):
        quality.observe_ttft("b", "m", 100.0)
    assert quality.ttft_factor("b", "m") == 1.0
    assert ("b", "m") not in quality.slow


def test_zero_threshold_turns_the_ttft_penalty_off() -> None:
    quality, _ = tracker(ttft_penalty_threshold_ms=0.0)
    quality.observe_ttft("a", "m", 60_000.0)
    assert quality.ttft_factor("a", "m") == 1.0


def test_smart_strategy_prefers_the_backend_with_fast_first_tokens() -> None:
    registry = Registry()
    for name in ("slow", "fast"):
        make_backend(registry, name, 50)
    quality, _ = tracker(ttft_penalty_threshold_ms=1000.0)
    router = Router(registry, RoutingConfig(), quality=quality)
    needs = analyze(Endpoint.CHAT, {"model": "m", "messages": []})
    # Equal scores: registration order decides.
    assert [r.backend.name for r in router.plan(needs)] == ["slow", "fast"]
    quality.observe_ttft("slow", "m", 4000.0)
    assert [r.backend.name for r in router.plan(needs)] == ["fast", "slow"]
    # Only the slow model is penalised: another model on the same backend is not.
    assert quality.ttft_factor("slow", "other") == 1.0
