"""Configuration: precedence of file, environment and command line, and every validation error."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_core.config import (
    ENV_OVERRIDES,
    BackendConfig,
    ConfigError,
    LogLevel,
    NexusConfig,
    RoutingStrategy,
    Zone,
    find_config_file,
    load_config,
    mask_secrets,
    secret_status,
    validate_config,
)


def write(tmp_path: Path, text: str, name: str = "nexus.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(
    path: Path | None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, object] | None = None,
) -> NexusConfig:
    return load_config(
        path, environ=environ or {}, overrides=overrides, use_default_locations=False
    )


def errors_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, environ)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


# --- precedence ------------------------------------------------------------------------------


def test_no_file_gives_the_defaults() -> None:
    config = load(None)
    assert config == NexusConfig()
    assert config.server.port == 8000
    assert config.server.host == "0.0.0.0"
    assert config.discovery.enabled is True
    assert config.routing.strategy == RoutingStrategy.SMART


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")) == NexusConfig()


def test_file_overrides_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, "[server]\nport = 9000\n[logging]\nlevel = 'debug'\n"))
    assert config.server.port == 9000
    assert config.logging.level is LogLevel.DEBUG
    assert config.server.host == "0.0.0.0"  # untouched keys keep their defaults


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\nhost = '10.0.0.1'\n")
    config = load(path, {"NEXUS_PORT": "9100"})
    assert config.server.port == 9100
    assert config.server.host == "10.0.0.1"


def test_command_line_overrides_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    config = load(path, {"NEXUS_PORT": "9100"}, {"server.port": 9200})
    assert config.server.port == 9200


def test_unset_command_line_values_let_the_environment_through(tmp_path: Path) -> None:
    path = write(tmp_path, "[discovery]\nenabled = true\n")
    overrides: dict[str, object] = {"server.port": None, "discovery.enabled": None}
    config = load(path, {"NEXUS_PORT": "9100", "NEXUS_DISCOVERY": "off"}, overrides)
    assert config.server.port == 9100
    assert config.discovery.enabled is False


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("NEXUS_HOST", "127.0.0.1", "127.0.0.1"),
        ("NEXUS_PORT", "8123", 8123),
        ("NEXUS_LOG_LEVEL", "WARNING", LogLevel.WARNING),
        ("NEXUS_LOG_FORMAT", "json", "json"),
        ("NEXUS_DISCOVERY", "false", False),
        ("NEXUS_DISCOVERY", "0", False),
        ("NEXUS_HEALTH_CHECK", "no", False),
        ("NEXUS_HEALTH_CHECK", "ON", True),
    ],
)
def test_each_environment_variable_overrides_its_key(
    tmp_path: Path, variable: str, raw: str, expected: object
) -> None:
    section, key = ENV_OVERRIDES[variable]
    # The file sets something else, so the value can only come from the variable.
    other = {"NEXUS_HOST": "'10.1.1.1'", "NEXUS_PORT": "7000", "NEXUS_LOG_LEVEL": "'error'"}
    other |= {"NEXUS_LOG_FORMAT": "'pretty'", "NEXUS_DISCOVERY": "true"}
    other |= {"NEXUS_HEALTH_CHECK": "false" if expected else "true"}
    path = write(tmp_path, f"[{section}]\n{key} = {other[variable]}\n")
    assert getattr(getattr(load(path), section), key) != expected
    assert getattr(getattr(load(path, {variable: raw}), section), key) == expected


def test_empty_environment_variables_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    assert load(path, {"NEXUS_PORT": "", "NEXUS_DISCOVERY": " "}).server.port == 9000


def test_nexus_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9300\n", name="elsewhere.toml")
    config = load_config(environ={"NEXUS_CONFIG": str(path)})
    assert config.server.port == 9300


def test_explicit_path_beats_nexus_config(tmp_path: Path) -> None:
    named = write(tmp_path, "[server]\nport = 9300\n", name="named.toml")
    explicit = write(tmp_path, "[server]\nport = 9400\n", name="explicit.toml")
    assert load_config(explicit, environ={"NEXUS_CONFIG": str(named)}).server.port == 9400


def test_nexus_toml_in_the_working_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[server]\nport = 9500\n")
    monkeypatch.chdir(tmp_path)
    assert find_config_file(environ={}) == Path("nexus.toml")
    assert load_config(environ={}).server.port == 9500
    assert load_config(environ={}, use_default_locations=False).server.port == 8000


def test_no_file_anywhere_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config_file(environ={}) is None
    assert load_config(environ={}) == NexusConfig()


# --- file errors -----------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert errors_of(path) == [f"{path}: no such file"]


def test_missing_file_named_by_nexus_config_says_so(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"NEXUS_CONFIG": str(path)})
    assert caught.value.errors == [f"{path}: no such file (named by NEXUS_CONFIG)"]


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = \n")
    (line,) = errors_of(path)
    assert line.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in line


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    (line,) = errors_of(tmp_path)
    assert line.startswith(f"{tmp_path}: ")


# --- validation errors, each with its message -------------------------------------------------

CASES = [
    pytest.param(
        "[sever]\nport = 1\n", ["sever: unknown key; did you mean 'server'?"], id="unknown-section"
    ),
    pytest.param(
        "[server]\nprot = 1\n",
        ["server.prot: unknown key; did you mean 'port'?"],
        id="unknown-key-in-section",
    ),
    pytest.param(
        "[routing.weights]\nlatncy = 1\n",
        ["routing.weights.latncy: unknown key; did you mean 'latency'?"],
        id="unknown-key-nested",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'http://a:1'\n[[backends]]\nname = 'b'\n"
        "url = 'http://b:1'\npriorty = 3\n",
        ["backends[1].priorty: unknown key; did you mean 'priority'?"],
        id="unknown-key-in-backends",
    ),
    pytest.param(
        "[[pricing]]\nmodel = 'GPT-4o'\ninput_per_milion = 1\noutput_per_million = 2\n",
        [
            "pricing[0].input_per_million: required key is missing",
            "pricing[0].input_per_milion: unknown key; did you mean 'input_per_million'?",
        ],
        id="unknown-key-in-pricing",
    ),
    pytest.param(
        "[queue]\nzzz = 1\n",
        ["queue.zzz: unknown key; known keys: enabled, max_size, max_wait_seconds"],
        id="unknown-key-without-close-match",
    ),
    pytest.param(
        # Any well-formed name loads (a plugin may register it: plugins.config_problems checks).
        "[routing]\nstrategy = 'the best'\n",
        [
            "routing.strategy: must be a built-in strategy ('smart', 'round_robin', "
            "'priority_only', 'random', 'least_loaded', 'cache_affinity') or the name of one a "
            "plugin registers "
            "(lower-case letters, digits, '_', '.', '-', starting with a letter) (got 'the best')"
        ],
        id="bad-strategy-name",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'http://a:1'\nzone = 'public'\n",
        ["backends[0].zone: must be 'restricted' or 'open' (any case) (got 'public')"],
        id="bad-zone",
    ),
    pytest.param(
        "[logging.component_levels]\n'routing.x' = 'loud'\n",
        [
            "logging.component_levels.\"routing.x\": must be 'debug', 'info', 'warning' or "
            "'error' (any case) (got 'loud')"
        ],
        id="bad-enum-in-table",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'http://a:1'\ntier = 6\n",
        ["backends[0].tier: must be <= 5 (got 6)"],
        id="tier-too-high",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'http://a:1'\ntier = 0\n",
        ["backends[0].tier: must be >= 1 (got 0)"],
        id="tier-too-low",
    ),
    pytest.param(
        "[[routing.policies]]\nmodel_pattern = '*'\nmin_tier = 9\n",
        ["routing.policies[0].min_tier: must be <= 5 (got 9)"],
        id="policy-tier",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'http://a:1'\n[[backends]]\nname = 'b'\n"
        "url = 'http://b:1'\n[[backends]]\nname = 'a'\nurl = 'http://c:1'\n",
        ["backends[2].name: duplicate backend name 'a' (already used by backends[0])"],
        id="duplicate-backend",
    ),
    pytest.param(
        "[routing.aliases]\nfast = 'small'\nsmall = 'fast'\n",
        ["routing.aliases.fast: alias cycle fast -> small -> fast"],
        id="alias-cycle",
    ),
    pytest.param(
        "[routing.aliases]\nme = 'me'\n",
        ["routing.aliases.me: alias cycle me -> me"],
        id="alias-self",
    ),
    pytest.param(
        "[routing.aliases]\na = 'b'\nb = 'c'\nc = 'd'\nd = 'e'\n",
        ["routing.aliases.a: alias chain longer than 3: a -> b -> c -> d -> e"],
        id="alias-chain-too-long",
    ),
    pytest.param(
        "[[routing.policies]]\nmodel_pattern = 'gpt-[4*'\n",
        [
            "routing.policies[0].model_pattern: invalid glob 'gpt-[4*': '[' at position 4 is "
            "never closed"
        ],
        id="glob-unclosed",
    ),
    pytest.param(
        "[[routing.policies]]\nmodel_pattern = '*'\n[[routing.policies]]\nmodel_pattern = 'x]'\n",
        ["routing.policies[1].model_pattern: invalid glob 'x]': ']' without '[' at position 1"],
        id="glob-stray-bracket",
    ),
    pytest.param(
        "[[routing.policies]]\nmodel_pattern = 'a[]'\n",
        ["routing.policies[0].model_pattern: invalid glob 'a[]': empty [...] at position 1"],
        id="glob-empty-class",
    ),
    pytest.param(
        "[[routing.policies]]\nmodel_pattern = '  '\n",
        ["routing.policies[0].model_pattern: must be a non-empty glob such as 'gpt-*'"],
        id="glob-blank",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'localhost:11434'\n",
        ["backends[0].url: must be an http:// or https:// URL (scheme must be http or https)"],
        id="url-without-scheme",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'http://'\n",
        ["backends[0].url: must be an http:// or https:// URL (no host)"],
        id="url-without-host",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'http://a:99999'\n",
        ["backends[0].url: must be an http:// or https:// URL (Port out of range 0-65535)"],
        id="url-bad-port",
    ),
    pytest.param(
        "[telemetry]\notlp_endpoint = 'grpc://collector:4317'\n",
        [
            "telemetry.otlp_endpoint: must be an http:// or https:// URL "
            "(scheme must be http or https)"
        ],
        id="otlp-url",
    ),
    pytest.param(
        "[[backends]]\nurl = 'http://a:1'\n",
        ["backends[0].name: required key is missing"],
        id="missing-name",
    ),
    pytest.param(
        "[[backends]]\nname = ''\nurl = 'http://a:1'\n",
        ["backends[0].name: must not be empty (got '')"],
        id="empty-name",
    ),
    pytest.param(
        "[[backends]]\nname = 'team/gpu'\nurl = 'http://a:1'\n",
        [
            "backends[0].name: must be 1-64 letters, digits, '.', '_', '-' or '~', starting with "
            "a letter or digit (got 'team/gpu')"
        ],
        id="name-with-slash",
    ),
    pytest.param(
        "[[backends]]\nname = \"gpu\\r\\nX-Evil: 1\"\nurl = 'http://a:1'\n",
        [
            "backends[0].name: must be 1-64 letters, digits, '.', '_', '-' or '~', starting with "
            "a letter or digit (got 'gpu\\r\\nX-Evil: 1')"
        ],
        id="name-with-crlf",
    ),
    pytest.param(
        "[[backends]]\nname = '-gpu'\nurl = 'http://a:1'\n[[backends]]\nname = 'Büro'\n"
        f"url = 'http://b:1'\n[[backends]]\nname = '{'x' * 65}'\nurl = 'http://c:1'\n",
        [
            f"backends[{index}].name: must be 1-64 letters, digits, '.', '_', '-' or '~', "
            f"starting with a letter or digit (got {name!r})"
            for index, name in enumerate(["-gpu", "Büro", "x" * 65])
        ],
        id="name-outside-the-set",
    ),
    pytest.param(
        "[[auth.keys]]\nname = 'team'\nkey_env = 'K'\nrequests_per_minute = true\n"
        "tokens_per_minute = '60'\nmonthly_budget_usd = inf\n",
        [
            "auth.keys[0].requests_per_minute: must be an integer (got True)",
            "auth.keys[0].tokens_per_minute: must be an integer (got '60')",
            "auth.keys[0].monthly_budget_usd: must be a finite number (got inf)",
        ],
        id="key-settings-strict",
    ),
    pytest.param(
        "[[backends]]\nname = 'a'\nurl = 'http://a:1'\ntype = 'my backend'\n",
        ["backends[0].type: must be a backend type name such as 'ollama' (got 'my backend')"],
        id="bad-type-name",
    ),
    pytest.param(
        "[server]\nport = 'eighty'\n",
        ["server.port: must be an integer (got 'eighty')"],
        id="not-an-integer",
    ),
    pytest.param(
        "[server]\nport = 70000\n", ["server.port: must be <= 65535 (got 70000)"], id="port-range"
    ),
    pytest.param("server = 5\n", ["server: must be a table (got 5)"], id="section-not-a-table"),
    pytest.param(
        "[discovery]\nenabled = 'sometimes'\n",
        ["discovery.enabled: must be true or false (got 'sometimes')"],
        id="not-a-bool",
    ),
    pytest.param(
        "[state]\nbackend = 'redis'\n",
        [
            "state.redis_url_env: required when backend is 'redis': the name of the environment "
            "variable holding the Redis URL"
        ],
        id="redis-without-url",
    ),
    pytest.param(
        "[[auth.keys]]\nname = 'team'\nkey_env = 'TEAM KEY'\n",
        [
            "auth.keys[0].key_env: must be the NAME of an environment variable (such as "
            "OPENAI_API_KEY), never the secret itself"
        ],
        id="env-name",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_validation_error_names_file_and_key(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = write(tmp_path, text)
    assert errors_of(path) == [f"{path}: {line}" for line in expected]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[server]\nport = 0\nhots = 'x'\n[routing]\nstrategy = 'the best'\n"
        "[[backends]]\nname = 'a'\nurl = 'ftp://a'\ntier = 7\n",
    )
    errors = errors_of(path)
    assert [line.split(": ")[1] for line in errors] == [
        "server.port",
        "server.hots",
        "routing.strategy",
        "backends[0].url",
        "backends[0].tier",
    ]
    assert all(line.startswith(f"{path}: ") for line in errors)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("routing", "strategy", "Round_Robin", "round_robin"),
        ("routing", "strategy", "LEAST_LOADED", "least_loaded"),
        ("logging", "level", "Debug", "debug"),
        ("logging", "format", "JSON", "json"),
        ("state", "backend", "Memory", "memory"),
        ("routing.budget", "hard_limit_action", "BLOCK_CLOUD", "block_cloud"),
    ],
)
def test_enums_accept_any_case_and_are_stored_lower_case(
    tmp_path: Path, section: str, key: str, value: str, expected: str
) -> None:
    config = load(write(tmp_path, f"[{section}]\n{key} = '{value}'\n"))
    target: object = config
    for part in section.split("."):
        target = getattr(target, part)
    stored = getattr(target, key)
    assert stored == expected
    assert str(stored) == expected


def test_zone_and_privacy_accept_any_case(tmp_path: Path) -> None:
    text = (
        "[[backends]]\nname = 'a'\nurl = 'http://a:1'\nzone = 'OPEN'\n"
        "[[routing.policies]]\nmodel_pattern = 'x*'\nprivacy = 'Restricted'\n"
    )
    config = load(write(tmp_path, text))
    assert config.backends[0].zone is Zone.OPEN
    assert config.routing.policies[0].privacy == "restricted"


def test_valid_edge_values_load(tmp_path: Path) -> None:
    text = (
        "[routing.aliases]\na = 'b'\nb = 'c'\nc = 'd'\n"  # a chain of exactly 3
        "[[routing.policies]]\nmodel_pattern = 'gpt-[34]*'\nmin_tier = 5\n"
        "[[routing.policies]]\nmodel_pattern = 'local-[!x]?'\nmin_tier = 1\n"
        "[[backends]]\nname = 'a'\nurl = 'https://user@host.example:8443/v1/'\ntier = 5\n"
    )
    config = load(write(tmp_path, text))
    assert config.routing.aliases == {"a": "b", "b": "c", "c": "d"}
    assert config.backends[0].url == "https://user@host.example:8443/v1"  # trailing / dropped


# --- environment and command-line errors ------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        (
            "NEXUS_PORT",
            "abc",
            "environment variable NEXUS_PORT: server.port: must be an integer (got 'abc')",
        ),
        (
            "NEXUS_PORT",
            "0",
            "environment variable NEXUS_PORT: server.port: must be >= 1 (got '0')",
        ),
        (
            "NEXUS_DISCOVERY",
            "maybe",
            "environment variable NEXUS_DISCOVERY: discovery.enabled: must be true or false "
            "(got 'maybe')",
        ),
        (
            "NEXUS_HEALTH_CHECK",
            "2",
            "environment variable NEXUS_HEALTH_CHECK: health_check.enabled: must be true or false "
            "(got '2')",
        ),
        (
            "NEXUS_LOG_LEVEL",
            "loud",
            "environment variable NEXUS_LOG_LEVEL: logging.level: must be 'debug', 'info', "
            "'warning' or 'error' (any case) (got 'loud')",
        ),
        (
            "NEXUS_LOG_FORMAT",
            "xml",
            "environment variable NEXUS_LOG_FORMAT: logging.format: must be 'pretty' or 'json' "
            "(any case) (got 'xml')",
        ),
    ],
)
def test_invalid_environment_value_names_the_variable(
    tmp_path: Path, variable: str, raw: str, expected: str
) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    assert errors_of(path, {variable: raw}) == [expected]


def test_environment_and_file_errors_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nhost = 1\n")
    errors = errors_of(path, {"NEXUS_DISCOVERY": "perhaps", "NEXUS_PORT": "x"})
    assert errors == [
        "environment variable NEXUS_DISCOVERY: discovery.enabled: must be true or false "
        "(got 'perhaps')",
        f"{path}: server.host: must be a string (got 1)",
        "environment variable NEXUS_PORT: server.port: must be an integer (got 'x')",
    ]


def test_invalid_command_line_value_says_so() -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, overrides={"server.port": 70000})
    assert caught.value.errors == ["command line: server.port: must be <= 65535 (got 70000)"]


# --- secrets ---------------------------------------------------------------------------------


def test_secret_pasted_into_an_env_key_is_not_echoed(tmp_path: Path) -> None:
    secret = "sk-proj-abcdefghijklmnop-1234"
    path = write(
        tmp_path,
        f"[[backends]]\nname = 'oa'\nurl = 'https://api.openai.com'\ntype = 'openai'\n"
        f"api_key_env = '{secret}'\n",
    )
    (line,) = errors_of(path)
    assert secret not in line
    assert line.startswith(f"{path}: backends[0].api_key_env: must be the NAME")


def test_a_key_in_the_file_is_refused_with_a_hint_and_not_echoed(tmp_path: Path) -> None:
    secret = "sk-live-0123456789"
    path = write(tmp_path, f"[[backends]]\nname = 'a'\nurl = 'http://a:1'\napi_key = '{secret}'\n")
    (line,) = errors_of(path)
    assert secret not in line
    assert line.startswith(
        f"{path}: backends[0].api_key: unknown key; did you mean 'api_key_env'? (secrets are "
        "never read from the config file"
    )


def test_the_key_is_read_from_the_named_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = BackendConfig(
        name="oa", url="https://api.openai.com", type="openai", api_key_env="NEXUS_TEST_KEY"
    )
    monkeypatch.delenv("NEXUS_TEST_KEY", raising=False)
    assert backend.api_key() is None
    monkeypatch.setenv("NEXUS_TEST_KEY", "sk-test-value")
    assert backend.api_key() == "sk-test-value"
    local = BackendConfig(name="box", url="http://box:11434", type="ollama")
    assert local.api_key() is None


def test_the_default_zone_follows_the_adapters_is_cloud_not_the_type_name() -> None:
    # Any type name: whether it is cloud is the adapter's word, given by whoever knows it.
    backend = BackendConfig(name="acme", url="https://llm.acme.example", type="acme-cloud")
    assert backend.zone_for(True) is Zone.OPEN
    assert backend.zone_for(False) is Zone.RESTRICTED
    openai = BackendConfig(name="oa", url="https://api.openai.com", type="openai")
    assert openai.zone_for(False) is Zone.RESTRICTED  # no list of names decides it
    pinned = BackendConfig(name="p", url="https://llm.acme.example", type="x", zone="restricted")
    assert pinned.zone_for(True) is Zone.RESTRICTED  # a configured zone wins


def test_cloud_problems_name_the_key_and_need_no_plugin() -> None:
    # Built before any plugin is loaded (the library may): a config alone never fails on them.
    bare = BackendConfig(
        name="acme", url="https://llm.acme.example", type="acme-cloud", forward_client_auth=True
    )
    assert bare.cloud_problems() == [
        (
            "api_key_env",
            "required for the cloud type 'acme-cloud': the name of the environment variable "
            "that holds its API key",
        ),
        (
            "forward_client_auth",
            "a cloud backend ('acme-cloud') never receives the client's Authorization; it uses "
            "its api_key_env",
        ),
    ]
    keyed = BackendConfig(
        name="acme", url="https://llm.acme.example", type="acme-cloud", api_key_env="ACME_KEY"
    )
    assert keyed.cloud_problems() == []


def test_mask_secrets_hides_values_and_keeps_a_valid_config() -> None:
    config = validate_config(
        {
            "backends": [
                {
                    "name": "oa",
                    "url": "https://api.openai.com",
                    "type": "openai",
                    "api_key_env": "OA_KEY",
                },
                {"name": "box", "url": "http://admin:hunter2@box:8000"},
                # A secret pasted anywhere else is masked too.
                {
                    "name": "odd",
                    "url": "http://odd:1/?key=sk-very-secret",
                    "models": ["sk-very-secret"],
                },
            ],
            "auth": {"keys": [{"name": "team", "key_env": "TEAM_KEY"}]},
            "telemetry": {"otlp_endpoint": "https://u:p4ss@otel.example"},
        }
    )
    environ = {"OA_KEY": "sk-very-secret", "TEAM_KEY": "team-secret"}
    masked = mask_secrets(config, environ=environ)
    text = repr(masked)
    for secret in ("sk-very-secret", "team-secret", "hunter2", "p4ss"):
        assert secret not in text
    assert masked["backends"][0]["api_key_env"] == "OA_KEY"
    assert masked["backends"][1]["url"] == "http://admin:***@box:8000"
    assert masked["telemetry"]["otlp_endpoint"] == "https://u:***@otel.example"
    assert masked["backends"][2]["models"][0]["id"] == "***"
    assert masked["backends"][2]["url"] == "http://odd:1/?key=***"
    assert isinstance(validate_config(masked), NexusConfig)
    assert secret_status(config, environ=environ) == {
        "backends[0].api_key_env": True,
        "auth.keys[0].key_env": True,
    }
    assert secret_status(config, environ={}) == {
        "backends[0].api_key_env": False,
        "auth.keys[0].key_env": False,
    }


def test_mask_secrets_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = validate_config(
        {"state": {"backend": "redis", "redis_url_env": "NEXUS_TEST_REDIS"}, "backends": []}
    )
    monkeypatch.setenv("NEXUS_TEST_REDIS", "redis://:pw@redis:6379/0")
    assert secret_status(config) == {"state.redis_url_env": True}
    monkeypatch.setenv("NEXUS_TEST_REDIS", "redis")  # too short to be worth masking
    assert mask_secrets(config)["state"]["backend"] == "redis"


@pytest.mark.parametrize("name", ["a", "gpu-box", "GPU_2.local", "rack~1", "0", "x" * 64])
def test_backend_names_in_the_safe_set_load(name: str) -> None:
    config = validate_config({"backends": [{"name": name, "url": "http://a:1"}]}, source="test")
    assert config.backends[0].name == name
