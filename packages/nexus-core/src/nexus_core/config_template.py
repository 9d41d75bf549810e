"""Deprecated: ``nexus_core.config.example`` (``example_config``) and
``nexus_core.config.toml_writer`` (``to_toml``, ``toml_value``...) took over this module."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "example_config": "nexus_core.config.example",
    "MINIMAL_KEYS": "nexus_core.config.example",
    "to_toml": "nexus_core.config.toml_writer",
    "toml_key": "nexus_core.config.toml_writer",
    "toml_string": "nexus_core.config.toml_writer",
    "toml_value": "nexus_core.config.toml_writer",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"nexus_core.config_template.{name} is deprecated: import it from {module}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), name)
