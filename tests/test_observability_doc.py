"""docs/observability.md and docs/grafana-dashboard.json stay true to what Nexus exports.

Every metric family ``Monitor.render_prometheus`` can emit, every ``/v1/history`` field and every
top-level ``/v1/stats`` key is named in the page (in backticks); the dashboard is valid JSON and
queries only metrics that exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nexus_core.accounting import Accountant
from nexus_core.config import BudgetConfig
from nexus_core.observability import Monitor, RequestRecord
from nexus_core.queueing import CapacityQueue
from nexus_core.registry import Registry
from nexus_core.state import MemoryStore

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = (DOCS / "observability.md").read_text("utf-8")
DASHBOARD = DOCS / "grafana-dashboard.json"
#: Words written in backticks anywhere in the page.
QUOTED = set(re.findall(r"`([^`\n]+)`", PAGE))
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _records() -> list[RequestRecord]:
    """Requests touching every family: tokens, cost, ttft, an error, a failover, a fallback."""
    base = {"front_door": "openai", "endpoint": "chat", "started": 1.0}
    return [
        RequestRecord(
            request_id="ok",
            model="m",
            served_model="m",
            backend="a",
            status=200,
            duration=0.2,
            prompt_tokens=3,
            completion_tokens=5,
            cached_tokens=2,
            cost_usd=0.001,
            attempts=1,
            **base,
        ),
        RequestRecord(
            request_id="stream",
            model="m",
            served_model="m",
            backend="a",
            stream=True,
            status=200,
            duration=1.5,
            ttft=0.1,
            completion_tokens=7,
            attempts=1,
            **base,
        ),
        RequestRecord(
            request_id="failover",
            model="m",
            served_model="m",
            backend="b",
            route_reason="failover",
            status=200,
            duration=0.4,
            attempts=2,
            failed_backends=("a",),
            **base,
        ),
        RequestRecord(
            request_id="fallback",
            model="big",
            served_model="m",
            backend="b",
            route_reason="fallback",
            status=200,
            duration=0.3,
            fallback_from="big",
            attempts=1,
            **base,
        ),
        RequestRecord(
            request_id="missing",
            model="made-up",
            status=404,
            error="model_not_found",
            **base,
        ),
    ]


@pytest.fixture(scope="module")
def monitor() -> Monitor:
    accountant = Accountant(BudgetConfig(monthly_limit_usd=10.0), [], MemoryStore())
    monitor = Monitor(Registry(), queue=CapacityQueue(), accountant=accountant)
    for record in _records():
        monitor.finish(record)
    return monitor


@pytest.fixture(scope="module")
def families(monitor: Monitor) -> dict[str, str]:
    """Every family of ``/metrics``: name -> type, from the ``# TYPE`` lines."""
    found: dict[str, str] = {}
    for line in monitor.render_prometheus().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            found[name] = kind
    return found


def test_the_workload_reaches_every_family(monitor: Monitor, families: dict[str, str]) -> None:
    # The fixture is meant to exercise everything; a family without samples is untested here.
    text = monitor.render_prometheus()
    counted = {name for name in families if re.search(rf"^{name}[{{_ ]", text, re.M)}
    # Registry() is empty, so the per-backend gauges have no samples; all else must.
    per_backend = {"nexus_backend_healthy", "nexus_backend_latency_seconds"}
    per_backend.add("nexus_pending_requests")
    assert set(families) - counted == per_backend
    assert families["nexus_request_duration_seconds"] == "histogram"
    assert "nexus_budget_utilization_ratio" in families


def test_every_metric_family_is_documented(families: dict[str, str]) -> None:
    assert len(families) >= 14
    missing = sorted(name for name in families if name not in QUOTED)
    assert not missing, f"docs/observability.md does not name {missing}"


def test_every_history_field_and_stats_key_is_documented(monitor: Monitor) -> None:
    fields = set(RequestRecord().as_dict())
    assert not sorted(fields - QUOTED), "history fields missing from docs/observability.md"
    stats: dict[str, Any] = monitor.stats()
    assert not sorted(set(stats) - QUOTED), "/v1/stats keys missing from docs/observability.md"


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        for child in node.values():
            found += _exprs(child)
        return found
    if isinstance(node, list):
        return [expr for child in node for expr in _exprs(child)]
    return []


def test_the_dashboard_queries_only_exported_metrics(families: dict[str, str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert dashboard["panels"]
    exprs = _exprs(dashboard)
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        used.update(re.findall(r"nexus_[a-z_]+", expr))
    unknown = []
    for name in sorted(used):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and families.get(name.removesuffix(suffix)) == "histogram":
                base = name.removesuffix(suffix)
        if base not in families:
            unknown.append(name)
    assert not unknown, f"the dashboard queries metrics Nexus does not export: {unknown}"
