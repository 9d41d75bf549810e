"""The example configuration and the TOML writer: what they write loads back unchanged."""

from __future__ import annotations

import math
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from nexus_core.config import (
    HardLimitAction,
    LogFormat,
    LogLevel,
    NexusConfig,
    PolicyPrivacy,
    RoutingStrategy,
    StateBackend,
    Zone,
    load_config,
    mask_secrets,
    validate_config,
)
from nexus_core.config.example import example_config
from nexus_core.config.keys import config_key_paths, field_shape
from nexus_core.config.toml_writer import to_toml, toml_value

# --- the example -----------------------------------------------------------------------------


@pytest.mark.parametrize("minimal", [False, True])
def test_example_loads_to_the_defaults(tmp_path: Path, minimal: bool) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(example_config(minimal), encoding="utf-8")
    assert load_config(path, environ={}) == NexusConfig()


@pytest.mark.parametrize("minimal", [False, True])
def test_example_with_its_commented_examples_enabled_is_valid(minimal: bool) -> None:
    config = validate_config(tomllib.loads(example_config(minimal, include_examples=True)))
    assert config != NexusConfig()
    assert config.backends[0].name == "gpu-box"
    if not minimal:
        assert config.routing.policies[0].model_pattern == "internal-*"
        assert config.pricing[0].output_per_million == 10.0
        assert config.auth.keys[0].key_env == "NEXUS_KEY_TEAM_A"
        assert config.routing.aliases == {"gpt-4": "llama3.1:70b"}
        assert config.routing.budget.monthly_limit_usd == 50.0


def _leaf_keys() -> list[str]:
    """Key paths that are written as ``key = value`` (not tables of their own)."""
    paths = list(config_key_paths())
    return [p for p in paths if not any(o.startswith((p + ".", p + "[]")) for o in paths)]


def test_full_example_shows_every_key_with_a_comment() -> None:
    text = example_config(False)
    lines = text.splitlines()
    for table_array in ("backends", "routing.policies", "pricing", "auth.keys"):
        assert f"# [[{table_array}]]" in lines
    for path in _leaf_keys():
        if path.endswith(("routing.aliases", "routing.fallbacks", "logging.component_levels")):
            header = path.replace("[]", "")
            assert f"[{header}]" in lines, path
            continue
        key = path.rsplit(".", 1)[-1]
        pattern = re.compile(rf"^(# )?{re.escape(key)} = ")
        found = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert found, f"{path} is missing from the example"
        # The line above each key is its comment.
        assert all(lines[i - 1].startswith("# ") for i in found), path


def test_full_example_shows_the_defaults() -> None:
    text = example_config(False)
    defaults = NexusConfig()
    assert f"port = {defaults.server.port}" in text
    assert f"max_body_bytes = {defaults.server.max_body_bytes}" in text
    assert f'strategy = "{defaults.routing.strategy}"' in text
    assert f"soft_limit_percent = {defaults.routing.budget.soft_limit_percent!r}" in text


def test_minimal_example_is_short() -> None:
    minimal = example_config(True)
    assert len(minimal.splitlines()) < len(example_config(False).splitlines()) / 3
    assert "[server]" in minimal
    assert "[quality]" not in minimal


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        inner = field_shape(field)[1]
        if inner is not None:
            found += _models(inner)
    return found


def test_every_key_has_a_description() -> None:
    for model in _models(NexusConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} needs a description"


# --- the TOML writer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", '"plain"'),
        ('quote " and \\ backslash', '"quote \\" and \\\\ backslash"'),
        ("tab\tnew\nline\x01\x7f", '"tab\\tnew\\nline\\u0001\\u007f"'),
        (True, "true"),
        (3, "3"),
        (0.1, "0.1"),
        (1e300, "1e+300"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        ([], "[]"),
        ([1, "a"], '[1, "a"]'),
        ({"a b": 1}, '{ "a b" = 1 }'),
    ],
)
def test_toml_value(value: object, expected: str) -> None:
    assert toml_value(value) == expected
    assert tomllib.loads(f"x = {expected}")["x"] == value


