"""A routing strategy from a plugin, chosen by ``[routing] strategy``, orders a real request.

A throw-away plugin distribution (a module and its ``*.dist-info`` with an entry point in the
group ``nexus``) is put on the ``PYTHONPATH`` of a real ``nexus serve``. It registers two
strategies, the two shapes ``register_routing_strategies`` takes: a ready object
(``reverse_priority``) and a factory called with ``[routing]`` (``name_order``, a class). In
front of two fake backends, the configured strategy's order decides which one answers, and its
``reason`` is the ``X-Nexus-Route-Reason``. A name that nothing registered stops ``nexus serve``
and ``nexus config check`` with one line naming the known ones.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from nexus_core.testing import FakeBackend, free_port
from tests.conftest import NEXUS, nexus_serve

HELLO: list[Any] = [{"role": "user", "content": "Hi"}]

PLUGIN_MODULE = '''
"""Routing strategies of a test's throw-away plugin."""

from nexus_core import hookimpl


class ReversePriority:
    """The highest priority number first: the opposite of every built-in strategy's pick."""

    reason = "reverse-priority"

    def order(self, candidates, model):
        return sorted(candidates, key=lambda backend: -backend.config.priority)


class NameOrder:
    """Backends by name, last first; built from [routing] (its reason shows it was)."""

    def __init__(self, config, quality):
        self.reason = f"name-order-{config.max_retries}-retries"

    def order(self, candidates, model):
        return sorted(candidates, key=lambda backend: backend.name, reverse=True)


@hookimpl
def register_routing_strategies(register):
    register("reverse_priority", ReversePriority())
    register("name_order", NameOrder)
'''

NEXUS_TOML = """
[discovery]
enabled = false

[health_check]
interval_seconds = 3600

[state]
backend = "memory"

[routing]
strategy = "{strategy}"
max_retries = 1

[[backends]]
name = "alpha"
url = "{alpha}"
type = "generic"
priority = 1

[[backends]]
name = "zulu"
url = "{zulu}"
type = "generic"
priority = 90
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed the way pip lays a distribution out: module plus ``.dist-info``."""
    site = tmp_path_factory.mktemp("strategy-site")
    (site / "nexus_strategies_test.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    info = site / "nexus_strategies_test-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: nexus-strategies-test\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text("[nexus]\nstrategies-test = nexus_strategies_test\n")
    return site


def plugin_env(site: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


@pytest.fixture
def fleet() -> Iterator[tuple[FakeBackend, FakeBackend]]:
    alpha, zulu = FakeBackend("alpha", ["m"]), FakeBackend("zulu", ["m"])
    with alpha.running(), zulu.running():
        yield alpha, zulu


def write_config(tmp_path: Path, strategy: str, alpha: str, zulu: str) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(NEXUS_TOML.format(strategy=strategy, alpha=alpha, zulu=zulu))
    return path


def route(url: str) -> tuple[str, str]:
    """The backend that answered one chat request, and why it was picked."""
    with openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=HELLO)
    assert raw.parse().choices[0].message.content
    return raw.headers["x-nexus-backend"], raw.headers["x-nexus-route-reason"]


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        pytest.param("reverse_priority", "reverse-priority", id="an-object"),
        pytest.param("Name_Order", "name-order-1-retries", id="a-factory-any-case"),
    ],
)
def test_a_plugins_strategy_picks_the_backend(
    tmp_path: Path,
    plugin_site: Path,
    fleet: tuple[FakeBackend, FakeBackend],
    strategy: str,
    reason: str,
) -> None:
    alpha, zulu = fleet
    config = write_config(tmp_path, strategy, alpha.url, zulu.url)
    with nexus_serve(config, env=plugin_env(plugin_site)) as (_, url):
        routes = [route(url) for _ in range(3)]
    # Every built-in strategy would prefer alpha (priority 1, idle, equally fast); the
    # plugin's order puts zulu first, every time.
    assert routes == [("zulu", reason)] * 3
    assert len(zulu.inference_requests) == 3
    assert alpha.inference_requests == []


def test_without_the_strategy_the_same_fleet_goes_to_alpha(
    tmp_path: Path, plugin_site: Path, fleet: tuple[FakeBackend, FakeBackend]
) -> None:
    alpha, zulu = fleet
    config = write_config(tmp_path, "priority_only", alpha.url, zulu.url)
    with nexus_serve(config, env=plugin_env(plugin_site)) as (_, url):
        assert route(url) == ("alpha", "priority")


def run_nexus(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environment.update({"NEXUS_DISCOVERY": "false", **env})
    return subprocess.run(
        [NEXUS, *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


def test_serve_and_config_check_refuse_a_strategy_nothing_registered(
    tmp_path: Path, plugin_site: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, "reverse_priorty", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    )
    expected = (
        f"{config}: routing.strategy: unknown routing strategy 'reverse_priorty'; did you mean "
        "'reverse_priority'? (known strategies: cache_affinity, least_loaded, name_order, "
        "priority_only, random, reverse_priority, round_robin, smart)"
    )
    env = plugin_env(plugin_site)
    served = run_nexus(
        ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)], env
    )
    assert (served.returncode, served.stderr.splitlines()) == (1, [expected])
    checked = run_nexus(["config", "check", str(config)], env)
    assert (checked.returncode, checked.stdout, checked.stderr.splitlines()) == (1, "", [expected])
    # Without the plugin, only the built-in names are known.
    alone = run_nexus(["config", "check", str(config)], {})
    assert alone.returncode == 1
    assert alone.stderr.splitlines() == [
        f"{config}: routing.strategy: unknown routing strategy 'reverse_priorty' (known "
        "strategies: cache_affinity, least_loaded, priority_only, random, round_robin, smart)"
    ]
