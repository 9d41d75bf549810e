"""Nexus core: the LLM gateway as a library.

async with Gateway(config) as gateway:
    reply = await gateway.chat_completions({"model": "llama3", "messages": [...]})
"""

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
    "ErrorKind",
    "Gateway",
    "GatewayError",
    "LoadSignal",
    "ModelInfo",
    "NexusConfig",
    "OpenAIWireAdapter",
    "ProbeResult",
    "Timeouts",
    "UpstreamResponse",
    "__version__",
    "hookimpl",
    "load_config",
]
