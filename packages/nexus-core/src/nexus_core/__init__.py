"""Nexus core: the LLM gateway as a library.

async with Gateway(config) as gateway:
    reply = await gateway.chat_completions({"model": "llama3", "messages": [...]})
"""

from nexus_core.adapter_kit import (
    ErrorBody,
    ErrorQuirk,
    ProbeAnswer,
    UpstreamErrors,
    bearer,
    error_envelope,
    probe_get,
    read_error,
    refused,
)
from nexus_core.adapters import (
    BackendAdapter,
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LoadSignal,
    ModelInfo,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
)
from nexus_core.config import BackendConfig, ConfigError, NexusConfig, load_config
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_core.hookspecs import hookimpl
from nexus_core.openai_wire import OpenAIWireAdapter

__version__ = "0.1.0"
__all__ = [
    "BackendAdapter",
    "BackendConfig",
    "BackendError",
    "BackendStatus",
    "ConfigError",
    "Endpoint",
    "ErrorBody",
    "ErrorKind",
    "ErrorQuirk",
    "Gateway",
    "GatewayError",
    "LoadSignal",
    "ModelInfo",
    "NexusConfig",
    "OpenAIWireAdapter",
    "ProbeAnswer",
    "ProbeResult",
    "Timeouts",
    "UpstreamErrors",
    "UpstreamResponse",
    "__version__",
    "bearer",
    "error_envelope",
    "hookimpl",
    "load_config",
    "probe_get",
    "read_error",
    "refused",
]
