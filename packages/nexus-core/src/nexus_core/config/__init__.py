"""Configuration: the models of ``nexus.toml`` and the loader (file < environment < command line).

Strict on purpose: an unknown key, a wrong enum or an alias cycle refuses to load with a message
that names the key path and where the value came from (the file, an environment variable or the
command line), so a typo never silently changes what the gateway does. Secrets never live in the
configuration: it only holds the *names* of environment variables (``*_env`` keys).

The modules, one job each:

- ``schema``: the pydantic model of every section and ``NexusConfig`` (a new key goes here,
  and in docs/configuration.md, which a test compares with it);
- ``fields``: the value types the models share (enums, URL, env-var name, glob, backend name);
- ``loading``: finding the file, environment overrides, merging and validating;
- ``rust_nexus``: the Rust Nexus's key names, read or dropped with a warning;
- ``messages``: a validation error as one line naming the key and where its value came from;
- ``masking``: the configuration printed without secrets;
- ``keys``: walking the models (every key path; how a field nests);
- ``example`` and ``toml_writer``: the commented ``nexus config init`` file, and TOML output.

Everything in ``__all__`` below is public API and documented (docs/configuration.md for the
keys, docs/embedding.md for loading). The other names re-exported here keep older import paths
working inside the project; import them from their module.
"""

from nexus_core.config.errors import ConfigError
from nexus_core.config.fields import (
    BACKEND_NAME,
    BACKEND_NAME_RULE,
    HardLimitAction,
    LogFormat,
    LogLevel,
    PolicyPrivacy,
    RoutingStrategy,
    StateBackend,
    SystemMessages,
    Zone,
)
from nexus_core.config.keys import config_key_paths as config_key_paths
from nexus_core.config.keys import field_shape as field_shape
from nexus_core.config.loading import (
    ENV_OVERRIDES,
    find_config_file,
    load_config,
    validate_config,
)
from nexus_core.config.masking import mask_secrets, secret_status
from nexus_core.config.rust_nexus import UPSTREAM_KEYS as UPSTREAM_KEYS
from nexus_core.config.rust_nexus import read_upstream_keys as read_upstream_keys
from nexus_core.config.schema import (
    AUTO_TYPE,
    MAX_ALIAS_DEPTH,
    ApiKeyConfig,
    AuthConfig,
    BackendConfig,
    BudgetConfig,
    CacheAffinityConfig,
    DiscoveryConfig,
    FleetConfig,
    HealthCheckConfig,
    LoggingConfig,
    ModelDeclaration,
    NexusConfig,
    PolicyConfig,
    PrewarmConfig,
    PriceEntry,
    QualityConfig,
    QueueConfig,
    ResponsesConfig,
    RoutingConfig,
    ServerConfig,
    StateConfig,
    TelemetryConfig,
    WeightsConfig,
)
from nexus_core.config.schema import LEGACY_SQLITE_PATH as LEGACY_SQLITE_PATH

__all__ = [
    "AUTO_TYPE",
    "BACKEND_NAME",
    "BACKEND_NAME_RULE",
    "ENV_OVERRIDES",
    "MAX_ALIAS_DEPTH",
    "ApiKeyConfig",
    "AuthConfig",
    "BackendConfig",
    "BudgetConfig",
    "CacheAffinityConfig",
    "ConfigError",
    "DiscoveryConfig",
    "FleetConfig",
    "HardLimitAction",
    "HealthCheckConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "ModelDeclaration",
    "NexusConfig",
    "PolicyConfig",
    "PolicyPrivacy",
    "PrewarmConfig",
    "PriceEntry",
    "QualityConfig",
    "QueueConfig",
    "ResponsesConfig",
    "RoutingConfig",
    "RoutingStrategy",
    "ServerConfig",
    "StateBackend",
    "StateConfig",
    "SystemMessages",
    "TelemetryConfig",
    "WeightsConfig",
    "Zone",
    "find_config_file",
    "load_config",
    "mask_secrets",
    "secret_status",
    "validate_config",
]