def test_to_toml_skips_none_and_nests_tables() -> None:
    data = {
        "top": 1,
        "none": None,
        "a": {"b": {"c": 2}, "list": [{"x": 1, "sub": {"y": 2}}, {"x": 3}]},
        "empty": {},
        "weird key": {"ü.é": "v"},
    }
    text = to_toml(data)
    assert "none" not in text
    assert tomllib.loads(text) == {k: v for k, v in data.items() if v is not None}


# --- hypothesis: valid configurations written as TOML load back equal -------------------------

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
env_names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,15}", fullmatch=True)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,8}){0,2}", fullmatch=True)
urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}:{port}{path}",
    st.sampled_from(["http", "https"]),
    hosts,
    st.integers(1, 65535),
    st.sampled_from(["", "/", "/v1", "/api/"]),
)
seconds = st.floats(min_value=0.001, max_value=1e6)
non_negative = st.floats(min_value=0, max_value=1e6)
globs = st.from_regex(r"[a-z0-9*?.:-]{1,8}(\[!?[a-z0-9]{1,3}\][a-z0-9*?]{0,3})?", fullmatch=True)


def any_case(values: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(values).flatmap(
        lambda v: st.sampled_from([v, v.upper(), v.capitalize()])
    )


def values_of(enum: Any) -> list[str]:
    return [member.value for member in enum]


server = st.fixed_dictionaries(
    {},
    optional={
        "host": st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "nexus.local"]),
        "port": st.integers(1, 65535),
        "request_timeout_seconds": seconds,
        "connect_timeout_seconds": seconds,
        "first_byte_timeout_seconds": seconds,
        "idle_timeout_seconds": seconds,
        "max_body_bytes": st.integers(1024, 2**40),
        "drain_timeout_seconds": non_negative,
    },
)
discovery = st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.booleans(),
        "service_types": st.lists(
            st.from_regex(r"_[a-z0-9-]{1,15}\._(tcp|udp)\.local\.", fullmatch=True), max_size=3
        ),
        "grace_period_seconds": non_negative,
        "interfaces": st.lists(st.sampled_from(["192.168.1.20", "10.0.0.1", "fd00::1"])),
    },
)
health_check = st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.booleans(),
        "interval_seconds": seconds,
        "timeout_seconds": seconds,
        "failure_threshold": st.integers(1, 100),
        "recovery_threshold": st.integers(1, 100),
    },
)
policy = st.fixed_dictionaries(
    {"model_pattern": globs},
    optional={"privacy": any_case(values_of(PolicyPrivacy)), "min_tier": st.integers(1, 5)},
)
price = st.fixed_dictionaries(
    {
        # A name holding [ or ] is a glob, and must then be a valid one.
        "model": st.one_of(names.filter(lambda n: not set(n) & set("[]")), globs),
        "input_per_million": non_negative,
        "output_per_million": non_negative,
    },
    optional={"backends": st.lists(names, max_size=2), "cached_input_per_million": non_negative},
)
budget = st.fixed_dictionaries(
    {},
    optional={
        "monthly_limit_usd": non_negative,
        "soft_limit_percent": st.floats(min_value=0.01, max_value=100),
        "hard_limit_action": any_case(values_of(HardLimitAction)),
    },
)


@st.composite
def aliases(draw: st.DrawFn) -> dict[str, str]:
    """Aliases straight to models, plus one chain of up to three hops (never a cycle)."""
    direct = draw(st.dictionaries(names.map(lambda n: f"alias:{n}"), names, max_size=3))
    hops = draw(st.integers(0, 3))
    chain = {f"chain{i}": f"chain{i + 1}" for i in range(hops)}
    return direct | chain


