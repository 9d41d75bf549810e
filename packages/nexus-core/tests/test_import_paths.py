"""The split modules keep their old import paths: what adapters, the server, tests, benchmarks
and docs import from ``nexus_core.routing``, ``nexus_core.gateway`` and ``nexus_core.failover``."""

from __future__ import annotations

import importlib

import pytest

#: (module, name) pairs imported somewhere in the repository from the pre-split paths.
USED = (
    [
        ("nexus_core.routing", name)
        for name in (
            "PERMANENT_REASONS",
            "RequestNeeds",
            "Route",
            "Router",
            "Strategy",
            "SmartStrategy",
            "builtin_strategies",
            "load_ratio",
            "analyze",
            "replace_model",
            "with_include_usage",
            "CHARS_PER_TOKEN",
        )
    ]
    + [
        ("nexus_core.gateway", name)
        for name in (
            "Gateway",
            "ProxyResult",
            "ProxyStream",
            "state_unavailable",
            "BACKENDS_COLLECTION",
            "_name_from_url",
        )
    ]
    + [
        ("nexus_core.failover", name)
        for name in ("ProxyResult", "ProxyStream", "Attempt", "client_error", "is_json")
    ]
)


@pytest.mark.parametrize(("module", "name"), USED)
def test_old_import_paths_still_work(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


@pytest.mark.parametrize(
    "module",
    [
        "nexus_core.routing",
        "nexus_core.routing.analysis",
        "nexus_core.routing.body",
        "nexus_core.routing.policies",
        "nexus_core.routing.strategies",
        "nexus_core.routing.router",
        "nexus_core.gateway",
        "nexus_core.gateway.components",
        "nexus_core.gateway.lifecycle",
        "nexus_core.gateway.backends",
        "nexus_core.gateway.catalogue",
        "nexus_core.gateway.proxy",
        "nexus_core.gateway.facade",
        "nexus_core.failover",
    ],
)
def test_every_public_name_exists(module: str) -> None:
    loaded = importlib.import_module(module)
    missing = [name for name in loaded.__all__ if not hasattr(loaded, name)]
    assert missing == []


def test_the_gateway_is_one_class_of_its_parts() -> None:
    from nexus_core.gateway import Gateway
    from nexus_core.gateway.backends import BackendManagement
    from nexus_core.gateway.catalogue import Catalogue
    from nexus_core.gateway.components import GatewayComponents
    from nexus_core.gateway.lifecycle import Lifecycle
    from nexus_core.gateway.proxy import Requests

    parts = (Lifecycle, BackendManagement, Requests, Catalogue, GatewayComponents)
    assert Gateway.__mro__[1:-1] == parts
