"""Cost of one routing decision (plan) at 50 and 1,000 backends, in microseconds.

Run: uv run python benchmarks/routing_decision.py
"""

from __future__ import annotations

import time
from typing import Any

from nexus_core.adapters import BackendStatus, Endpoint, ModelInfo
from nexus_core.config import BackendConfig, RoutingConfig
from nexus_core.registry import Backend, Registry
from nexus_core.routing import Router, analyze


def build(count: int, strategy: str = "smart") -> Router:
    """A router over ``count`` healthy backends that all serve the model ``m`` (and their own)."""
    registry = Registry()
    for index in range(count):
        config = BackendConfig(name=f"b{index}", url="http://127.0.0.1:9", priority=index % 7)
        backend = Backend(
            name=config.name,
            config=config,
            adapter=None,  # type: ignore[arg-type]
            zone=config.zone_for(False),
            is_cloud=False,
        )
        registry.add(backend)
        registry.set_models(backend, [ModelInfo("m"), ModelInfo(f"own-{index}")])
        backend.status = BackendStatus.HEALTHY
        backend.latency_ms = float(index % 13)
    return Router(registry, RoutingConfig(strategy=strategy))  # type: ignore[arg-type]


def measure(router: Router, body: dict[str, Any], rounds: int = 20_000) -> float:
    needs = analyze(Endpoint.CHAT, body)
    started = time.perf_counter()
    for _ in range(rounds):
        router.plan(needs)
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hello!"}]}
    for count in (1, 50, 1000):
        for strategy in ("smart", "round_robin", "least_loaded"):
            rounds = 2_000 if count == 1000 else 20_000
            cost = measure(build(count, strategy), body, rounds)
            print(f"backends={count:5d} strategy={strategy:13s} plan={cost:8.1f} us")
    # A model served by one backend among 1,000: the index makes it as cheap as with one.
    router = build(1000, "smart")
    cost = measure(router, {"model": "own-7", "messages": []})
    print(f"backends= 1000 model on one backend  plan={cost:8.1f} us")


if __name__ == "__main__":
    main()