routing = st.fixed_dictionaries(
    {},
    optional={
        "strategy": any_case(values_of(RoutingStrategy)),
        "max_retries": st.integers(0, 20),
        "weights": st.fixed_dictionaries(
            {}, optional={"priority": non_negative, "load": non_negative, "latency": non_negative}
        ),
        "aliases": aliases(),
        "fallbacks": st.dictionaries(names, st.lists(names, max_size=3), max_size=3),
        "policies": st.lists(policy, max_size=3),
        "budget": budget,
    },
)
local_backend = st.fixed_dictionaries(
    {"url": urls},
    optional={
        "type": st.sampled_from(["generic", "ollama", "vllm", "llamacpp", "LMStudio"]),
        "priority": st.integers(0, 100),
        "zone": any_case(values_of(Zone)),
        "tier": st.integers(1, 5),
        "api_key_env": env_names,
        "max_concurrent": st.integers(1, 1000),
        "models": st.lists(names, max_size=3),
    },
)
cloud_backend = st.fixed_dictionaries(
    {
        "url": urls,
        "type": st.sampled_from(["openai", "anthropic"]),
        "api_key_env": env_names,
    },
    optional={"zone": any_case(values_of(Zone)), "tier": st.integers(1, 5)},
)
#: Backend names are restricted to a safe set (``BACKEND_NAME``).
backend_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,11}", fullmatch=True)
backends = st.lists(
    st.tuples(backend_names, st.one_of(local_backend, cloud_backend)),
    max_size=4,
    unique_by=lambda pair: pair[0],
).map(lambda pairs: [{"name": name, **backend} for name, backend in pairs])
api_key = st.fixed_dictionaries(
    {"name": names, "key_env": env_names},
    optional={
        "models": st.lists(globs, max_size=2),
        "requests_per_minute": st.integers(1, 10_000),
        "tokens_per_minute": st.integers(1, 10_000_000),
        "monthly_budget_usd": non_negative,
    },
)
auth = st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.booleans(),
        "keys": st.lists(api_key, max_size=2),
        "admin_key_env": env_names,
    },
)
logging_section = st.fixed_dictionaries(
    {},
    optional={
        "level": any_case(values_of(LogLevel)),
        "format": any_case(values_of(LogFormat)),
        "enable_content_logging": st.booleans(),
        "component_levels": st.dictionaries(names, any_case(values_of(LogLevel)), max_size=3),
    },
)
state = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "backend": any_case(["sqlite", "memory"]),
            "path": texts,
            "key_prefix": texts,
        },
    ),
    st.fixed_dictionaries(
        {"backend": st.just(StateBackend.REDIS.value), "redis_url_env": env_names},
        optional={"key_prefix": texts},
    ),
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "server": server,
        "discovery": discovery,
        "health_check": health_check,
        "routing": routing,
        "backends": backends,
        "pricing": st.lists(price, max_size=3),
        "queue": st.fixed_dictionaries(
            {},
            optional={
                "enabled": st.booleans(),
                "max_size": st.integers(0, 10_000),
                "max_wait_seconds": non_negative,
            },
        ),
        "quality": st.fixed_dictionaries(
            {},
            optional={
                "error_rate_threshold": st.floats(min_value=0.001, max_value=1),
                "window_seconds": seconds,
                "min_requests": st.integers(1, 1000),
                "cooldown_seconds": seconds,
                "ttft_penalty_threshold_ms": non_negative,
            },
        ),
        "auth": auth,
        "logging": logging_section,
        "state": state,
        "responses": st.fixed_dictionaries(
            {},
            optional={
                "store": st.booleans(),
                "retention_seconds": seconds,
                "max_record_bytes": st.integers(1024, 2**40),
                "max_chain_depth": st.integers(1, 1_000_000),
                "max_conversation_bytes": st.integers(1024, 2**40),
            },
        ),
        "telemetry": st.fixed_dictionaries(
            {},
            optional={"enabled": st.booleans(), "otlp_endpoint": urls, "service_name": texts},
        ),
    },
)


@settings(max_examples=150, deadline=None)
@given(configs)
def test_generated_configs_round_trip_through_toml(data: dict[str, Any]) -> None:
    expected = validate_config(data)
    text = to_toml(data)
    assert tomllib.loads(text) == data
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "nexus.toml"
        path.write_text(text, encoding="utf-8")
        assert load_config(path, environ={}, use_default_locations=False) == expected
        # What `nexus config check` prints is itself a configuration that loads the same.
        printed = to_toml(mask_secrets(expected, environ={}))
        path.write_text(printed, encoding="utf-8")
        assert load_config(path, environ={}, use_default_locations=False) == expected
