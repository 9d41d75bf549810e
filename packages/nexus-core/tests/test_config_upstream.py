"""The Rust Nexus's configuration spelling: its renamed keys are deprecated aliases, its keys with
no equivalent are ignored with a warning, its log level names are read; the rest stays strict."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from nexus_core.config import (
    ConfigError,
    LogLevel,
    NexusConfig,
    Zone,
    load_config,
    validate_config,
)
from nexus_core.config.keys import config_key_paths
from nexus_core.config.rust_nexus import UPSTREAM_KEYS, read_upstream_keys

#: A value of the Rust Nexus's type for each renamed key, and what it becomes here.
RENAMED: dict[str, tuple[Any, Any]] = {
    "quality.ttft_threshold_ms": (2000, 2000.0),
    "quality.window_1h": (3600, 3600.0),
    "queue.default_timeout_seconds": (12, 12.0),
    "queue.max_queue_size": (7, 7),
    "routing.budget.monthly_limit": (50.0, 50.0),
    "backends[].backend_type": ("ollama", "ollama"),
    "backends[].privacy": ("Restricted", Zone.RESTRICTED),
}
BACKEND = {"name": "local-ollama", "url": "http://127.0.0.1:11434", "type": "ollama"}


def nest(path: str, value: Any) -> dict[str, Any]:
    """``a.b[].c`` = value as raw TOML data (a list path gets one backend holding the key)."""
    *parents, key = path.split(".")
    if parents == ["backends[]"]:
        backend = {k: v for k, v in BACKEND.items() if k != "type" or key != "backend_type"}
        return {"backends": [{**backend, key: value}]}
    if parents == ["routing", "policies[]"]:
        return {"routing": {"policies": [{"model_pattern": "*", key: value}]}}
    data: dict[str, Any] = {key: value} if parents else {path: value}
    for part in reversed(parents):
        data = {part: data}
    return data


def read(config: NexusConfig, path: str) -> Any:
    """The value at a key path of this configuration (``backends[]``: the first backend)."""
    node: Any = config
    for part in path.split("."):
        node = getattr(node, part[:-2])[0] if part.endswith("[]") else getattr(node, part)
    return node


def test_the_table_is_complete_and_points_at_real_keys() -> None:
    paths = set(config_key_paths())
    assert {entry.path for entry in UPSTREAM_KEYS if entry.replacement} == set(RENAMED)
    for entry in UPSTREAM_KEYS:
        assert entry.path not in paths, f"{entry.path} is a key of ours, not an alias"
        if entry.replacement is None:
            assert entry.note, entry.path
        else:
            parent = entry.path.rsplit(".", 1)[0]
            assert f"{parent}.{entry.replacement}" in paths, entry.path


@pytest.mark.parametrize("path", sorted(RENAMED))
def test_a_renamed_key_is_read_under_its_new_name(path: str) -> None:
    given, expected = RENAMED[path]
    data = nest(path, given)
    before = copy.deepcopy(data)
    config = validate_config(data, source="nexus.toml")
    entry = next(entry for entry in UPSTREAM_KEYS if entry.path == path)
    new_path = f"{path.rsplit('.', 1)[0]}.{entry.replacement}"
    assert read(config, new_path) == expected
    old = path.replace("[]", "[0]")
    new = new_path.replace("[]", "[0]")
    assert config.deprecation_warnings == (
        f"nexus.toml: {old} is deprecated (the Rust Nexus's name): read as {new}; rename it",
    )
    assert data == before  # the caller's mapping is left alone


@pytest.mark.parametrize("path", sorted(RENAMED))
def test_both_names_at_once_is_an_error(path: str) -> None:
    given, _ = RENAMED[path]
    entry = next(entry for entry in UPSTREAM_KEYS if entry.path == path)
    data = nest(path, given)
    table = data
    for part in path.split(".")[:-1]:
        table = table[part[:-2]][0] if part.endswith("[]") else table[part]
    table[entry.replacement] = given
    with pytest.raises(ConfigError) as caught:
        validate_config(data, source="nexus.toml")
    old = path.replace("[]", "[0]")
    new = f"{old.rsplit('.', 1)[0]}.{entry.replacement}"
    assert caught.value.errors == [
        f"nexus.toml: {old}: the Rust Nexus's name of {new}, which is set too; keep only {new}"
    ]


def test_an_ignored_key_is_dropped_with_a_warning_saying_why() -> None:
    data = {
        "server": {"max_concurrent_requests": 1000},
        "quality": {
            "enabled": True,
            "window_24h": 86400,
            "update_interval": 30,
            "metrics_interval_seconds": 30,
        },
        "queue": {"priority_header": "X-Nexus-Priority"},
        "routing": {
            "budget": {"reconciliation_interval_secs": 60},
            "policies": [
                {"model_pattern": "*", "max_cost_per_request": 0.05, "fallback_allowed": True}
            ],
        },
        "lifecycle": {"timeout_ms": 300000},
        "fleet": {"enabled": False, "min_sample_days": 7},
    }
    ignored = [entry for entry in UPSTREAM_KEYS if entry.replacement is None]
    config = validate_config(data, source="nexus.toml")
    assert len(config.deprecation_warnings) == len(ignored)
    for entry, line in zip(ignored, config.deprecation_warnings, strict=True):
        shown = entry.path.replace("[]", "[0]")
        kind = "key" if "." in entry.path else "section"
        assert line == (
            f"nexus.toml: {shown}: a Rust Nexus {kind} with no effect here ({entry.note}); "
            "ignored, remove it"
        )
    # Nothing of them reached the configuration: it is the defaults plus the one policy.
    expected = NexusConfig.model_validate({"routing": {"policies": [{"model_pattern": "*"}]}})
    assert config.model_dump() == expected.model_dump()


def test_an_error_in_an_aliased_value_names_the_old_key() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"queue": {"default_timeout_seconds": -1}}, source="nexus.toml")
    assert caught.value.errors == [
        "nexus.toml (queue.default_timeout_seconds): queue.max_wait_seconds: must be >= 0.0 "
        "(got -1)"
    ]


def test_everything_else_stays_strict() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {"quality": {"ttft_treshold_ms": 1, "enable": True}, "queue": {"timeout": 3}},
            source="nexus.toml",
        )
    assert sorted(caught.value.errors) == [
        "nexus.toml: quality.enable: unknown key; known keys: error_rate_threshold, "
        "window_seconds, min_requests, cooldown_seconds, ttft_penalty_threshold_ms",
        "nexus.toml: quality.ttft_treshold_ms: unknown key; did you mean "
        "'ttft_penalty_threshold_ms'?",
        "nexus.toml: queue.timeout: unknown key; known keys: enabled, max_size, max_wait_seconds",
    ]
    # An alias is only read in its own table.
    with pytest.raises(ConfigError) as caught:
        validate_config({"server": {"ttft_threshold_ms": 1}}, source="nexus.toml")
    assert caught.value.errors[0].startswith("nexus.toml: server.ttft_threshold_ms: unknown key")


def test_a_policy_table_gets_a_hint_and_the_rest_is_still_checked() -> None:
    data = {
        "routing": {"strategy": "smart", "policies": {"default": {"privacy": "restricted"}}},
        "server": {"port": 0},
    }
    with pytest.raises(ConfigError) as caught:
        validate_config(data, source="nexus.toml")
    assert caught.value.errors == [
        "nexus.toml: routing.policies: must be an array of tables: write each policy as "
        '[[routing.policies]] with model_pattern = "<glob>" (a [routing.policies.<name>] table '
        "is not a policy, in the Rust Nexus either)",
        "nexus.toml: server.port: must be >= 1 (got 0)",
    ]


def test_reading_the_keys_copies_only_what_it_changes() -> None:
    backends = [dict(BACKEND), {**BACKEND, "name": "b", "privacy": "open"}]
    data = {"backends": backends, "server": {"port": 9000}}
    out, found = read_upstream_keys(data, "f.toml")
    assert out["server"] == {"port": 9000}
    assert out["backends"][1] == {**BACKEND, "name": "b", "zone": "open"}
    assert backends[1]["privacy"] == "open"  # the input is untouched
    assert found.origins == {("backends", "1", "zone"): "f.toml (backends[1].privacy)"}
    assert found.errors == []


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("trace", LogLevel.DEBUG),
        ("TRACE", LogLevel.DEBUG),
        ("warn", LogLevel.WARNING),
        ("Warn", LogLevel.WARNING),
        ("debug", LogLevel.DEBUG),
        ("info", LogLevel.INFO),
        ("warning", LogLevel.WARNING),
        ("error", LogLevel.ERROR),
    ],
)
def test_the_rust_nexus_log_levels(given: str, level: LogLevel) -> None:
    from_file = validate_config({"logging": {"level": given, "component_levels": {"h": given}}})
    assert from_file.logging.level is level
    assert from_file.logging.component_levels == {"h": level}
    assert from_file.deprecation_warnings == ()
    from_env = load_config(None, environ={"NEXUS_LOG_LEVEL": given}, use_default_locations=False)
    assert from_env.logging.level is level
    from_flag = load_config(
        None, environ={}, overrides={"logging.level": given}, use_default_locations=False
    )
    assert from_flag.logging.level is level


def test_an_unknown_log_level_is_still_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"NEXUS_LOG_LEVEL": "verbose"}, use_default_locations=False)
    assert caught.value.errors == [
        "environment variable NEXUS_LOG_LEVEL: logging.level: must be 'debug', 'info', "
        "'warning' or 'error' (any case) (got 'verbose')"
    ]


def test_a_rust_nexus_file_loads(tmp_path: Path) -> None:
    """A file in the Rust Nexus's spelling, every section of its example and docs."""
    path = tmp_path / "nexus.toml"
    path.write_text(
        """
[server]
host = "0.0.0.0"
port = 8000
request_timeout_seconds = 300
max_concurrent_requests = 1000

[discovery]
enabled = false
service_types = ["_ollama._tcp.local", "_llm._tcp.local"]
grace_period_seconds = 60

[health_check]
enabled = true
interval_seconds = 30
timeout_seconds = 5
failure_threshold = 3
recovery_threshold = 2

[routing]
strategy = "smart"
max_retries = 2

[routing.weights]
priority = 50
load = 30
latency = 20

[routing.aliases]
"gpt-4" = "llama3:70b"

[routing.fallbacks]
"llama3:70b" = ["qwen2:72b"]

[[routing.policies]]
model_pattern = "gpt-4*"
privacy = "restricted"
min_tier = 3
max_cost_per_request = 0.05
fallback_allowed = true

[routing.budget]
monthly_limit_usd = 100.0
soft_limit_percent = 75.0
hard_limit_action = "block_cloud"
reconciliation_interval_secs = 60

[quality]
error_rate_threshold = 0.5
ttft_penalty_threshold_ms = 3000
metrics_interval_seconds = 30

[queue]
enabled = true
max_size = 100
max_wait_seconds = 30

[[backends]]
name = "local-ollama"
url = "http://localhost:11434"
type = "ollama"
priority = 1
zone = "Restricted"
tier = 3

[logging]
level = "warn"
format = "pretty"
enable_content_logging = false

[logging.component_levels]
routing = "trace"

[lifecycle]
timeout_ms = 300000
vram_headroom_percent = 20

[fleet]
enabled = false
min_sample_days = 7
""",
        encoding="utf-8",
    )
    config = load_config(path, environ={}, use_default_locations=False)
    assert config.backends[0].zone is Zone.RESTRICTED
    assert config.routing.policies[0].min_tier == 3
    assert config.routing.budget.monthly_limit_usd == 100.0
    assert config.logging.level is LogLevel.WARNING
    assert config.logging.component_levels == {"routing": LogLevel.DEBUG}
    ignored = [line.split(": ", 2)[1] for line in config.deprecation_warnings]
    assert ignored == [
        "server.max_concurrent_requests",
        "quality.metrics_interval_seconds",
        "routing.budget.reconciliation_interval_secs",
        "routing.policies[0].max_cost_per_request",
        "routing.policies[0].fallback_allowed",
        "lifecycle",
        "fleet.enabled",
        "fleet.min_sample_days",
    ]
    assert all(line.startswith(f"{path}: ") for line in config.deprecation_warnings)
